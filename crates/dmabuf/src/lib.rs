//! Linux DMA-BUF for user space: safe buffers, CPU-access windows,
//! udmabuf, DMA heaps, sync files and fences, device endpoints, sharing
//! between processes and inspection — with a portable engine that follows
//! the same rules where the kernel has no exporter.
//!
//! # Architecture
//!
//! * `sys` (private) — the kernel-facing layer: `#[repr(C)]` structs,
//!   ioctl numbers, thin syscall wrappers, the raw mappings. The only
//!   module with `unsafe` (`#![deny(unsafe_code)]` everywhere else), and
//!   out of reach of code outside the crate: raw ioctls on arbitrary fds
//!   and mappings without bookkeeping are not part of the API.
//! * [`buffer`] — [`DmaBuf`] (a checked dma-buf fd) and [`Buffer`] (any
//!   kind of memory, one API).
//! * [`mapping`] — [`Mapping`] and [`Window`]: the bytes are only reachable
//!   inside a CPU-access window bracketed by `DMA_BUF_IOCTL_SYNC`.
//! * [`udmabuf`], [`heap`], [`portable`] — the three kinds of memory;
//!   [`alloc`] chooses between them.
//! * [`fence`] — kernel sync files and user fences, one [`Fence`] type;
//!   [`reservation`] — the implicit-sync rules that make CPU, devices and
//!   processes take turns.
//! * [`inspect`] — who holds which dma-buf in this system.
//!
//! # Example
//!
//! ```
//! use dmabuf::{Allocate, Allocator};
//!
//! # fn main() -> dmabuf::Result<()> {
//! let alloc = Allocator::auto(); // heap, else udmabuf, else portable
//! let buf = alloc.allocate(4096, "example")?;
//! let map = buf.map()?;
//! {
//!     let mut w = map.write()?; // DMA_BUF_IOCTL_SYNC START|WRITE
//!     w.fill(0xab);
//! } // END|WRITE
//! let r = map.read()?;
//! // The bytes are shared memory: read them with volatile accesses.
//! assert!(r.bytes().iter().all(|b| b == 0xab));
//! assert_eq!(r.get(4095), Some(0xab));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod alloc;
pub mod buffer;
pub mod endpoint;
pub mod error;
pub mod fence;
pub mod frame;
pub mod heap;
pub mod inspect;
pub mod mapping;
pub mod portable;
pub mod probe;
mod procfs;
pub mod reservation;
pub mod share;
// The one module allowed `unsafe`. It describes the uapi whole (every
// flag and struct of the headers it covers), so not all of it is used.
#[allow(unsafe_code, dead_code)]
pub(crate) mod sys;
pub mod udmabuf;
pub mod units;

pub use alloc::{Allocate, Allocator, Backend};
pub use buffer::{Access, Buffer, BufferKind, DmaBuf, MAX_NAME_LEN, PORTABLE_MEMFD_PREFIX};
pub use error::{Errno, Error, ErrorKind, Result};
pub use fence::{Fence, FenceContext, FenceStatus, SyncFile, UserFence};
pub use frame::{Fourcc, Frame, Modifier};
pub use heap::Heap;
pub use mapping::{Mapping, VolatileBytes, VolatileBytesMut, Window};
pub use portable::Portable;
pub use reservation::{Reservation, Usage};
pub use udmabuf::{Memfd, Udmabuf};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The system page size in bytes (offsets of mapped ranges and udmabuf
/// ranges must be multiples of it).
pub fn page_size() -> usize {
    sys::mem::page_size()
}

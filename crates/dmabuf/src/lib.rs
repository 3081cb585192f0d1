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
//! * [`dma_buf`] — [`DmaBuf`], a checked dma-buf fd and its kernel
//!   reservation; [`buffer`] — [`Buffer`] (any kind of memory, one API).
//! * [`mapping`] — [`Mapping`] and [`Window`]: the bytes are only reachable
//!   inside a CPU-access window bracketed by `DMA_BUF_IOCTL_SYNC`.
//! * [`alloc`] — allocators: the three kinds of memory, its children
//!   [`alloc::heap`], [`alloc::udmabuf`], [`alloc::portable`], and the
//!   automatic choice between them.
//! * [`access`] — [`Access`] (what a user of the bytes does, and so what
//!   it waits for) and [`Usage`] (how a fence in a reservation uses the
//!   buffer, and so who waits for it).
//! * [`fence`] — kernel sync files and user fences, one [`Fence`] type;
//!   [`reservation`] — the implicit-sync rules that make CPU, devices and
//!   processes take turns.
//! * [`frame`] — frames: DRM fourcc formats, modifiers, checked plane
//!   layouts in one or several buffers, plane windows.
//! * [`endpoint`] — devices (any fd, FunctionFS, V4L2 capture and output,
//!   IIO, DRM PRIME): attach a buffer once, a fence per transfer.
//! * [`share`] — buffers, frames and fences across processes over a Unix
//!   socket, and the streaming pool ([`share::pool`]).
//! * [`inspect`] — who holds which dma-buf in this system; [`probe`] —
//!   what this kernel offers.
//!
//! The modules are layered: `sys`, [`error`], [`units`], [`access`] and
//! the private `procfs` parsers at the bottom, then [`fence`], [`dma_buf`], [`reservation`], [`buffer`],
//! [`mapping`], [`alloc`] and what builds on them. A test of the crate
//! fails when two modules import each other, directly or through others,
//! or when a bottom module uses another.
//!
//! # Tracing
//!
//! With the `tracing` feature (off by default) the library emits `tracing`
//! events, their target the module that emits them (`dmabuf::mapping`…):
//!
//! * `DEBUG`: why [`Allocator::auto`] chose its backend; which data path an
//!   endpoint chose for a buffer it attached; every wait a CPU window, an
//!   idle-wait or a device transfer makes in a [`Reservation`] — for a
//!   fence (naming it, and when the wait ends how long it took and how it
//!   ended), for open CPU windows (how many), for a dma-buf's kernel
//!   fences (for device transfers, and for windows with a timeout);
//! * `TRACE`: every CPU window opened (buffer, access, range, time spent
//!   waiting) and closed.
//!
//! Without the feature none of this is compiled in.
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
#![cfg_attr(docsrs, feature(doc_cfg))]

/// An event for the optional `tracing` feature: `tracing::event!` at
/// `$level` (`TRACE`, `DEBUG`…) with it; without it, nothing — the
/// arguments are not even evaluated.
macro_rules! trace_event {
    ($level:ident, $($arg:tt)+) => {
        #[cfg(feature = "tracing")]
        ::tracing::event!(::tracing::Level::$level, $($arg)+);
    };
}

pub mod access;
pub mod alloc;
pub mod buffer;
pub mod dma_buf;
pub mod endpoint;
pub mod error;
pub mod fence;
pub mod frame;
pub mod inspect;
pub mod mapping;
pub mod probe;
mod procfs;
pub mod reservation;
pub mod share;
// The one module allowed `unsafe`. It describes the uapi whole (every
// flag and struct of the headers it covers), so not all of it is used.
#[allow(unsafe_code, dead_code)]
pub(crate) mod sys;
pub mod units;

pub use access::{Access, Usage};
pub use alloc::heap::Heap;
pub use alloc::portable::Portable;
pub use alloc::udmabuf::{Memfd, Udmabuf};
pub use alloc::{Allocate, Allocator, Backend};
pub use buffer::{Buffer, BufferKind, PORTABLE_MEMFD_PREFIX};
pub use dma_buf::{DmaBuf, MAX_NAME_LEN};
pub use error::{Errno, Error, ErrorKind, Result};
pub use fence::{Fence, FenceContext, FenceStatus, SyncFile, UserFence};
pub use frame::{Fourcc, Frame, Modifier};
pub use mapping::{Mapping, VolatileBytes, VolatileBytesMut, Window};
pub use reservation::Reservation;

/// The public enums that may grow are `#[non_exhaustive]`: outside the
/// crate, a `match` naming every variant does not compile without a
/// wildcard arm (each `compile_fail` case below has a twin that compiles
/// with one).
///
/// ```compile_fail
/// fn f(k: dmabuf::ErrorKind) -> u8 { use dmabuf::ErrorKind as K; match k { K::InvalidInput | K::NotSupported | K::NotFound | K::PermissionDenied | K::Busy | K::TimedOut | K::WouldBlock | K::FenceFailed | K::Cancelled | K::PeerGone | K::Protocol | K::Os => 1 } }
/// ```
///
/// ```
/// fn f(k: dmabuf::ErrorKind) -> u8 { use dmabuf::ErrorKind as K; match k { K::InvalidInput | K::NotSupported | K::NotFound | K::PermissionDenied | K::Busy | K::TimedOut | K::WouldBlock | K::FenceFailed | K::Cancelled | K::PeerGone | K::Protocol | K::Os => 1, _ => 0 } }
/// ```
///
/// ```compile_fail
/// fn f(k: dmabuf::Backend) -> u8 { use dmabuf::Backend as K; match k { K::Heap(_) | K::Udmabuf | K::Portable => 1 } }
/// ```
///
/// ```
/// fn f(k: dmabuf::Backend) -> u8 { use dmabuf::Backend as K; match k { K::Heap(_) | K::Udmabuf | K::Portable => 1, _ => 0 } }
/// ```
///
/// ```compile_fail
/// fn f(k: dmabuf::BufferKind) -> u8 { use dmabuf::BufferKind as K; match k { K::Heap(_) | K::Udmabuf | K::Portable | K::Imported(_) => 1 } }
/// ```
///
/// ```
/// fn f(k: dmabuf::BufferKind) -> u8 { use dmabuf::BufferKind as K; match k { K::Heap(_) | K::Udmabuf | K::Portable | K::Imported(_) => 1, _ => 0 } }
/// ```
///
/// ```compile_fail
/// fn f(k: dmabuf::Fence) -> u8 { use dmabuf::Fence as K; match k { K::Signalled | K::Kernel(_) | K::User(_) | K::All(_) => 1 } }
/// ```
///
/// ```
/// fn f(k: dmabuf::Fence) -> u8 { use dmabuf::Fence as K; match k { K::Signalled | K::Kernel(_) | K::User(_) | K::All(_) => 1, _ => 0 } }
/// ```
///
/// ```compile_fail
/// fn f(k: dmabuf::endpoint::DataPath) -> u8 { use dmabuf::endpoint::DataPath as K; match k { K::ZeroCopy | K::Copy(_) => 1 } }
/// ```
///
/// ```
/// fn f(k: dmabuf::endpoint::DataPath) -> u8 { use dmabuf::endpoint::DataPath as K; match k { K::ZeroCopy | K::Copy(_) => 1, _ => 0 } }
/// ```
///
/// ```compile_fail
/// fn f(k: dmabuf::Usage) -> u8 { use dmabuf::Usage as K; match k { K::Read | K::Write => 1 } }
/// ```
///
/// ```
/// fn f(k: dmabuf::Usage) -> u8 { use dmabuf::Usage as K; match k { K::Read | K::Write => 1, _ => 0 } }
/// ```
#[cfg(doctest)]
pub struct NonExhaustiveDoctests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The system page size in bytes (offsets of mapped ranges and udmabuf
/// ranges must be multiples of it).
pub fn page_size() -> usize {
    sys::mem::page_size()
}

//! Mappings and CPU-access windows.
//!
//! # DOC: CPU access is always bracketed
//!
//! A dma-buf's memory may sit behind caches that a device does not see, or
//! be written by a device right now. The kernel's rule (its dma-buf
//! documentation, "CPU access to DMA buffer objects") is that CPU access
//! through a mapping is *bracketed*:
//! `DMA_BUF_IOCTL_SYNC` with `START` and the direction before touching the
//! bytes, and `END` after, so the exporter can flush or invalidate caches
//! and the kernel can wait for the device fences in the way.
//!
//! Here that rule is the only way to the bytes:
//!
//! * a [`Mapping`] is a handle on (a page-aligned range of) the buffer's
//!   one shared mapping; it hands out no bytes itself;
//! * [`Mapping::read`], [`Mapping::write`] and [`Mapping::read_write`] open
//!   a [`Window`]: they wait for the fences the access must wait for (a
//!   read waits for writers, a write for everyone), issue `START` with the
//!   direction, and only then give access to the bytes (reading, and
//!   writing for writing windows — see "the bytes are volatile" below);
//! * closing the window — [`Window::end`], which returns `END`'s error, or
//!   just dropping it — issues `END` with the same direction. There is no
//!   way to issue `END` without a `START` (a udmabuf would answer EINVAL);
//! * windows of one buffer may overlap only if none of them writes: an
//!   overlapping write window is refused with a [`ErrorKind::Busy`] error
//!   rather than aliasing memory;
//! * on a dma-buf, a window that reads and a window that writes are never
//!   open at the same time, even on disjoint ranges: `SYNC` has no range,
//!   and `START|READ` (or `END|READ`) may invalidate the CPU caches of the
//!   whole buffer on non-coherent hardware, destroying what the writer
//!   has not flushed yet. The later one is refused with a
//!   [`ErrorKind::Busy`] error saying so (see `reservation`, "non-coherent
//!   exporters");
//! * a window's wait is bounded by its timeout, `START` included: for a
//!   dma-buf the kernel's fences are polled (`POLLIN` for a read,
//!   `POLLOUT` for a write) until the deadline before `START` is issued;
//! * the window checks for fences and registers itself in one step under
//!   the reservation's lock, so a device transfer queued at the same time
//!   either sees the window (and waits for it) or has published its fence
//!   (and the window waits for that); see `reservation`.
//!
//! Portable buffers follow the same rules without asking the kernel: the
//! windows, waits and refusals are the same, there is just no cache to
//! maintain (so their disjoint windows may coexist in any mode).
//!
//! The memory is shared with devices and other processes; a window is a
//! promise between cooperating parties (through fences), not a lock the
//! kernel enforces on others.
//!
//! # DOC: the bytes are volatile (the trust model)
//!
//! Inside this process the library guarantees that no two windows overlap
//! unless all of them read, across every handle on the same memory (and,
//! for udmabufs this process made, across the memfd pages they are made
//! of; see `buffer` and `alloc::udmabuf`). It cannot guarantee the same of other
//! processes or devices: a peer that does not follow the protocol, or that
//! is hostile, can write the bytes while a window is open. In Rust's model
//! a `&[u8]` or `&mut [u8]` over bytes that change meanwhile is a data
//! race, so a [`Window`] does not dereference to a slice. Its bytes are
//! reached through a volatile view, in the style of `vm-memory`'s
//! `VolatileSlice`:
//!
//! * [`Window::bytes`] gives a [`VolatileBytes`] (`len`, `get`, `read_at`,
//!   `copy_to_slice`, `to_vec`, `subslice`, `iter`), and writing windows'
//!   [`Window::bytes_mut`] a [`VolatileBytesMut`] (also `set`, `write_at`,
//!   `copy_from_slice`, `copy_from_volatile`, `fill`); the window itself
//!   has the common ones (`len`, `get`, `read_at`, `copy_to_slice`,
//!   `to_vec`, and for writing windows `set`, `write_at`,
//!   `copy_from_slice`, `fill`);
//! * every access is a volatile load or store, bulk ones by aligned 64-bit
//!   words; a byte another party changes is just a different value read,
//!   never undefined behaviour, and a value read once is a copy that
//!   cannot change under the program;
//! * a plain slice is only had through `unsafe`:
//!   [`VolatileBytes::as_slice`] / [`VolatileBytesMut::as_mut_slice`],
//!   whose caller asserts that nobody else writes (or, for the mutable one,
//!   reads) the bytes while the slice lives — true when every holder of
//!   the memory follows the window and fence protocol, never to be assumed
//!   of memory an untrusted peer can write.
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::Access;
use crate::buffer::Buffer;
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::reservation::Reservation;
use crate::sys;
use crate::sys::mem::Region;
use crate::sys::object::{BorrowError, MemoryObject, View};
pub use crate::sys::volatile::{OutOfRange, VolatileBytes, VolatileBytesMut};

/// A handle on (a range of) a buffer's shared mapping. Cheap; make as
/// many as needed: the buffer is mapped once.
#[derive(Debug)]
pub struct Mapping {
    buffer: Buffer,
    region: Arc<Region>,
    range: Range<usize>,
    writable: bool,
    /// The memory object, where the reservation keeps its word in it (a
    /// window on the whole buffer may then claim and register in one
    /// step), read once here: a window's common case then reaches the
    /// word from the mapping directly, not through the buffer's handle
    /// and its shared state (two more pointers, each a likely cache miss
    /// where many buffers take turns, as in a pool).
    joint: Option<Arc<MemoryObject>>,
    /// Whether the buffer is a dma-buf (windows then bracket with `SYNC`).
    dma_buf: bool,
}

/// The kind of a [`Window`]: [`ReadOnly`], [`WriteOnly`] or [`ReadWrite`]
/// — the direction declared to the exporter with `DMA_BUF_IOCTL_SYNC`
/// (`DMA_BUF_SYNC_READ`, `_WRITE`, `_RW`), like an fd's `O_RDONLY`,
/// `O_WRONLY` and `O_RDWR`. (Named so that they do not clash with
/// `std::io::{Read, Write}`.)
pub trait WindowMode: sealed::Sealed {
    /// The access it stands for.
    const ACCESS: Access;
}

/// Window modes that may write the bytes.
pub trait Writable: WindowMode {}

mod sealed {
    pub trait Sealed {}
}

/// A window for reading (`DMA_BUF_SYNC_READ`): waits for writers.
#[derive(Debug)]
pub enum ReadOnly {}
/// A window for writing (`DMA_BUF_SYNC_WRITE`): waits for everyone. Its
/// bytes can be read too (volatile reads, never undefined behaviour), but
/// the exporter was told the CPU only writes, so it need not make what a
/// device wrote visible to the CPU first — open a [`ReadWrite`] window
/// for that.
#[derive(Debug)]
pub enum WriteOnly {}
/// A window for reading and writing (`DMA_BUF_SYNC_RW`): waits for
/// everyone.
#[derive(Debug)]
pub enum ReadWrite {}

impl sealed::Sealed for ReadOnly {}
impl sealed::Sealed for WriteOnly {}
impl sealed::Sealed for ReadWrite {}
impl WindowMode for ReadOnly {
    const ACCESS: Access = Access::Read;
}
impl WindowMode for WriteOnly {
    const ACCESS: Access = Access::Write;
}
impl WindowMode for ReadWrite {
    const ACCESS: Access = Access::ReadWrite;
}
impl Writable for WriteOnly {}
impl Writable for ReadWrite {}

impl Mapping {
    fn new(buffer: Buffer, region: Arc<Region>, range: Range<usize>, writable: bool) -> Mapping {
        let memory = buffer.memory_object();
        let joint = buffer
            .reservation()
            .shares_word_of(memory)
            .then(|| memory.clone());
        let dma_buf = buffer.dma_buf().is_some();
        Mapping {
            buffer,
            region,
            range,
            writable,
            joint,
            dma_buf,
        }
    }

    /// The buffer mapped.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// Length of the mapped range in bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the mapped range is empty (never: empty ranges are refused).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Offset of the range in the buffer.
    pub fn offset(&self) -> usize {
        self.range.start
    }

    /// Whether write windows may be opened.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Address of the buffer's shared mapping in this process.
    pub fn addr(&self) -> usize {
        self.region.addr()
    }

    /// Maps every page of this range into this process's page tables now,
    /// so that the first access to each page in a window does not stop for
    /// a page fault: for a stream's first pass over its buffers, or a
    /// loop that must not stall on its first item (a 16 MiB buffer is 4096
    /// faults on first touch). For a portable buffer (a memfd), a writable
    /// mapping's populate also allocates the pages the memfd lacks, as a
    /// write would. It reads and writes no byte, so it needs no window and
    /// waits for no fence.
    ///
    /// Returns `true` when the pages are mapped now, `false` when the
    /// memory is a dma-buf whose exporter maps its pages itself as raw
    /// page frames, which the kernel does not populate on request (it
    /// answers EINVAL). On Linux 6.12 that is both kernel exporters this
    /// library allocates from: the system heap maps every page at `mmap`
    /// already (no fault later), udmabuf maps one page per fault. Fails,
    /// with the errno, when the kernel cannot populate other memory
    /// (EINVAL: a kernel before 5.14; ENOMEM: the pages cannot be had).
    ///
    /// ```
    /// # fn main() -> dmabuf::Result<()> {
    /// use dmabuf::Allocate;
    /// let map = dmabuf::Portable.allocate(1 << 20, "prefaulted")?.map()?;
    /// assert!(map.populate()?);
    /// map.write()?.fill(1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn populate(&self) -> Result<bool> {
        match self.region.populate(self.range.clone()) {
            Ok(()) => Ok(true),
            Err(Errno::INVAL) if self.buffer.kind().is_dma_buf() => Ok(false),
            Err(Errno::INVAL) => Err(Error::kernel(
                "populate",
                self.buffer.describe(),
                Errno::INVAL,
                "the kernel does not populate mappings on request \
                 (MADV_POPULATE_READ/WRITE need Linux 5.14)",
            )),
            Err(e) => Err(Error::os("populate", self.buffer.describe(), e)),
        }
    }

    /// Opens a read window on the whole mapping (waits for writers).
    pub fn read(&self) -> Result<Window<'_, ReadOnly>> {
        self.window(0..self.len(), None)
    }

    /// Opens a write window on the whole mapping (waits for everyone).
    pub fn write(&self) -> Result<Window<'_, WriteOnly>> {
        self.window(0..self.len(), None)
    }

    /// Opens a read-write window on the whole mapping.
    pub fn read_write(&self) -> Result<Window<'_, ReadWrite>> {
        self.window(0..self.len(), None)
    }

    /// Opens a window of mode `M` on `range` (relative to the mapping),
    /// waiting at most `timeout` (`None`: no limit) for the fences in the
    /// way: the library's, then, for dma-bufs, the kernel's (polled before
    /// `START`, which would wait for them without limit). A
    /// [`ErrorKind::Busy`] error names the fence still active at the
    /// deadline; one is also returned, at once, for a window past the
    /// 16 383rd of its kind (read, or writing) open on one buffer.
    pub fn window<M: WindowMode>(
        &self,
        range: Range<usize>,
        timeout: Option<Duration>,
    ) -> Result<Window<'_, M>> {
        self.window_excluding(range, timeout.map(|t| Instant::now() + t), &|_| false)
    }

    /// [`Mapping::window`] until `deadline`, not waiting for the fences
    /// `skip` says yes to: an endpoint's copy worker skips its own
    /// transfers' fences, which its queue already orders (it would
    /// otherwise wait for itself).
    pub(crate) fn window_excluding<M: WindowMode>(
        &self,
        range: Range<usize>,
        deadline: Option<Instant>,
        skip: &dyn Fn(&crate::fence::Fence) -> bool,
    ) -> Result<Window<'_, M>> {
        let access = M::ACCESS;
        let op = "open CPU window";
        let obj = || self.buffer.describe();
        // The clock is read for the event only when it will be recorded.
        #[cfg(feature = "tracing")]
        let started = tracing::enabled!(tracing::Level::TRACE).then(Instant::now);
        if range.start > range.end || range.end > self.len() {
            return Err(Error::invalid(
                op,
                obj(),
                format!(
                    "range {}..{} is outside the mapping (0..{})",
                    range.start,
                    range.end,
                    self.len()
                ),
            ));
        }
        if access.writes() && !self.writable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                op,
                obj(),
                "the mapping is read-only",
            )
            .with_errno(Errno::ACCESS));
        }
        let abs = self.range.start + range.start..self.range.start + range.end;
        // A window on the whole of a plain buffer (or of a udmabuf made
        // here over all of one memfd) with no fence listed: its claim of
        // the bytes and its count in the reservation in one
        // compare-and-swap of the word they share (see `sys::object`).
        // Anything else (or a claim in the way, or a rule that refuses it)
        // takes the two steps below, which wait or name the cause.
        let joint = self.joint.as_ref().and_then(|memory| {
            let opened = Reservation::window_opened(access, self.dma_buf);
            memory.claim_whole_with(&self.region, abs.clone(), access.writes(), opened)
        });
        let bytes = match joint {
            Some(b) => b,
            None => {
                // Ordering: check for fences and register the window in
                // one step (see `begin_window`), before taking the bytes.
                begin_window(&self.buffer, access, deadline, skip)?;
                let memory = self.buffer.memory_object();
                match memory.borrow(&self.region, abs.clone(), access.writes()) {
                    Ok(b) => b,
                    Err(e) => {
                        self.buffer.reservation().cpu_end(access);
                        return Err(borrow_error(e, op, obj(), &abs));
                    }
                }
            }
        };
        // From here on, dropping `window` undoes what was done.
        let mut window = Window {
            mapping: self,
            bytes: Some(bytes),
            started: false,
            _mode: PhantomData,
        };
        if self.dma_buf {
            if let Some(d) = self.buffer.dma_buf() {
                sync_start(d, access, deadline, &obj)?;
            }
        }
        window.started = true;
        trace_event!(
            TRACE,
            buffer = %obj(),
            access = %access,
            range = ?abs,
            waited_us = started.map_or(0, |s| s.elapsed().as_micros() as u64),
            "CPU window opened"
        );
        Ok(window)
    }
}

// ---------------------------------------------------------------------
// Mapping a buffer. These methods of `Buffer` live here, next to what
// they make, so that `buffer` does not depend on `mapping` (no import
// cycle): a mapping needs its buffer, a buffer does not need this module.
// ---------------------------------------------------------------------

impl Buffer {
    /// Maps the whole buffer, read-write if the buffer is writable.
    pub fn map(&self) -> Result<Mapping> {
        self.map_range(0..self.size(), self.is_writable())
    }

    /// Maps the whole buffer for reading only.
    pub fn map_read_only(&self) -> Result<Mapping> {
        self.map_range(0..self.size(), false)
    }

    /// Maps `range` of the buffer (its start page-aligned, not empty, not
    /// past the end), writable if `writable`.
    pub fn map_range(&self, range: Range<u64>, writable: bool) -> Result<Mapping> {
        let page = sys::mem::page_size() as u64;
        if range.start >= range.end {
            return Err(Error::invalid(
                "map",
                self.describe(),
                format!("range {}..{} is empty", range.start, range.end),
            ));
        }
        if range.start % page != 0 {
            return Err(Error::invalid(
                "map",
                self.describe(),
                format!(
                    "offset {} is not a multiple of the page size {page}",
                    range.start
                ),
            ));
        }
        if range.end > self.size() {
            return Err(Error::invalid(
                "map",
                self.describe(),
                format!(
                    "range {}..{} goes past the end of the buffer ({} bytes)",
                    range.start,
                    range.end,
                    self.size()
                ),
            ));
        }
        if writable && !self.is_writable() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "map",
                self.describe(),
                "the buffer is read-only; map it with map_read_only()",
            )
            .with_errno(Errno::ACCESS));
        }
        let region = self.shared_region()?;
        Ok(Mapping::new(
            self.clone(),
            region,
            range.start as usize..range.end as usize,
            writable,
        ))
    }

    /// The memory's one mapping, made on first use and shared by every
    /// handle on the memory until the last user drops it (made anew,
    /// writable, if the one there is read-only and this handle may write).
    fn shared_region(&self) -> Result<Arc<Region>> {
        let len = usize::try_from(self.size()).map_err(|_| {
            Error::invalid("map", self.describe(), "too large for this address space")
        })?;
        self.memory_object()
            .region(self.fd(), len, self.is_writable())
            .map_err(|e| match e {
                Errno::INVAL if self.kind().is_dma_buf() => Error::kernel(
                    "mmap",
                    self.describe(),
                    e,
                    "the exporter refused the mapping (it may not support mmap)",
                ),
                e => Error::os("mmap", self.describe(), e),
            })
    }

    /// Maps the buffer, opens a write window on all of it, runs `f` on its
    /// bytes and closes the window, returning `END`'s error if it fails:
    /// the one-shot way to write a buffer.
    ///
    /// ```
    /// # fn main() -> dmabuf::Result<()> {
    /// let buf = dmabuf::Allocator::auto().allocate(4096, "once")?;
    /// buf.write_with(|mut bytes| bytes.fill(7))?;
    /// assert_eq!(buf.read_with(|bytes| bytes.get(100))?, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub fn write_with<R>(&self, f: impl FnOnce(VolatileBytesMut<'_>) -> R) -> Result<R> {
        let map = self.map()?;
        let mut w = map.write()?;
        let r = f(w.bytes_mut());
        w.end()?;
        Ok(r)
    }

    /// Maps the buffer, opens a read window on all of it (waiting for
    /// writers), runs `f` on its bytes and closes the window: the one-shot
    /// way to read a buffer.
    pub fn read_with<R>(&self, f: impl FnOnce(VolatileBytes<'_>) -> R) -> Result<R> {
        let map = self.map_read_only()?;
        let r = map.read()?;
        let out = f(r.bytes());
        r.end()?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------
// Ordering: the window's part of the reservation protocol. Kept apart
// from how the bytes are handed out.
// ---------------------------------------------------------------------

/// Registers a CPU window of `access` on `buffer` in one step with the
/// check that no fence it must wait for is left (waiting for those,
/// until `deadline`, before registering; see `reservation`). On a
/// dma-buf, windows that read and windows that write are kept apart
/// (`SYNC` has no range). Undone by `Reservation::cpu_end`.
fn begin_window(
    buffer: &Buffer,
    access: Access,
    deadline: Option<Instant>,
    skip: &dyn Fn(&crate::fence::Fence) -> bool,
) -> Result<()> {
    buffer.reservation().cpu_begin(
        access,
        buffer.dma_buf().is_some(),
        deadline,
        &|| buffer.describe(),
        skip,
    )
}

/// `DMA_BUF_IOCTL_SYNC START` for `access`, bounded: the kernel waits in
/// `START` for its fences without limit, so with a deadline the dma-buf
/// is first polled for idleness (`POLLIN` for a read, `POLLOUT` for a
/// write) until then, and a [`ErrorKind::Busy`] error names the kernel
/// fence still in the way. Without a deadline, `START` waits as long as
/// the kernel does.
fn sync_start(
    d: &DmaBuf,
    access: Access,
    deadline: Option<Instant>,
    object: &dyn Fn() -> String,
) -> Result<()> {
    let op = "open CPU window";
    // Only when the event is wanted: the extra zero-timeout poll says
    // whether the window has to wait for the kernel at all.
    #[cfg(feature = "tracing")]
    if deadline.is_some()
        && tracing::enabled!(tracing::Level::DEBUG)
        && !d.poll_idle(access, Some(Instant::now()))?
    {
        trace_event!(
            DEBUG,
            object = %object(),
            access = %access,
            "CPU window waits for the dma-buf's kernel fences"
        );
    }
    if deadline.is_some() && !d.poll_idle(access, deadline)? {
        let name = d
            .export_sync_file(access)
            .map(|s| crate::fence::Fence::from(s).describe())
            .unwrap_or_else(|_| "a kernel fence".into());
        return Err(Error::new(
            ErrorKind::Busy,
            op,
            object(),
            format!(
                "{name} in the dma-buf's reservation is still active at the deadline \
                 (DMA_BUF_IOCTL_SYNC START|{} would wait for it without limit)",
                access.as_str()
            ),
        )
        .with_errno(Errno::BUSY));
    }
    let flags = sys::dma_buf::DMA_BUF_SYNC_START | access.sync_flags();
    loop {
        match sys::dma_buf::sync(d, flags) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => {
                return Err(Error::kernel(
                    op,
                    object(),
                    e,
                    format!("DMA_BUF_IOCTL_SYNC START|{} failed", access.as_str()),
                ))
            }
        }
    }
}

/// The error for a refused borrow of bytes `abs` of the buffer.
fn borrow_error(e: BorrowError, op: &'static str, obj: String, abs: &Range<usize>) -> Error {
    match e {
        BorrowError::Conflict {
            with_exclusive,
            overlap,
            backing,
        } => {
            let kind = if with_exclusive { "write" } else { "read" };
            let cause = match backing {
                None => format!(
                    "a {kind} window overlapping bytes {}..{} is already open (both cover bytes {}..{}; windows of every handle on this memory count)",
                    abs.start, abs.end, overlap.start, overlap.end
                ),
                Some((dev, ino)) => format!(
                    "a {kind} window overlapping bytes {}..{} is already open through the same memfd pages (memfd inode {ino} on device {dev:#x}, bytes {}..{} of it)",
                    abs.start, abs.end, overlap.start, overlap.end
                ),
            };
            Error::new(ErrorKind::Busy, op, obj, cause).with_errno(Errno::BUSY)
        }
        BorrowError::ReadOnly => Error::new(
            ErrorKind::PermissionDenied,
            op,
            obj,
            "the mapping is read-only",
        )
        .with_errno(Errno::ACCESS),
        BorrowError::OutOfBounds => Error::invalid(op, obj, "range outside the mapping"),
    }
}

/// An open CPU-access window: the only holder of the buffer's bytes.
///
/// Its bytes are reached through volatile views ([`Window::bytes`],
/// [`Window::bytes_mut`]) or the copy methods, never as a plain slice (see
/// the module documentation). Closing it ([`Window::end`] or drop) issues `DMA_BUF_IOCTL_SYNC END`.
#[derive(Debug)]
pub struct Window<'a, M: WindowMode> {
    mapping: &'a Mapping,
    bytes: Option<View<'a>>,
    started: bool,
    _mode: PhantomData<M>,
}

impl<M: WindowMode> Window<'_, M> {
    /// The window's access.
    pub fn access(&self) -> Access {
        M::ACCESS
    }

    /// Closes the window, returning `END`'s result.
    pub fn end(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        // Given back where it lies, not moved out first (see
        // `View::release_with`).
        let Some(bytes) = self.bytes.as_mut() else {
            return Ok(());
        };
        let mut result = Ok(());
        if self.started && self.mapping.dma_buf {
            if let Some(d) = self.mapping.buffer.dma_buf() {
                let flags = sys::dma_buf::DMA_BUF_SYNC_END | M::ACCESS.sync_flags();
                let mut r = sys::dma_buf::sync(d, flags);
                while r == Err(Errno::INTR) {
                    r = sys::dma_buf::sync(d, flags);
                }
                result = r.map_err(|e| {
                    Error::kernel(
                        "close CPU window",
                        self.mapping.buffer.describe(),
                        e,
                        format!("DMA_BUF_IOCTL_SYNC END|{} failed", M::ACCESS.as_str()),
                    )
                });
            }
        }
        // The bytes go back and the window is counted closed, in one step
        // where the reservation's word is the memory object's (see
        // `window_excluding`).
        // The reservation is reached (through the buffer's handle) only
        // when a device access waits for this close.
        if self.mapping.joint.is_some() {
            let old = bytes.release_with(Reservation::window_closed(M::ACCESS));
            self.bytes = None;
            if Reservation::waiters_in(old) {
                self.mapping.buffer.reservation().window_ended(old);
            }
        } else {
            self.bytes = None;
            self.mapping.buffer.reservation().cpu_end(M::ACCESS);
        }
        trace_event!(
            TRACE,
            buffer = %self.mapping.buffer.describe(),
            access = %M::ACCESS,
            ok = result.is_ok(),
            "CPU window closed"
        );
        result
    }
}

impl<M: WindowMode> Window<'_, M> {
    /// The window's bytes, for volatile reads.
    pub fn bytes(&self) -> VolatileBytes<'_> {
        match self.bytes.as_ref() {
            Some(v) => v.bytes(),
            None => VolatileBytes::empty(),
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Byte `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u8> {
        self.bytes().get(i)
    }

    /// Copies `dst.len()` bytes from `offset` of the window into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.bytes()
            .read_at(offset, dst)
            .map_err(|e| self.out_of_range("read from CPU window", e))
    }

    /// Copies the first `min(self.len(), dst.len())` bytes into `dst`;
    /// returns how many.
    pub fn copy_to_slice(&self, dst: &mut [u8]) -> usize {
        self.bytes().copy_to_slice(dst)
    }

    /// The window's bytes, copied into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }

    fn out_of_range(&self, op: &'static str, e: OutOfRange) -> Error {
        Error::invalid(op, self.mapping.buffer.describe(), e.to_string())
    }
}

impl<M: Writable> Window<'_, M> {
    /// The window's bytes, for volatile reads and writes.
    pub fn bytes_mut(&mut self) -> VolatileBytesMut<'_> {
        // Writable modes always borrow exclusively.
        self.bytes
            .as_mut()
            .and_then(View::bytes_mut)
            .unwrap_or_else(VolatileBytesMut::empty)
    }

    /// Sets byte `i`; false past the end.
    pub fn set(&mut self, i: usize, value: u8) -> bool {
        self.bytes_mut().set(i, value)
    }

    /// Copies `src` into the window from `offset`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        let r = self.bytes_mut().write_at(offset, src);
        r.map_err(|e| self.out_of_range("write to CPU window", e))
    }

    /// Copies the first `min(self.len(), src.len())` bytes of `src` in;
    /// returns how many.
    pub fn copy_from_slice(&mut self, src: &[u8]) -> usize {
        self.bytes_mut().copy_from_slice(src)
    }

    /// Sets every byte of the window to `value`.
    pub fn fill(&mut self, value: u8) {
        self.bytes_mut().fill(value)
    }
}

impl<M: WindowMode> Drop for Window<'_, M> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{portable::Portable, Allocate};
    use crate::fence::{Fence, UserFence};
    use crate::reservation::DeviceAccess;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn claims_and_window_counts_share_one_word_and_leave_it_as_they_found_it() {
        let buffer = Portable.allocate(4096, "one-word").unwrap();
        let map = buffer.map().unwrap();
        let memory = buffer.memory_object().clone();
        let res = buffer.reservation();
        assert!(res.shares_word_of(&memory));
        assert_eq!(memory.word().load(Ordering::SeqCst), 0);
        // Whole windows (one step each): counted and claimed.
        let r1 = map.read().unwrap();
        let r2 = map.read().unwrap();
        assert_eq!((res.cpu_windows(), memory.live_borrows()), ((2, 0), 2));
        let e = map.write().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert_eq!(res.cpu_windows(), (2, 0), "a refused window is not counted");
        // A window on part of the buffer is recorded on the list, and a
        // whole one then takes the two steps: all are counted alike.
        let part = map.window::<ReadOnly>(0..100, None).unwrap();
        let r3 = map.read().unwrap();
        assert_eq!((res.cpu_windows(), memory.live_borrows()), ((4, 0), 4));
        drop((r1, part));
        drop(r2);
        drop(r3);
        assert_eq!((res.cpu_windows(), memory.live_borrows()), ((0, 0), 0));
        // A write window, then nothing: every bit is back where it was.
        let w = map.write().unwrap();
        assert_eq!((res.cpu_windows(), memory.live_borrows()), ((0, 1), 1));
        assert_ne!(memory.word().load(Ordering::SeqCst), 0);
        assert_eq!(map.read().unwrap_err().kind(), ErrorKind::Busy);
        drop(w);
        assert_eq!(memory.word().load(Ordering::SeqCst), 0);
        // A listed fence sends whole windows the usual way (they wait for
        // it), and settles again once it has signalled.
        let f = UserFence::new().unwrap();
        res.add(Fence::User(f.clone()), crate::access::Usage::Write);
        let e = map
            .window::<ReadOnly>(0..4096, Some(Duration::from_millis(20)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        f.signal().unwrap();
        drop(map.read().unwrap());
        assert_eq!(memory.word().load(Ordering::SeqCst), 0);
    }

    #[test]
    fn whole_windows_and_device_transfers_never_overlap_under_contention() {
        // Three threads open and close windows on the whole buffer (one
        // compare-and-swap each way), two reading and one writing (their
        // claims refuse each other now and then), as fast as they can
        // while a fourth publishes write transfers on the buffer's
        // reservation: no window is ever open while a transfer's fence is
        // active.
        let buffer = Portable.allocate(4096, "contention").unwrap();
        let active = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = [false, false, true]
            .into_iter()
            .map(|write| {
                let (buffer, active, stop) = (buffer.clone(), active.clone(), stop.clone());
                std::thread::spawn(move || {
                    let map = buffer.map().unwrap();
                    let mut opened = 0u64;
                    let long = Some(Duration::from_secs(10));
                    while !stop.load(Ordering::SeqCst) {
                        let check =
                            || assert!(!active.load(Ordering::SeqCst), "open in a transfer");
                        // The other kind's claim refuses a window now and
                        // then (Busy): not counted.
                        let got = if write {
                            map.window::<WriteOnly>(0..4096, long)
                                .map(|w| drop((check(), w)))
                        } else {
                            map.window::<ReadOnly>(0..4096, long)
                                .map(|r| drop((check(), r)))
                        };
                        match got {
                            Ok(()) => opened += 1,
                            Err(e) => assert_eq!(e.kind(), ErrorKind::Busy, "{e}"),
                        }
                    }
                    opened
                })
            })
            .collect();
        let res = buffer.reservation();
        for _ in 0..300 {
            let f = UserFence::new().unwrap();
            let access = DeviceAccess {
                op: "transfer",
                object: "test",
                access: Access::Write,
                deadline: Some(Instant::now() + Duration::from_secs(10)),
                dma_buf: None,
                skip: &|_| false,
            };
            res.begin_device(Fence::User(f.clone()), access).unwrap();
            active.store(true, Ordering::SeqCst);
            assert_eq!(res.cpu_windows(), (0, 0), "a window open in a transfer");
            std::thread::yield_now();
            assert_eq!(res.cpu_windows(), (0, 0), "a window opened in a transfer");
            active.store(false, Ordering::SeqCst);
            f.signal().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            assert!(t.join().unwrap() > 0, "windows were opened meanwhile");
        }
        // Signalled fences stay listed (their flag up) until pruned.
        assert!(res.is_empty());
        assert_eq!(buffer.memory_object().word().load(Ordering::SeqCst), 0);
    }
}

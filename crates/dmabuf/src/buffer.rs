//! Buffers: kernel dma-bufs and portable memfd buffers, behind one API.
//!
//! # DOC: buffers
//!
//! A [`DmaBuf`] (see the `dma_buf` module) is the thin handle on a kernel
//! dma-buf fd. A [`Buffer`] is what programs use: memory of one of three kinds (a DMA
//! heap's dma-buf, a udmabuf made of memfd pages, or a *portable* sealed
//! memfd on kernels that offer neither), with the same rules for all:
//!
//! * the bytes are reached only through a [`Mapping`](crate::Mapping) and a
//!   CPU-access [`Window`](crate::Window) (see the `mapping` module);
//! * one piece of memory has one identity in the process, named by the
//!   kernel's `(st_dev, st_ino)` of its file: every handle on it — a
//!   [`Buffer`] clone, [`Buffer::from_fd`] of a dup'd fd or of a reopened
//!   `/proc/self/fd` path, [`Buffer::from_dma_buf`] of a
//!   [`DmaBuf::try_clone`], a buffer received over a channel while this
//!   process already has it open — shares one mapping, one registry of
//!   open windows and one [`Reservation`]. A window opened through one
//!   handle conflicts with windows opened through any other
//!   ([`ErrorKind::Busy`], naming the bytes in the way), and
//!   [`Buffer::same_as`] says true for all of them;
//! * writability is per handle: a handle on an fd opened read-only (or a
//!   memfd sealed against writing) gets no writable mapping and no write
//!   window, even while another handle on the same memory writes;
//! * the memory is mapped into the process at most once at a time; every
//!   mapping handle, range and window shares that one mapping
//!   (refcounted), which is unmapped when the last user drops it — the
//!   idea of the kernel's `vmap`/`vmap_local`, for user space. If the
//!   mapping there is read-only (made for a read-only handle) and a
//!   writable handle maps, a second, writable mapping is made; windows are
//!   still counted per byte of the memory, whichever mapping serves them;
//! * it has a [`Reservation`] of fences and CPU windows that orders CPU,
//!   devices and other processes (see the `reservation` module), combined
//!   with the kernel's own for dma-bufs.
//!
//! What this identity covers, and what it cannot: it is per process, and
//! per file. Two different files showing the same pages — two udmabufs
//! over one memfd range, a udmabuf and its memfd — are tied together only
//! for udmabufs this process made (see the `alloc::udmabuf` module: it records
//! their memfd pages, and a list repeating pages is refused). Memory mapped
//! outside the library, and windows of other processes or devices, are not
//! seen by the registry: against those the library relies on fences and
//! the window protocol, and reads and writes the bytes only with volatile
//! accesses (see the `mapping` module), so what they do is never undefined
//! behaviour here.
//!
//! A portable buffer is a memfd named `dmabuf-portable:<name>`, sealed
//! against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW`), so that a
//! process it is shared with can never be killed by `SIGBUS` through a
//! truncation. Its name is kept by the library (a memfd cannot be renamed).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rustix::fs::{fcntl_get_seals, SealFlags};

use crate::access::{Access, Usage};
use crate::dma_buf::{check_name, fd_object, DmaBuf};
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::Fence;
use crate::reservation::Reservation;
use crate::sys;
use crate::sys::object::MemoryObject;

pub use crate::procfs::PORTABLE_MEMFD_PREFIX;

/// What memory a [`Buffer`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "detail")]
#[non_exhaustive]
pub enum BufferKind {
    /// A dma-buf from the DMA heap of this name.
    Heap(String),
    /// A dma-buf made of memfd pages by `/dev/udmabuf`.
    Udmabuf,
    /// A sealed memfd, for kernels without a dma-buf exporter.
    Portable,
    /// A dma-buf from another exporter (received or imported), by its
    /// exporter name.
    Imported(String),
}

impl BufferKind {
    /// Whether the memory is a kernel dma-buf.
    pub fn is_dma_buf(&self) -> bool {
        !matches!(self, BufferKind::Portable)
    }
}

impl fmt::Display for BufferKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferKind::Heap(h) => write!(f, "heap:{h}"),
            BufferKind::Udmabuf => f.write_str("udmabuf"),
            BufferKind::Portable => f.write_str("portable"),
            BufferKind::Imported(e) => write!(f, "dma-buf:{e}"),
        }
    }
}

#[derive(Debug)]
enum Memory {
    DmaBuf(DmaBuf),
    Memfd(OwnedFd),
}

impl Memory {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Memory::DmaBuf(d) => d.as_fd(),
            Memory::Memfd(m) => m.as_fd(),
        }
    }
}

static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// A buffer of any kind; cheap to clone (a shared handle).
///
/// See the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Buffer {
    inner: Arc<Inner>,
}

/// What every handle on one piece of memory shares, once per process: the
/// memory object (mapping and borrow registry, `sys::object`) and the
/// reservation.
#[derive(Debug)]
struct Object {
    memory: Arc<MemoryObject>,
    reservation: Reservation,
}

impl Object {
    /// The one `Object` of `memory` in this process.
    fn of(memory: &Arc<MemoryObject>) -> Arc<Object> {
        static OBJECTS: OnceLock<Mutex<HashMap<u64, Weak<Object>>>> = OnceLock::new();
        let mut map = OBJECTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(o) = map.get(&memory.id()).and_then(Weak::upgrade) {
            return o;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let o = Arc::new(Object {
            memory: memory.clone(),
            // In the memory object's word: a window on the whole buffer
            // claims its bytes and counts itself open in one step.
            reservation: Reservation::on(memory.clone()),
        });
        map.insert(memory.id(), Arc::downgrade(&o));
        o
    }
}

#[derive(Debug)]
struct Inner {
    id: u64,
    memory: Memory,
    kind: BufferKind,
    size: u64,
    writable: bool,
    name: Mutex<String>,
    object: Arc<Object>,
}

impl Buffer {
    fn build(
        memory: Memory,
        object: &Arc<MemoryObject>,
        kind: BufferKind,
        size: u64,
        writable: bool,
        name: String,
    ) -> Buffer {
        Buffer {
            inner: Arc::new(Inner {
                id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
                memory,
                kind,
                size,
                writable,
                name: Mutex::new(name),
                object: Object::of(object),
            }),
        }
    }

    /// A buffer on a kernel dma-buf of known kind (allocators use this).
    pub fn from_dma_buf_of_kind(dmabuf: DmaBuf, kind: BufferKind) -> Buffer {
        let name = dmabuf.name().ok().flatten().unwrap_or_default();
        let (size, writable) = (dmabuf.size(), dmabuf.is_writable());
        let object = dmabuf.memory_object().clone();
        Buffer::build(Memory::DmaBuf(dmabuf), &object, kind, size, writable, name)
    }

    /// A buffer on a kernel dma-buf; the kind comes from its exporter name
    /// (`udmabuf` → [`BufferKind::Udmabuf`], a present heap's name →
    /// [`BufferKind::Heap`], else [`BufferKind::Imported`]).
    pub fn from_dma_buf(dmabuf: DmaBuf) -> Buffer {
        let exporter = dmabuf.exporter().unwrap_or_default();
        let kind = if exporter == "udmabuf" {
            BufferKind::Udmabuf
        } else if !exporter.is_empty()
            && std::path::Path::new(sys::dma_heap::DMA_HEAP_DIR)
                .join(&exporter)
                .exists()
        {
            BufferKind::Heap(exporter)
        } else {
            BufferKind::Imported(exporter)
        };
        Buffer::from_dma_buf_of_kind(dmabuf, kind)
    }

    /// A portable buffer on `memfd`, which must be sealed against
    /// shrinking and growing (so nobody can truncate it under a mapping).
    pub fn from_memfd(memfd: OwnedFd, name: &str) -> Result<Buffer> {
        let obj = format!("memfd {}", memfd.as_raw_fd());
        let seals = fcntl_get_seals(&memfd).map_err(|e| {
            Error::kernel(
                "portable buffer",
                obj.clone(),
                e,
                "not a memfd (cannot read its seals)",
            )
        })?;
        let missing: Vec<&str> = [
            (SealFlags::SHRINK, "F_SEAL_SHRINK"),
            (SealFlags::GROW, "F_SEAL_GROW"),
        ]
        .iter()
        .filter(|(s, _)| !seals.contains(*s))
        .map(|(_, n)| *n)
        .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(
                "portable buffer",
                obj,
                format!(
                    "memfd lacks {}: its owner could truncate it and readers would die of SIGBUS",
                    missing.join(" and ")
                ),
            ));
        }
        let st =
            rustix::fs::fstat(&memfd).map_err(|e| Error::os("portable buffer", obj.clone(), e))?;
        if st.st_size <= 0 {
            return Err(Error::invalid("portable buffer", obj, "memfd is empty"));
        }
        let mode = rustix::fs::fcntl_getfl(&memfd)
            .map_err(|e| Error::os("portable buffer", obj.clone(), e))?;
        if (mode & rustix::fs::OFlags::ACCMODE) == rustix::fs::OFlags::WRONLY {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "portable buffer",
                obj,
                "memfd is open write-only: it could never be mapped (a mapping needs read access)",
            )
            .with_errno(Errno::ACCESS));
        }
        let writable = !seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE)
            && (mode & rustix::fs::OFlags::ACCMODE) != rustix::fs::OFlags::RDONLY;
        let object =
            MemoryObject::intern(&memfd).map_err(|e| Error::os("portable buffer", obj, e))?;
        Ok(Buffer::build(
            Memory::Memfd(memfd),
            &object,
            BufferKind::Portable,
            st.st_size as u64,
            writable,
            name.to_string(),
        ))
    }

    /// Wraps any fd: a dma-buf, or a sealed memfd (portable). Anything
    /// else is refused.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Buffer> {
        let obj = fd_object(fd.as_fd());
        let st = rustix::fs::fstatfs(&fd).map_err(|e| Error::os("buffer", obj.clone(), e))?;
        if st.f_type as i64 == sys::dma_buf::DMA_BUF_MAGIC {
            return Ok(Buffer::from_dma_buf(DmaBuf::from_fd(fd)?));
        }
        if fcntl_get_seals(&fd).is_ok() {
            return Buffer::from_memfd(fd, name);
        }
        Err(Error::invalid(
            "buffer",
            obj,
            "neither a dma-buf nor a sealed memfd",
        ))
    }

    /// A process-unique id (for messages and pools).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// What memory this is.
    pub fn kind(&self) -> &BufferKind {
        &self.inner.kind
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Whether the buffer can be written by this process.
    pub fn is_writable(&self) -> bool {
        self.inner.writable
    }

    /// The name (empty if none).
    pub fn name(&self) -> String {
        self.inner
            .name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the name: at most 31 bytes, no NUL. For dma-bufs the kernel's
    /// name is set too (`DMA_BUF_SET_NAME`, shown in fdinfo and maps).
    pub fn set_name(&self, name: &str) -> Result<()> {
        check_name(name, &self.describe())?;
        if let Memory::DmaBuf(d) = &self.inner.memory {
            d.set_name(name)?;
        }
        *self.inner.name.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
        Ok(())
    }

    /// "buffer 'name' (kind, N bytes)" for messages.
    pub fn describe(&self) -> String {
        let name = self.name();
        let name = if name.is_empty() {
            format!("#{}", self.id())
        } else {
            format!("'{name}'")
        };
        format!("buffer {name} ({}, {} bytes)", self.kind(), self.size())
    }

    /// The fd of the memory (dma-buf or memfd).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.memory.fd()
    }

    /// A dup of the fd, to hand to a device or another process.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup", self.describe(), e))
    }

    /// The kernel dma-buf, for kinds that are one.
    pub fn dma_buf(&self) -> Option<&DmaBuf> {
        match &self.inner.memory {
            Memory::DmaBuf(d) => Some(d),
            Memory::Memfd(_) => None,
        }
    }

    /// The library's reservation of this buffer (user fences, CPU
    /// windows): one per piece of memory in this process, shared by every
    /// handle on it.
    pub fn reservation(&self) -> &Reservation {
        &self.inner.object.reservation
    }

    /// Whether `other` is a handle on the same memory (the same buffer,
    /// however each handle was made: clone, dup'd fd, received fd).
    pub fn same_as(&self, other: &Buffer) -> bool {
        Arc::ptr_eq(&self.inner.object, &other.inner.object)
    }

    /// The process-wide identity of the memory.
    pub(crate) fn memory_object(&self) -> &Arc<MemoryObject> {
        &self.inner.object.memory
    }

    /// Whether the memory is mapped into this process now, and where.
    pub fn mapped_at(&self) -> Option<usize> {
        self.memory_object().current_region().map(|r| r.addr())
    }

    /// Waits until the buffer is idle for `access` (a read waits for
    /// writers, a write for everyone): the library's fences, then the
    /// kernel's (`poll`). Gives a [`ErrorKind::TimedOut`] error naming
    /// what is still busy after `timeout`.
    pub fn wait_idle(&self, access: Access, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.reservation()
            .wait(access, deadline, &self.describe())
            .map_err(|e| {
                if e.kind() == ErrorKind::Busy {
                    e.with_kind(ErrorKind::TimedOut).with_errno(Errno::TIMEDOUT)
                } else {
                    e
                }
            })?;
        if let Some(d) = self.dma_buf() {
            if !d.poll_idle(access, deadline)? {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "wait for buffer",
                    self.describe(),
                    format!(
                        "kernel fences for {} access still pending after {:?}",
                        access.as_str(),
                        timeout.unwrap_or_default()
                    ),
                )
                .with_errno(Errno::TIMEDOUT));
            }
        }
        Ok(())
    }

    /// Whether the buffer is idle for `access` now.
    pub fn is_idle(&self, access: Access) -> Result<bool> {
        match self.wait_idle(access, Some(Duration::ZERO)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One fence covering what `access` must wait for: the library's
    /// fences merged with the kernel's (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`).
    pub fn export_fence(&self, access: Access) -> Result<Fence> {
        let mut fences = self.reservation().fences_for(access);
        if let Some(d) = self.dma_buf() {
            fences.push(Fence::from(d.export_sync_file(access)?));
        }
        Fence::merge(fences)
    }

    /// Adds `fence` to the buffer for `usage`: kernel fences of dma-bufs go
    /// into the kernel's reservation (so drivers and other processes see
    /// them), everything else into the library's.
    pub fn add_fence(&self, fence: Fence, usage: Usage) -> Result<()> {
        match (&fence, self.dma_buf()) {
            (Fence::Signalled, _) => Ok(()),
            (Fence::Kernel(s), Some(d)) => d.import_sync_file(s, usage),
            (Fence::All(v), _) => {
                for f in v.iter() {
                    self.add_fence(f.clone(), usage)?;
                }
                Ok(())
            }
            _ => {
                self.reservation().add(fence, usage);
                Ok(())
            }
        }
    }
}

impl AsFd for Buffer {
    /// The fd of the memory (dma-buf or memfd), as [`Buffer::fd`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl TryFrom<OwnedFd> for Buffer {
    type Error = Error;

    /// [`Buffer::from_fd`] with no name: a dma-buf or a sealed memfd,
    /// anything else refused.
    fn try_from(fd: OwnedFd) -> Result<Buffer> {
        Buffer::from_fd(fd, "")
    }
}

impl fmt::Display for Buffer {
    /// `buffer 'name' (kind, N bytes)`, as in error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

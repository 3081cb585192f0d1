//! The thin, checked handle on a kernel dma-buf fd.
//!
//! # DOC: dma-buf handles
//!
//! A [`DmaBuf`] refuses fds that are not dma-bufs (filesystem magic
//! `0x444d4142`), and reports the buffer's size, inode, exporter and name
//! (from `/proc/self/fdinfo`). It speaks to the dma-buf's own (kernel)
//! reservation — export and import of sync files, `poll` for idleness —
//! and nothing else: the CPU windows, the library's reservation and the
//! one identity per piece of memory are [`Buffer`](crate::Buffer)'s.
//!
//! It is a module of its own, below `buffer` and `reservation`, because
//! both use it (a device access polls the kernel's reservation) and a
//! buffer has a reservation: kept in `buffer`, the two would import each
//! other.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use rustix::event::PollFlags;
use rustix::fs::SeekFrom;

use crate::access::{Access, Usage};
use crate::error::{Errno, Error, Result};
use crate::fence::{poll_events, SyncFile};
use crate::procfs::{parse_fdinfo, FdInfo};
use crate::sys;
use crate::sys::object::MemoryObject;

/// Longest buffer name, in bytes (the kernel's `DMA_BUF_NAME_LEN` less the
/// NUL).
pub const MAX_NAME_LEN: usize = sys::dma_buf::DMA_BUF_NAME_LEN - 1;

pub(crate) fn fd_object(fd: BorrowedFd<'_>) -> String {
    format!("fd {}", fd.as_raw_fd())
}

/// A kernel dma-buf fd: the thin, checked handle.
#[derive(Debug)]
pub struct DmaBuf {
    fd: OwnedFd,
    size: u64,
    inode: u64,
    writable: bool,
    object: Arc<MemoryObject>,
}

impl DmaBuf {
    /// Takes ownership of `fd` after checking it is a dma-buf (filesystem
    /// magic), and reads its size and inode.
    pub fn from_fd(fd: OwnedFd) -> Result<DmaBuf> {
        let obj = fd_object(fd.as_fd());
        let st = rustix::fs::fstatfs(&fd).map_err(|e| Error::os("dma-buf", obj.clone(), e))?;
        if st.f_type as i64 != sys::dma_buf::DMA_BUF_MAGIC {
            return Err(Error::invalid(
                "dma-buf",
                obj,
                format!(
                    "not a dma-buf (filesystem magic {:#x}, dma-bufs have {:#x})",
                    st.f_type,
                    sys::dma_buf::DMA_BUF_MAGIC
                ),
            ));
        }
        let size = rustix::fs::seek(&fd, SeekFrom::End(0))
            .map_err(|e| Error::kernel("dma-buf", obj.clone(), e, "cannot read the size"))?;
        let _ = rustix::fs::seek(&fd, SeekFrom::Start(0));
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::os("dma-buf", obj.clone(), e))?;
        let mode =
            rustix::fs::fcntl_getfl(&fd).map_err(|e| Error::os("dma-buf", obj.clone(), e))?;
        let acc = mode & rustix::fs::OFlags::ACCMODE;
        let writable = acc == rustix::fs::OFlags::RDWR || acc == rustix::fs::OFlags::WRONLY;
        let object = MemoryObject::intern(&fd).map_err(|e| Error::os("dma-buf", obj, e))?;
        Ok(DmaBuf {
            fd,
            size,
            inode: stat.st_ino,
            writable,
            object,
        })
    }

    fn object(&self) -> String {
        format!("dma-buf fd {} (inode {})", self.fd.as_raw_fd(), self.inode)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The buffer's unique inode number (the key of fdinfo, maps, sysfs).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether the fd was opened for writing (heap buffers can be
    /// allocated read-only).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The fdinfo of this fd (exporter, name, count…).
    pub fn fdinfo(&self) -> Result<FdInfo> {
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd());
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::io("dma-buf fdinfo", path, e))?;
        Ok(parse_fdinfo(&text))
    }

    /// The exporter's name (`"udmabuf"`, `"system"`…).
    pub fn exporter(&self) -> Result<String> {
        Ok(self.fdinfo()?.exp_name.unwrap_or_default())
    }

    /// The buffer's name, if one was set.
    pub fn name(&self) -> Result<Option<String>> {
        Ok(self.fdinfo()?.name)
    }

    /// Sets the name (`DMA_BUF_SET_NAME`): at most 31 bytes, no NUL.
    pub fn set_name(&self, name: &str) -> Result<()> {
        check_name(name, &self.object())?;
        sys::dma_buf::set_name(&self.fd, name)
            .map_err(|e| Error::os("dma-buf set name", self.object(), e))
    }

    /// A second handle on the same buffer (dup'd fd, close-on-exec).
    pub fn try_clone(&self) -> Result<DmaBuf> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup", self.object(), e))?;
        Ok(DmaBuf {
            fd,
            size: self.size,
            inode: self.inode,
            writable: self.writable,
            object: self.object.clone(),
        })
    }

    /// A sync file of the buffer's kernel fences that `access` must wait
    /// for (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`): the writers for a read, all
    /// for a write. With no fences the kernel returns a signalled fence.
    pub fn export_sync_file(&self, access: Access) -> Result<SyncFile> {
        let fd = sys::dma_buf::export_sync_file(&self.fd, access.sync_flags() as u32)
            .map_err(|e| Error::os("dma-buf export sync file", self.object(), e))?;
        Ok(SyncFile::from_fd_unchecked(fd))
    }

    /// Adds the fence of `sync_file` to the buffer's kernel reservation
    /// (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`), as a writer or a reader.
    pub fn import_sync_file(&self, sync_file: &SyncFile, usage: Usage) -> Result<()> {
        let flags = usage.sync_flags() as u32;
        sys::dma_buf::import_sync_file(&self.fd, flags, sync_file).map_err(|e| match e {
            Errno::INVAL => Error::kernel(
                "dma-buf import sync file",
                self.object(),
                e,
                "the fd is not a sync file (or bad flags)",
            ),
            e => Error::os("dma-buf import sync file", self.object(), e),
        })
    }

    /// Waits until the kernel's fences that `access` must wait for have
    /// signalled, by polling the fd (`POLLIN` for a read: writers done;
    /// `POLLOUT` for a write: everyone done). False on timeout.
    pub fn poll_idle(&self, access: Access, deadline: Option<Instant>) -> Result<bool> {
        let events = if access.writes() {
            PollFlags::OUT
        } else {
            PollFlags::IN
        };
        let got = poll_events(self.fd.as_fd(), events, deadline)
            .map_err(|e| Error::os("dma-buf idle wait", self.object(), e))?;
        if got.contains(PollFlags::ERR) {
            return Err(Error::kernel(
                "dma-buf idle wait",
                self.object(),
                Errno::IO,
                "the buffer has no reservation (POLLERR)",
            ));
        }
        Ok(got.intersects(events))
    }

    /// Gives up the fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The process-wide identity of the memory.
    pub(crate) fn memory_object(&self) -> &Arc<MemoryObject> {
        &self.object
    }
}

impl AsFd for DmaBuf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl TryFrom<OwnedFd> for DmaBuf {
    type Error = Error;

    /// [`DmaBuf::from_fd`]: refuses an fd that is not a dma-buf.
    fn try_from(fd: OwnedFd) -> Result<DmaBuf> {
        DmaBuf::from_fd(fd)
    }
}

impl From<DmaBuf> for OwnedFd {
    fn from(d: DmaBuf) -> OwnedFd {
        d.into_fd()
    }
}

pub(crate) fn check_name(name: &str, object: &str) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "set name",
            object,
            format!(
                "name '{name}' is {} bytes; at most {MAX_NAME_LEN} fit",
                name.len()
            ),
        ));
    }
    if name.contains('\0') {
        return Err(Error::invalid(
            "set name",
            object,
            "name contains a NUL byte",
        ));
    }
    Ok(())
}

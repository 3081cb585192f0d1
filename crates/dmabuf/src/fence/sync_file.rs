//! Kernel sync files: the fd form of a kernel `dma_fence`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Errno, Error, ErrorKind, Result};
use crate::sys;

use super::{poll_readable, FenceStatus};

/// How `/proc/self/fd` names a sync file.
const SYNC_FILE_KIND: &str = "anon_inode:sync_file";

/// A sync file: one kernel fence (possibly a merge of several), as an fd.
///
/// It becomes readable (`POLLIN`) when the fence has signalled, with or
/// without an error; the error is only visible through [`SyncFile::status`]
/// (`SYNC_IOC_FILE_INFO`), which [`SyncFile::wait`] consults.
#[derive(Debug)]
pub struct SyncFile {
    fd: OwnedFd,
}

/// What `SYNC_IOC_FILE_INFO` tells about a sync file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncFileInfo {
    /// The sync file's name.
    pub name: String,
    /// Overall status.
    pub status: FenceStatus,
    /// Every fence it contains.
    pub fences: Vec<KernelFenceInfo>,
}

/// One fence inside a sync file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelFenceInfo {
    /// The driver that made the fence (`"functionfs"`, `"vivid"`…).
    pub driver: String,
    /// Its timeline.
    pub timeline: String,
    /// Its status.
    pub status: FenceStatus,
    /// When it signalled (CLOCK_MONOTONIC ns), if it has.
    pub timestamp_ns: Option<u64>,
}

impl SyncFile {
    /// Wraps `fd` after checking that it is a sync file: first its kind,
    /// without any ioctl (the kernel names a sync file
    /// `anon_inode:sync_file`; an fd from another process may be anything,
    /// and an ioctl number means something else to another driver), then
    /// `SYNC_IOC_FILE_INFO` must succeed on it.
    pub fn from_fd(fd: OwnedFd) -> Result<SyncFile> {
        let kind = super::fd_kind(fd.as_fd());
        if kind != SYNC_FILE_KIND {
            return Err(Error::invalid(
                "sync file",
                format!("fd {}", fd.as_raw_fd()),
                format!("not a sync file (it is '{kind}')"),
            ));
        }
        match sys::sync_file::file_info_summary(&fd) {
            Ok(_) => Ok(SyncFile { fd }),
            Err(e @ (Errno::NOTTY | Errno::INVAL | Errno::BADF)) => Err(Error::kernel(
                "sync file",
                format!("fd {}", fd.as_raw_fd()),
                e,
                "not a sync file",
            )
            .with_kind(ErrorKind::InvalidInput)),
            Err(e) => Err(Error::os("sync file", format!("fd {}", fd.as_raw_fd()), e)),
        }
    }

    pub(crate) fn from_fd_unchecked(fd: OwnedFd) -> SyncFile {
        SyncFile { fd }
    }

    fn object(&self) -> String {
        format!("sync file fd {}", self.fd.as_raw_fd())
    }

    /// The fence's status now.
    pub fn status(&self) -> Result<FenceStatus> {
        let info = sys::sync_file::file_info_summary(&self.fd)
            .map_err(|e| Error::os("sync-file status", self.object(), e))?;
        Ok(FenceStatus::from_kernel(info.status))
    }

    /// Name, status and every fence's driver, timeline, status and
    /// timestamp.
    pub fn info(&self) -> Result<SyncFileInfo> {
        let (info, fences) = sys::sync_file::file_info(&self.fd)
            .map_err(|e| Error::os("sync-file info", self.object(), e))?;
        Ok(SyncFileInfo {
            name: sys::from_c_name(&info.name),
            status: FenceStatus::from_kernel(info.status),
            fences: fences
                .iter()
                .map(|f| KernelFenceInfo {
                    driver: sys::from_c_name(&f.driver_name),
                    timeline: sys::from_c_name(&f.obj_name),
                    status: FenceStatus::from_kernel(f.status),
                    timestamp_ns: (f.timestamp_ns != 0).then_some(f.timestamp_ns),
                })
                .collect(),
        })
    }

    /// Waits until the fence signals, at most `timeout` (`None`: forever).
    /// A fence that signalled with an error gives a
    /// [`ErrorKind::FenceFailed`] error carrying that errno.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        if !poll_readable(self.fd.as_fd(), deadline)
            .map_err(|e| Error::os("sync-file wait", self.object(), e))?
        {
            return Err(Error::new(
                ErrorKind::TimedOut,
                "sync-file wait",
                self.object(),
                format!(
                    "did not signal within {:?}",
                    timeout.unwrap_or(Duration::ZERO)
                ),
            )
            .with_errno(Errno::TIMEDOUT));
        }
        self.status()?.into_result("sync-file wait", &self.object())
    }

    /// A new sync file that signals when both `self` and `other` have
    /// (`SYNC_IOC_MERGE`).
    pub fn merge(&self, other: &SyncFile, name: &str) -> Result<SyncFile> {
        if name.len() >= 32 {
            return Err(Error::invalid(
                "sync-file merge",
                self.object(),
                format!("name '{name}' is {} bytes; at most 31 fit", name.len()),
            ));
        }
        let fd = sys::sync_file::merge(&self.fd, &other.fd, name).map_err(|e| {
            Error::os(
                "sync-file merge",
                format!("{} and {}", self.object(), other.object()),
                e,
            )
        })?;
        Ok(SyncFile { fd })
    }

    /// Hints that the fence should signal by `deadline`
    /// (`SYNC_IOC_SET_DEADLINE`); drivers may clock up to meet it.
    pub fn set_deadline(&self, deadline: Instant) -> Result<()> {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        let ahead = deadline.saturating_duration_since(Instant::now());
        sys::sync_file::set_deadline(&self.fd, now_ns + ahead.as_nanos() as u64)
            .map_err(|e| Error::os("sync-file deadline", self.object(), e))
    }

    /// A second handle to the same fence (a dup'd fd).
    pub fn try_clone(&self) -> Result<SyncFile> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup", self.object(), e))?;
        Ok(SyncFile { fd })
    }

    /// Gives up the fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// [`SyncFile::from_fd`]: the fd is checked.
impl TryFrom<OwnedFd> for SyncFile {
    type Error = Error;
    fn try_from(fd: OwnedFd) -> Result<SyncFile> {
        SyncFile::from_fd(fd)
    }
}

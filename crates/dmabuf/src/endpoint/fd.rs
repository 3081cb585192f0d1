//! The plain file-descriptor endpoint: a file, pipe or socket as a
//! "device".
//!
//! # DOC: software processing nodes
//!
//! The kernel's dma-buf mmap support was merged (Linux commit 4c78513e45,
//! 2012) for software processing nodes in a pipeline: software that
//! consumes or produces buffers between devices (an encoder in user space,
//! a network sender). [`FdEndpoint`]
//! gives such a node the endpoint interface: attach buffers, queue
//! transfers, get a fence per transfer — over any fd, through the
//! [copy engine](super::copy). Its data path is always
//! [`DataPath::Copy`]`("plain file descriptor")`.
//!
//! * [`Direction::ToDevice`] writes `len` bytes of the buffer to the fd
//!   (the fd must be open for writing);
//! * [`Direction::FromDevice`] reads exactly `len` bytes from the fd into
//!   the buffer (the fd must be open for reading; end of file before
//!   `len` bytes fails the fence with `ENODATA`); the buffer must be
//!   writable;
//! * the fd is owned by the endpoint and closed when it is dropped, after
//!   the worker has stopped.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::OFlags;

use super::common::Attachments;
use super::copy::{CopyEngine, CopyOptions};
use super::{Attachment, DataPath, Direction, Endpoint, TransferOptions};
use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::Fence;

/// The reason [`FdEndpoint::data_path`](Endpoint::data_path) gives.
pub const FD_COPY_REASON: &str = "plain file descriptor";

/// An endpoint on any file descriptor (file, pipe, socket), always on
/// the copy path. See the module documentation.
#[derive(Debug)]
pub struct FdEndpoint {
    attachments: Attachments<()>,
    // Dropped last: the engine joins its worker before the fd closes.
    engine: CopyEngine,
}

impl FdEndpoint {
    /// An endpoint moving data in `direction` through `fd`. Refuses an fd
    /// not open for that direction (`EBADF`).
    pub fn new(fd: OwnedFd, direction: Direction) -> Result<FdEndpoint> {
        FdEndpoint::with_options(fd, direction, CopyOptions::default())
    }

    /// [`FdEndpoint::new`] with explicit copy-engine options.
    pub fn with_options(
        fd: OwnedFd,
        direction: Direction,
        options: CopyOptions,
    ) -> Result<FdEndpoint> {
        let obj = format!("fd {}", fd.as_raw_fd());
        let flags =
            rustix::fs::fcntl_getfl(&fd).map_err(|e| Error::os("fd endpoint", obj.clone(), e))?;
        let acc = flags & OFlags::ACCMODE;
        let (ok, need) = match direction {
            Direction::ToDevice => (acc == OFlags::WRONLY || acc == OFlags::RDWR, "writing"),
            Direction::FromDevice => (acc == OFlags::RDONLY || acc == OFlags::RDWR, "reading"),
        };
        if !ok {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "fd endpoint",
                obj,
                format!(
                    "the fd is not open for {need}, which a {} endpoint needs",
                    match direction {
                        Direction::ToDevice => "to-device",
                        Direction::FromDevice => "from-device",
                    }
                ),
            )
            .with_errno(Errno::BADF));
        }
        let engine = CopyEngine::with_options(fd, direction, "fd endpoint", options)?;
        Ok(FdEndpoint {
            attachments: Attachments::default(),
            engine,
        })
    }

    /// The full error of a transfer whose fence failed (the fence only
    /// carries the errno).
    pub fn failure(&self, fence: &Fence) -> Option<Error> {
        self.engine.failure(fence)
    }

    /// Transfers queued or running.
    pub fn pending(&self) -> usize {
        self.engine.pending()
    }

    /// Number of attached buffers.
    pub fn attached(&self) -> usize {
        self.attachments.len()
    }

    /// Stops the endpoint's worker, waiting at most `timeout` for it (see
    /// [`CopyEngine::shutdown`]): everything queued is cancelled; a worker
    /// blocked in an I/O call after `timeout` is interrupted with a signal,
    /// and only if that does not end the call is it detached, with an
    /// error saying so. Dropping the endpoint does the same with
    /// [`copy::DROP_WAIT`](super::copy::DROP_WAIT).
    pub fn shutdown(&mut self, timeout: std::time::Duration) -> Result<()> {
        self.engine.shutdown(timeout)
    }
}

/// Refuses read-only buffers for endpoints that write into them.
pub(crate) fn check_attachable(object: &str, direction: Direction, buffer: &Buffer) -> Result<()> {
    if direction == Direction::FromDevice && !buffer.is_writable() {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "attach",
            format!("{object}, {}", buffer.describe()),
            "the buffer is read-only, and a from-device endpoint writes into it",
        )
        .with_errno(Errno::ACCESS));
    }
    Ok(())
}

impl Endpoint for FdEndpoint {
    fn direction(&self) -> Direction {
        self.engine.direction()
    }

    fn data_path(&self) -> DataPath {
        DataPath::Copy(FD_COPY_REASON.into())
    }

    fn attach(&mut self, buffer: &Buffer) -> Result<Attachment> {
        let obj = self.engine.describe().to_string();
        check_attachable(&obj, self.direction(), buffer)?;
        self.attachments.check_new(&obj, buffer)?;
        trace_event!(
            DEBUG,
            endpoint = %obj,
            buffer = %buffer.describe(),
            path = %self.data_path(),
            "endpoint chose a data path"
        );
        Ok(self.attachments.insert(buffer, ()))
    }

    fn transfer(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence> {
        self.attachments
            .get("transfer", self.engine.describe(), attachment)?;
        self.engine.queue(attachment, len, opts)
    }

    fn detach(&mut self, attachment: &Attachment) -> Result<()> {
        let obj = self.engine.describe().to_string();
        self.attachments.remove("detach", &obj, attachment)?;
        self.engine.cancel(attachment.id);
        Ok(())
    }
}

/// The fd the endpoint moves data through.
impl AsFd for FdEndpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.engine.as_fd()
    }
}

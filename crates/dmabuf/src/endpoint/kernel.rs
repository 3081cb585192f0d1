//! One core for the kernel's DMABUF endpoint interfaces (FunctionFS,
//! IIO): attach with a copy-path fallback and its reason, enqueue with
//! `O_NONBLOCK`/`EINTR` handling, detach, one fence per transfer, the
//! one-step wait-and-publish of the reservation, and path reporting. An
//! interface plugs in its ioctls and its errno mapping through
//! [`DmabufUapi`]; the behaviour proven for one holds for the other.
//!
//! A zero-copy transfer, in order:
//!
//! 1. the request is checked on the user side (flags by the uAPI, length,
//!    attachment) with the errno the kernel would give;
//! 2. a placeholder fence of the endpoint's timeline is published in the
//!    buffer's reservation in one step with the wait for CPU windows, the
//!    library's fences and the kernel's fences (`Reservation::begin_device`),
//!    so no CPU window of this process can open from here on;
//! 3. the enqueue ioctl is issued (`O_NONBLOCK` around it for a
//!    non-blocking transfer, restarted on `EINTR`); the kernel waits again
//!    for its fences and adds the transfer's fence;
//! 4. that fence is exported (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE` for
//!    writing: it covers every fence, whatever usage the kernel gave this
//!    one), re-imported as a writer where the uAPI needs it (FunctionFS on
//!    6.12, see there), added to the library's reservation with the
//!    transfer's usage, and only then is the placeholder signalled: a
//!    window never sees a moment without a fence of the transfer;
//! 5. on a failure after step 2 the placeholder fails (done for waiters)
//!    and the error names the operation, the endpoint and the buffer.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::common::{
    begin_transfer, check_transfer, enqueue_ioctl, usage_of, AttachPath, Attachments,
};
use super::copy::{CopyEngine, CopyOptions};
use super::fd::check_attachable;
use super::{Attachment, DataPath, Direction, TransferOptions};
use crate::buffer::{Access, Buffer, DmaBuf};
use crate::error::{Errno, Error, Result};
use crate::fence::{Fence, FenceContext};
use crate::reservation::Usage;

/// A kernel DMABUF endpoint interface: its ioctls and its errnos.
pub(crate) trait DmabufUapi {
    /// The attach ioctl's name, for the copy path's reason.
    const ATTACH_IOCTL: &'static str;
    /// What imports the dma-buf, for messages ("the controller").
    const DEVICE: &'static str;
    /// Whether a from-device transfer's fence must be added back to the
    /// dma-buf as a writer (the kernel adds it with the wrong usage).
    const FIX_FROM_DEVICE_USAGE: bool;

    /// The attach ioctl.
    fn attach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()>;
    /// The detach ioctl.
    fn detach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()>;
    /// The enqueue ioctl for `len` bytes with `flags`.
    fn enqueue(fd: BorrowedFd<'_>, dmabuf: &DmaBuf, flags: u32, len: u64)
        -> rustix::io::Result<()>;
    /// The reason in words for a copy-path fallback after attach answered
    /// `errno`, or `None` if that errno is a real failure.
    fn fallback_reason(errno: Errno) -> Option<String>;
    /// The error for a failed attach.
    fn attach_error(object: &str, errno: Errno) -> Error;
    /// The error for a failed enqueue.
    fn transfer_error(object: &str, errno: Errno) -> Error;
    /// The error for a failed detach.
    fn detach_error(object: &str, errno: Errno) -> Error;
    /// Checks a transfer's flags for `direction` on the zero-copy path or
    /// not, with the kernel's errno (`EINVAL`).
    fn check_flags(object: &str, direction: Direction, zero_copy: bool, flags: u32) -> Result<()>;
}

/// An endpoint on a kernel DMABUF interface `U`, with the copy engine as
/// its fallback.
pub(crate) struct KernelDmabufCore<U: DmabufUapi> {
    file: OwnedFd,
    direction: Direction,
    object: String,
    undecided: &'static str,
    attachments: Attachments<AttachPath>,
    latest: Option<AttachPath>,
    /// The timeline of the placeholders published before each enqueue.
    placeholders: FenceContext,
    engine: CopyEngine,
    _uapi: PhantomData<fn() -> U>,
}

impl<U: DmabufUapi> fmt::Debug for KernelDmabufCore<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelDmabufCore")
            .field("object", &self.object)
            .field("direction", &self.direction)
            .field("attachments", &self.attachments.len())
            .field("latest", &self.latest)
            .finish_non_exhaustive()
    }
}

impl<U: DmabufUapi> KernelDmabufCore<U> {
    /// A core on `file` (its copy engine gets a `dup`: one open file
    /// description), named `name` in timelines and `object` in messages;
    /// `undecided` is the data path before the first attach.
    pub(crate) fn new(
        file: OwnedFd,
        direction: Direction,
        name: &str,
        object: String,
        undecided: &'static str,
        copy: CopyOptions,
    ) -> Result<Self> {
        let dup = file
            .try_clone()
            .map_err(|e| Error::os("dup", object.clone(), crate::error::io_errno(&e)))?;
        let engine = CopyEngine::with_options(dup, direction, name, copy)?;
        Ok(KernelDmabufCore {
            file,
            direction,
            object,
            undecided,
            attachments: Attachments::default(),
            latest: None,
            placeholders: FenceContext::new(&format!("{name} enqueue")),
            engine,
            _uapi: PhantomData,
        })
    }

    pub(crate) fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub(crate) fn object(&self) -> &str {
        &self.object
    }

    pub(crate) fn direction(&self) -> Direction {
        self.direction
    }

    pub(crate) fn data_path(&self) -> DataPath {
        match &self.latest {
            Some(p) => p.data_path(),
            None => DataPath::Copy(self.undecided.into()),
        }
    }

    pub(crate) fn path_of(&self, attachment: &Attachment) -> Result<DataPath> {
        Ok(self
            .attachments
            .get("data path", &self.object, attachment)?
            .data_path())
    }

    pub(crate) fn failure(&self, fence: &Fence) -> Option<Error> {
        self.engine.failure(fence)
    }

    pub(crate) fn pending(&self) -> usize {
        self.engine.pending()
    }

    pub(crate) fn attach(&mut self, buffer: &Buffer) -> Result<Attachment> {
        check_attachable(&self.object, self.direction, buffer)?;
        self.attachments.check_new(&self.object, buffer)?;
        let path = match buffer.dma_buf() {
            None => AttachPath::Copy(format!(
                "{} is portable memory, not a dma-buf: {} cannot import it",
                buffer.describe(),
                U::DEVICE
            )),
            Some(d) => match U::attach(self.file.as_fd(), d) {
                Ok(()) => AttachPath::ZeroCopy,
                Err(e) => match U::fallback_reason(e) {
                    Some(why) => AttachPath::Copy(why),
                    None => {
                        let obj = format!("{}, {}", self.object, buffer.describe());
                        return Err(U::attach_error(&obj, e));
                    }
                },
            },
        };
        self.latest = Some(path.clone());
        Ok(self.attachments.insert(buffer, path))
    }

    pub(crate) fn transfer(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence> {
        let path = self
            .attachments
            .get("transfer", &self.object, attachment)?
            .clone();
        let obj = format!("{}, {}", self.object, attachment.buffer.describe());
        match (path, attachment.buffer.dma_buf()) {
            (AttachPath::ZeroCopy, Some(d)) => {
                let buffer = attachment.buffer.clone();
                self.transfer_zero_copy(&buffer, d, len, opts)
            }
            _ => {
                U::check_flags(&obj, self.direction, false, opts.flags)?;
                self.engine
                    .queue(attachment, len, TransferOptions { flags: 0, ..opts })
            }
        }
    }

    fn transfer_zero_copy(
        &mut self,
        buffer: &Buffer,
        dmabuf: &DmaBuf,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence> {
        let obj = format!("{}, {}", self.object, buffer.describe());
        U::check_flags(&obj, self.direction, true, opts.flags)?;
        check_transfer(
            &self.object,
            buffer,
            len,
            TransferOptions { flags: 0, ..opts },
        )?;
        let placeholder = self.placeholders.next_fence()?;
        // Wait for what is in the way and publish, one step: from here no
        // CPU window of this process opens until the placeholder settles.
        begin_transfer(
            buffer,
            self.direction,
            opts,
            &self.object,
            Fence::User(placeholder.clone()),
            &|_| false,
        )?;
        let file = self.file.as_fd();
        let queued = enqueue_ioctl(file, opts.nonblocking, || {
            U::enqueue(file, dmabuf, opts.flags, len)
        })
        .map_err(|e| Error::os("transfer", obj.clone(), e))
        .and_then(|r| r.map_err(|e| U::transfer_error(&obj, e)));
        if let Err(e) = queued {
            let _ = placeholder.fail(e.errno().unwrap_or(Errno::IO));
            return Err(e);
        }
        // The kernel put the transfer's fence in the dma-buf's
        // reservation; a write export covers every fence whatever usage it
        // was given.
        let fence = match self.kernel_fence(dmabuf) {
            Ok(f) => f,
            Err(e) => {
                // The transfer is queued but its fence is out of reach:
                // say so; windows still wait for it in START (the kernel
                // has it).
                let _ = placeholder.fail(e.errno().unwrap_or(Errno::IO));
                return Err(e);
            }
        };
        buffer
            .reservation()
            .add(fence.clone(), usage_of(self.direction));
        let _ = placeholder.signal();
        Ok(fence)
    }

    fn kernel_fence(&self, dmabuf: &DmaBuf) -> Result<Fence> {
        let sync = dmabuf.export_sync_file(Access::Write)?;
        if U::FIX_FROM_DEVICE_USAGE && self.direction == Direction::FromDevice {
            dmabuf.import_sync_file(&sync, Usage::Write)?;
        }
        Ok(Fence::from(sync))
    }

    pub(crate) fn detach(&mut self, attachment: &Attachment) -> Result<()> {
        let path = self
            .attachments
            .remove("detach", &self.object, attachment)?;
        self.engine.cancel(attachment.id);
        if let (AttachPath::ZeroCopy, Some(d)) = (path, attachment.buffer.dma_buf()) {
            U::detach(self.file.as_fd(), d).map_err(|e| {
                U::detach_error(
                    &format!("{}, {}", self.object, attachment.buffer.describe()),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

impl<U: DmabufUapi> Drop for KernelDmabufCore<U> {
    fn drop(&mut self) {
        for a in self.attachments.all() {
            let _ = self.detach(&a);
        }
    }
}

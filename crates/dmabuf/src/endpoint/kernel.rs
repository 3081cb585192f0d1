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
//! 2. the transfer's fence — a [`UserFence`] of the attachment's own
//!    timeline, owned by the library — is published in the buffer's
//!    reservation in one step with the wait for CPU windows, the
//!    library's fences and the kernel's fences
//!    (`Reservation::begin_device`), so no CPU window of this process can
//!    open from here until the transfer is done;
//! 3. the enqueue ioctl is issued (`O_NONBLOCK` around it for a
//!    non-blocking transfer, restarted on `EINTR`); the kernel waits again
//!    for its fences and adds its own fence of the transfer to the
//!    dma-buf's reservation (where other drivers and processes see it);
//! 4. that kernel fence is exported (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE` for
//!    writing: it covers every fence, whatever usage the kernel gave this
//!    one), re-imported as a writer where the uAPI needs it (FunctionFS on
//!    6.12, see there), and handed to the endpoint's fence watcher
//!    (`endpoint::watch`), which settles the user fence with the kernel
//!    fence's status when it signals. The caller and the library's
//!    reservation only ever see the user fence: the kernel's fence of
//!    these interfaces cannot be used safely once its attachment is gone
//!    (see `endpoint::watch`);
//! 5. on a failure after step 2 the user fence fails (done for waiters)
//!    and the error names the operation, the endpoint and the buffer.
//!
//! Detach: the attachment's kernel fences are taken from the watcher,
//! their status read and they are closed, *then* the detach ioctl is
//! issued, then the user fences of transfers still pending fail with
//! `ECANCELED`. Dropping the endpoint detaches every attachment that way
//! before the endpoint file is closed.
//!
//! A transfer the kernel keeps running after detach (FunctionFS cancels
//! only an attachment's latest transfer, IIO none: the driver keeps its
//! blocks until the buffer is disabled) still has its fence in the
//! dma-buf's own reservation: CPU windows (`DMA_BUF_IOCTL_SYNC`, `poll`)
//! and later transfers still wait for it there, although its user fence
//! has failed with `ECANCELED`.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::common::{begin_transfer, check_transfer, enqueue_ioctl, AttachPath, Attachments};
use super::copy::{CopyEngine, CopyOptions};
use super::fd::check_attachable;
use super::watch::{settle, Watcher};
use super::{Attachment, DataPath, Direction, TransferOptions};
use crate::access::{Access, Usage};
use crate::buffer::Buffer;
use crate::dma_buf::DmaBuf;
use crate::error::{errno_name, Errno, Error, ErrorKind, Result};
use crate::fence::{Fence, FenceContext, SyncFile, UserFence};

/// A kernel DMABUF endpoint interface: its ioctls and its errnos.
pub(crate) trait DmabufUapi {
    /// The attach ioctl's name, for the copy path's reason.
    const ATTACH_IOCTL: &'static str;
    /// What imports the dma-buf, for messages ("the controller").
    const DEVICE: &'static str;
    /// Whether a from-device transfer's fence must be added back to the
    /// dma-buf as a writer (the kernel adds it with the wrong usage).
    const FIX_FROM_DEVICE_USAGE: bool;
    /// The errno of a transfer cut because the device may have gone (the
    /// core then checks [`DmabufUapi::device_present`] before its next
    /// enqueue or detach ioctl), if the interface has one.
    const GONE_ERRNO: Option<Errno>;

    /// The attach ioctl.
    fn attach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()>;
    /// The detach ioctl.
    fn detach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()>;
    /// The enqueue ioctl for `len` bytes with `flags`.
    fn enqueue(fd: BorrowedFd<'_>, dmabuf: &DmaBuf, flags: u32, len: u64)
        -> rustix::io::Result<()>;
    /// Whether the device behind `fd` is still there, asked without an
    /// ioctl that would fault if it is not; `dmabuf` is attached to it.
    fn device_present(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> bool;
    /// Why an enqueue or detach ioctl is not issued when the device is
    /// gone, in words.
    fn gone_reason() -> &'static str;
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

/// What the core keeps per attachment.
#[derive(Debug)]
struct Att {
    path: AttachPath,
    /// The timeline of the attachment's zero-copy transfer fences (one
    /// per attachment: the kernel completes an attachment's transfers in
    /// order, and detach cancels them together).
    timeline: FenceContext,
}

/// An endpoint on a kernel DMABUF interface `U`, with the copy engine as
/// its fallback.
pub(crate) struct KernelDmabufCore<U: DmabufUapi> {
    direction: Direction,
    name: String,
    object: String,
    undecided: &'static str,
    attachments: Attachments<Att>,
    latest: Option<AttachPath>,
    /// Started at the first zero-copy transfer.
    watcher: Option<Watcher>,
    /// A transfer failed with `U::GONE_ERRNO`: ask whether the device is
    /// still there before the next enqueue or detach ioctl.
    maybe_gone: Arc<AtomicBool>,
    engine: CopyEngine,
    /// Last: closed after the watcher has let go of every kernel fence.
    file: OwnedFd,
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
            .map_err(|e| Error::io("dup", object.clone(), e))?;
        let engine = CopyEngine::with_options(dup, direction, name, copy)?;
        Ok(KernelDmabufCore {
            direction,
            name: name.to_string(),
            object,
            undecided,
            attachments: Attachments::default(),
            latest: None,
            watcher: None,
            maybe_gone: Arc::new(AtomicBool::new(false)),
            engine,
            file,
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
            .path
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
        trace_event!(
            DEBUG,
            endpoint = %self.object,
            buffer = %buffer.describe(),
            path = %path.data_path(),
            "endpoint chose a data path"
        );
        self.latest = Some(path.clone());
        let timeline = FenceContext::new(&format!("{} transfer", self.name));
        Ok(self.attachments.insert(buffer, Att { path, timeline }))
    }

    pub(crate) fn transfer(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence> {
        let att = self.attachments.get("transfer", &self.object, attachment)?;
        let (path, timeline) = (att.path.clone(), att.timeline.clone());
        let obj = format!("{}, {}", self.object, attachment.buffer.describe());
        match (path, attachment.buffer.dma_buf()) {
            (AttachPath::ZeroCopy, Some(d)) => {
                let buffer = attachment.buffer.clone();
                self.transfer_zero_copy(attachment.id, &timeline, &buffer, d, len, opts)
            }
            _ => {
                U::check_flags(&obj, self.direction, false, opts.flags)?;
                self.engine
                    .queue(attachment, len, TransferOptions { flags: 0, ..opts })
            }
        }
    }

    /// Whether the device is known to be gone: after a transfer failed
    /// with `U::GONE_ERRNO`, asks `U::device_present` (and forgets the
    /// failure once the device answers again).
    fn device_gone(&self, dmabuf: &DmaBuf) -> bool {
        if !self.maybe_gone.load(Ordering::SeqCst) {
            return false;
        }
        if U::device_present(self.file.as_fd(), dmabuf) {
            self.maybe_gone.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn note_errno(&self, errno: Errno) {
        if U::GONE_ERRNO == Some(errno) {
            self.maybe_gone.store(true, Ordering::SeqCst);
        }
    }

    fn transfer_zero_copy(
        &mut self,
        id: u64,
        timeline: &FenceContext,
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
        if self.device_gone(dmabuf) {
            let errno = U::GONE_ERRNO.unwrap_or(Errno::NODEV);
            return Err(Error::new(
                ErrorKind::Cancelled,
                "transfer",
                obj,
                format!(
                    "{} is gone ({} seen): {}",
                    U::DEVICE,
                    errno_name(errno),
                    U::gone_reason()
                ),
            )
            .with_errno(errno));
        }
        if self.watcher.is_none() {
            self.watcher = Some(Watcher::start(&self.name, self.maybe_gone.clone())?);
        }
        let fence = timeline.next_fence()?;
        // Wait for what is in the way and publish, one step: from here no
        // CPU window of this process opens until the fence settles.
        begin_transfer(
            buffer,
            self.direction,
            opts,
            &self.object,
            Fence::User(fence.clone()),
            &|_| false,
        )?;
        let file = self.file.as_fd();
        let queued = enqueue_ioctl(file, opts.nonblocking, || {
            U::enqueue(file, dmabuf, opts.flags, len)
        })
        .map_err(|e| Error::os("transfer", obj.clone(), e))
        .and_then(|r| {
            r.map_err(|e| {
                self.note_errno(e);
                U::transfer_error(&obj, e)
            })
        });
        if let Err(e) = queued {
            let _ = fence.fail(e.errno().unwrap_or(Errno::IO));
            return Err(e);
        }
        // The kernel put the transfer's fence in the dma-buf's
        // reservation; a write export covers every fence whatever usage it
        // was given.
        let kernel = match self.kernel_fence(dmabuf) {
            Ok(k) => k,
            Err(e) => {
                // The transfer is queued but its fence is out of reach:
                // say so; windows still wait for it in START (the kernel
                // has it).
                let _ = fence.fail(e.errno().unwrap_or(Errno::IO));
                return Err(e);
            }
        };
        self.watcher
            .as_ref()
            .expect("started above")
            .add(id, kernel, fence.clone());
        Ok(Fence::User(fence))
    }

    fn kernel_fence(&self, dmabuf: &DmaBuf) -> Result<SyncFile> {
        let sync = dmabuf.export_sync_file(Access::Write)?;
        if U::FIX_FROM_DEVICE_USAGE && self.direction == Direction::FromDevice {
            dmabuf.import_sync_file(&sync, Usage::Write)?;
        }
        Ok(sync)
    }

    pub(crate) fn detach(&mut self, attachment: &Attachment) -> Result<()> {
        let att = self
            .attachments
            .remove("detach", &self.object, attachment)?;
        self.engine.cancel(attachment.id);
        let (AttachPath::ZeroCopy, Some(d)) = (att.path, attachment.buffer.dma_buf()) else {
            return Ok(());
        };
        // Let go of the attachment's kernel fences while it is alive: read
        // their status, close them; only then detach.
        let mut pending: Vec<UserFence> = Vec::new();
        if let Some(w) = &self.watcher {
            let mut mine = w.withdraw(Some(attachment.id));
            mine.sort_by_key(|w| w.fence.seqno());
            pending.extend(mine.into_iter().filter_map(|w| settle(w, false)));
        }
        let r = if self.device_gone(d) {
            // Not issued: the kernel releases the attachment when the
            // endpoint file is closed.
            Ok(())
        } else {
            U::detach(self.file.as_fd(), d).map_err(|e| {
                U::detach_error(
                    &format!("{}, {}", self.object, attachment.buffer.describe()),
                    e,
                )
            })
        };
        for f in pending {
            let _ = f.fail(Errno::CANCELED);
        }
        r
    }
}

impl<U: DmabufUapi> Drop for KernelDmabufCore<U> {
    fn drop(&mut self) {
        for a in self.attachments.all() {
            let _ = self.detach(&a);
        }
        // No kernel fence is left with the watcher (each detach took its
        // attachment's); stop it before the endpoint file closes.
        self.watcher = None;
    }
}

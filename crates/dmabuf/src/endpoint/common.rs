//! What every endpoint shares: the checks of a transfer, the attachment
//! table (process-unique ids), the one-step wait-and-publish of a
//! transfer's fence, and the `O_NONBLOCK`/`EINTR` handling of enqueue
//! ioctls. The rules are in the [endpoint module](super) documentation.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Attachment, DataPath, Direction, TransferOptions};
use crate::access::Access;
use crate::buffer::Buffer;
use crate::error::{errno_name, Errno, Error, ErrorKind, Result};
use crate::fence::Fence;
use crate::reservation::DeviceAccess;

/// Whether `f` is a user fence of the timeline `context`.
pub(crate) fn is_of_context(f: &Fence, context: u64) -> bool {
    matches!(f, Fence::User(u) if u.context() == context)
}

/// What a transfer in `direction` does to the buffer.
pub(crate) fn access_of(direction: Direction) -> Access {
    match direction {
        Direction::ToDevice => Access::Read,
        Direction::FromDevice => Access::Write,
    }
}

/// Checks a transfer's length and options on the user side, with the
/// errno the kernel's DMABUF interfaces would answer (`EINVAL`).
pub(crate) fn check_transfer(
    object: &str,
    buffer: &Buffer,
    len: u64,
    opts: TransferOptions,
) -> Result<()> {
    let obj = || format!("{object}, {}", buffer.describe());
    if opts.flags != 0 {
        return Err(Error::invalid(
            "transfer",
            obj(),
            format!(
                "unknown transfer flags {:#x} (no flags are defined)",
                opts.flags
            ),
        ));
    }
    if len == 0 {
        return Err(Error::invalid(
            "transfer",
            obj(),
            "length 0: a transfer moves at least one byte",
        ));
    }
    if len > buffer.size() {
        return Err(Error::invalid(
            "transfer",
            obj(),
            format!(
                "length {len} is past the end of the buffer ({} bytes)",
                buffer.size()
            ),
        ));
    }
    Ok(())
}

/// Waits for what a transfer in `direction` must wait for on `buffer`
/// and publishes its `fence` in the buffer's reservation, in one step
/// (`Reservation::begin_device`): open CPU windows, the library's fences
/// not skipped by `skip`, and the kernel's fences of dma-bufs, until
/// `opts.timeout` (not at all if `opts.nonblocking`). A
/// [`ErrorKind::Busy`] error (`EBUSY`) naming what is in the way after
/// that, and nothing published.
pub(crate) fn begin_transfer(
    buffer: &Buffer,
    direction: Direction,
    opts: TransferOptions,
    object: &str,
    fence: Fence,
    skip: &dyn Fn(&Fence) -> bool,
) -> Result<()> {
    let waited = if opts.nonblocking {
        Duration::ZERO
    } else {
        opts.timeout
    };
    let obj = format!("{object}, {}", buffer.describe());
    buffer
        .reservation()
        .begin_device(
            fence,
            DeviceAccess {
                op: "transfer",
                object: &obj,
                access: access_of(direction),
                deadline: Some(Instant::now() + waited),
                dma_buf: buffer.dma_buf(),
                skip,
            },
        )
        .map_err(|e| explain_busy(e, opts))
}

/// A [`ErrorKind::Busy`] error of a transfer's wait, saying how long it
/// waited (or that it was non-blocking).
pub(crate) fn explain_busy(e: Error, opts: TransferOptions) -> Error {
    if e.kind() != ErrorKind::Busy {
        return e;
    }
    let how = if opts.nonblocking {
        "non-blocking transfer".to_string()
    } else {
        format!("waited {:?}", opts.timeout)
    };
    let cause = format!("{} ({how})", e.cause());
    e.with_cause(cause).with_errno(Errno::BUSY)
}

/// Attachment ids are unique in the process, not just per endpoint, so
/// an attachment of one endpoint is never mistaken for another's (the
/// same buffer can be attached to both).
static NEXT_ATTACHMENT: AtomicU64 = AtomicU64::new(1);

/// A new process-unique attachment id (every endpoint takes its ids here).
pub(crate) fn next_attachment_id() -> u64 {
    NEXT_ATTACHMENT.fetch_add(1, Ordering::Relaxed)
}

/// The buffers attached to an endpoint, by attachment id.
#[derive(Debug)]
pub(crate) struct Attachments<T> {
    map: HashMap<u64, (Buffer, T)>,
}

impl<T> Default for Attachments<T> {
    fn default() -> Self {
        Attachments {
            map: HashMap::new(),
        }
    }
}

/// The data path chosen for one attachment.
#[derive(Debug, Clone)]
pub(crate) enum AttachPath {
    /// The device imported the dma-buf.
    ZeroCopy,
    /// The copy engine moves the bytes, for this reason.
    Copy(String),
}

impl AttachPath {
    pub(crate) fn data_path(&self) -> DataPath {
        match self {
            AttachPath::ZeroCopy => DataPath::ZeroCopy,
            AttachPath::Copy(why) => DataPath::Copy(why.clone()),
        }
    }
}

impl<T> Attachments<T> {
    /// Refuses a buffer attached already; the id the next attach gets.
    pub(crate) fn check_new(&self, object: &str, buffer: &Buffer) -> Result<()> {
        if let Some((id, _)) = self.map.iter().find(|(_, (b, _))| b.same_as(buffer)) {
            return Err(Error::new(
                ErrorKind::Busy,
                "attach",
                format!("{object}, {}", buffer.describe()),
                format!("already attached (attachment #{id})"),
            )
            .with_errno(Errno::BUSY));
        }
        Ok(())
    }

    /// Records `buffer` with `extra`, returning its attachment.
    pub(crate) fn insert(&mut self, buffer: &Buffer, extra: T) -> Attachment {
        let id = next_attachment_id();
        self.map.insert(id, (buffer.clone(), extra));
        Attachment {
            id,
            buffer: buffer.clone(),
        }
    }

    /// The record of `attachment`, or a "not attached" error (`EPERM`, as
    /// the kernel answers).
    pub(crate) fn get(
        &self,
        op: &'static str,
        object: &str,
        attachment: &Attachment,
    ) -> Result<&T> {
        match self.map.get(&attachment.id) {
            Some((b, extra)) if b.same_as(&attachment.buffer) => Ok(extra),
            _ => Err(not_attached(op, object, attachment)),
        }
    }

    /// Removes `attachment`, or a "not attached" error.
    pub(crate) fn remove(
        &mut self,
        op: &'static str,
        object: &str,
        attachment: &Attachment,
    ) -> Result<T> {
        self.get(op, object, attachment)?;
        Ok(self
            .map
            .remove(&attachment.id)
            .map(|(_, extra)| extra)
            .expect("checked above"))
    }

    /// Every attachment (for detaching all).
    pub(crate) fn all(&self) -> Vec<Attachment> {
        self.map
            .iter()
            .map(|(id, (b, _))| Attachment {
                id: *id,
                buffer: b.clone(),
            })
            .collect()
    }

    /// Number of attachments.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

fn not_attached(op: &'static str, object: &str, attachment: &Attachment) -> Error {
    Error::new(
        ErrorKind::NotFound,
        op,
        format!("{object}, {}", attachment.buffer.describe()),
        format!(
            "attachment #{} is not attached to this endpoint (never attached, or detached)",
            attachment.id
        ),
    )
    .with_errno(Errno::PERM)
}

/// `"EPERM"`-style name, re-exported for endpoint messages.
pub(crate) fn name_of(e: Errno) -> String {
    errno_name(e)
}

/// Issues a DMABUF enqueue ioctl (`call`) on `fd`, with `O_NONBLOCK` set
/// around it when `nonblocking` (the kernel then fails at once instead of
/// waiting for conflicting fences), restarting on EINTR and restoring the
/// file's flags afterwards. The outer error is a failure to toggle the
/// flag; the inner result is the ioctl's.
pub(crate) fn enqueue_ioctl(
    fd: impl AsFd,
    nonblocking: bool,
    mut call: impl FnMut() -> rustix::io::Result<()>,
) -> rustix::io::Result<rustix::io::Result<()>> {
    let old = if nonblocking {
        Some(set_nonblocking(&fd, true)?)
    } else {
        None
    };
    let r = loop {
        match call() {
            Err(Errno::INTR) => continue,
            r => break r,
        }
    };
    if let Some(old) = old {
        let _ = rustix::fs::fcntl_setfl(&fd, old);
    }
    Ok(r)
}

/// Sets or clears `O_NONBLOCK` on `fd`'s file description, returning the
/// previous flags to restore.
pub(crate) fn set_nonblocking(fd: impl AsFd, on: bool) -> rustix::io::Result<rustix::fs::OFlags> {
    let old = rustix::fs::fcntl_getfl(&fd)?;
    let mut new = old;
    new.set(rustix::fs::OFlags::NONBLOCK, on);
    if new != old {
        rustix::fs::fcntl_setfl(&fd, new)?;
    }
    Ok(old)
}

//! Device endpoints: attach buffers once, queue transfers, get a fence per
//! transfer.
//!
//! # DOC: endpoints
//!
//! The model is FunctionFS's DMABUF interface (`FUNCTIONFS_DMABUF_ATTACH`,
//! `_TRANSFER`, `_DETACH`), generalised:
//!
//! * [`Endpoint::attach`] prepares a buffer for the device once — the
//!   expensive part (mapping it for DMA) happens here and is cached, as
//!   the kernel caches the attachment's scatter-gather table;
//! * [`Endpoint::transfer`] queues `len` bytes of an attached buffer and
//!   returns at once with a [`Fence`] that signals when the device is done
//!   — successfully, or with the transfer's error; completions happen in
//!   queue order;
//! * before a transfer touches the buffer it waits for the fences in the
//!   way (a transfer that writes the buffer waits for everyone, one that
//!   reads it waits for writers, including open CPU windows), at most
//!   [`TransferOptions::timeout`] (default 5 s, the kernel's
//!   `DMABUF_ENQUEUE_TIMEOUT_MS`), then fails with a [`ErrorKind::Busy`]
//!   error naming the blocking fence; [`TransferOptions::nonblocking`]
//!   fails at once instead;
//! * [`Endpoint::detach`] cancels what is still pending on that buffer:
//!   their fences signal with `ECANCELED`; dropping the endpoint detaches
//!   everything;
//! * bad input — length 0 or past the buffer, a buffer that is not
//!   attached, unknown flags — is refused with an error saying which.
//!
//! Every endpoint says which [`DataPath`] it uses: the device's zero-copy
//! DMABUF path, or a copy path through a CPU window (because the kernel,
//! the controller or the buffer kind does not allow zero-copy) and why.
//!
//! Precisions every endpoint follows:
//!
//! * the wait for conflicting fences happens inside [`Endpoint::transfer`]
//!   (like the kernel's enqueue ioctls), in one step with the publication
//!   of the transfer's fence in the buffer's reservation (see
//!   `reservation`): a CPU window either opened before (the transfer
//!   waits for it) or waits for the transfer. A `Busy` error means nothing
//!   was queued or published; failures after queueing are the fence's
//!   error;
//! * an endpoint does not wait for its own earlier transfers: its queue
//!   orders them;
//! * a fence that signalled with an error is done for the buffer's next
//!   user (see `reservation`);
//! * attaching a buffer that is attached already is refused
//!   ([`ErrorKind::Busy`], `EBUSY`); an attachment unknown to the
//!   endpoint (never attached, detached, or another endpoint's) gives
//!   [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) with `EPERM`,
//!   the kernel's answer; attachment ids are unique in the process;
//! * dropping an endpoint never waits for ever (see [`copy`]);
//! * a from-device endpoint refuses read-only buffers at attach
//!   (`EACCES`).
//!
//! # The endpoints
//!
//! * [`copy`] — [`CopyEngine`], the copy path every endpoint falls back to;
//! * FunctionFS and IIO share one kernel-DMABUF core (attach with copy
//!   fallback and its reason, enqueue, detach, fences), each plugging in
//!   its ioctls and errno mapping;
//! * [`fd`] — [`FdEndpoint`], any file, pipe or socket;
//! * [`functionfs`] — [`FunctionFsEndpoint`], USB gadget endpoints;
//! * [`iio`] — [`IioEndpoint`], IIO buffers;
//! * V4L2 lives in its own module.
//!
//! [`ErrorKind::Busy`]: crate::ErrorKind::Busy

pub mod v4l2;

use std::fmt;
use std::time::Duration;

mod common;
pub mod copy;
pub mod fd;
pub mod functionfs;
pub mod iio;
mod kernel;
pub mod prime;
mod watch;

pub use copy::{CopyEngine, CopyOptions};
pub use fd::FdEndpoint;
pub use functionfs::FunctionFsEndpoint;
pub use iio::IioEndpoint;
pub use prime::{DrmDevice, GemHandle};

use crate::buffer::Buffer;
use crate::error::Result;
use crate::fence::Fence;

/// The default time a transfer waits for conflicting fences (the kernel's
/// `DMABUF_ENQUEUE_TIMEOUT_MS`).
pub const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_millis(5000);

/// Which way data moves. Closed by nature (a transfer either reads or
/// writes the buffer), so not `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From the buffer to the device (the device reads the buffer).
    ToDevice,
    /// From the device into the buffer (the device writes the buffer).
    FromDevice,
}

/// How an endpoint moves data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "path", content = "reason")]
#[non_exhaustive]
pub enum DataPath {
    /// The device reads or writes the dma-buf itself.
    ZeroCopy,
    /// The library copies through a CPU window; the reason says why the
    /// zero-copy path is not used.
    Copy(String),
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataPath::ZeroCopy => f.write_str("zero-copy"),
            DataPath::Copy(why) => write!(f, "copy ({why})"),
        }
    }
}

/// Options of one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferOptions {
    /// How long to wait for conflicting fences before failing with
    /// "busy".
    pub timeout: Duration,
    /// Fail at once instead of waiting (like `O_NONBLOCK`).
    pub nonblocking: bool,
    /// Transfer flags; none are defined yet, anything else is refused.
    pub flags: u32,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            timeout: DEFAULT_TRANSFER_TIMEOUT,
            nonblocking: false,
            flags: 0,
        }
    }
}

/// A buffer attached to an endpoint. Returned by [`Endpoint::attach`],
/// given back to [`Endpoint::transfer`] and [`Endpoint::detach`].
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The id of the attachment (unique in the process, so another
    /// endpoint's attachment of the same buffer is never taken for it).
    pub id: u64,
    /// The buffer.
    pub buffer: Buffer,
}

/// A device endpoint that takes attached buffers and returns a fence per
/// transfer. See the module documentation for the rules.
pub trait Endpoint: Send {
    /// Which way this endpoint moves data.
    fn direction(&self) -> Direction;

    /// The data path in use (decided at the first attach for endpoints
    /// that probe the kernel).
    fn data_path(&self) -> DataPath;

    /// Prepares `buffer` for transfers.
    fn attach(&mut self, buffer: &Buffer) -> Result<Attachment>;

    /// Queues `len` bytes of the attached buffer; the fence signals when
    /// the transfer completes (or fails, with its error).
    fn transfer(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence>;

    /// Detaches the buffer; its pending transfers are cancelled (their
    /// fences signal with `ECANCELED`).
    fn detach(&mut self, attachment: &Attachment) -> Result<()>;
}

//! A V4L2 video capture endpoint: the device writes frames straight into
//! attached dma-bufs (`V4L2_MEMORY_DMABUF`), one fence per frame.
//!
//! # DOC: V4L2 capture
//!
//! The model, in the terms of [`Endpoint`]:
//!
//! * [`V4l2Capture::open`] opens `/dev/videoN` (non-blocking), checks that
//!   the node does single-planar video capture with streaming I/O
//!   (`VIDIOC_QUERYCAP`), sets the requested format (`VIDIOC_S_FMT`; the
//!   driver may adjust it, [`V4l2Capture::format`] says what it chose) and
//!   asks for `n_buffers` buffer slots of memory type DMABUF
//!   (`VIDIOC_REQBUFS`). The driver may grant more or fewer slots than
//!   asked; [`V4l2Capture::slots`] is its answer and the most buffers that
//!   can be attached at once.
//! * [`Endpoint::attach`] gives an attached buffer a slot of its own. Only
//!   kernel dma-bufs (heap, udmabuf, imported) can be attached: a device
//!   imports a dma-buf fd, never a memfd, so a portable buffer is refused
//!   with an error that says so. The buffer must hold a whole frame
//!   (`sizeimage` bytes). The data path is always
//!   [`DataPath::ZeroCopy`].
//! * [`Endpoint::transfer`] queues the buffer's slot (`VIDIOC_QBUF`, with
//!   `len` bytes offered to the device: at least `sizeimage`, at most the
//!   buffer's size) and returns a [`UserFence`] of the endpoint's
//!   [`FenceContext`]. The fence is added to the buffer's reservation as a
//!   **write** fence, so a CPU read window on the buffer waits for the
//!   frame. The first transfer starts streaming (`VIDIOC_STREAMON`).
//!   Before queueing, the transfer waits (at most the options' timeout) for
//!   every CPU window and fence on the buffer, since the device will write
//!   it, and publishes its fence in the same step under the reservation's
//!   lock (no window opens in between); a slot that is still queued is
//!   refused (wait for its fence first).
//! * The endpoint contract holds: attaching a buffer twice is refused with
//!   `EBUSY`, an attachment this device does not have gives
//!   [`ErrorKind::NotFound`] with `EPERM`, attachment ids are unique in
//!   the process.
//! * A worker thread polls the device and dequeues finished frames
//!   (`VIDIOC_DQBUF`). A frame's fence signals when it is dequeued; if the
//!   driver flagged it `V4L2_BUF_FLAG_ERROR` the fence fails with `EIO`.
//!   Fences signal in queue order (a frame finished early waits for the
//!   earlier ones), as timeline fences must. Each finished frame is
//!   recorded as a [`Frame`] (bytes used, sequence number, timestamp), see
//!   [`V4l2Capture::frame`] and [`V4l2Capture::last_frame`].
//! * V4L2 cannot take back one queued buffer: [`Endpoint::detach`] of a
//!   buffer that is queued stops the stream (`VIDIOC_STREAMOFF`), which
//!   returns **every** queued buffer; all their fences fail with
//!   `ECANCELED`, and the next transfer starts the stream again. Detaching
//!   a buffer that is not queued cancels nothing. When the last buffer is
//!   detached, the slots are released (`VIDIOC_REQBUFS` with count 0),
//!   which is also when the kernel lets go of the dma-bufs it imported
//!   (it keeps a slot's dma-buf until then, or until another buffer is
//!   queued in that slot); they are requested again at the next attach.
//!   Dropping the endpoint does the same for everything.
//! * Drivers built on videobuf2 may need several buffers queued before
//!   they start capturing (`min_queued_buffers`): until then fences stay
//!   pending, so wait with a timeout. (vivid, measured in the lab: a
//!   request for 1 slot is raised to 2, but one queued buffer is enough
//!   for it to capture.)
//! * The format is device state: it outlives the open file, so ask for
//!   the one you need rather than relying on the driver's default.
//!
//! All ioctls on the device and all changes to the queue state happen
//! under one lock, so a frame is never both dequeued and cancelled.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};

use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{Fence, FenceContext, UserFence};
use crate::reservation::{DeviceAccess, Usage};
use crate::sys::v4l2 as sys;

use super::common::{explain_busy, next_attachment_id};
use super::{Attachment, DataPath, Direction, Endpoint, TransferOptions};

/// The most buffer slots [`V4l2Capture::open`] asks for (videobuf2's
/// historical `VIDEO_MAX_FRAME`).
pub const MAX_SLOTS: u32 = 32;

/// A V4L2 pixel format code (fourcc), such as `YUYV`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl FourCc {
    /// The code of four ASCII characters.
    pub const fn new(code: &[u8; 4]) -> FourCc {
        FourCc(sys::fourcc(code))
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_le_bytes();
        if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            write!(f, "{}", String::from_utf8_lossy(&b).trim_end())
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCc({self})")
    }
}

impl FromStr for FourCc {
    type Err = Error;
    /// One to four printable ASCII characters (`YUYV`, `RGB3`, `GREY`);
    /// shorter codes are padded with spaces, as V4L2 does.
    fn from_str(s: &str) -> Result<FourCc> {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(Error::invalid(
                "pixel format",
                s,
                "a fourcc is 1 to 4 printable ASCII characters, such as YUYV or RGB3",
            ));
        }
        let mut code = [b' '; 4];
        code[..s.len()].copy_from_slice(s.as_bytes());
        Ok(FourCc::new(&code))
    }
}

/// The format the driver captures in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel format.
    pub pixelformat: FourCc,
    /// `enum v4l2_field` (1: progressive).
    pub field: u32,
    /// Bytes per line, including padding.
    pub bytesperline: u32,
    /// Bytes of one frame: the least a buffer must hold.
    pub sizeimage: u32,
}

impl Format {
    fn from_pix(p: &sys::V4l2PixFormat) -> Format {
        Format {
            width: p.width,
            height: p.height,
            pixelformat: FourCc(p.pixelformat),
            field: p.field,
            bytesperline: p.bytesperline,
            sizeimage: p.sizeimage,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} ({} bytes per line, {} bytes per frame)",
            self.width, self.height, self.pixelformat, self.bytesperline, self.sizeimage
        )
    }
}

/// What to ask the driver for; unset fields keep the driver's current
/// value. The default asks for nothing (the current format).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatRequest {
    /// Width in pixels.
    pub width: Option<u32>,
    /// Height in pixels.
    pub height: Option<u32>,
    /// Pixel format.
    pub pixelformat: Option<FourCc>,
}

impl FormatRequest {
    /// Whether anything is asked for.
    pub fn is_empty(&self) -> bool {
        self.width.is_none() && self.height.is_none() && self.pixelformat.is_none()
    }
}

/// What `VIDIOC_QUERYCAP` said about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Driver name (`"vivid"`).
    pub driver: String,
    /// Device name.
    pub card: String,
    /// Where the device sits (`"platform:vivid-000"`).
    pub bus_info: String,
    /// `V4L2_CAP_*` of the opened node.
    pub caps: u32,
}

/// One finished frame: what `VIDIOC_DQBUF` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The attachment whose buffer holds the frame.
    pub attachment: u64,
    /// The V4L2 buffer slot.
    pub index: u32,
    /// Sequence number of the fence of this transfer (see
    /// [`UserFence::seqno`]).
    pub fence_seqno: u64,
    /// Bytes the driver wrote.
    pub bytesused: u32,
    /// The driver's frame counter (gaps mean dropped frames).
    pub sequence: u32,
    /// Capture time (CLOCK_MONOTONIC for most drivers, see `flags`).
    pub timestamp: Duration,
    /// `V4L2_BUF_FLAG_*` as dequeued.
    pub flags: u32,
}

impl Frame {
    /// Whether the driver flagged the frame as corrupted
    /// (`V4L2_BUF_FLAG_ERROR`); its fence failed with `EIO`.
    pub fn is_error(&self) -> bool {
        self.flags & sys::V4L2_BUF_FLAG_ERROR != 0
    }
}

/// A queued transfer, by fence sequence number.
#[derive(Debug)]
struct Pending {
    index: u32,
    attachment: u64,
    fence: UserFence,
    /// Set when dequeued, while an earlier transfer is still queued.
    done: Option<Frame>,
}

#[derive(Debug, Default)]
struct State {
    streaming: bool,
    stop: bool,
    pending: BTreeMap<u64, Pending>,
    last: BTreeMap<u64, Frame>,
    last_frame: Option<Frame>,
    completed: u64,
    /// Why the worker stopped the stream on its own, if it did.
    error: Option<Error>,
}

#[derive(Debug)]
struct Shared {
    dev: OwnedFd,
    wake: OwnedFd,
    path: String,
    state: Mutex<State>,
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_worker(&self) {
        self.work.notify_all();
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// `VIDIOC_STREAMOFF` (if streaming) and failure of every pending
    /// fence with `errno`, in queue order. Called with the lock held.
    fn stop_stream(&self, st: &mut State, errno: Errno) -> Result<()> {
        let mut result = Ok(());
        if st.streaming {
            result = sys::streamoff(&self.dev, sys::V4L2_BUF_TYPE_VIDEO_CAPTURE)
                .map_err(|e| Error::os("v4l2 stream off", self.path.clone(), e));
            st.streaming = false;
        }
        for (_, p) in std::mem::take(&mut st.pending) {
            let _ = p.fence.fail(errno);
        }
        result
    }

    /// Records a dequeued buffer and signals the fences that may signal.
    fn complete(&self, st: &mut State, buf: &sys::V4l2Buffer) {
        let Some((&seq, _)) = st.pending.iter().find(|(_, p)| p.index == buf.index) else {
            return;
        };
        let p = st.pending.get_mut(&seq).expect("found above");
        let frame = Frame {
            attachment: p.attachment,
            index: buf.index,
            fence_seqno: seq,
            bytesused: buf.bytesused,
            sequence: buf.sequence,
            timestamp: Duration::new(
                buf.timestamp.tv_sec.max(0) as u64,
                (buf.timestamp.tv_usec.clamp(0, 999_999) * 1000) as u32,
            ),
            flags: buf.flags,
        };
        p.done = Some(frame);
        st.last.insert(frame.attachment, frame);
        st.last_frame = Some(frame);
        st.completed += 1;
        // Signal in queue order: the front while it is done.
        while let Some(entry) = st.pending.first_entry() {
            let Some(frame) = entry.get().done else {
                break;
            };
            let p = entry.remove();
            if frame.is_error() {
                let _ = p.fence.fail(Errno::IO);
            } else {
                let _ = p.fence.signal();
            }
        }
    }
}

/// The worker: waits for queued frames and dequeues them as they finish.
fn worker(shared: Arc<Shared>) {
    loop {
        {
            let mut st = shared.lock();
            while !st.stop && (st.pending.is_empty() || !st.streaming) {
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop {
                return;
            }
        }
        let mut fds = [
            PollFd::new(&shared.dev, PollFlags::IN),
            PollFd::new(&shared.wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let (dev_ev, wake_ev) = (fds[0].revents(), fds[1].revents());
        if !wake_ev.is_empty() {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&shared.wake, &mut b);
        }
        if dev_ev.is_empty() {
            continue;
        }
        let mut st = shared.lock();
        let mut got_one = false;
        while st.streaming && !st.pending.is_empty() {
            let mut buf = sys::V4l2Buffer {
                type_: sys::V4L2_BUF_TYPE_VIDEO_CAPTURE,
                memory: sys::V4L2_MEMORY_DMABUF,
                ..Default::default()
            };
            match sys::dqbuf(&shared.dev, &mut buf) {
                Ok(()) => {
                    got_one = true;
                    shared.complete(&mut st, &buf);
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    // The queue is in error (EIO) or ended (EPIPE): nothing
                    // queued will finish; give the buffers back.
                    let err = Error::kernel(
                        "v4l2 dequeue",
                        shared.path.clone(),
                        e,
                        "the driver stopped delivering frames; the stream was stopped and the queued frames failed",
                    );
                    let _ = shared.stop_stream(&mut st, e);
                    st.error = Some(err);
                    break;
                }
            }
        }
        drop(st);
        if !got_one && dev_ev.intersects(PollFlags::ERR | PollFlags::HUP) {
            // POLLERR with nothing to dequeue (e.g. between a stream-off
            // and the state change): do not spin.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// An attached buffer's slot.
#[derive(Debug)]
struct Slot {
    attachment: u64,
    buffer: Buffer,
}

/// A V4L2 capture device as an [`Endpoint`]. See the module documentation.
#[derive(Debug)]
pub struct V4l2Capture {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    info: DeviceInfo,
    format: Format,
    requested: u32,
    slots: Vec<Option<Slot>>,
    allocated: bool,
    buf_caps: u32,
    fences: FenceContext,
}

impl V4l2Capture {
    /// Opens the capture device at `path`, sets `format` (an empty request
    /// keeps the current one) and sets up `n_buffers` DMABUF slots
    /// (1..=[`MAX_SLOTS`]).
    pub fn open(
        path: impl AsRef<Path>,
        format: &FormatRequest,
        n_buffers: u32,
    ) -> Result<V4l2Capture> {
        let path_s = path.as_ref().display().to_string();
        if n_buffers == 0 || n_buffers > MAX_SLOTS {
            return Err(Error::invalid(
                "v4l2 open",
                path_s,
                format!("{n_buffers} buffers asked for; 1 to {MAX_SLOTS} are possible"),
            ));
        }
        let dev = rustix::fs::open(
            path.as_ref(),
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::kernel(
                "v4l2 open",
                path_s.clone(),
                e,
                "no such device node (is the driver loaded? vivid: modprobe vivid)",
            ),
            e => Error::os("v4l2 open", path_s.clone(), e),
        })?;
        let cap = sys::querycap(&dev).map_err(|e| match e {
            Errno::NOTTY | Errno::INVAL => Error::kernel(
                "v4l2 open",
                path_s.clone(),
                e,
                "not a V4L2 device (VIDIOC_QUERYCAP refused)",
            ),
            e => Error::os("v4l2 query capabilities", path_s.clone(), e),
        })?;
        let caps = cap.node_caps();
        let info = DeviceInfo {
            driver: crate::sys::from_c_name(&cap.driver),
            card: crate::sys::from_c_name(&cap.card),
            bus_info: crate::sys::from_c_name(&cap.bus_info),
            caps,
        };
        let obj = format!("{path_s} ({})", info.driver);
        if caps & sys::V4L2_CAP_VIDEO_CAPTURE == 0 {
            let why = if caps & sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE != 0 {
                "the node does only multi-planar capture, which this endpoint does not support"
                    .to_string()
            } else {
                format!("not a video capture node (capabilities {caps:#010x})")
            };
            return Err(
                Error::new(ErrorKind::NotSupported, "v4l2 open", obj, why).with_errno(Errno::NOTTY)
            );
        }
        if caps & sys::V4L2_CAP_STREAMING == 0 {
            return Err(Error::new(
                ErrorKind::NotSupported,
                "v4l2 open",
                obj,
                "the driver offers no streaming I/O (V4L2_CAP_STREAMING), so no DMABUF capture",
            )
            .with_errno(Errno::NOTTY));
        }
        let format = set_format(&dev, &obj, format)?;
        let (shared_dev, wake) = (
            dev,
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| Error::os("v4l2 open", "worker eventfd", e))?,
        );
        let shared = Arc::new(Shared {
            dev: shared_dev,
            wake,
            path: obj,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
        });
        let mut cap = V4l2Capture {
            shared: shared.clone(),
            worker: None,
            info,
            format,
            requested: n_buffers,
            slots: Vec::new(),
            allocated: false,
            buf_caps: 0,
            fences: FenceContext::new(&format!("v4l2:{path_s}")),
        };
        cap.request_slots()?;
        let handle = std::thread::Builder::new()
            .name("dmabuf-v4l2".into())
            .spawn(move || worker(shared))
            .map_err(|e| {
                Error::os(
                    "v4l2 open",
                    cap.shared.path.clone(),
                    Errno::from_io_error(&e).unwrap_or(Errno::AGAIN),
                )
            })?;
        cap.worker = Some(handle);
        Ok(cap)
    }

    /// `VIDIOC_REQBUFS` with the requested count.
    fn request_slots(&mut self) -> Result<()> {
        let mut req = sys::V4l2Requestbuffers {
            count: self.requested,
            type_: sys::V4L2_BUF_TYPE_VIDEO_CAPTURE,
            memory: sys::V4L2_MEMORY_DMABUF,
            ..Default::default()
        };
        sys::reqbufs(&self.shared.dev, &mut req).map_err(|e| match e {
            Errno::INVAL => Error::kernel(
                "v4l2 request buffers",
                self.shared.path.clone(),
                e,
                "the driver does not accept dma-buf buffers (V4L2_MEMORY_DMABUF)",
            ),
            Errno::BUSY => Error::kernel(
                "v4l2 request buffers",
                self.shared.path.clone(),
                e,
                "the device's buffers belong to another open file (is another program capturing?)",
            ),
            e => Error::os("v4l2 request buffers", self.shared.path.clone(), e),
        })?;
        if req.count == 0 {
            return Err(Error::kernel(
                "v4l2 request buffers",
                self.shared.path.clone(),
                Errno::NOMEM,
                format!(
                    "asked for {} buffers, the driver granted none",
                    self.requested
                ),
            ));
        }
        self.buf_caps = req.capabilities;
        self.slots.resize_with(req.count as usize, || None);
        self.allocated = true;
        Ok(())
    }

    /// `VIDIOC_REQBUFS` with count 0: the kernel lets go of the slots and
    /// of the dma-bufs it imported into them. Stops the stream first.
    fn release_slots(&mut self) -> Result<()> {
        {
            let mut st = self.shared.lock();
            self.shared.stop_stream(&mut st, Errno::CANCELED)?;
        }
        if !self.allocated {
            return Ok(());
        }
        let mut req = sys::V4l2Requestbuffers {
            count: 0,
            type_: sys::V4L2_BUF_TYPE_VIDEO_CAPTURE,
            memory: sys::V4L2_MEMORY_DMABUF,
            ..Default::default()
        };
        self.allocated = false;
        self.slots.clear();
        sys::reqbufs(&self.shared.dev, &mut req)
            .map_err(|e| Error::os("v4l2 release buffers", self.shared.path.clone(), e))
    }

    /// The device node's path and driver, as used in messages.
    pub fn describe(&self) -> &str {
        &self.shared.path
    }

    /// What the device said about itself.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The format the driver chose.
    pub fn format(&self) -> Format {
        self.format
    }

    /// How many buffer slots the driver granted (0 after the last
    /// detach, until the next attach asks again).
    pub fn slots(&self) -> u32 {
        self.slots.len() as u32
    }

    /// How many slots were asked for.
    pub fn requested_slots(&self) -> u32 {
        self.requested
    }

    /// `V4L2_BUF_CAP_*` that the driver reported for its queue.
    pub fn buffer_capabilities(&self) -> u32 {
        self.buf_caps
    }

    /// Whether the device is streaming now.
    pub fn is_streaming(&self) -> bool {
        self.shared.lock().streaming
    }

    /// Transfers queued and not yet signalled.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Frames dequeued since the endpoint was opened.
    pub fn frames_completed(&self) -> u64 {
        self.shared.lock().completed
    }

    /// The last finished frame of `attachment`'s buffer. Once the fence of
    /// a transfer has signalled, this is that transfer's frame (compare
    /// [`Frame::fence_seqno`] with the fence's sequence number).
    pub fn frame(&self, attachment: &Attachment) -> Option<Frame> {
        self.shared.lock().last.get(&attachment.id).copied()
    }

    /// The last frame dequeued from the device.
    pub fn last_frame(&self) -> Option<Frame> {
        self.shared.lock().last_frame
    }

    /// The error that made the worker stop the stream on its own (a queue
    /// error reported by `VIDIOC_DQBUF`), if that happened; the next
    /// transfer restarts the stream.
    pub fn stream_error(&self) -> Option<Error> {
        self.shared.lock().error.clone()
    }

    /// Stops the stream: every queued transfer is cancelled (fences fail
    /// with `ECANCELED`); attachments stay. The next transfer restarts it.
    pub fn stop(&mut self) -> Result<()> {
        let mut st = self.shared.lock();
        self.shared.stop_stream(&mut st, Errno::CANCELED)
    }

    /// Queues `attachment` with `len` bytes (see [`Endpoint::transfer`])
    /// and returns the user fence itself.
    pub fn queue(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<UserFence> {
        let op = "v4l2 transfer";
        let index = self.slot_of(op, attachment)?;
        let buffer = attachment.buffer.clone();
        let obj = || format!("{}: {}", self.shared.path, buffer.describe());
        if opts.flags != 0 {
            return Err(Error::invalid(
                op,
                obj(),
                format!("unknown transfer flags {:#x}; none are defined", opts.flags),
            ));
        }
        let need = u64::from(self.format.sizeimage);
        if len < need {
            return Err(Error::invalid(
                op,
                obj(),
                format!(
                    "length {len} is less than a frame of {} ({need} bytes)",
                    self.format
                ),
            ));
        }
        if len > buffer.size() || len > u64::from(u32::MAX) {
            return Err(Error::invalid(
                op,
                obj(),
                format!(
                    "length {len} is more than the buffer holds ({} bytes)",
                    buffer.size()
                ),
            ));
        }
        if self
            .shared
            .lock()
            .pending
            .values()
            .any(|p| p.index == index)
        {
            return Err(Error::new(
                ErrorKind::Busy,
                op,
                obj(),
                "the buffer is still queued; wait for its fence before queueing it again",
            )
            .with_errno(Errno::BUSY));
        }
        // The device will write the buffer: wait for every CPU window and
        // every fence on it (one that only has to have signalled: an
        // earlier frame that failed or was cancelled does not stop the
        // next capture), and publish the frame's fence in the same step,
        // so readers of the buffer wait for the frame and no window opens
        // before the device can touch the buffer.
        let deadline = Instant::now()
            + if opts.nonblocking {
                Duration::ZERO
            } else {
                opts.timeout
            };
        let fence = self.fences.next_fence()?;
        let seq = fence.seqno();
        let object = obj();
        buffer
            .reservation()
            .begin_device(
                Fence::User(fence.clone()),
                DeviceAccess {
                    op,
                    object: &object,
                    usage: Usage::Write,
                    deadline: Some(deadline),
                    dma_buf: buffer.dma_buf(),
                    skip: &|_| false,
                },
            )
            .map_err(|e| explain_busy(e, opts))?;
        let mut st = self.shared.lock();
        let mut vbuf = sys::V4l2Buffer {
            index,
            type_: sys::V4L2_BUF_TYPE_VIDEO_CAPTURE,
            memory: sys::V4L2_MEMORY_DMABUF,
            fd: buffer.fd().as_raw_fd(),
            length: len as u32,
            field: sys::V4L2_FIELD_ANY,
            ..Default::default()
        };
        if let Err(e) = sys::qbuf(&self.shared.dev, &mut vbuf) {
            let _ = fence.fail(e);
            let why = match e {
                Errno::INVAL => "VIDIOC_QBUF refused the buffer (the driver wants a larger or different buffer?)",
                Errno::FAULT => "the dma-buf is smaller than the length offered",
                _ => "VIDIOC_QBUF failed",
            };
            return Err(Error::kernel(op, obj(), e, why));
        }
        st.pending.insert(
            seq,
            Pending {
                index,
                attachment: attachment.id,
                fence: fence.clone(),
                done: None,
            },
        );
        if !st.streaming {
            if let Err(e) = sys::streamon(&self.shared.dev, sys::V4L2_BUF_TYPE_VIDEO_CAPTURE) {
                // Take the queued buffers back (STREAMOFF works when not
                // streaming) and fail their fences.
                let _ = sys::streamoff(&self.shared.dev, sys::V4L2_BUF_TYPE_VIDEO_CAPTURE);
                for (_, p) in std::mem::take(&mut st.pending) {
                    let _ = p.fence.fail(e);
                }
                return Err(Error::kernel(
                    "v4l2 stream on",
                    self.shared.path.clone(),
                    e,
                    "VIDIOC_STREAMON failed; the queued frames were cancelled",
                ));
            }
            st.streaming = true;
            st.error = None;
        }
        drop(st);
        self.shared.wake_worker();
        Ok(fence)
    }

    fn slot_of(&self, op: &'static str, att: &Attachment) -> Result<u32> {
        self.slots
            .iter()
            .position(|s| {
                s.as_ref()
                    .is_some_and(|s| s.attachment == att.id && s.buffer.same_as(&att.buffer))
            })
            .map(|i| i as u32)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    op,
                    format!("{}: {}", self.shared.path, att.buffer.describe()),
                    format!(
                        "attachment #{} is not attached to this device (never attached, or \
                         detached)",
                        att.id
                    ),
                )
                .with_errno(Errno::PERM)
            })
    }
}

/// `VIDIOC_G_FMT`, then `VIDIOC_S_FMT` with the requested fields.
fn set_format(dev: &OwnedFd, obj: &str, req: &FormatRequest) -> Result<Format> {
    let mut fmt = sys::g_fmt(dev, sys::V4L2_BUF_TYPE_VIDEO_CAPTURE)
        .map_err(|e| Error::os("v4l2 get format", obj, e))?;
    if !req.is_empty() {
        if let Some(w) = req.width {
            fmt.pix.width = w;
        }
        if let Some(h) = req.height {
            fmt.pix.height = h;
        }
        if let Some(p) = req.pixelformat {
            fmt.pix.pixelformat = p.0;
        }
        // Let the driver recompute the derived fields.
        fmt.pix.bytesperline = 0;
        fmt.pix.sizeimage = 0;
        fmt.pix.field = sys::V4L2_FIELD_ANY;
        sys::s_fmt(dev, &mut fmt).map_err(|e| match e {
            Errno::BUSY => Error::kernel(
                "v4l2 set format",
                obj,
                e,
                "the format cannot change now (buffers are set up, perhaps by another program)",
            ),
            e => Error::os("v4l2 set format", obj, e),
        })?;
    }
    let format = Format::from_pix(&fmt.pix);
    if format.sizeimage == 0 {
        return Err(Error::kernel(
            "v4l2 get format",
            obj,
            Errno::INVAL,
            format!("the driver reports a frame size of 0 bytes for {format}"),
        ));
    }
    Ok(format)
}

impl Endpoint for V4l2Capture {
    fn direction(&self) -> Direction {
        Direction::FromDevice
    }

    fn data_path(&self) -> DataPath {
        DataPath::ZeroCopy
    }

    fn attach(&mut self, buffer: &Buffer) -> Result<Attachment> {
        let op = "v4l2 attach";
        let obj = format!("{}: {}", self.shared.path, buffer.describe());
        if !buffer.kind().is_dma_buf() {
            return Err(Error::new(
                ErrorKind::NotSupported,
                op,
                obj,
                "a portable buffer is a memfd, not a dma-buf, and a V4L2 device can only import dma-bufs; allocate it from a DMA heap or udmabuf",
            )
            .with_errno(Errno::INVAL));
        }
        let need = u64::from(self.format.sizeimage);
        if buffer.size() < need {
            return Err(Error::invalid(
                op,
                obj,
                format!(
                    "the buffer holds {} bytes; a frame of {} needs {need}",
                    buffer.size(),
                    self.format
                ),
            ));
        }
        if let Some(s) = self
            .slots
            .iter()
            .flatten()
            .find(|s| s.buffer.same_as(buffer))
        {
            return Err(Error::new(
                ErrorKind::Busy,
                op,
                obj,
                format!("already attached (attachment #{})", s.attachment),
            )
            .with_errno(Errno::BUSY));
        }
        if !self.allocated {
            self.request_slots()?;
        }
        let Some(free) = self.slots.iter().position(Option::is_none) else {
            return Err(Error::new(
                ErrorKind::Busy,
                op,
                obj,
                format!(
                    "all {} buffer slots the driver granted are attached; open the device with more buffers",
                    self.slots.len()
                ),
            )
            .with_errno(Errno::BUSY));
        };
        let id = next_attachment_id();
        self.slots[free] = Some(Slot {
            attachment: id,
            buffer: buffer.clone(),
        });
        Ok(Attachment {
            id,
            buffer: buffer.clone(),
        })
    }

    fn transfer(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence> {
        self.queue(attachment, len, opts).map(Fence::User)
    }

    fn detach(&mut self, attachment: &Attachment) -> Result<()> {
        let index = self.slot_of("v4l2 detach", attachment)?;
        {
            let mut st = self.shared.lock();
            if st.pending.values().any(|p| p.index == index) {
                self.shared.stop_stream(&mut st, Errno::CANCELED)?;
            }
        }
        self.slots[index as usize] = None;
        if self.slots.iter().all(Option::is_none) {
            self.release_slots()?;
        }
        Ok(())
    }
}

impl Drop for V4l2Capture {
    fn drop(&mut self) {
        let _ = self.release_slots();
        self.shared.lock().stop = true;
        self.shared.wake_worker();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourcc_parses_and_prints() {
        let f: FourCc = "YUYV".parse().unwrap();
        assert_eq!(f.0, sys::V4L2_PIX_FMT_YUYV);
        assert_eq!(f.to_string(), "YUYV");
        assert_eq!("RGB3".parse::<FourCc>().unwrap().0, sys::V4L2_PIX_FMT_RGB24);
        // Short codes are space-padded, as in videodev2.h (`'Y','1','6',' '`).
        let y16: FourCc = "Y16".parse().unwrap();
        assert_eq!(y16, FourCc::new(b"Y16 "));
        assert_eq!(y16.to_string(), "Y16");
        for bad in ["", "TOOLONG", "YU V", "é"] {
            let e = bad.parse::<FourCc>().unwrap_err();
            assert_eq!(e.errno(), Some(Errno::INVAL), "{bad}");
            assert!(e.to_string().contains("fourcc"), "{e}");
        }
        assert_eq!(FourCc(0x0102_0304).to_string(), "0x01020304");
    }

    #[test]
    fn open_refuses_bad_slot_counts_before_touching_the_device() {
        for n in [0, MAX_SLOTS + 1] {
            let e =
                V4l2Capture::open("/nonexistent/video9", &FormatRequest::default(), n).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains("/nonexistent/video9"), "{e}");
        }
    }

    #[test]
    fn open_of_a_missing_node_says_so() {
        let e = V4l2Capture::open("/nonexistent/video9", &FormatRequest::default(), 2).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOENT));
        assert!(e.to_string().contains("no such device node"), "{e}");
    }

    #[test]
    fn open_of_a_non_v4l2_file_is_refused() {
        // /dev/null answers ENOTTY to VIDIOC_QUERYCAP.
        let e = V4l2Capture::open("/dev/null", &FormatRequest::default(), 2).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOTTY), "{e}");
        assert!(e.to_string().contains("not a V4L2 device"), "{e}");
    }
}

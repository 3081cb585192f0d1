//! The queue both endpoints are made of: opening and checking the node,
//! buffer slots (`VIDIOC_REQBUFS`), attachments of buffers and frames,
//! queueing with the reservation's one-step wait-and-publish, detaching.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags, PollFlags};
use rustix::fs::{Mode, OFlags};

use super::format::{set_format, Format, FormatRequest};
use super::worker::{worker, FrameRecord, Pending, Shared, State};
use super::{DeviceInfo, FrameAttachment, MAX_SLOTS};
use crate::access::Access;
use crate::buffer::Buffer;
use crate::endpoint::common::{explain_busy, next_attachment_id};
use crate::endpoint::{Attachment, Direction, TransferOptions};
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{Fence, FenceContext, UserFence};
use crate::frame::Frame;
use crate::reservation::DeviceAccess;
use crate::sys::v4l2 as sys;

/// One memory plane of a slot: which of the slot's buffers, and where
/// the plane starts in it.
#[derive(Debug, Clone, Copy)]
struct MemPlane {
    buffer: usize,
    data_offset: u32,
}

/// An attached buffer or frame's slot.
#[derive(Debug)]
struct Slot {
    attachment: u64,
    /// Distinct buffers, each once.
    buffers: Vec<Buffer>,
    planes: Vec<MemPlane>,
    /// Set for frame attachments.
    frame: Option<Frame>,
}

/// A V4L2 video queue of dma-buf buffers: what [`V4l2Capture`] and
/// [`V4l2Output`] share (both dereference to it). See the [module
/// documentation](super).
///
/// [`V4l2Capture`]: super::V4l2Capture
/// [`V4l2Output`]: super::V4l2Output
#[derive(Debug)]
pub struct V4l2Queue {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    info: DeviceInfo,
    format: Format,
    direction: Direction,
    requested: u32,
    slots: Vec<Option<Slot>>,
    allocated: bool,
    buf_caps: u32,
    fences: FenceContext,
}

impl V4l2Queue {
    /// Opens the node for `direction` (see the endpoints' `open`).
    pub(super) fn open(
        path: &Path,
        direction: Direction,
        format: &FormatRequest,
        n_buffers: u32,
    ) -> Result<V4l2Queue> {
        let path_s = path.display().to_string();
        if n_buffers == 0 || n_buffers > MAX_SLOTS {
            return Err(Error::invalid(
                "v4l2 open",
                path_s,
                format!("{n_buffers} buffers asked for; 1 to {MAX_SLOTS} are possible"),
            ));
        }
        let (dev, info) = query(path)?;
        let caps = info.caps;
        let obj = format!("{path_s} ({})", info.driver);
        let type_ = buffer_type(direction, caps).ok_or_else(|| {
            let what = match direction {
                Direction::FromDevice => "video capture",
                Direction::ToDevice => "video output",
            };
            Error::new(
                ErrorKind::NotSupported,
                "v4l2 open",
                obj.clone(),
                format!("not a {what} node, single- or multi-planar (capabilities {caps:#010x})"),
            )
            .with_errno(Errno::NOTTY)
        })?;
        if caps & sys::V4L2_CAP_STREAMING == 0 {
            return Err(Error::new(
                ErrorKind::NotSupported,
                "v4l2 open",
                obj,
                "the driver offers no streaming I/O (V4L2_CAP_STREAMING), so no DMABUF queue",
            )
            .with_errno(Errno::NOTTY));
        }
        let format = set_format(&dev, type_, &obj, format)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::os("v4l2 open", "worker eventfd", e))?;
        let shared = Arc::new(Shared {
            dev,
            wake,
            path: obj,
            type_,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
        });
        let mut q = V4l2Queue {
            shared: shared.clone(),
            worker: None,
            info,
            format,
            direction,
            requested: n_buffers,
            slots: Vec::new(),
            allocated: false,
            buf_caps: 0,
            fences: FenceContext::new(&format!("v4l2:{path_s}")),
        };
        q.request_slots()?;
        let ready = match direction {
            Direction::FromDevice => PollFlags::IN,
            Direction::ToDevice => PollFlags::OUT,
        };
        let handle = std::thread::Builder::new()
            .name("dmabuf-v4l2".into())
            .spawn(move || worker(shared, ready))
            .map_err(|e| {
                Error::os(
                    "v4l2 open",
                    q.shared.path.clone(),
                    Errno::from_io_error(&e).unwrap_or(Errno::AGAIN),
                )
            })?;
        q.worker = Some(handle);
        Ok(q)
    }

    fn dev(&self) -> &OwnedFd {
        &self.shared.dev
    }

    /// `VIDIOC_REQBUFS` with the requested count.
    fn request_slots(&mut self) -> Result<()> {
        let mut req = sys::V4l2Requestbuffers {
            count: self.requested,
            type_: self.shared.type_,
            memory: sys::V4L2_MEMORY_DMABUF,
            ..Default::default()
        };
        sys::reqbufs(self.dev(), &mut req).map_err(|e| match e {
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
                "the device's buffers belong to another open file (is another program using it?)",
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
            type_: self.shared.type_,
            memory: sys::V4L2_MEMORY_DMABUF,
            ..Default::default()
        };
        self.allocated = false;
        self.slots.clear();
        sys::reqbufs(self.dev(), &mut req)
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
        self.format.clone()
    }

    /// Whether the node uses the multi-planar API.
    pub fn is_multiplanar(&self) -> bool {
        self.format.multiplanar
    }

    /// Which way frames move.
    pub fn queue_direction(&self) -> Direction {
        self.direction
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
    /// [`FrameRecord::fence_seqno`] with the fence's sequence number).
    pub fn frame(&self, attachment: &Attachment) -> Option<FrameRecord> {
        self.shared.lock().last.get(&attachment.id).cloned()
    }

    /// The last finished frame of a frame attachment (see
    /// [`V4l2Queue::frame`]).
    pub fn frame_record(&self, attachment: &FrameAttachment) -> Option<FrameRecord> {
        self.shared.lock().last.get(&attachment.id).cloned()
    }

    /// The last frame dequeued from the device.
    pub fn last_frame(&self) -> Option<FrameRecord> {
        self.shared.lock().last_frame.clone()
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

    fn obj_of(&self, buffer: &Buffer) -> String {
        format!("{}: {}", self.shared.path, buffer.describe())
    }

    /// Refuses what no slot can take: a portable buffer, a buffer that
    /// is attached already.
    fn check_new_buffer(&self, op: &'static str, obj: &str, buffer: &Buffer) -> Result<()> {
        if !buffer.kind().is_dma_buf() {
            return Err(Error::new(
                ErrorKind::NotSupported,
                op,
                obj,
                "a portable buffer is a memfd, not a dma-buf, and a V4L2 device can only import dma-bufs; allocate it from a DMA heap or udmabuf",
            )
            .with_errno(Errno::INVAL));
        }
        if let Some(s) = self
            .slots
            .iter()
            .flatten()
            .find(|s| s.buffers.iter().any(|b| b.same_as(buffer)))
        {
            return Err(Error::new(
                ErrorKind::Busy,
                op,
                obj,
                format!("already attached (attachment #{})", s.attachment),
            )
            .with_errno(Errno::BUSY));
        }
        Ok(())
    }

    /// Puts `slot` in a free slot, asking for slots first if released.
    fn insert_slot(&mut self, op: &'static str, obj: &str, mut slot: Slot) -> Result<u64> {
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
        slot.attachment = id;
        self.slots[free] = Some(slot);
        Ok(id)
    }

    /// Attaches one buffer holding the format's only memory plane at
    /// offset 0 (what [`Endpoint::attach`](crate::endpoint::Endpoint::attach)
    /// does).
    pub(super) fn attach_buffer(&mut self, buffer: &Buffer) -> Result<Attachment> {
        let op = "v4l2 attach";
        let obj = self.obj_of(buffer);
        self.check_new_buffer(op, &obj, buffer)?;
        if self.format.planes.len() != 1 {
            return Err(Error::invalid(
                op,
                obj,
                format!(
                    "{} has {} memory planes, one buffer each; attach a frame (attach_frame) instead",
                    self.format,
                    self.format.planes.len()
                ),
            ));
        }
        let need = u64::from(self.format.planes[0].sizeimage);
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
        let id = self.insert_slot(
            op,
            &obj,
            Slot {
                attachment: 0,
                buffers: vec![buffer.clone()],
                planes: vec![MemPlane {
                    buffer: 0,
                    data_offset: 0,
                }],
                frame: None,
            },
        )?;
        trace_event!(DEBUG, endpoint = %obj, path = "zero-copy", "endpoint chose a data path");
        Ok(Attachment {
            id,
            buffer: buffer.clone(),
        })
    }

    /// Attaches a frame: its planes must be laid out as the driver's
    /// format says (same DRM format, size, LINEAR, strides equal to
    /// `bytesperline`, planes where V4L2 puts them), each memory plane in
    /// a dma-buf that holds it. See the module documentation for where a
    /// memory plane may start in its buffer.
    pub fn attach_frame(&mut self, frame: &Frame) -> Result<FrameAttachment> {
        let op = "v4l2 attach frame";
        let obj = format!("{}: frame {frame}", self.shared.path);
        for b in frame.buffers() {
            self.check_new_buffer(op, &format!("{obj}, {}", b.describe()), b)?;
        }
        let planes = memory_planes(&self.format, self.direction, op, &obj, frame)?;
        let id = self.insert_slot(
            op,
            &obj,
            Slot {
                attachment: 0,
                buffers: frame.buffers().to_vec(),
                planes,
                frame: Some(frame.clone()),
            },
        )?;
        Ok(FrameAttachment {
            id,
            frame: frame.clone(),
        })
    }

    fn slot_index(
        &self,
        op: &'static str,
        id: u64,
        matches: impl Fn(&Slot) -> bool,
        obj: String,
    ) -> Result<u32> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.attachment == id && matches(s)))
            .map(|i| i as u32)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    op,
                    obj,
                    format!(
                        "attachment #{id} is not attached to this device (never attached, or \
                         detached)"
                    ),
                )
                .with_errno(Errno::PERM)
            })
    }

    pub(super) fn slot_of(&self, op: &'static str, att: &Attachment) -> Result<u32> {
        self.slot_index(
            op,
            att.id,
            |s| s.frame.is_none() && s.buffers[0].same_as(&att.buffer),
            self.obj_of(&att.buffer),
        )
    }

    fn frame_slot_of(&self, op: &'static str, att: &FrameAttachment) -> Result<u32> {
        self.slot_index(
            op,
            att.id,
            |s| {
                s.frame.is_some()
                    && s.buffers.len() == att.frame.buffers().len()
                    && s.buffers
                        .iter()
                        .zip(att.frame.buffers())
                        .all(|(a, b)| a.same_as(b))
            },
            format!("{}: frame {}", self.shared.path, att.frame),
        )
    }

    /// Queues `attachment` with `len` bytes: offered to the device on
    /// capture, the frame's bytes on output; at least a frame
    /// (`sizeimage`), at most the buffer. Returns the user fence itself.
    pub fn queue(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<UserFence> {
        let op = "v4l2 transfer";
        let index = self.slot_of(op, attachment)?;
        let buffer = &attachment.buffer;
        let obj = self.obj_of(buffer);
        let need = u64::from(self.format.sizeimage);
        if len < need {
            return Err(Error::invalid(
                op,
                obj,
                format!(
                    "length {len} is less than a frame of {} ({need} bytes)",
                    self.format
                ),
            ));
        }
        if len > buffer.size() || len > u64::from(u32::MAX) {
            return Err(Error::invalid(
                op,
                obj,
                format!(
                    "length {len} is more than the buffer holds ({} bytes)",
                    buffer.size()
                ),
            ));
        }
        self.queue_slot(op, obj, index, Some(len as u32), opts)
    }

    /// Queues a frame attachment: the device writes (capture) or reads
    /// (output) every memory plane; one fence for the frame.
    pub fn queue_frame(
        &mut self,
        attachment: &FrameAttachment,
        opts: TransferOptions,
    ) -> Result<UserFence> {
        let op = "v4l2 queue frame";
        let index = self.frame_slot_of(op, attachment)?;
        let obj = format!("{}: frame {}", self.shared.path, attachment.frame);
        self.queue_slot(op, obj, index, None, opts)
    }

    /// Queues slot `index`: `len` is the single-buffer transfer's length
    /// (`None`: each memory plane's buffer whole, `bytesused` its
    /// `data_offset + sizeimage`).
    fn queue_slot(
        &mut self,
        op: &'static str,
        obj: String,
        index: u32,
        len: Option<u32>,
        opts: TransferOptions,
    ) -> Result<UserFence> {
        if opts.flags != 0 {
            return Err(Error::invalid(
                op,
                obj,
                format!("unknown transfer flags {:#x}; none are defined", opts.flags),
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
                obj,
                "the buffer is still queued; wait for its fence before queueing it again",
            )
            .with_errno(Errno::BUSY));
        }
        let slot = self.slots[index as usize]
            .as_ref()
            .expect("slot_of found it");
        let (attachment, buffers, mem) =
            (slot.attachment, slot.buffers.clone(), slot.planes.clone());
        // Capture: the device writes the buffers, so wait for every CPU
        // window and fence on them. Output: it reads them, so wait for
        // CPU writers and write fences. Each buffer publishes the frame's
        // fence in the same step (no window opens in between); fences
        // that only have to have signalled do not stop the next frame.
        let access = match self.direction {
            Direction::FromDevice => Access::Write,
            Direction::ToDevice => Access::Read,
        };
        let deadline = Instant::now()
            + if opts.nonblocking {
                Duration::ZERO
            } else {
                opts.timeout
            };
        let fence = self.fences.next_fence()?;
        let seq = fence.seqno();
        for b in &buffers {
            let object = format!("{obj} ({})", b.describe());
            if let Err(e) = b.reservation().begin_device(
                Fence::User(fence.clone()),
                DeviceAccess {
                    op,
                    object: &object,
                    access,
                    deadline: Some(deadline),
                    dma_buf: b.dma_buf(),
                    skip: &|_| false,
                },
            ) {
                // Buffers before this one already carry the fence: end it.
                let _ = fence.fail(Errno::CANCELED);
                return Err(explain_busy(e, opts));
            }
        }
        let output = self.direction == Direction::ToDevice;
        let mut vbuf = sys::V4l2Buffer {
            index,
            type_: self.shared.type_,
            memory: sys::V4L2_MEMORY_DMABUF,
            field: if output {
                self.format.field
            } else {
                sys::V4L2_FIELD_ANY
            },
            ..Default::default()
        };
        let mut st = self.shared.lock();
        let r = if self.format.multiplanar {
            let mut planes: Vec<sys::V4l2Plane> = mem
                .iter()
                .zip(&self.format.planes)
                .map(|(m, pf)| {
                    let b = &buffers[m.buffer];
                    let length = len.unwrap_or(b.size() as u32);
                    let mut p = sys::V4l2Plane {
                        length,
                        data_offset: m.data_offset,
                        ..Default::default()
                    };
                    p.set_fd(b.fd().as_raw_fd());
                    if output {
                        p.bytesused = len.unwrap_or(m.data_offset + pf.sizeimage);
                    }
                    p
                })
                .collect();
            sys::qbuf_planes(self.dev(), &mut vbuf, &mut planes)
        } else {
            let b = &buffers[0];
            vbuf.set_fd(b.fd().as_raw_fd());
            vbuf.length = len.unwrap_or(b.size() as u32);
            if output {
                vbuf.bytesused = len.unwrap_or(self.format.sizeimage);
            }
            sys::qbuf(self.dev(), &mut vbuf)
        };
        if let Err(e) = r {
            let _ = fence.fail(e);
            let why = match e {
                Errno::INVAL => "VIDIOC_QBUF refused the buffer (the driver wants a larger or different buffer?)",
                Errno::FAULT => "the dma-buf is smaller than the length offered",
                _ => "VIDIOC_QBUF failed",
            };
            return Err(Error::kernel(op, obj, e, why));
        }
        st.pending.insert(
            seq,
            Pending {
                index,
                attachment,
                fence: fence.clone(),
                done: None,
            },
        );
        if !st.streaming {
            if let Err(e) = sys::streamon(self.dev(), self.shared.type_) {
                // Take the queued buffers back (STREAMOFF works when not
                // streaming) and fail their fences.
                let _ = sys::streamoff(self.dev(), self.shared.type_);
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

    /// Detaches slot `index`: a queued buffer stops the stream (which
    /// cancels every queued frame); the last detach releases the slots.
    fn detach_slot(&mut self, index: u32) -> Result<()> {
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

    pub(super) fn detach_buffer(&mut self, attachment: &Attachment) -> Result<()> {
        let index = self.slot_of("v4l2 detach", attachment)?;
        self.detach_slot(index)
    }

    /// Detaches a frame (see [`Endpoint::detach`](crate::endpoint::Endpoint::detach)).
    pub fn detach_frame(&mut self, attachment: &FrameAttachment) -> Result<()> {
        let index = self.frame_slot_of("v4l2 detach frame", attachment)?;
        self.detach_slot(index)
    }
}

/// Where each memory plane of the driver's format lies in `frame`.
fn memory_planes(
    format: &Format,
    direction: Direction,
    op: &'static str,
    obj: &str,
    frame: &Frame,
) -> Result<Vec<MemPlane>> {
    let bad = |why: String| Error::invalid(op, obj, why);
    let want = format.layout()?;
    let got = frame.layout();
    if got.format != want.format
        || got.width != want.width
        || got.height != want.height
        || !got.modifier.is_linear()
        || got.planes.len() != want.planes.len()
    {
        return Err(bad(format!(
            "the device's format is {want} ({}); the frame must match it",
            format.pixelformat
        )));
    }
    for (i, (g, w)) in got.planes.iter().zip(&want.planes).enumerate() {
        if g.stride != w.stride {
            return Err(bad(format!(
                "plane {i} has a stride of {} bytes; the driver's format has {} (bytesperline)",
                g.stride, w.stride
            )));
        }
    }
    let mut planes = Vec::new();
    if format.planes.len() == 1 {
        // One memory plane (NV12, YUYV…): every plane in one buffer,
        // at V4L2's offsets from the first.
        let base = got.planes[0].offset;
        for (i, (g, w)) in got.planes.iter().zip(&want.planes).enumerate() {
            if g.buffer != got.planes[0].buffer {
                return Err(bad(format!(
                    "V4L2 format {} keeps every plane in one buffer; plane {i} is in another",
                    format.pixelformat
                )));
            }
            if g.offset.checked_sub(base) != Some(w.offset) {
                return Err(bad(format!(
                    "plane {i} is at offset {}; V4L2 format {} puts it {} bytes after plane 0 (at {})",
                    g.offset,
                    format.pixelformat,
                    w.offset,
                    base.saturating_add(w.offset)
                )));
            }
        }
        planes.push((got.planes[0].buffer, base));
    } else {
        planes.extend(got.planes.iter().map(|p| (p.buffer, p.offset)));
    }
    let mut out = Vec::new();
    for (i, (buffer, offset)) in planes.into_iter().enumerate() {
        if offset != 0 && direction == Direction::FromDevice {
            return Err(bad(format!(
                "memory plane {i} starts at offset {offset} of its buffer; a capture device \
                 writes each memory plane at the start of its dma-buf (videobuf2 ignores \
                 data_offset on capture)"
            )));
        }
        if offset != 0 && !format.multiplanar {
            return Err(bad(format!(
                "memory plane {i} starts at offset {offset} of its buffer; the single-planar \
                 API has no data_offset, so the frame must start at offset 0"
            )));
        }
        if direction == Direction::FromDevice && out.iter().any(|m: &MemPlane| m.buffer == buffer) {
            return Err(bad(format!(
                "memory planes {} and {i} share a buffer; a capture device writes each at \
                 the start of its dma-buf, so each needs a buffer of its own",
                out.iter()
                    .position(|m: &MemPlane| m.buffer == buffer)
                    .unwrap_or(0)
            )));
        }
        let size = frame.buffers()[buffer].size();
        let need = offset + u64::from(format.planes[i].sizeimage);
        if size < need || size > u64::from(u32::MAX) {
            return Err(bad(format!(
                "memory plane {i} needs {} bytes from offset {offset} (sizeimage); its buffer \
                 holds {size} (at most 4 GiB can be offered to V4L2)",
                format.planes[i].sizeimage
            )));
        }
        let data_offset = u32::try_from(offset).map_err(|_| bad("offset past 4 GiB".into()))?;
        out.push(MemPlane {
            buffer,
            data_offset,
        });
    }
    Ok(out)
}

/// Opens the node at `path` (non-blocking) and asks what it is.
pub(super) fn query(path: &Path) -> Result<(OwnedFd, DeviceInfo)> {
    let path_s = path.display().to_string();
    let dev = rustix::fs::open(
        path,
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
    let info = DeviceInfo {
        driver: crate::sys::from_c_name(&cap.driver),
        card: crate::sys::from_c_name(&cap.card),
        bus_info: crate::sys::from_c_name(&cap.bus_info),
        caps: cap.node_caps(),
    };
    Ok((dev, info))
}

/// The buffer type a node with `caps` uses for `direction`, preferring
/// the single-planar API when the node has both.
pub(super) fn buffer_type(direction: Direction, caps: u32) -> Option<u32> {
    let (single, multi) = match direction {
        Direction::FromDevice => (
            (
                sys::V4L2_CAP_VIDEO_CAPTURE,
                sys::V4L2_BUF_TYPE_VIDEO_CAPTURE,
            ),
            (
                sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE,
                sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
            ),
        ),
        Direction::ToDevice => (
            (sys::V4L2_CAP_VIDEO_OUTPUT, sys::V4L2_BUF_TYPE_VIDEO_OUTPUT),
            (
                sys::V4L2_CAP_VIDEO_OUTPUT_MPLANE,
                sys::V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE,
            ),
        ),
    };
    [single, multi]
        .into_iter()
        .find(|(cap, _)| caps & cap != 0)
        .map(|(_, t)| t)
}

impl Drop for V4l2Queue {
    fn drop(&mut self) {
        let _ = self.release_slots();
        self.shared.lock().stop = true;
        self.shared.wake_worker();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

/// The device node, for `poll` and driver ioctls the library does not
/// make (controls, say). Buffers queued or dequeued on it behind the
/// endpoint's back are not tracked: use the endpoint for those.
impl AsFd for V4l2Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::v4l2::PlaneFormat;
    use crate::frame::{FrameOptions, Placement};
    use crate::{Fourcc, Portable};

    fn nv12_format(code: &[u8; 4], planes: &[u32], multiplanar: bool) -> Format {
        Format {
            width: 1280,
            height: 720,
            pixelformat: super::super::FourCc::new(code),
            field: 1,
            bytesperline: 1280,
            sizeimage: planes.iter().sum(),
            planes: planes
                .iter()
                .map(|&s| PlaneFormat {
                    bytesperline: 1280,
                    sizeimage: s,
                })
                .collect(),
            multiplanar,
        }
    }

    fn frame(placement: Placement, align: u32) -> Frame {
        let opts = FrameOptions {
            placement,
            stride_align: align,
            ..FrameOptions::default()
        };
        Frame::allocate(&Portable, Fourcc::NV12, 1280, 720, &opts).unwrap()
    }

    fn plan(f: &Format, d: Direction, fr: &Frame) -> Result<Vec<(usize, u32)>> {
        memory_planes(f, d, "test", "obj", fr)
            .map(|v| v.iter().map(|m| (m.buffer, m.data_offset)).collect())
    }

    #[test]
    fn frames_map_to_memory_planes_as_v4l2_lays_them_out() {
        let (cap, out) = (Direction::FromDevice, Direction::ToDevice);
        let nv12 = nv12_format(b"NV12", &[1_382_400], true);
        let nm12 = nv12_format(b"NM12", &[921_600, 460_800], true);
        let contiguous = frame(Placement::Contiguous, 64);
        let per_plane = frame(Placement::PerPlane, 64);
        // NV12: one memory plane holding both planes.
        assert_eq!(plan(&nv12, cap, &contiguous).unwrap(), vec![(0, 0)]);
        let e = plan(&nv12, cap, &per_plane).unwrap_err();
        assert!(
            e.to_string().contains("keeps every plane in one buffer"),
            "{e}"
        );
        // NM12: a buffer per plane on capture.
        assert_eq!(plan(&nm12, cap, &per_plane).unwrap(), vec![(0, 0), (1, 0)]);
        let e = plan(&nm12, cap, &contiguous).unwrap_err();
        assert!(
            e.to_string().contains("ignores data_offset on capture"),
            "{e}"
        );
        // ... and on multi-planar output, one buffer with a data_offset.
        assert_eq!(
            plan(&nm12, out, &contiguous).unwrap(),
            vec![(0, 0), (0, 921_600)]
        );
        // The single-planar API has no data_offset.
        let nm12_single = nv12_format(b"NM12", &[921_600, 460_800], false);
        let e = plan(&nm12_single, out, &contiguous).unwrap_err();
        assert!(e.to_string().contains("no data_offset"), "{e}");
        // Strides must be the driver's.
        let e = plan(&nv12, cap, &frame(Placement::Contiguous, 512)).unwrap_err();
        assert!(e.to_string().contains("stride of 1536"), "{e}");
        // A driver sizeimage past what the buffer holds.
        let big = nv12_format(b"NV12", &[1_382_400 + 8192], true);
        let e = plan(&big, cap, &contiguous).unwrap_err();
        assert!(e.to_string().contains("sizeimage"), "{e}");
        // Another format or size.
        let small =
            Frame::allocate(&Portable, Fourcc::NV12, 640, 360, &FrameOptions::default()).unwrap();
        let e = plan(&nv12, cap, &small).unwrap_err();
        assert!(e.to_string().contains("frame must match"), "{e}");
        assert_eq!(e.errno(), Some(Errno::INVAL));
    }

    #[test]
    fn buffer_types_follow_the_node_caps() {
        let cap = Direction::FromDevice;
        let out = Direction::ToDevice;
        assert_eq!(
            buffer_type(cap, sys::V4L2_CAP_VIDEO_CAPTURE),
            Some(sys::V4L2_BUF_TYPE_VIDEO_CAPTURE)
        );
        assert_eq!(
            buffer_type(cap, sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE),
            Some(sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE)
        );
        assert_eq!(buffer_type(cap, sys::V4L2_CAP_VIDEO_OUTPUT), None);
        assert_eq!(
            buffer_type(out, sys::V4L2_CAP_VIDEO_OUTPUT_MPLANE),
            Some(sys::V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE)
        );
        assert_eq!(
            buffer_type(
                out,
                sys::V4L2_CAP_VIDEO_OUTPUT | sys::V4L2_CAP_VIDEO_OUTPUT_MPLANE
            ),
            Some(sys::V4L2_BUF_TYPE_VIDEO_OUTPUT)
        );
        assert_eq!(buffer_type(out, sys::V4L2_CAP_VIDEO_CAPTURE), None);
    }
}

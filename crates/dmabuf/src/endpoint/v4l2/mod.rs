//! V4L2 video endpoints: a capture device writes frames straight into
//! attached dma-bufs, an output device reads them (`V4L2_MEMORY_DMABUF`),
//! single- or multi-planar, one fence per frame.
//!
//! # DOC: V4L2 capture and output
//!
//! The model, in the terms of [`Endpoint`]:
//!
//! * [`V4l2Capture::open`] and [`V4l2Output::open`] open `/dev/videoN`
//!   (non-blocking) and check that the node does video capture (resp.
//!   output) with streaming I/O (`VIDIOC_QUERYCAP`), through the
//!   single-planar API (`V4L2_BUF_TYPE_VIDEO_CAPTURE`/`_OUTPUT`) or the
//!   multi-planar one (`…_MPLANE`), the single-planar one when the node
//!   has both. They set the requested format (`VIDIOC_S_FMT`; the driver
//!   may adjust the size, [`V4l2Queue::format`] says what it chose; a
//!   pixel format it replaced by another is refused, since the driver
//!   does not do it) and ask for `n_buffers` buffer slots of memory type
//!   DMABUF (`VIDIOC_REQBUFS`). The driver may grant more or fewer slots
//!   than asked; [`V4l2Queue::slots`] is its answer and the most buffers
//!   or frames that can be attached at once. Both endpoints dereference
//!   to the [`V4l2Queue`] they are made of.
//! * **Formats and frames.** A [`Format`] has one or more *memory
//!   planes* ([`Format::planes`]): one buffer each. `NV12` keeps both of
//!   its planes in one memory plane, `NM12` (`NV12M`) has one per plane.
//!   [`Format::layout`] is the [`FrameLayout`](crate::frame::FrameLayout)
//!   of the format (see [`crate::frame::v4l2`]), or an error for a V4L2
//!   format without a DRM counterpart.
//! * [`Endpoint::attach`] gives one buffer a slot of its own, for a
//!   format with one memory plane; the buffer must hold it (`sizeimage`
//!   bytes). [`V4l2Queue::attach_frame`] attaches a [`Frame`]: its DRM
//!   format, size and plane count must be the driver's, its modifier
//!   LINEAR, its strides the driver's `bytesperline`, and its planes
//!   where V4L2 puts them (for a one-memory-plane format, every plane in
//!   one buffer at V4L2's offsets from the first); each memory plane's
//!   buffer must hold `sizeimage` bytes from where the plane starts. A
//!   frame checked by [`Frame`] whose planes do not match is refused with
//!   the plane and the cause named, before the device sees it.
//! * **Where a memory plane starts.** On *capture*, videobuf2 ignores the
//!   application's `data_offset` and the driver writes each memory plane
//!   at the start of its dma-buf: a frame whose memory plane starts
//!   elsewhere, or whose memory planes share a buffer, is refused. On
//!   *multi-planar output*, a memory plane may start anywhere in its
//!   buffer (`data_offset`, with `bytesused = data_offset + sizeimage`),
//!   and memory planes may share one buffer. The single-planar API has
//!   no `data_offset`: the frame starts at offset 0.
//! * Only kernel dma-bufs (heap, udmabuf, imported) can be attached: a
//!   device imports a dma-buf fd, never a memfd, so a portable buffer is
//!   refused with an error that says so. The data path is always
//!   [`DataPath::ZeroCopy`].
//! * [`Endpoint::transfer`] (or [`V4l2Queue::queue`]) queues a buffer's
//!   slot (`VIDIOC_QBUF` with `len` bytes: at least `sizeimage`, at most
//!   the buffer's size; offered to the device on capture, the frame's
//!   bytes on output), [`V4l2Queue::queue_frame`] a frame's (every memory
//!   plane's buffer whole). Each returns a [`UserFence`](crate::UserFence) of the endpoint's
//!   [`FenceContext`](crate::FenceContext), one per frame, that signals
//!   when the frame is dequeued (`VIDIOC_DQBUF`): on capture when the
//!   device has written it, on output when the device is done reading it.
//!   The first transfer starts streaming (`VIDIOC_STREAMON`).
//! * **Ordering.** Before queueing, every buffer of the frame waits (at
//!   most the options' timeout) for what the device's access must wait
//!   for, and publishes the frame's fence in the same step under its
//!   reservation's lock (no window opens in between): a capture frame
//!   writes the buffers, so it waits for every CPU window and fence and
//!   is published as a **write** fence (CPU reads wait for the frame); an
//!   output frame reads them, so it waits for CPU *write* windows and
//!   write fences and is published as a **read** fence (a CPU write
//!   window waits until the device is done reading; read windows do
//!   not). A slot that is still queued is refused (wait for its fence
//!   first). If a later buffer of a frame is still busy at the deadline,
//!   the fence already published on the earlier ones is failed with
//!   `ECANCELED` (so it holds nobody up), nothing is queued, and the
//!   error is [`ErrorKind::Busy`](crate::ErrorKind::Busy).
//! * The endpoint contract holds: attaching a buffer twice (alone or in a
//!   frame) is refused with `EBUSY`, an attachment this device does not
//!   have gives [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) with
//!   `EPERM`, attachment ids are unique in the process.
//! * A worker thread polls the device (`POLLIN` for capture, `POLLOUT`
//!   for output) and dequeues finished frames. If the driver flagged a
//!   frame `V4L2_BUF_FLAG_ERROR` its fence fails with `EIO`. Fences
//!   signal in queue order (a frame finished early waits for the earlier
//!   ones), as timeline fences must. Each finished frame is recorded as
//!   a [`FrameRecord`] (bytes used per memory plane, sequence number,
//!   timestamp), see [`V4l2Queue::frame`], [`V4l2Queue::frame_record`]
//!   and [`V4l2Queue::last_frame`].
//! * V4L2 cannot take back one queued buffer: [`Endpoint::detach`] (or
//!   [`V4l2Queue::detach_frame`]) of a buffer that is queued stops the
//!   stream (`VIDIOC_STREAMOFF`), which returns **every** queued buffer;
//!   all their fences fail with `ECANCELED`, and the next transfer starts
//!   the stream again. Detaching a buffer that is not queued cancels
//!   nothing. When the last buffer is detached, the slots are released
//!   (`VIDIOC_REQBUFS` with count 0), which is also when the kernel lets
//!   go of the dma-bufs it imported (it keeps a slot's dma-buf until
//!   then, or until another buffer is queued in that slot); they are
//!   requested again at the next attach. Dropping the endpoint does the
//!   same for everything.
//! * An output device may keep the frame it shows until the next one
//!   arrives: vivid hands an output buffer back only when another one is
//!   queued (measured in the lab), so the newest frame's fence stays
//!   pending until the next queue, and is cancelled by a stop or detach.
//!   Keep at least two frames in flight on output.
//! * Drivers built on videobuf2 may need several buffers queued before
//!   they start (`min_queued_buffers`): until then fences stay pending,
//!   so wait with a timeout. (vivid, measured in the lab: a request for 1
//!   slot is raised to 2, but one queued buffer is enough for it to
//!   capture.)
//! * The format is device state: it outlives the open file, so ask for
//!   the one you need rather than relying on the driver's default.
//!
//! All ioctls on the device and all changes to the queue state happen
//! under one lock, so a frame is never both dequeued and cancelled.
//!
//! # Why not `v4l2r`
//!
//! The `v4l2r` crate (0.0.8 on crates.io, by Alexandre Courbot, used by
//! crosvm) does support DMABUF memory and the multi-planar API, and is
//! maintained. It is not used here because its `build.rs` runs `bindgen`
//! on the build machine's `videodev2.h` (a libclang build dependency and
//! bindings that follow whatever header is installed, where this crate
//! pins every layout and ioctl number by test), it brings `nix` next to
//! the `rustix` this crate is built on, and `anyhow`/`thiserror` 1 errors
//! that do not keep the errno and object the way [`Error`]
//! does; its 0.0.x API also makes no stability promise. The subset this
//! endpoint needs is ten ioctls (in `sys::v4l2`), each pinned against
//! the uapi header.

mod format;
mod queue;
mod worker;

use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

pub use format::{Format, FormatRequest, FourCc, PlaneFormat};
pub use queue::V4l2Queue;
pub use worker::FrameRecord;

use super::{Attachment, DataPath, Direction, Endpoint, TransferOptions};
use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::frame::Frame;

/// The most buffer slots an endpoint asks for (videobuf2's historical
/// `VIDEO_MAX_FRAME`).
pub const MAX_SLOTS: u32 = 32;

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

impl DeviceInfo {
    /// Whether the node moves video in `direction` (capture: from the
    /// device), and through which API: `Some(false)` single-planar (also
    /// when the node has both), `Some(true)` multi-planar only, `None` not
    /// at all.
    pub fn multiplanar(&self, direction: Direction) -> Option<bool> {
        queue::buffer_type(direction, self.caps).map(crate::sys::v4l2::is_multiplanar)
    }
}

/// Asks the node at `path` what it is (`VIDIOC_QUERYCAP`), without
/// touching its queues or format.
pub fn query(path: impl AsRef<Path>) -> Result<DeviceInfo> {
    queue::query(path.as_ref()).map(|(_, info)| info)
}

/// Selects the capture input `index` of the device at `path`
/// (`VIDIOC_S_INPUT`; vivid: 0 webcam, 1 TV, 2 S-Video, 3 HDMI). Device
/// state, kept after the file is closed; refused (`EBUSY`) while another
/// file has buffers set up.
pub fn select_input(path: impl AsRef<Path>, index: u32) -> Result<()> {
    let (dev, info) = queue::query(path.as_ref())?;
    crate::sys::v4l2::s_input(&dev, index).map_err(|e| {
        Error::os(
            "v4l2 select input",
            format!(
                "{} ({}), input {index}",
                path.as_ref().display(),
                info.driver
            ),
            e,
        )
    })
}

/// A frame attached to a V4L2 endpoint ([`V4l2Queue::attach_frame`]).
#[derive(Debug, Clone)]
pub struct FrameAttachment {
    /// The id of the attachment (unique in the process, shared with
    /// buffer attachments).
    pub id: u64,
    /// The frame.
    pub frame: Frame,
}

/// A V4L2 video capture device as an [`Endpoint`]. See the module
/// documentation.
#[derive(Debug)]
pub struct V4l2Capture(V4l2Queue);

/// A V4L2 video output device as an [`Endpoint`]: it reads the frames
/// queued to it. See the module documentation.
#[derive(Debug)]
pub struct V4l2Output(V4l2Queue);

impl V4l2Capture {
    /// Opens the capture device at `path` (single- or multi-planar), sets
    /// `format` (an empty request keeps the current one) and sets up
    /// `n_buffers` DMABUF slots (1..=[`MAX_SLOTS`]).
    pub fn open(
        path: impl AsRef<Path>,
        format: &FormatRequest,
        n_buffers: u32,
    ) -> Result<V4l2Capture> {
        V4l2Queue::open(path.as_ref(), Direction::FromDevice, format, n_buffers).map(V4l2Capture)
    }
}

impl V4l2Output {
    /// Opens the output device at `path` (single- or multi-planar), sets
    /// `format` and sets up `n_buffers` DMABUF slots (1..=[`MAX_SLOTS`]).
    pub fn open(
        path: impl AsRef<Path>,
        format: &FormatRequest,
        n_buffers: u32,
    ) -> Result<V4l2Output> {
        V4l2Queue::open(path.as_ref(), Direction::ToDevice, format, n_buffers).map(V4l2Output)
    }
}

macro_rules! queue_endpoint {
    ($t:ty, $dir:expr) => {
        impl Deref for $t {
            type Target = V4l2Queue;
            fn deref(&self) -> &V4l2Queue {
                &self.0
            }
        }

        impl DerefMut for $t {
            fn deref_mut(&mut self) -> &mut V4l2Queue {
                &mut self.0
            }
        }

        impl Endpoint for $t {
            fn direction(&self) -> Direction {
                $dir
            }

            fn data_path(&self) -> DataPath {
                DataPath::ZeroCopy
            }

            fn attach(&mut self, buffer: &Buffer) -> Result<Attachment> {
                self.0.attach_buffer(buffer)
            }

            fn transfer(
                &mut self,
                attachment: &Attachment,
                len: u64,
                opts: TransferOptions,
            ) -> Result<Fence> {
                self.0.queue(attachment, len, opts).map(Fence::User)
            }

            fn detach(&mut self, attachment: &Attachment) -> Result<()> {
                self.0.detach_buffer(attachment)
            }
        }

        /// The device node (see [`V4l2Queue`]'s `AsFd`).
        impl AsFd for $t {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.0.as_fd()
            }
        }
    };
}

queue_endpoint!(V4l2Capture, Direction::FromDevice);
queue_endpoint!(V4l2Output, Direction::ToDevice);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Errno, ErrorKind};

    #[test]
    fn open_refuses_bad_slot_counts_before_touching_the_device() {
        for n in [0, MAX_SLOTS + 1] {
            let e =
                V4l2Capture::open("/nonexistent/video9", &FormatRequest::default(), n).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains("/nonexistent/video9"), "{e}");
            let e =
                V4l2Output::open("/nonexistent/video9", &FormatRequest::default(), n).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn open_of_a_missing_node_says_so() {
        let e = V4l2Capture::open("/nonexistent/video9", &FormatRequest::default(), 2).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOENT));
        assert!(e.to_string().contains("no such device node"), "{e}");
        let e = V4l2Output::open("/nonexistent/video9", &FormatRequest::default(), 2).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOENT));
    }

    #[test]
    fn device_info_says_which_api_a_direction_uses() {
        use crate::sys::v4l2 as sys;
        let info = |caps| DeviceInfo {
            driver: "vivid".into(),
            card: String::new(),
            bus_info: String::new(),
            caps,
        };
        let mp = info(sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE | sys::V4L2_CAP_STREAMING);
        assert_eq!(mp.multiplanar(Direction::FromDevice), Some(true));
        assert_eq!(mp.multiplanar(Direction::ToDevice), None);
        let sp = info(sys::V4L2_CAP_VIDEO_OUTPUT | sys::V4L2_CAP_VIDEO_OUTPUT_MPLANE);
        assert_eq!(sp.multiplanar(Direction::ToDevice), Some(false));
        let e = query("/dev/null").unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOTTY), "{e}");
        let e = select_input("/nonexistent/video9", 0).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOENT), "{e}");
    }

    #[test]
    fn open_of_a_non_v4l2_file_is_refused() {
        // /dev/null answers ENOTTY to VIDIOC_QUERYCAP.
        let e = V4l2Capture::open("/dev/null", &FormatRequest::default(), 2).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOTTY), "{e}");
        assert!(e.to_string().contains("not a V4L2 device"), "{e}");
        let e = V4l2Output::open("/dev/null", &FormatRequest::default(), 2).unwrap_err();
        assert!(e.to_string().contains("not a V4L2 device"), "{e}");
    }
}

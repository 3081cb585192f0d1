//! V4L2 (`include/uapi/linux/videodev2.h`): the subset needed to capture
//! and output single- and multi-planar video through dma-bufs
//! (`V4L2_MEMORY_DMABUF`).
//!
//! Layouts are those of x86_64 (and the other LP64 targets with the
//! generic `_IOC` encoding): `struct v4l2_buffer` holds a `struct timeval`
//! (two `long`s) and a union with a pointer, so it is 88 bytes there;
//! `struct v4l2_format`'s union holds pointers (`struct v4l2_window`), so
//! it starts at offset 8 and the struct is 208 bytes. The tests pin every
//! size, offset and ioctl number against values printed by a C program
//! compiled with the uapi header.
//!
//! Unions are kept as plain integers or bytes: `m` of `v4l2_buffer` and
//! `v4l2_plane` is a `u64` (its `__s32 fd` member is the low half on
//! little-endian LP64, see [`V4l2Buffer::set_fd`]); `fmt` of `v4l2_format`
//! is its 200 bytes, read and written field by field as `pix` or `pix_mp`
//! ([`V4l2Format::pix`], [`V4l2Format::pix_mp`]), so no `unsafe` union
//! access is needed. The one pointer (`m.planes` of a multi-planar
//! buffer) is set only inside [`qbuf_planes`] and [`dqbuf_planes`], for
//! the duration of the ioctl.

use std::os::fd::AsFd;

use super::{ioctl_with, opcode, Opcode, Result};

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE`: single-planar video capture.
pub const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
/// `V4L2_BUF_TYPE_VIDEO_OUTPUT`: single-planar video output.
pub const V4L2_BUF_TYPE_VIDEO_OUTPUT: u32 = 2;
/// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`: multi-planar video capture.
pub const V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;
/// `V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE`: multi-planar video output.
pub const V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE: u32 = 10;

/// `VIDEO_MAX_PLANES`: the most memory planes of a multi-planar buffer.
pub const VIDEO_MAX_PLANES: usize = 8;

/// Whether `type_` is a multi-planar buffer type (`V4L2_TYPE_IS_MULTIPLANAR`).
pub const fn is_multiplanar(type_: u32) -> bool {
    type_ == V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE || type_ == V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE
}

/// `V4L2_MEMORY_MMAP`: buffers allocated by the driver.
pub const V4L2_MEMORY_MMAP: u32 = 1;
/// `V4L2_MEMORY_USERPTR`: user memory by pointer.
pub const V4L2_MEMORY_USERPTR: u32 = 2;
/// `V4L2_MEMORY_DMABUF`: buffers imported from dma-buf fds.
pub const V4L2_MEMORY_DMABUF: u32 = 4;

/// `V4L2_FIELD_ANY`: let the driver choose.
pub const V4L2_FIELD_ANY: u32 = 0;
/// `V4L2_FIELD_NONE`: progressive frames.
pub const V4L2_FIELD_NONE: u32 = 1;

/// `V4L2_CAP_VIDEO_CAPTURE`: single-planar capture.
pub const V4L2_CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
/// `V4L2_CAP_VIDEO_OUTPUT`: single-planar output.
pub const V4L2_CAP_VIDEO_OUTPUT: u32 = 0x0000_0002;
/// `V4L2_CAP_VIDEO_CAPTURE_MPLANE`: multi-planar capture.
pub const V4L2_CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
/// `V4L2_CAP_VIDEO_OUTPUT_MPLANE`: multi-planar output.
pub const V4L2_CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
/// `V4L2_CAP_VIDEO_M2M_MPLANE`: multi-planar memory-to-memory device.
pub const V4L2_CAP_VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
/// `V4L2_CAP_VIDEO_M2M`: memory-to-memory device.
pub const V4L2_CAP_VIDEO_M2M: u32 = 0x0000_8000;
/// `V4L2_CAP_META_CAPTURE`: metadata capture.
pub const V4L2_CAP_META_CAPTURE: u32 = 0x0080_0000;
/// `V4L2_CAP_READWRITE`: `read()`/`write()` I/O.
pub const V4L2_CAP_READWRITE: u32 = 0x0100_0000;
/// `V4L2_CAP_STREAMING`: streaming I/O (`QBUF`/`DQBUF`).
pub const V4L2_CAP_STREAMING: u32 = 0x0400_0000;
/// `V4L2_CAP_IO_MC`: input/output controlled by the media controller.
pub const V4L2_CAP_IO_MC: u32 = 0x2000_0000;
/// `V4L2_CAP_DEVICE_CAPS`: `device_caps` is valid (and describes this node).
pub const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;

/// `V4L2_BUF_FLAG_MAPPED`.
pub const V4L2_BUF_FLAG_MAPPED: u32 = 0x0000_0001;
/// `V4L2_BUF_FLAG_QUEUED`: in the driver's incoming queue.
pub const V4L2_BUF_FLAG_QUEUED: u32 = 0x0000_0002;
/// `V4L2_BUF_FLAG_DONE`: in the outgoing queue.
pub const V4L2_BUF_FLAG_DONE: u32 = 0x0000_0004;
/// `V4L2_BUF_FLAG_ERROR`: the data may be corrupted (the driver reported
/// an error for this frame).
pub const V4L2_BUF_FLAG_ERROR: u32 = 0x0000_0040;
/// `V4L2_BUF_FLAG_PREPARED`.
pub const V4L2_BUF_FLAG_PREPARED: u32 = 0x0000_0400;
/// `V4L2_BUF_FLAG_TIMESTAMP_MASK`.
pub const V4L2_BUF_FLAG_TIMESTAMP_MASK: u32 = 0x0000_e000;
/// `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`: the timestamp is CLOCK_MONOTONIC.
pub const V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x0000_2000;
/// `V4L2_BUF_FLAG_LAST`: the last buffer of a stream (codecs).
pub const V4L2_BUF_FLAG_LAST: u32 = 0x0010_0000;

/// `V4L2_BUF_CAP_SUPPORTS_MMAP` (in `v4l2_requestbuffers.capabilities`).
pub const V4L2_BUF_CAP_SUPPORTS_MMAP: u32 = 1 << 0;
/// `V4L2_BUF_CAP_SUPPORTS_USERPTR`.
pub const V4L2_BUF_CAP_SUPPORTS_USERPTR: u32 = 1 << 1;
/// `V4L2_BUF_CAP_SUPPORTS_DMABUF`.
pub const V4L2_BUF_CAP_SUPPORTS_DMABUF: u32 = 1 << 2;
/// `V4L2_BUF_CAP_SUPPORTS_ORPHANED_BUFS`.
pub const V4L2_BUF_CAP_SUPPORTS_ORPHANED_BUFS: u32 = 1 << 4;

/// `v4l2_fourcc(a, b, c, d)`.
pub const fn fourcc(code: &[u8; 4]) -> u32 {
    (code[0] as u32) | ((code[1] as u32) << 8) | ((code[2] as u32) << 16) | ((code[3] as u32) << 24)
}

/// `V4L2_PIX_FMT_YUYV` (vivid's default).
pub const V4L2_PIX_FMT_YUYV: u32 = fourcc(b"YUYV");
/// `V4L2_PIX_FMT_RGB24`.
pub const V4L2_PIX_FMT_RGB24: u32 = fourcc(b"RGB3");
/// `V4L2_PIX_FMT_GREY`.
pub const V4L2_PIX_FMT_GREY: u32 = fourcc(b"GREY");

/// `struct v4l2_capability` (104 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct V4l2Capability {
    /// Driver name (`"vivid"`).
    pub driver: [u8; 16],
    /// Device name.
    pub card: [u8; 32],
    /// Location of the device in the system.
    pub bus_info: [u8; 32],
    /// `KERNEL_VERSION` of the driver.
    pub version: u32,
    /// Capabilities of the physical device as a whole.
    pub capabilities: u32,
    /// Capabilities of this device node (valid if `V4L2_CAP_DEVICE_CAPS`).
    pub device_caps: u32,
    /// Zero.
    pub reserved: [u32; 3],
}

impl V4l2Capability {
    /// The capabilities of the opened node: `device_caps` when the driver
    /// fills it (`V4L2_CAP_DEVICE_CAPS`), else `capabilities`.
    pub fn node_caps(&self) -> u32 {
        if self.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            self.device_caps
        } else {
            self.capabilities
        }
    }
}

/// `struct v4l2_pix_format` (48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V4l2PixFormat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Fourcc of the pixel format.
    pub pixelformat: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// Bytes per line, including padding.
    pub bytesperline: u32,
    /// Bytes of one frame.
    pub sizeimage: u32,
    /// `enum v4l2_colorspace`.
    pub colorspace: u32,
    /// Private, depends on the format.
    pub priv_: u32,
    /// `V4L2_PIX_FMT_FLAG_*`.
    pub flags: u32,
    /// `ycbcr_enc` / `hsv_enc` (a union of two `__u32`).
    pub ycbcr_enc: u32,
    /// `enum v4l2_quantization`.
    pub quantization: u32,
    /// `enum v4l2_xfer_func`.
    pub xfer_func: u32,
}

/// `struct v4l2_plane_pix_format` (20 bytes, packed): one memory plane
/// of a multi-planar format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V4l2PlanePixFormat {
    /// Bytes of the plane: the least its buffer must hold.
    pub sizeimage: u32,
    /// Bytes per line of the plane, including padding.
    pub bytesperline: u32,
}

/// `struct v4l2_pix_format_mplane` (192 bytes, packed), the fields this
/// crate uses; the rest is written as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V4l2PixFormatMplane {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Fourcc of the pixel format.
    pub pixelformat: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// `enum v4l2_colorspace`.
    pub colorspace: u32,
    /// The memory planes (`num_planes` of them are valid).
    pub plane_fmt: [V4l2PlanePixFormat; VIDEO_MAX_PLANES],
    /// Number of memory planes.
    pub num_planes: u8,
    /// `V4L2_PIX_FMT_FLAG_*`.
    pub flags: u8,
    /// `ycbcr_enc` / `hsv_enc`.
    pub ycbcr_enc: u8,
    /// `enum v4l2_quantization`.
    pub quantization: u8,
    /// `enum v4l2_xfer_func`.
    pub xfer_func: u8,
}

/// Size of the `fmt` union of `struct v4l2_format`.
const FMT_UNION: usize = 200;

/// `struct v4l2_format` (208 bytes, 8-aligned): `type` and the `fmt`
/// union as bytes (it holds pointers, so it starts at offset 8).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct V4l2Format {
    /// `enum v4l2_buf_type`.
    pub type_: u32,
    /// Alignment padding before the union.
    pub _pad: u32,
    /// The `fmt` union (`fmt.raw_data`).
    pub fmt: [u8; FMT_UNION],
}

impl Default for V4l2Format {
    fn default() -> Self {
        V4l2Format {
            type_: 0,
            _pad: 0,
            fmt: [0; FMT_UNION],
        }
    }
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

impl V4l2Format {
    /// `fmt.pix` (single-planar types).
    pub fn pix(&self) -> V4l2PixFormat {
        let f = |i: usize| get_u32(&self.fmt, 4 * i);
        V4l2PixFormat {
            width: f(0),
            height: f(1),
            pixelformat: f(2),
            field: f(3),
            bytesperline: f(4),
            sizeimage: f(5),
            colorspace: f(6),
            priv_: f(7),
            flags: f(8),
            ycbcr_enc: f(9),
            quantization: f(10),
            xfer_func: f(11),
        }
    }

    /// Writes `fmt.pix`.
    pub fn set_pix(&mut self, p: &V4l2PixFormat) {
        let v = [
            p.width,
            p.height,
            p.pixelformat,
            p.field,
            p.bytesperline,
            p.sizeimage,
            p.colorspace,
            p.priv_,
            p.flags,
            p.ycbcr_enc,
            p.quantization,
            p.xfer_func,
        ];
        for (i, x) in v.into_iter().enumerate() {
            put_u32(&mut self.fmt, 4 * i, x);
        }
    }

    /// `fmt.pix_mp` (multi-planar types).
    pub fn pix_mp(&self) -> V4l2PixFormatMplane {
        let b = &self.fmt;
        let mut plane_fmt = [V4l2PlanePixFormat::default(); VIDEO_MAX_PLANES];
        for (i, p) in plane_fmt.iter_mut().enumerate() {
            let at = 20 + 20 * i;
            p.sizeimage = get_u32(b, at);
            p.bytesperline = get_u32(b, at + 4);
        }
        V4l2PixFormatMplane {
            width: get_u32(b, 0),
            height: get_u32(b, 4),
            pixelformat: get_u32(b, 8),
            field: get_u32(b, 12),
            colorspace: get_u32(b, 16),
            plane_fmt,
            num_planes: b[180],
            flags: b[181],
            ycbcr_enc: b[182],
            quantization: b[183],
            xfer_func: b[184],
        }
    }

    /// Writes `fmt.pix_mp` (the planes' reserved fields as zero).
    pub fn set_pix_mp(&mut self, p: &V4l2PixFormatMplane) {
        let b = &mut self.fmt;
        put_u32(b, 0, p.width);
        put_u32(b, 4, p.height);
        put_u32(b, 8, p.pixelformat);
        put_u32(b, 12, p.field);
        put_u32(b, 16, p.colorspace);
        for (i, pf) in p.plane_fmt.iter().enumerate() {
            let at = 20 + 20 * i;
            put_u32(b, at, pf.sizeimage);
            put_u32(b, at + 4, pf.bytesperline);
            b[at + 8..at + 20].fill(0);
        }
        b[180] = p.num_planes;
        b[181] = p.flags;
        b[182] = p.ycbcr_enc;
        b[183] = p.quantization;
        b[184] = p.xfer_func;
        b[185..192].fill(0);
    }
}

/// `struct v4l2_requestbuffers` (20 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct V4l2Requestbuffers {
    /// Buffers wanted; the driver answers how many it set up.
    pub count: u32,
    /// `enum v4l2_buf_type`.
    pub type_: u32,
    /// `enum v4l2_memory`.
    pub memory: u32,
    /// `V4L2_BUF_CAP_*`, set by the driver.
    pub capabilities: u32,
    /// `V4L2_MEMORY_FLAG_*`.
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// `struct timeval` on LP64 (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeval {
    /// Seconds.
    pub tv_sec: i64,
    /// Microseconds.
    pub tv_usec: i64,
}

/// `struct v4l2_timecode` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V4l2Timecode {
    /// `V4L2_TC_TYPE_*`.
    pub type_: u32,
    /// `V4L2_TC_FLAG_*`.
    pub flags: u32,
    /// Frames.
    pub frames: u8,
    /// Seconds.
    pub seconds: u8,
    /// Minutes.
    pub minutes: u8,
    /// Hours.
    pub hours: u8,
    /// User bits.
    pub userbits: [u8; 4],
}

/// `struct v4l2_buffer` (88 bytes on LP64). The union `m` is a `u64`:
/// `m.fd` for single-planar DMABUF buffers ([`V4l2Buffer::set_fd`]),
/// `m.planes` (a pointer, set only by [`qbuf_planes`]/[`dqbuf_planes`])
/// for multi-planar ones.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V4l2Buffer {
    /// Buffer slot, `0..count` of `REQBUFS`.
    pub index: u32,
    /// `enum v4l2_buf_type`.
    pub type_: u32,
    /// Bytes of data in the buffer (set by the driver on capture).
    pub bytesused: u32,
    /// `V4L2_BUF_FLAG_*`.
    pub flags: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// Padding before the timestamp (`long` alignment).
    pub _pad0: u32,
    /// When the frame was captured (clock given by the flags).
    pub timestamp: Timeval,
    /// Timecode.
    pub timecode: V4l2Timecode,
    /// Frame sequence number, counted by the driver.
    pub sequence: u32,
    /// `enum v4l2_memory`.
    pub memory: u32,
    /// The union `m` (`fd`, `offset`, `userptr`, `planes`).
    pub m: u64,
    /// Size of the buffer (for DMABUF: bytes of the dma-buf offered; 0
    /// means the whole dma-buf); for multi-planar types, the number of
    /// planes in `m.planes`.
    pub length: u32,
    /// Zero.
    pub reserved2: u32,
    /// `request_fd` / `reserved`.
    pub request_fd: i32,
    /// Trailing padding to the struct's 8-byte alignment.
    pub _pad1: u32,
}

impl V4l2Buffer {
    /// Sets `m.fd` (the low half of `m` on little-endian; the rest zero).
    pub fn set_fd(&mut self, fd: i32) {
        self.m = u64::from(fd as u32);
    }
}

/// `struct v4l2_plane` (64 bytes): one memory plane of a multi-planar
/// buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V4l2Plane {
    /// Bytes of data in the plane, `data_offset` included (set by the
    /// driver on capture, by the application on output).
    pub bytesused: u32,
    /// Bytes of the dma-buf offered (0: the whole dma-buf).
    pub length: u32,
    /// The union `m`: `fd` for DMABUF (low half, see [`V4l2Plane::set_fd`]).
    pub m: u64,
    /// Where the data starts in the plane's buffer (set by the
    /// application on output; by the driver on capture).
    pub data_offset: u32,
    /// Zero.
    pub reserved: [u32; 11],
}

impl V4l2Plane {
    /// Sets `m.fd`.
    pub fn set_fd(&mut self, fd: i32) {
        self.m = u64::from(fd as u32);
    }
}

/// `VIDIOC_QUERYCAP`.
pub const VIDIOC_QUERYCAP: Opcode = opcode::read::<V4l2Capability>(b'V', 0);
/// `VIDIOC_G_FMT`.
pub const VIDIOC_G_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 4);
/// `VIDIOC_S_FMT`.
pub const VIDIOC_S_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 5);
/// `VIDIOC_REQBUFS`.
pub const VIDIOC_REQBUFS: Opcode = opcode::read_write::<V4l2Requestbuffers>(b'V', 8);
/// `VIDIOC_QBUF`.
pub const VIDIOC_QBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 15);
/// `VIDIOC_DQBUF`.
pub const VIDIOC_DQBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 17);
/// `VIDIOC_STREAMON`.
pub const VIDIOC_STREAMON: Opcode = opcode::write::<i32>(b'V', 18);
/// `VIDIOC_STREAMOFF`.
pub const VIDIOC_STREAMOFF: Opcode = opcode::write::<i32>(b'V', 19);

/// `VIDIOC_S_INPUT`.
pub const VIDIOC_S_INPUT: Opcode = opcode::read_write::<i32>(b'V', 39);
/// `VIDIOC_S_OUTPUT`.
pub const VIDIOC_S_OUTPUT: Opcode = opcode::read_write::<i32>(b'V', 47);

/// `VIDIOC_S_INPUT`: selects the capture input `index` (device state).
pub fn s_input(dev: impl AsFd, index: u32) -> Result<()> {
    let mut i = index as i32;
    // SAFETY: the command reads and writes an `int`.
    unsafe { ioctl_with(dev, VIDIOC_S_INPUT, &mut i) }.map(drop)
}

/// `VIDIOC_S_OUTPUT`: selects the video output `index` (device state).
pub fn s_output(dev: impl AsFd, index: u32) -> Result<()> {
    let mut i = index as i32;
    // SAFETY: the command reads and writes an `int`.
    unsafe { ioctl_with(dev, VIDIOC_S_OUTPUT, &mut i) }.map(drop)
}

/// `VIDIOC_QUERYCAP`.
pub fn querycap(dev: impl AsFd) -> Result<V4l2Capability> {
    let mut cap = V4l2Capability::default();
    // SAFETY: the command writes a `struct v4l2_capability`.
    unsafe { ioctl_with(dev, VIDIOC_QUERYCAP, &mut cap) }?;
    Ok(cap)
}

/// `VIDIOC_G_FMT` for buffer type `type_`.
pub fn g_fmt(dev: impl AsFd, type_: u32) -> Result<V4l2Format> {
    let mut fmt = V4l2Format {
        type_,
        ..V4l2Format::default()
    };
    // SAFETY: the command reads and writes a `struct v4l2_format`.
    unsafe { ioctl_with(dev, VIDIOC_G_FMT, &mut fmt) }?;
    Ok(fmt)
}

/// `VIDIOC_S_FMT`: asks for `fmt`; the driver writes back what it chose.
pub fn s_fmt(dev: impl AsFd, fmt: &mut V4l2Format) -> Result<()> {
    // SAFETY: the command reads and writes a `struct v4l2_format`.
    unsafe { ioctl_with(dev, VIDIOC_S_FMT, fmt) }.map(drop)
}

/// `VIDIOC_REQBUFS`: `req.count` and `req.capabilities` are written back.
pub fn reqbufs(dev: impl AsFd, req: &mut V4l2Requestbuffers) -> Result<()> {
    // SAFETY: the command reads and writes a `struct v4l2_requestbuffers`.
    unsafe { ioctl_with(dev, VIDIOC_REQBUFS, req) }.map(drop)
}

/// `VIDIOC_QBUF`.
pub fn qbuf(dev: impl AsFd, buf: &mut V4l2Buffer) -> Result<()> {
    if is_multiplanar(buf.type_) {
        return Err(rustix::io::Errno::INVAL);
    }
    // SAFETY: the command reads and writes a `struct v4l2_buffer`; the
    // dma-buf fd in it is only a number to the kernel (it takes its own
    // reference), and `m` is not followed as a pointer for single-planar
    // types (checked above).
    unsafe { ioctl_with(dev, VIDIOC_QBUF, buf) }.map(drop)
}

/// `VIDIOC_DQBUF`: `buf.type_` and `buf.memory` must be set; the rest is
/// filled in by the driver. Single-planar types only (the kernel would
/// read `m.planes` of a multi-planar type: use [`dqbuf_planes`]).
pub fn dqbuf(dev: impl AsFd, buf: &mut V4l2Buffer) -> Result<()> {
    if is_multiplanar(buf.type_) {
        return Err(rustix::io::Errno::INVAL);
    }
    buf.m = 0;
    // SAFETY: the command reads and writes a `struct v4l2_buffer`; for a
    // single-planar type the kernel does not follow `m` as a pointer.
    unsafe { ioctl_with(dev, VIDIOC_DQBUF, buf) }.map(drop)
}

/// Points `buf.m.planes` at `planes` for one ioctl, then clears it.
fn with_planes(
    dev: impl AsFd,
    op: Opcode,
    buf: &mut V4l2Buffer,
    planes: &mut [V4l2Plane],
) -> Result<()> {
    if !is_multiplanar(buf.type_) || planes.is_empty() || planes.len() > VIDEO_MAX_PLANES {
        return Err(rustix::io::Errno::INVAL);
    }
    buf.m = planes.as_mut_ptr() as u64;
    buf.length = planes.len() as u32;
    // SAFETY: the command reads and writes a `struct v4l2_buffer` whose
    // `m.planes` points at `length` valid, writable `struct v4l2_plane`s
    // (the slice, borrowed mutably for the call); the kernel copies them
    // in and out during the ioctl and keeps no pointer afterwards.
    let r = unsafe { ioctl_with(dev, op, buf) }.map(drop);
    buf.m = 0;
    r
}

/// `VIDIOC_QBUF` of a multi-planar buffer with `planes` (their dma-buf
/// fds, lengths, `bytesused` and `data_offset`).
pub fn qbuf_planes(dev: impl AsFd, buf: &mut V4l2Buffer, planes: &mut [V4l2Plane]) -> Result<()> {
    with_planes(dev, VIDIOC_QBUF, buf, planes)
}

/// `VIDIOC_DQBUF` of a multi-planar buffer type; `planes` receives as
/// many planes as it holds (at least the format's `num_planes`).
pub fn dqbuf_planes(dev: impl AsFd, buf: &mut V4l2Buffer, planes: &mut [V4l2Plane]) -> Result<()> {
    with_planes(dev, VIDIOC_DQBUF, buf, planes)
}

/// `VIDIOC_STREAMON` for buffer type `type_`.
pub fn streamon(dev: impl AsFd, type_: u32) -> Result<()> {
    let mut t = type_ as i32;
    // SAFETY: the command takes a pointer to an `int` buffer type.
    unsafe { ioctl_with(dev, VIDIOC_STREAMON, &mut t) }.map(drop)
}

/// `VIDIOC_STREAMOFF` for buffer type `type_`: stops streaming and
/// returns every queued buffer to user space (not dequeuable afterwards).
pub fn streamoff(dev: impl AsFd, type_: u32) -> Result<()> {
    let mut t = type_ as i32;
    // SAFETY: the command takes a pointer to an `int` buffer type.
    unsafe { ioctl_with(dev, VIDIOC_STREAMOFF, &mut t) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    // Values printed by a C program compiled on x86_64 with
    // <linux/videodev2.h> (offsetof / sizeof / the VIDIOC_* macros).

    #[test]
    fn capability_layout() {
        assert_eq!(size_of::<V4l2Capability>(), 104);
        assert_eq!(offset_of!(V4l2Capability, card), 16);
        assert_eq!(offset_of!(V4l2Capability, bus_info), 48);
        assert_eq!(offset_of!(V4l2Capability, version), 80);
        assert_eq!(offset_of!(V4l2Capability, capabilities), 84);
        assert_eq!(offset_of!(V4l2Capability, device_caps), 88);
        assert_eq!(offset_of!(V4l2Capability, reserved), 92);
    }

    #[test]
    fn format_layout() {
        assert_eq!(size_of::<V4l2PixFormat>(), 48);
        assert_eq!(offset_of!(V4l2PixFormat, pixelformat), 8);
        assert_eq!(offset_of!(V4l2PixFormat, field), 12);
        assert_eq!(offset_of!(V4l2PixFormat, bytesperline), 16);
        assert_eq!(offset_of!(V4l2PixFormat, sizeimage), 20);
        assert_eq!(offset_of!(V4l2PixFormat, colorspace), 24);
        assert_eq!(offset_of!(V4l2PixFormat, priv_), 28);
        assert_eq!(offset_of!(V4l2PixFormat, flags), 32);
        assert_eq!(offset_of!(V4l2PixFormat, ycbcr_enc), 36);
        assert_eq!(offset_of!(V4l2PixFormat, quantization), 40);
        assert_eq!(offset_of!(V4l2PixFormat, xfer_func), 44);
        assert_eq!(size_of::<V4l2Format>(), 208);
        assert_eq!(align_of::<V4l2Format>(), 8);
        assert_eq!(offset_of!(V4l2Format, fmt), 8);
    }

    #[test]
    fn pix_and_pix_mp_round_trip_at_the_uapi_offsets() {
        let mut f = V4l2Format::default();
        let p = V4l2PixFormat {
            width: 640,
            height: 360,
            pixelformat: V4L2_PIX_FMT_YUYV,
            field: 1,
            bytesperline: 1280,
            sizeimage: 460_800,
            ..Default::default()
        };
        f.set_pix(&p);
        assert_eq!(f.pix(), p);
        assert_eq!(get_u32(&f.fmt, 20), 460_800); // offsetof(pix.sizeimage) - 8
        let mut mp = V4l2PixFormatMplane {
            width: 1280,
            height: 720,
            pixelformat: fourcc(b"NM12"),
            field: 1,
            num_planes: 2,
            ..Default::default()
        };
        mp.plane_fmt[0] = V4l2PlanePixFormat {
            sizeimage: 921_600,
            bytesperline: 1280,
        };
        mp.plane_fmt[1] = V4l2PlanePixFormat {
            sizeimage: 460_800,
            bytesperline: 1280,
        };
        let mut f = V4l2Format::default();
        f.set_pix_mp(&mp);
        assert_eq!(f.pix_mp(), mp);
        // offsetof(struct v4l2_pix_format_mplane, plane_fmt) = 20, each
        // plane 20 bytes, num_planes at 180 (packed struct of 192 bytes).
        assert_eq!(get_u32(&f.fmt, 40), 460_800);
        assert_eq!(get_u32(&f.fmt, 44), 1280);
        assert_eq!(f.fmt[180], 2);
    }

    #[test]
    fn plane_layout() {
        assert_eq!(size_of::<V4l2Plane>(), 64);
        assert_eq!(offset_of!(V4l2Plane, length), 4);
        assert_eq!(offset_of!(V4l2Plane, m), 8);
        assert_eq!(offset_of!(V4l2Plane, data_offset), 16);
        let mut p = V4l2Plane::default();
        p.set_fd(-1);
        assert_eq!(p.m, 0xffff_ffff);
    }

    #[test]
    fn multiplanar_types_are_refused_by_the_single_planar_calls() {
        let mut b = V4l2Buffer {
            type_: V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
            ..Default::default()
        };
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(qbuf(&null, &mut b), Err(rustix::io::Errno::INVAL));
        assert_eq!(dqbuf(&null, &mut b), Err(rustix::io::Errno::INVAL));
        b.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        assert_eq!(
            qbuf_planes(&null, &mut b, &mut [V4l2Plane::default()]),
            Err(rustix::io::Errno::INVAL)
        );
        b.type_ = V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
        assert_eq!(
            qbuf_planes(&null, &mut b, &mut []),
            Err(rustix::io::Errno::INVAL)
        );
        // /dev/null is no V4L2 device; the pointer is cleared afterwards.
        assert_eq!(
            qbuf_planes(&null, &mut b, &mut [V4l2Plane::default()]),
            Err(rustix::io::Errno::NOTTY)
        );
        assert_eq!(b.m, 0);
    }

    #[test]
    fn requestbuffers_layout() {
        assert_eq!(size_of::<V4l2Requestbuffers>(), 20);
        assert_eq!(offset_of!(V4l2Requestbuffers, type_), 4);
        assert_eq!(offset_of!(V4l2Requestbuffers, memory), 8);
        assert_eq!(offset_of!(V4l2Requestbuffers, capabilities), 12);
        assert_eq!(offset_of!(V4l2Requestbuffers, flags), 16);
        assert_eq!(offset_of!(V4l2Requestbuffers, reserved), 17);
    }

    #[test]
    fn buffer_layout() {
        assert_eq!(size_of::<V4l2Timecode>(), 16);
        assert_eq!(offset_of!(V4l2Timecode, frames), 8);
        assert_eq!(offset_of!(V4l2Timecode, userbits), 12);
        assert_eq!(size_of::<Timeval>(), 16);
        assert_eq!(size_of::<V4l2Buffer>(), 88);
        assert_eq!(align_of::<V4l2Buffer>(), 8);
        assert_eq!(offset_of!(V4l2Buffer, type_), 4);
        assert_eq!(offset_of!(V4l2Buffer, bytesused), 8);
        assert_eq!(offset_of!(V4l2Buffer, flags), 12);
        assert_eq!(offset_of!(V4l2Buffer, field), 16);
        assert_eq!(offset_of!(V4l2Buffer, timestamp), 24);
        assert_eq!(offset_of!(V4l2Buffer, timecode), 40);
        assert_eq!(offset_of!(V4l2Buffer, sequence), 56);
        assert_eq!(offset_of!(V4l2Buffer, memory), 60);
        assert_eq!(offset_of!(V4l2Buffer, m), 64);
        assert_eq!(offset_of!(V4l2Buffer, length), 72);
        assert_eq!(offset_of!(V4l2Buffer, reserved2), 76);
        assert_eq!(offset_of!(V4l2Buffer, request_fd), 80);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_G_FMT, 0xc0d0_5604);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(VIDIOC_S_INPUT, 0xc004_5627);
        assert_eq!(VIDIOC_S_OUTPUT, 0xc004_562f);
    }

    #[test]
    fn constants_match_uapi() {
        assert_eq!(V4L2_PIX_FMT_YUYV, 0x5659_5559);
        assert_eq!(V4L2_PIX_FMT_RGB24, 0x3342_4752);
        assert_eq!(V4L2_PIX_FMT_GREY, 0x5945_5247);
        assert_eq!(V4L2_CAP_STREAMING, 0x0400_0000);
        assert_eq!(V4L2_CAP_DEVICE_CAPS, 0x8000_0000);
        assert_eq!(V4L2_BUF_FLAG_ERROR, 0x40);
        assert_eq!(V4L2_BUF_FLAG_TIMESTAMP_MASK, 0xe000);
        assert_eq!(V4L2_BUF_CAP_SUPPORTS_DMABUF, 0x4);
        assert_eq!(V4L2_CAP_VIDEO_OUTPUT_MPLANE, 0x2000);
        assert_eq!(V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE, 10);
    }

    #[test]
    fn node_caps_prefers_device_caps() {
        let cap = V4l2Capability {
            capabilities: V4L2_CAP_DEVICE_CAPS | V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_OUTPUT,
            device_caps: V4L2_CAP_VIDEO_OUTPUT,
            ..Default::default()
        };
        assert_eq!(cap.node_caps(), V4L2_CAP_VIDEO_OUTPUT);
        let old = V4l2Capability {
            capabilities: V4L2_CAP_VIDEO_CAPTURE,
            ..Default::default()
        };
        assert_eq!(old.node_caps(), V4L2_CAP_VIDEO_CAPTURE);
    }
}

//! V4L2 (`include/uapi/linux/videodev2.h`): the subset needed to capture
//! single-planar video into dma-bufs (`V4L2_MEMORY_DMABUF`).
//!
//! Layouts are those of x86_64 (and the other LP64 targets with the
//! generic `_IOC` encoding): `struct v4l2_buffer` holds a `struct timeval`
//! (two `long`s) and a union with a pointer, so it is 88 bytes there;
//! `struct v4l2_format`'s union holds pointers (`struct v4l2_window`), so
//! it starts at offset 8 and the struct is 208 bytes. The tests pin every
//! size, offset and ioctl number against values printed by a C program
//! compiled with the uapi header.
//!
//! Unions are flattened into the one member this crate uses (`m.fd` of
//! `v4l2_buffer`, `fmt.pix` of `v4l2_format`) plus padding up to the
//! union's size, so no `unsafe` union access is needed.

use std::os::fd::AsFd;

use super::{ioctl_with, opcode, Opcode, Result};

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE`: single-planar video capture.
pub const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
/// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`: multi-planar video capture (not
/// supported by this crate).
pub const V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;

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

/// `struct v4l2_format` (208 bytes, 8-aligned): `type` and the `fmt`
/// union, flattened to its `pix` member plus padding.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct V4l2Format {
    /// `enum v4l2_buf_type`.
    pub type_: u32,
    /// Alignment padding before the union (it holds pointers).
    pub _pad: u32,
    /// `fmt.pix`, for single-planar video.
    pub pix: V4l2PixFormat,
    /// The rest of the 200-byte union (`fmt.raw_data`).
    pub _rest: [u8; 152],
}

impl Default for V4l2Format {
    fn default() -> Self {
        V4l2Format {
            type_: 0,
            _pad: 0,
            pix: V4l2PixFormat::default(),
            _rest: [0; 152],
        }
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

/// `struct v4l2_buffer` (88 bytes on LP64). The union `m` is flattened to
/// `fd` (its `__s32 fd` member, at the union's start) plus padding to the
/// union's 8 bytes; `offset` (MMAP) is the same 4 bytes read unsigned.
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
    /// `m.fd`: the dma-buf fd for `V4L2_MEMORY_DMABUF`.
    pub fd: i32,
    /// The rest of the union `m` (the upper half of `userptr`/`planes`).
    pub _m_rest: u32,
    /// Size of the buffer (for DMABUF: bytes of the dma-buf offered; 0
    /// means the whole dma-buf).
    pub length: u32,
    /// Zero.
    pub reserved2: u32,
    /// `request_fd` / `reserved`.
    pub request_fd: i32,
    /// Trailing padding to the struct's 8-byte alignment.
    pub _pad1: u32,
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
    // SAFETY: the command reads and writes a `struct v4l2_buffer`; the
    // dma-buf fd in it is only a number to the kernel (it takes its own
    // reference), and `planes` is not used for single-planar types.
    unsafe { ioctl_with(dev, VIDIOC_QBUF, buf) }.map(drop)
}

/// `VIDIOC_DQBUF`: `buf.type_` and `buf.memory` must be set; the rest is
/// filled in by the driver.
pub fn dqbuf(dev: impl AsFd, buf: &mut V4l2Buffer) -> Result<()> {
    // SAFETY: the command reads and writes a `struct v4l2_buffer`.
    unsafe { ioctl_with(dev, VIDIOC_DQBUF, buf) }.map(drop)
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
        assert_eq!(offset_of!(V4l2Format, pix), 8);
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
        assert_eq!(offset_of!(V4l2Buffer, fd), 64);
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

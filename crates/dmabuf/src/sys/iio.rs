//! `include/uapi/linux/iio/buffer.h`: the DMABUF interface of IIO buffers
//! (Linux 6.11+). Debian's 6.12 kernel builds no IIO driver with DMABUF
//! support; the lab builds `industrialio-buffer-dma` and a fake ADC
//! fixture and runs these ioctls against the real kernel
//! (`lab/guest/tests/iio.rs`, with the kernel's raw answers checked in
//! `iio_kernel_answers_of_the_dmabuf_ioctls`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::{ioctl_with, opcode, owned_fd, Opcode, Result};

/// Repeat the transfer until the buffer is detached (output buffers only).
pub const IIO_BUFFER_DMABUF_CYCLIC: u32 = 1 << 0;
/// Every flag the kernel accepts.
pub const IIO_BUFFER_DMABUF_SUPPORTED_FLAGS: u32 = 0x0000_0001;

/// `struct iio_dmabuf`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IioDmabuf {
    /// The attached dma-buf.
    pub fd: u32,
    /// `IIO_BUFFER_DMABUF_*`.
    pub flags: u32,
    /// Bytes of the buffer to use, 1..=size.
    pub bytes_used: u64,
}

/// `IIO_BUFFER_GET_FD_IOCTL`.
pub const IIO_BUFFER_GET_FD_IOCTL: Opcode = opcode::read_write::<i32>(b'i', 0x91);
/// `IIO_BUFFER_DMABUF_ATTACH_IOCTL`.
pub const IIO_BUFFER_DMABUF_ATTACH_IOCTL: Opcode = opcode::write::<i32>(b'i', 0x92);
/// `IIO_BUFFER_DMABUF_DETACH_IOCTL`.
pub const IIO_BUFFER_DMABUF_DETACH_IOCTL: Opcode = opcode::write::<i32>(b'i', 0x93);
/// `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL`.
pub const IIO_BUFFER_DMABUF_ENQUEUE_IOCTL: Opcode = opcode::write::<IioDmabuf>(b'i', 0x94);

/// `IIO_BUFFER_GET_FD_IOCTL`: the fd of buffer number `index` of the IIO
/// device `dev` (`/dev/iio:deviceN`).
pub fn buffer_fd(dev: impl AsFd, index: i32) -> Result<OwnedFd> {
    let mut arg = index;
    // SAFETY: the command takes a pointer to an `int`, replaced by the fd.
    unsafe { ioctl_with(dev, IIO_BUFFER_GET_FD_IOCTL, &mut arg) }?;
    // SAFETY: on success the kernel stored a new fd in `arg`.
    Ok(unsafe { owned_fd(arg) })
}

/// `IIO_BUFFER_DMABUF_ATTACH_IOCTL`.
pub fn attach(buffer: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
    let mut fd = dmabuf.as_fd().as_raw_fd();
    // SAFETY: the command takes a pointer to an `int` fd.
    unsafe { ioctl_with(buffer, IIO_BUFFER_DMABUF_ATTACH_IOCTL, &mut fd) }.map(drop)
}

/// `IIO_BUFFER_DMABUF_DETACH_IOCTL`.
pub fn detach(buffer: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
    let mut fd = dmabuf.as_fd().as_raw_fd();
    // SAFETY: the command takes a pointer to an `int` fd.
    unsafe { ioctl_with(buffer, IIO_BUFFER_DMABUF_DETACH_IOCTL, &mut fd) }.map(drop)
}

/// The argument of `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL` for a transfer.
pub fn enqueue_arg(dmabuf: impl AsFd, flags: u32, bytes_used: u64) -> IioDmabuf {
    IioDmabuf {
        fd: dmabuf.as_fd().as_raw_fd() as u32,
        flags,
        bytes_used,
    }
}

/// `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL`.
pub fn enqueue(buffer: impl AsFd, arg: &IioDmabuf) -> Result<()> {
    let mut arg = *arg;
    // SAFETY: the command takes a pointer to `struct iio_dmabuf`.
    unsafe { ioctl_with(buffer, IIO_BUFFER_DMABUF_ENQUEUE_IOCTL, &mut arg) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_uapi() {
        assert_eq!(size_of::<IioDmabuf>(), 16);
        assert_eq!(offset_of!(IioDmabuf, flags), 4);
        assert_eq!(offset_of!(IioDmabuf, bytes_used), 8);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(IIO_BUFFER_GET_FD_IOCTL, 0xc004_6991);
        assert_eq!(IIO_BUFFER_DMABUF_ATTACH_IOCTL, 0x4004_6992);
        assert_eq!(IIO_BUFFER_DMABUF_DETACH_IOCTL, 0x4004_6993);
        assert_eq!(IIO_BUFFER_DMABUF_ENQUEUE_IOCTL, 0x4010_6994);
    }
}

//! `include/uapi/linux/usb/functionfs.h`: the DMABUF interface of
//! FunctionFS data endpoints (Linux 6.9+).

use std::os::fd::{AsFd, AsRawFd};

use super::{ioctl_with, opcode, Opcode, Result};

/// Transfer flags the kernel accepts (none yet).
pub const USB_FFS_DMABUF_TRANSFER_MASK: u32 = 0x0;

/// `struct usb_ffs_dmabuf_transfer_req` (packed).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UsbFfsDmabufTransferReq {
    /// The attached dma-buf.
    pub fd: i32,
    /// Must be 0.
    pub flags: u32,
    /// Bytes to transfer, 1..=size of the buffer.
    pub length: u64,
}

/// `FUNCTIONFS_DMABUF_ATTACH`.
pub const FUNCTIONFS_DMABUF_ATTACH: Opcode = opcode::write::<i32>(b'g', 131);
/// `FUNCTIONFS_DMABUF_DETACH`.
pub const FUNCTIONFS_DMABUF_DETACH: Opcode = opcode::write::<i32>(b'g', 132);
/// `FUNCTIONFS_DMABUF_TRANSFER`.
pub const FUNCTIONFS_DMABUF_TRANSFER: Opcode = opcode::write::<UsbFfsDmabufTransferReq>(b'g', 133);

/// `FUNCTIONFS_DMABUF_ATTACH` of `dmabuf` to the endpoint file `ep`.
pub fn attach(ep: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
    let mut fd = dmabuf.as_fd().as_raw_fd();
    // SAFETY: the command takes a pointer to an `int` fd.
    unsafe { ioctl_with(ep, FUNCTIONFS_DMABUF_ATTACH, &mut fd) }.map(drop)
}

/// `FUNCTIONFS_DMABUF_DETACH`.
pub fn detach(ep: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
    let mut fd = dmabuf.as_fd().as_raw_fd();
    // SAFETY: the command takes a pointer to an `int` fd.
    unsafe { ioctl_with(ep, FUNCTIONFS_DMABUF_DETACH, &mut fd) }.map(drop)
}

/// `FUNCTIONFS_DMABUF_TRANSFER`: queues `length` bytes of `dmabuf`.
pub fn transfer(ep: impl AsFd, dmabuf: impl AsFd, flags: u32, length: u64) -> Result<()> {
    let mut req = UsbFfsDmabufTransferReq {
        fd: dmabuf.as_fd().as_raw_fd(),
        flags,
        length,
    };
    // SAFETY: the command takes a pointer to the packed transfer request.
    unsafe { ioctl_with(ep, FUNCTIONFS_DMABUF_TRANSFER, &mut req) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_uapi() {
        assert_eq!(size_of::<UsbFfsDmabufTransferReq>(), 16);
        assert_eq!(offset_of!(UsbFfsDmabufTransferReq, flags), 4);
        assert_eq!(offset_of!(UsbFfsDmabufTransferReq, length), 8);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(FUNCTIONFS_DMABUF_ATTACH, 0x4004_6783);
        assert_eq!(FUNCTIONFS_DMABUF_DETACH, 0x4004_6784);
        assert_eq!(FUNCTIONFS_DMABUF_TRANSFER, 0x4010_6785);
    }
}

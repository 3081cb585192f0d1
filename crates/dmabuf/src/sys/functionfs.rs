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

/// `struct usb_endpoint_descriptor` (`linux/usb/ch9.h`, packed, with the
/// two audio bytes: 9 bytes; the kernel copies `bLength` of them).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UsbEndpointDescriptor {
    /// 7, or 9 for audio endpoints.
    pub b_length: u8,
    /// `USB_DT_ENDPOINT` (5).
    pub b_descriptor_type: u8,
    /// Endpoint number; bit 7 set for IN (device to host).
    pub b_endpoint_address: u8,
    /// Transfer type in bits 0..2 (2 = bulk).
    pub bm_attributes: u8,
    /// Largest packet, little-endian.
    pub w_max_packet_size: u16,
    /// Polling interval.
    pub b_interval: u8,
    /// Audio only.
    pub b_refresh: u8,
    /// Audio only.
    pub b_synch_address: u8,
}

/// `USB_DIR_IN`: bit 7 of `bEndpointAddress`.
pub const USB_DIR_IN: u8 = 0x80;

/// `FUNCTIONFS_ENDPOINT_DESC`: the descriptor of the endpoint in use.
pub const FUNCTIONFS_ENDPOINT_DESC: Opcode = opcode::read::<UsbEndpointDescriptor>(b'g', 130);

/// `FUNCTIONFS_ENDPOINT_DESC` on the endpoint file `ep`.
pub fn endpoint_desc(ep: impl AsFd) -> Result<UsbEndpointDescriptor> {
    let mut desc = UsbEndpointDescriptor::default();
    // SAFETY: the command writes at most `bLength` (≤ 9) bytes into the
    // 9-byte descriptor it points to.
    unsafe { ioctl_with(ep, FUNCTIONFS_ENDPOINT_DESC, &mut desc) }?;
    Ok(desc)
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
        assert_eq!(size_of::<UsbEndpointDescriptor>(), 9);
        assert_eq!(offset_of!(UsbEndpointDescriptor, w_max_packet_size), 4);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(FUNCTIONFS_DMABUF_ATTACH, 0x4004_6783);
        assert_eq!(FUNCTIONFS_DMABUF_DETACH, 0x4004_6784);
        assert_eq!(FUNCTIONFS_DMABUF_TRANSFER, 0x4010_6785);
        assert_eq!(FUNCTIONFS_ENDPOINT_DESC, 0x8009_6782);
    }
}

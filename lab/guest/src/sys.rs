//! The one kernel interface the guest tests need that the library does not
//! have: usbfs bulk transfers (`linux/usbdevice_fs.h`), for the host side
//! of the FunctionFS tests. The only `unsafe` of the guest crate.

use std::os::fd::BorrowedFd;

use rustix::io::{Errno, Result};
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};

/// `struct usbdevfs_bulktransfer`.
#[repr(C)]
#[derive(Debug)]
pub struct UsbdevfsBulkTransfer {
    /// Endpoint address (bit 7 set for IN).
    pub ep: u32,
    /// Bytes to move.
    pub len: u32,
    /// Milliseconds; 0 waits forever.
    pub timeout: u32,
    /// The data; `len` bytes, writable for IN.
    pub data: *mut std::ffi::c_void,
}

/// `USBDEVFS_BULK`: `_IOWR('U', 2, struct usbdevfs_bulktransfer)`.
pub const USBDEVFS_BULK: Opcode = opcode::read_write::<UsbdevfsBulkTransfer>(b'U', 2);

struct Bulk<'a>(&'a mut UsbdevfsBulkTransfer);

// SAFETY: the opcode is USBDEVFS_BULK and the pointer is to a live,
// exclusively borrowed `struct usbdevfs_bulktransfer`; the output is the
// raw return value (bytes transferred), read without the pointer.
unsafe impl Ioctl for Bulk<'_> {
    type Output = usize;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        USBDEVFS_BULK
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (self.0 as *mut UsbdevfsBulkTransfer).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut std::ffi::c_void) -> Result<usize> {
        usize::try_from(out).map_err(|_| Errno::INVAL)
    }
}

/// `USBDEVFS_BULK` on a usbfs device node: one bulk transfer of
/// `data.len()` bytes to or from endpoint `ep` (bit 7 set: IN, into
/// `data`); the bytes transferred.
pub fn usbdevfs_bulk(
    fd: BorrowedFd<'_>,
    ep: u8,
    data: &mut [u8],
    timeout_ms: u32,
) -> Result<usize> {
    let len = u32::try_from(data.len()).map_err(|_| Errno::INVAL)?;
    let mut req = UsbdevfsBulkTransfer {
        ep: u32::from(ep),
        len,
        timeout: timeout_ms,
        data: data.as_mut_ptr().cast(),
    };
    // SAFETY: `req` is the argument type of USBDEVFS_BULK; its pointer and
    // length describe `data`, exclusively borrowed for the whole call.
    unsafe { rustix::ioctl::ioctl(fd, Bulk(&mut req)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_number_match_uapi() {
        assert_eq!(std::mem::size_of::<UsbdevfsBulkTransfer>(), 24);
        assert_eq!(USBDEVFS_BULK, 0xc018_5502);
    }
}

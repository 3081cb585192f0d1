//! `include/uapi/linux/udmabuf.h`: turning memfd pages into dma-bufs.

use std::os::fd::{AsFd, OwnedFd};

use super::{ioctl_raw, ioctl_with, opcode, owned_fd, Opcode, Result};

/// The device node.
pub const UDMABUF_DEVICE: &str = "/dev/udmabuf";
/// Where the module parameters live (`list_limit`, `size_limit_mb`).
pub const UDMABUF_PARAMETERS: &str = "/sys/module/udmabuf/parameters";
/// The kernel's default `list_limit`.
pub const UDMABUF_DEFAULT_LIST_LIMIT: u32 = 1024;
/// The kernel's default `size_limit_mb`.
pub const UDMABUF_DEFAULT_SIZE_LIMIT_MB: u64 = 64;

/// Give the new dma-buf fd the close-on-exec flag (`UDMABUF_FLAGS_CLOEXEC`).
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdmabufCreate {
    /// The memfd.
    pub memfd: u32,
    /// `UDMABUF_FLAGS_*`.
    pub flags: u32,
    /// Offset in the memfd, page-aligned.
    pub offset: u64,
    /// Size, page-aligned.
    pub size: u64,
}

/// `struct udmabuf_create_item`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdmabufCreateItem {
    /// The memfd.
    pub memfd: u32,
    /// Padding, ignored by the kernel.
    pub pad: u32,
    /// Offset in the memfd, page-aligned.
    pub offset: u64,
    /// Size, page-aligned.
    pub size: u64,
}

/// `struct udmabuf_create_list` (head; the items follow it in memory).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdmabufCreateList {
    /// `UDMABUF_FLAGS_*`.
    pub flags: u32,
    /// Number of items that follow.
    pub count: u32,
}

/// `UDMABUF_CREATE`.
pub const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);
/// `UDMABUF_CREATE_LIST`.
pub const UDMABUF_CREATE_LIST: Opcode = opcode::write::<UdmabufCreateList>(b'u', 0x43);

/// `UDMABUF_CREATE` on the `/dev/udmabuf` fd `dev`: a dma-buf of one range.
pub fn create(dev: impl AsFd, arg: &UdmabufCreate) -> Result<OwnedFd> {
    let mut arg = *arg;
    // SAFETY: UDMABUF_CREATE takes a pointer to `struct udmabuf_create`.
    let fd = unsafe { ioctl_with(dev, UDMABUF_CREATE, &mut arg) }?;
    // SAFETY: the ioctl's return value is a new dma-buf fd owned by us.
    Ok(unsafe { owned_fd(fd) })
}

/// `UDMABUF_CREATE_LIST`: a dma-buf of several ranges, in order.
pub fn create_list(dev: impl AsFd, flags: u32, items: &[UdmabufCreateItem]) -> Result<OwnedFd> {
    // The kernel reads the head, then `count` items right after it: build
    // one contiguous, 8-byte aligned buffer of u64 words.
    let head = std::mem::size_of::<UdmabufCreateList>();
    let words = (head + std::mem::size_of_val(items)).div_ceil(8);
    let mut buf = vec![0u64; words];
    let count = u32::try_from(items.len()).map_err(|_| super::Errno::INVAL)?;
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` is 8-byte aligned and large enough for the head and all
    // items (computed above); both types are plain old data.
    unsafe {
        base.cast::<UdmabufCreateList>()
            .write(UdmabufCreateList { flags, count });
        let list = base.add(head).cast::<UdmabufCreateItem>();
        for (i, it) in items.iter().enumerate() {
            list.add(i).write(*it);
        }
    }
    // SAFETY: UDMABUF_CREATE_LIST takes a pointer to the head, followed in
    // memory by `count` items, which is what `buf` holds.
    let fd = unsafe { ioctl_raw(dev.as_fd(), UDMABUF_CREATE_LIST, base.cast()) }?;
    // SAFETY: the ioctl's return value is a new dma-buf fd owned by us.
    Ok(unsafe { owned_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_uapi() {
        assert_eq!(size_of::<UdmabufCreate>(), 24);
        assert_eq!(offset_of!(UdmabufCreate, memfd), 0);
        assert_eq!(offset_of!(UdmabufCreate, flags), 4);
        assert_eq!(offset_of!(UdmabufCreate, offset), 8);
        assert_eq!(offset_of!(UdmabufCreate, size), 16);
        assert_eq!(size_of::<UdmabufCreateItem>(), 24);
        assert_eq!(offset_of!(UdmabufCreateItem, pad), 4);
        assert_eq!(offset_of!(UdmabufCreateItem, offset), 8);
        assert_eq!(offset_of!(UdmabufCreateItem, size), 16);
        assert_eq!(size_of::<UdmabufCreateList>(), 8);
        assert_eq!(offset_of!(UdmabufCreateList, count), 4);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
        assert_eq!(UDMABUF_CREATE_LIST, 0x4008_7543);
        assert_eq!(UDMABUF_FLAGS_CLOEXEC, 1);
    }
}

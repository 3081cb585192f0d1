//! `include/uapi/linux/dma-heap.h`: allocating dma-bufs from a heap.

use std::os::fd::{AsFd, OwnedFd};

use super::{ioctl_with, opcode, owned_fd, Opcode, Result};

/// Where heaps appear, one device node each.
pub const DMA_HEAP_DIR: &str = "/dev/dma_heap";
/// Valid `fd_flags`: `O_CLOEXEC | O_ACCMODE`.
pub const DMA_HEAP_VALID_FD_FLAGS: u32 = 0o2000000 | 0o3;
/// Valid `heap_flags` (none in 6.12).
pub const DMA_HEAP_VALID_HEAP_FLAGS: u64 = 0;

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaHeapAllocationData {
    /// Length in bytes (rounded up to pages by the kernel).
    pub len: u64,
    /// Out: the new dma-buf fd; must be 0 on input.
    pub fd: u32,
    /// `O_CLOEXEC` and an access mode for the new fd.
    pub fd_flags: u32,
    /// Heap-specific flags (must be 0).
    pub heap_flags: u64,
}

/// `DMA_HEAP_IOCTL_ALLOC`.
pub const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

/// `DMA_HEAP_IOCTL_ALLOC` on the heap fd `heap`.
pub fn alloc(heap: impl AsFd, len: u64, fd_flags: u32, heap_flags: u64) -> Result<OwnedFd> {
    let mut arg = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags,
        heap_flags,
    };
    // SAFETY: the command takes a pointer to `struct dma_heap_allocation_data`.
    unsafe { ioctl_with(heap, DMA_HEAP_IOCTL_ALLOC, &mut arg) }?;
    // SAFETY: on success the kernel stored a new dma-buf fd in `arg.fd`.
    Ok(unsafe { owned_fd(arg.fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_uapi() {
        assert_eq!(size_of::<DmaHeapAllocationData>(), 24);
        assert_eq!(offset_of!(DmaHeapAllocationData, len), 0);
        assert_eq!(offset_of!(DmaHeapAllocationData, fd), 8);
        assert_eq!(offset_of!(DmaHeapAllocationData, fd_flags), 12);
        assert_eq!(offset_of!(DmaHeapAllocationData, heap_flags), 16);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(DMA_HEAP_IOCTL_ALLOC, 0xc018_4800);
        assert_eq!(DMA_HEAP_VALID_FD_FLAGS, 0x80003);
    }
}

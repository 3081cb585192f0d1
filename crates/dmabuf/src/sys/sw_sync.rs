//! `sw_sync`: the kernel's software timeline for tests
//! (`/sys/kernel/debug/sync/sw_sync`, needs `CONFIG_SW_SYNC`, which
//! Debian's 6.12 kernel does not set). The structs are private to
//! `drivers/dma-buf/sw_sync.c`, not in the uapi headers.

use std::os::fd::{AsFd, OwnedFd};

use super::{ioctl_with, opcode, owned_fd, Opcode, Result};

/// Where a new timeline is opened.
pub const SW_SYNC_PATH: &str = "/sys/kernel/debug/sync/sw_sync";

/// `struct sw_sync_create_fence_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SwSyncCreateFenceData {
    /// Timeline value at which the fence signals.
    pub value: u32,
    /// Fence name.
    pub name: [u8; 32],
    /// Out: the sync-file fd.
    pub fence: i32,
}

/// `struct sw_sync_get_deadline`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SwSyncGetDeadline {
    /// Out: the deadline.
    pub deadline_ns: u64,
    /// Must be 0.
    pub pad: u32,
    /// The sync file asked about.
    pub fence_fd: i32,
}

/// `SW_SYNC_IOC_CREATE_FENCE`.
pub const SW_SYNC_IOC_CREATE_FENCE: Opcode = opcode::read_write::<SwSyncCreateFenceData>(b'W', 0);
/// `SW_SYNC_IOC_INC`.
pub const SW_SYNC_IOC_INC: Opcode = opcode::write::<u32>(b'W', 1);
/// `SW_SYNC_GET_DEADLINE`.
pub const SW_SYNC_GET_DEADLINE: Opcode = opcode::read_write::<SwSyncGetDeadline>(b'W', 2);

/// `SW_SYNC_IOC_CREATE_FENCE` on a timeline fd.
pub fn create_fence(timeline: impl AsFd, value: u32, name: &str) -> Result<OwnedFd> {
    let mut arg = SwSyncCreateFenceData {
        value,
        name: super::c_name(name),
        fence: -1,
    };
    // SAFETY: the command takes a pointer to `struct sw_sync_create_fence_data`.
    unsafe { ioctl_with(timeline, SW_SYNC_IOC_CREATE_FENCE, &mut arg) }?;
    // SAFETY: on success the kernel stored a new sync-file fd in `fence`.
    Ok(unsafe { owned_fd(arg.fence) })
}

/// `SW_SYNC_IOC_INC`: advances the timeline by `by`.
pub fn inc(timeline: impl AsFd, by: u32) -> Result<()> {
    let mut arg = by;
    // SAFETY: the command takes a pointer to a `__u32`.
    unsafe { ioctl_with(timeline, SW_SYNC_IOC_INC, &mut arg) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_and_numbers_match_uapi() {
        assert_eq!(size_of::<SwSyncCreateFenceData>(), 40);
        assert_eq!(size_of::<SwSyncGetDeadline>(), 16);
        assert_eq!(SW_SYNC_IOC_CREATE_FENCE, 0xc028_5700);
        assert_eq!(SW_SYNC_IOC_INC, 0x4004_5701);
        assert_eq!(SW_SYNC_GET_DEADLINE, 0xc010_5702);
    }
}

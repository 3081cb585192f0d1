//! `include/uapi/linux/sync_file.h`: merging, inspecting and hinting sync
//! files.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::{ioctl_with, opcode, owned_fd, Opcode, Result};

/// `struct sync_merge_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncMergeData {
    /// Name of the new fence.
    pub name: [u8; 32],
    /// The other sync file.
    pub fd2: i32,
    /// Out: the merged sync file.
    pub fence: i32,
    /// Must be 0.
    pub flags: u32,
    /// Must be 0.
    pub pad: u32,
}

/// `struct sync_fence_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFenceInfo {
    /// Timeline name.
    pub obj_name: [u8; 32],
    /// Driver name.
    pub driver_name: [u8; 32],
    /// 1 signalled, 0 active, < 0 error.
    pub status: i32,
    /// Unused.
    pub flags: u32,
    /// Signal time (CLOCK_MONOTONIC ns) or 0.
    pub timestamp_ns: u64,
}

/// `struct sync_file_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFileInfo {
    /// Name of the sync file.
    pub name: [u8; 32],
    /// 1 signalled, 0 active, < 0 error.
    pub status: i32,
    /// Must be 0.
    pub flags: u32,
    /// In: room in the array (0 = count only); out: number of fences.
    pub num_fences: u32,
    /// Must be 0.
    pub pad: u32,
    /// User pointer to an array of `SyncFenceInfo`.
    pub sync_fence_info: u64,
}

/// `struct sync_set_deadline`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncSetDeadline {
    /// CLOCK_MONOTONIC deadline in ns.
    pub deadline_ns: u64,
    /// Must be 0.
    pub pad: u64,
}

/// `SYNC_IOC_MERGE`.
pub const SYNC_IOC_MERGE: Opcode = opcode::read_write::<SyncMergeData>(b'>', 3);
/// `SYNC_IOC_FILE_INFO`.
pub const SYNC_IOC_FILE_INFO: Opcode = opcode::read_write::<SyncFileInfo>(b'>', 4);
/// `SYNC_IOC_SET_DEADLINE`.
pub const SYNC_IOC_SET_DEADLINE: Opcode = opcode::write::<SyncSetDeadline>(b'>', 5);

/// `SYNC_IOC_MERGE`: a new sync file that signals when both have.
pub fn merge(a: impl AsFd, b: impl AsFd, name: &str) -> Result<OwnedFd> {
    let mut arg = SyncMergeData {
        name: super::c_name(name),
        fd2: b.as_fd().as_raw_fd(),
        fence: -1,
        ..Default::default()
    };
    // SAFETY: the command takes a pointer to `struct sync_merge_data`.
    unsafe { ioctl_with(a, SYNC_IOC_MERGE, &mut arg) }?;
    // SAFETY: on success the kernel stored a new sync-file fd in `fence`.
    Ok(unsafe { owned_fd(arg.fence) })
}

/// `SYNC_IOC_FILE_INFO` with no array: the sync file's name, overall
/// status and number of fences.
pub fn file_info_summary(fd: impl AsFd) -> Result<SyncFileInfo> {
    let mut info = SyncFileInfo::default();
    // SAFETY: the command takes a pointer to `struct sync_file_info`;
    // `num_fences == 0` means the kernel writes no array.
    unsafe { ioctl_with(fd, SYNC_IOC_FILE_INFO, &mut info) }?;
    Ok(info)
}

/// `SYNC_IOC_FILE_INFO` with the per-fence array.
pub fn file_info(fd: impl AsFd) -> Result<(SyncFileInfo, Vec<SyncFenceInfo>)> {
    let fd = fd.as_fd();
    // The number of fences of a sync file never changes, so two calls are
    // enough; loop anyway in case the kernel ever says EINVAL for "grew".
    let mut n = file_info_summary(fd)?.num_fences;
    loop {
        let mut fences = vec![SyncFenceInfo::default(); n.max(1) as usize];
        let mut info = SyncFileInfo {
            num_fences: n.max(1),
            sync_fence_info: fences.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `sync_fence_info` points at `num_fences` writable entries
        // of the right layout, alive for the duration of the call.
        match unsafe { ioctl_with(fd, SYNC_IOC_FILE_INFO, &mut info) } {
            Ok(_) => {
                fences.truncate(info.num_fences as usize);
                return Ok((info, fences));
            }
            Err(super::Errno::INVAL) if info.num_fences > n => n = info.num_fences,
            Err(e) => return Err(e),
        }
    }
}

/// `SYNC_IOC_SET_DEADLINE`: hints that the fence should signal by
/// `deadline_ns` (CLOCK_MONOTONIC).
pub fn set_deadline(fd: impl AsFd, deadline_ns: u64) -> Result<()> {
    let mut arg = SyncSetDeadline {
        deadline_ns,
        pad: 0,
    };
    // SAFETY: the command takes a pointer to `struct sync_set_deadline`.
    unsafe { ioctl_with(fd, SYNC_IOC_SET_DEADLINE, &mut arg) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_uapi() {
        assert_eq!(size_of::<SyncMergeData>(), 48);
        assert_eq!(offset_of!(SyncMergeData, fd2), 32);
        assert_eq!(offset_of!(SyncMergeData, fence), 36);
        assert_eq!(offset_of!(SyncMergeData, flags), 40);
        assert_eq!(offset_of!(SyncMergeData, pad), 44);
        assert_eq!(size_of::<SyncFenceInfo>(), 80);
        assert_eq!(offset_of!(SyncFenceInfo, driver_name), 32);
        assert_eq!(offset_of!(SyncFenceInfo, status), 64);
        assert_eq!(offset_of!(SyncFenceInfo, flags), 68);
        assert_eq!(offset_of!(SyncFenceInfo, timestamp_ns), 72);
        assert_eq!(size_of::<SyncFileInfo>(), 56);
        assert_eq!(offset_of!(SyncFileInfo, status), 32);
        assert_eq!(offset_of!(SyncFileInfo, flags), 36);
        assert_eq!(offset_of!(SyncFileInfo, num_fences), 40);
        assert_eq!(offset_of!(SyncFileInfo, pad), 44);
        assert_eq!(offset_of!(SyncFileInfo, sync_fence_info), 48);
        assert_eq!(size_of::<SyncSetDeadline>(), 16);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(SYNC_IOC_MERGE, 0xc030_3e03);
        assert_eq!(SYNC_IOC_FILE_INFO, 0xc038_3e04);
        assert_eq!(SYNC_IOC_SET_DEADLINE, 0x4010_3e05);
    }
}

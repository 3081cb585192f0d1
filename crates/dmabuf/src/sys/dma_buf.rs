//! `include/uapi/linux/dma-buf.h`: CPU-access sync, names, sync-file
//! export and import on dma-buf fds.

use std::os::fd::{AsFd, OwnedFd};

use super::{ioctl_raw, ioctl_with, opcode, owned_fd, Opcode, Result};

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaBufSync {
    /// `DMA_BUF_SYNC_*` flags.
    pub flags: u64,
}

/// Access for reading (`DMA_BUF_SYNC_READ`).
pub const DMA_BUF_SYNC_READ: u64 = 1;
/// Access for writing (`DMA_BUF_SYNC_WRITE`).
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
/// Access for reading and writing (`DMA_BUF_SYNC_RW`).
pub const DMA_BUF_SYNC_RW: u64 = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE;
/// Begin CPU access (`DMA_BUF_SYNC_START`).
pub const DMA_BUF_SYNC_START: u64 = 0 << 2;
/// End CPU access (`DMA_BUF_SYNC_END`).
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;
/// Every flag the kernel accepts (`DMA_BUF_SYNC_VALID_FLAGS_MASK`).
pub const DMA_BUF_SYNC_VALID_FLAGS_MASK: u64 = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END;
/// Longest name, NUL included (`DMA_BUF_NAME_LEN`).
pub const DMA_BUF_NAME_LEN: usize = 32;
/// Filesystem magic of dma-buf files (`DMA_BUF_MAGIC`).
pub const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// `struct dma_buf_export_sync_file`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaBufExportSyncFile {
    /// `DMA_BUF_SYNC_READ` and/or `DMA_BUF_SYNC_WRITE`.
    pub flags: u32,
    /// Out: the new sync-file fd.
    pub fd: i32,
}

/// `struct dma_buf_import_sync_file`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaBufImportSyncFile {
    /// `DMA_BUF_SYNC_READ` and/or `DMA_BUF_SYNC_WRITE`.
    pub flags: u32,
    /// The sync-file fd to import.
    pub fd: i32,
}

/// `DMA_BUF_IOCTL_SYNC`.
pub const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);
/// `DMA_BUF_SET_NAME_A` (32-bit pointer size).
pub const DMA_BUF_SET_NAME_A: Opcode = opcode::write::<u32>(b'b', 1);
/// `DMA_BUF_SET_NAME_B` (64-bit pointer size).
pub const DMA_BUF_SET_NAME_B: Opcode = opcode::write::<u64>(b'b', 1);
/// `DMA_BUF_SET_NAME` for this target's pointer size.
pub const DMA_BUF_SET_NAME: Opcode = opcode::write::<*const u8>(b'b', 1);
/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`.
pub const DMA_BUF_IOCTL_EXPORT_SYNC_FILE: Opcode =
    opcode::read_write::<DmaBufExportSyncFile>(b'b', 2);
/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`.
pub const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: Opcode = opcode::write::<DmaBufImportSyncFile>(b'b', 3);

/// `DMA_BUF_IOCTL_SYNC` with raw `flags` (start/end, direction).
///
/// No check is made here: the kernel answers EINVAL for bad flags, and a
/// udmabuf answers EINVAL to an END that no START preceded.
pub fn sync(fd: impl AsFd, flags: u64) -> Result<()> {
    let mut arg = DmaBufSync { flags };
    // SAFETY: DMA_BUF_IOCTL_SYNC takes a pointer to `struct dma_buf_sync`.
    unsafe { ioctl_with(fd, DMA_BUF_IOCTL_SYNC, &mut arg) }.map(drop)
}

/// `DMA_BUF_SET_NAME`: names the buffer (shown in fdinfo and
/// `/proc/PID/maps`). `name` must not contain NUL; the kernel refuses names
/// of 32 bytes or more with EINVAL.
pub fn set_name(fd: impl AsFd, name: &str) -> Result<()> {
    let c = std::ffi::CString::new(name).map_err(|_| super::Errno::INVAL)?;
    // SAFETY: the command takes a user pointer to a NUL-terminated string,
    // which `c` is and which outlives the call; the kernel only reads it.
    unsafe { ioctl_raw(fd.as_fd(), DMA_BUF_SET_NAME, c.as_ptr() as *mut _) }.map(drop)
}

/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`: a sync file of the buffer's fences for
/// `flags` (`DMA_BUF_SYNC_READ` = its writers, `WRITE` = everyone).
pub fn export_sync_file(fd: impl AsFd, flags: u32) -> Result<OwnedFd> {
    let mut arg = DmaBufExportSyncFile { flags, fd: -1 };
    // SAFETY: the command takes a pointer to `struct dma_buf_export_sync_file`.
    unsafe { ioctl_with(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &mut arg) }?;
    // SAFETY: on success the kernel stored a new fd in `arg.fd` for us.
    Ok(unsafe { owned_fd(arg.fd) })
}

/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`: adds the fence of `sync_file` to the
/// buffer's reservation, as a writer if `flags` has WRITE, else a reader.
pub fn import_sync_file(fd: impl AsFd, flags: u32, sync_file: impl AsFd) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut arg = DmaBufImportSyncFile {
        flags,
        fd: sync_file.as_fd().as_raw_fd(),
    };
    // SAFETY: the command takes a pointer to `struct dma_buf_import_sync_file`.
    unsafe { ioctl_with(fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &mut arg) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_uapi() {
        assert_eq!(size_of::<DmaBufSync>(), 8);
        assert_eq!(size_of::<DmaBufExportSyncFile>(), 8);
        assert_eq!(offset_of!(DmaBufExportSyncFile, fd), 4);
        assert_eq!(size_of::<DmaBufImportSyncFile>(), 8);
        assert_eq!(offset_of!(DmaBufImportSyncFile, fd), 4);
    }

    #[test]
    fn ioctl_numbers_match_uapi() {
        assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        assert_eq!(DMA_BUF_SET_NAME_A, 0x4004_6201);
        assert_eq!(DMA_BUF_SET_NAME_B, 0x4008_6201);
        assert_eq!(DMA_BUF_SET_NAME, 0x4008_6201);
        assert_eq!(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0xc008_6202);
        assert_eq!(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x4008_6203);
    }

    #[test]
    fn flag_values_match_uapi() {
        assert_eq!(DMA_BUF_SYNC_READ, 1);
        assert_eq!(DMA_BUF_SYNC_WRITE, 2);
        assert_eq!(DMA_BUF_SYNC_RW, 3);
        assert_eq!(DMA_BUF_SYNC_START, 0);
        assert_eq!(DMA_BUF_SYNC_END, 4);
        assert_eq!(DMA_BUF_SYNC_VALID_FLAGS_MASK, 7);
    }
}

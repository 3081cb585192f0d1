//! vgem (`drivers/gpu/drm/vgem`): the kernel's virtual GEM driver, used by
//! the lab as a dma-buf exporter whose fences user space controls
//! (`DRM_IOCTL_VGEM_FENCE_ATTACH` adds an unsignalled fence to a buffer's
//! reservation, `DRM_IOCTL_VGEM_FENCE_SIGNAL` signals it; unsignalled
//! fences time out after 10 s). Structs from `include/uapi/drm/vgem_drm.h`
//! and `drm_mode.h`, `drm.h`.

use std::os::fd::{AsFd, OwnedFd};

use super::{ioctl_with, opcode, owned_fd, Opcode, Result};

/// `VGEM_FENCE_WRITE`: attach the fence as a writer.
pub const VGEM_FENCE_WRITE: u32 = 0x1;

/// `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmModeCreateDumb {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Bits per pixel.
    pub bpp: u32,
    /// Must be 0.
    pub flags: u32,
    /// Out: GEM handle.
    pub handle: u32,
    /// Out: bytes per row.
    pub pitch: u32,
    /// Out: size in bytes.
    pub size: u64,
}

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmPrimeHandle {
    /// GEM handle.
    pub handle: u32,
    /// `DRM_CLOEXEC | DRM_RDWR` for export.
    pub flags: u32,
    /// Out: the dma-buf fd.
    pub fd: i32,
}

/// `struct drm_vgem_fence_attach`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmVgemFenceAttach {
    /// GEM handle.
    pub handle: u32,
    /// `VGEM_FENCE_WRITE` or 0.
    pub flags: u32,
    /// Out: fence id for signalling.
    pub out_fence: u32,
    /// Must be 0.
    pub pad: u32,
}

/// `struct drm_vgem_fence_signal`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmVgemFenceSignal {
    /// Fence id from attach.
    pub fence: u32,
    /// Must be 0.
    pub flags: u32,
}

/// `DRM_IOCTL_MODE_CREATE_DUMB`.
pub const DRM_IOCTL_MODE_CREATE_DUMB: Opcode = opcode::read_write::<DrmModeCreateDumb>(b'd', 0xb2);
/// `DRM_IOCTL_PRIME_HANDLE_TO_FD`.
pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: Opcode = opcode::read_write::<DrmPrimeHandle>(b'd', 0x2d);
/// `DRM_IOCTL_VGEM_FENCE_ATTACH`.
pub const DRM_IOCTL_VGEM_FENCE_ATTACH: Opcode =
    opcode::read_write::<DrmVgemFenceAttach>(b'd', 0x41);
/// `DRM_IOCTL_VGEM_FENCE_SIGNAL`.
pub const DRM_IOCTL_VGEM_FENCE_SIGNAL: Opcode = opcode::write::<DrmVgemFenceSignal>(b'd', 0x42);

/// Creates a dumb buffer of `width`×`height` at 32 bpp; returns (handle, size).
pub fn create_dumb(card: impl AsFd, width: u32, height: u32) -> Result<(u32, u64)> {
    let mut arg = DrmModeCreateDumb {
        height,
        width,
        bpp: 32,
        ..Default::default()
    };
    // SAFETY: the command takes a pointer to `struct drm_mode_create_dumb`.
    unsafe { ioctl_with(card, DRM_IOCTL_MODE_CREATE_DUMB, &mut arg) }?;
    Ok((arg.handle, arg.size))
}

/// Exports GEM `handle` as a dma-buf fd (read-write, close-on-exec).
pub fn export(card: impl AsFd, handle: u32) -> Result<OwnedFd> {
    let mut arg = DrmPrimeHandle {
        handle,
        flags: 0o2000000 | 0o2,
        fd: -1,
    };
    // SAFETY: the command takes a pointer to `struct drm_prime_handle`.
    unsafe { ioctl_with(card, DRM_IOCTL_PRIME_HANDLE_TO_FD, &mut arg) }?;
    // SAFETY: on success the kernel stored a new dma-buf fd in `fd`.
    Ok(unsafe { owned_fd(arg.fd) })
}

/// Attaches an unsignalled fence to GEM `handle`; returns its id.
pub fn fence_attach(card: impl AsFd, handle: u32, write: bool) -> Result<u32> {
    let mut arg = DrmVgemFenceAttach {
        handle,
        flags: if write { VGEM_FENCE_WRITE } else { 0 },
        ..Default::default()
    };
    // SAFETY: the command takes a pointer to `struct drm_vgem_fence_attach`.
    unsafe { ioctl_with(card, DRM_IOCTL_VGEM_FENCE_ATTACH, &mut arg) }?;
    Ok(arg.out_fence)
}

/// Signals fence `fence` from [`fence_attach`].
pub fn fence_signal(card: impl AsFd, fence: u32) -> Result<()> {
    let mut arg = DrmVgemFenceSignal { fence, flags: 0 };
    // SAFETY: the command takes a pointer to `struct drm_vgem_fence_signal`.
    unsafe { ioctl_with(card, DRM_IOCTL_VGEM_FENCE_SIGNAL, &mut arg) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_and_numbers_match_uapi() {
        assert_eq!(size_of::<DrmModeCreateDumb>(), 32);
        assert_eq!(size_of::<DrmPrimeHandle>(), 12);
        assert_eq!(size_of::<DrmVgemFenceAttach>(), 16);
        assert_eq!(size_of::<DrmVgemFenceSignal>(), 8);
        assert_eq!(DRM_IOCTL_MODE_CREATE_DUMB, 0xc020_64b2);
        assert_eq!(DRM_IOCTL_PRIME_HANDLE_TO_FD, 0xc00c_642d);
        assert_eq!(DRM_IOCTL_VGEM_FENCE_ATTACH, 0xc010_6441);
        assert_eq!(DRM_IOCTL_VGEM_FENCE_SIGNAL, 0x4008_6442);
    }
}

//! DRM PRIME: GEM handles ⇄ dma-buf fds, through Smithay's `drm` crate.
//!
//! The `drm` crate (0.15, built on `rustix` like this crate) has the
//! ioctls this library needs from a DRM device — `DRM_IOCTL_PRIME_FD_TO_HANDLE`,
//! `DRM_IOCTL_PRIME_HANDLE_TO_FD`, `DRM_IOCTL_GEM_CLOSE`,
//! `DRM_IOCTL_VERSION`, `DRM_IOCTL_GET_CAP` and `DRM_IOCTL_MODE_CREATE_DUMB` —
//! as safe methods of its `drm::Device` and `drm::control::Device` traits,
//! which any `AsFd` type may implement. Its `unsafe` stays inside it; this
//! file only adapts it to the conventions of `sys`: functions taking
//! `impl AsFd`, returning `OwnedFd` for new fds and the kernel's errno
//! (the crate's `io::Error`s carry it). Nothing here needs `unsafe`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use ::drm::control::Device as _;
use ::drm::Device as _;

use super::{Errno, Result};

/// `DRM_CLOEXEC` (`O_CLOEXEC`), for [`prime_handle_to_fd`].
pub const DRM_CLOEXEC: u32 = ::drm::CLOEXEC;
/// `DRM_RDWR` (`O_RDWR`), for [`prime_handle_to_fd`]: a mappable,
/// writable dma-buf.
pub const DRM_RDWR: u32 = ::drm::RDWR;
/// `DRM_PRIME_CAP_IMPORT`: the device imports dma-bufs.
pub const DRM_PRIME_CAP_IMPORT: u64 = 0x1;
/// `DRM_PRIME_CAP_EXPORT`: the device exports GEM objects as dma-bufs.
pub const DRM_PRIME_CAP_EXPORT: u64 = 0x2;

/// A borrowed DRM device fd, for the `drm` crate's traits.
struct Card<'a>(BorrowedFd<'a>);

impl AsFd for Card<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
    }
}

impl ::drm::Device for Card<'_> {}
impl ::drm::control::Device for Card<'_> {}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

fn card(fd: &impl AsFd) -> Card<'_> {
    Card(fd.as_fd())
}

/// `DRM_IOCTL_VERSION`: the driver's name (`"vgem"`, `"i915"`…). Fails
/// with `ENOTTY` on an fd that is not a DRM device.
pub fn driver_name(card_fd: impl AsFd) -> Result<String> {
    let d = card(&card_fd).get_driver().map_err(errno)?;
    Ok(d.name().to_string_lossy().into_owned())
}

/// `DRM_IOCTL_GET_CAP(DRM_CAP_PRIME)`: `DRM_PRIME_CAP_*` bits.
pub fn prime_caps(card_fd: impl AsFd) -> Result<u64> {
    card(&card_fd)
        .get_driver_capability(::drm::DriverCapability::Prime)
        .map_err(errno)
}

/// `DRM_IOCTL_PRIME_FD_TO_HANDLE`: the GEM handle of dma-buf `dmabuf` in
/// this DRM file (the kernel returns the same handle for the same dma-buf
/// every time, and the original object's handle for its own exports).
pub fn prime_fd_to_handle(card_fd: impl AsFd, dmabuf: impl AsFd) -> Result<u32> {
    let h = card(&card_fd)
        .prime_fd_to_buffer(dmabuf.as_fd())
        .map_err(errno)?;
    Ok(h.into())
}

/// `DRM_IOCTL_PRIME_HANDLE_TO_FD`: GEM `handle` as a dma-buf fd, with
/// `flags` (`DRM_CLOEXEC | DRM_RDWR`).
pub fn prime_handle_to_fd(card_fd: impl AsFd, handle: u32, flags: u32) -> Result<OwnedFd> {
    // Handle 0 is never a GEM object; the kernel answers ENOENT for it.
    let h = ::drm::control::from_u32::<::drm::buffer::Handle>(handle).ok_or(Errno::NOENT)?;
    card(&card_fd).buffer_to_prime_fd(h, flags).map_err(errno)
}

/// `DRM_IOCTL_GEM_CLOSE`: drops this file's `handle` (whoever else holds
/// it in this file loses it too: handles are not reference-counted).
pub fn gem_close(card_fd: impl AsFd, handle: u32) -> Result<()> {
    let h = ::drm::control::from_u32::<::drm::buffer::Handle>(handle).ok_or(Errno::INVAL)?;
    card(&card_fd).close_buffer(h).map_err(errno)
}

/// `DRM_IOCTL_MODE_CREATE_DUMB`: a new `width`×`height` dumb buffer of
/// `bpp` bits per pixel; returns its GEM handle and pitch.
pub fn create_dumb(card_fd: impl AsFd, width: u32, height: u32, bpp: u32) -> Result<(u32, u32)> {
    use ::drm::buffer::Buffer as _;
    // The fourcc is only recorded by the crate; the ioctl takes bpp.
    let d = card(&card_fd)
        .create_dumb_buffer((width, height), ::drm::buffer::DrmFourcc::Xrgb8888, bpp)
        .map_err(errno)?;
    Ok((d.handle().into(), d.pitch()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_the_open_flags() {
        assert_eq!(DRM_CLOEXEC, 0o2000000);
        assert_eq!(DRM_RDWR, 0o2);
    }

    #[test]
    fn a_file_that_is_no_drm_device_answers_enotty() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(driver_name(&f), Err(Errno::NOTTY));
        let m = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert_eq!(driver_name(&m), Err(Errno::NOTTY));
        assert_eq!(
            prime_handle_to_fd(&m, 0, DRM_CLOEXEC).map(drop),
            Err(Errno::NOENT)
        );
    }
}

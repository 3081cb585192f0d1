//! DRM PRIME: hand buffers to a DRM device as GEM objects, and take a
//! device's GEM objects as buffers.
//!
//! # DOC: PRIME
//!
//! A DRM device (a GPU, a display controller, vgem) names memory by *GEM
//! handles*, small integers private to one open file of the device.
//! PRIME converts between them and dma-bufs:
//!
//! * [`DrmDevice::import`] gives a buffer to the device
//!   (`DRM_IOCTL_PRIME_FD_TO_HANDLE`) and returns a [`GemHandle`];
//!   [`DrmDevice::import_frame`] does so for every buffer of a
//!   [`Frame`], each once;
//! * [`GemHandle::export`] makes a GEM object a dma-buf
//!   (`DRM_IOCTL_PRIME_HANDLE_TO_FD` with `O_CLOEXEC | O_RDWR`), as a
//!   [`Buffer`]; exporting an imported buffer gives back the *original*
//!   dma-buf (the same inode: the kernel keeps the import's dma-buf);
//! * a handle's lifetime is its [`GemHandle`]'s: the last one dropped
//!   closes it (`DRM_IOCTL_GEM_CLOSE`). The kernel gives the *same*
//!   handle for every import of one dma-buf into one file (and a GEM
//!   object's own handle when its export is imported back), and
//!   `GEM_CLOSE` is not reference-counted: closing it once removes it for
//!   everyone. So the device counts the [`GemHandle`]s of each handle and
//!   closes it only when the last goes; the count and the ioctls happen
//!   under one lock, so an import racing a close never gets a handle the
//!   close is about to remove;
//! * only dma-bufs can be imported: a portable buffer (a memfd) or any
//!   other fd is refused on the user side with a
//!   [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error
//!   (`EINVAL`, the kernel's answer) saying so; the kernel's own refusals
//!   keep their errno;
//! * [`DrmDevice::open`] refuses a file that is not a DRM device
//!   (`DRM_IOCTL_VERSION` fails with `ENOTTY`), naming it.
//!
//! This is not a transfer [`Endpoint`](super::Endpoint): a DRM device
//! takes buffers by handle, and what it does with them (scan-out,
//! rendering) is the driver's API. Fences for that work travel in the
//! buffer's reservation, as for every dma-buf.
//!
//! The ioctls come from Smithay's `drm` crate (`drm::control::Device`'s
//! `prime_fd_to_buffer`, `buffer_to_prime_fd`, `close_buffer`), wrapped
//! in `sys::drm`; it serves as it is — safe, on `rustix`, and
//! the same handle type the rest of a KMS program uses — so no ioctl here
//! is hand-written.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::buffer::Buffer;
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, Result};
use crate::frame::Frame;
use crate::sys;

/// An open DRM device, for PRIME import and export. Cheap to clone (a
/// shared handle on one open file).
#[derive(Clone)]
pub struct DrmDevice {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    path: String,
    driver: String,
    caps: u64,
    /// GEM handle → number of live [`GemHandle`]s on it.
    handles: Mutex<HashMap<u32, usize>>,
}

impl fmt::Debug for DrmDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrmDevice")
            .field("path", &self.inner.path)
            .field("driver", &self.inner.driver)
            .field("fd", &self.inner.fd.as_raw_fd())
            .finish()
    }
}

impl DrmDevice {
    /// Opens the DRM device at `path` (`/dev/dri/card0`,
    /// `/dev/dri/renderD128`) read-write.
    pub fn open(path: impl AsRef<Path>) -> Result<DrmDevice> {
        let path = path.as_ref();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open DRM device", path.display().to_string(), e))?;
        DrmDevice::with_name(f.into(), path.display().to_string())
    }

    /// A device on an open DRM file.
    pub fn from_fd(fd: OwnedFd) -> Result<DrmDevice> {
        let name = format!("fd {}", fd.as_raw_fd());
        DrmDevice::with_name(fd, name)
    }

    fn with_name(fd: OwnedFd, path: String) -> Result<DrmDevice> {
        let driver = sys::drm::driver_name(&fd).map_err(|e| match e {
            Errno::NOTTY | Errno::INVAL => Error::kernel(
                "open DRM device",
                path.clone(),
                e,
                "not a DRM device (DRM_IOCTL_VERSION is refused)",
            ),
            e => Error::os("open DRM device", path.clone(), e),
        })?;
        // Drivers without PRIME answer 0 here, or refuse the query.
        let caps = sys::drm::prime_caps(&fd).unwrap_or(0);
        Ok(DrmDevice {
            inner: Arc::new(Inner {
                fd,
                path,
                driver,
                caps,
                handles: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The driver's name (`"vgem"`).
    pub fn driver(&self) -> &str {
        &self.inner.driver
    }

    /// The device's path (or `fd N`).
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// Whether the driver says it imports dma-bufs (`DRM_PRIME_CAP_IMPORT`).
    pub fn can_import(&self) -> bool {
        self.inner.caps & sys::drm::DRM_PRIME_CAP_IMPORT != 0
    }

    /// Whether the driver says it exports GEM objects (`DRM_PRIME_CAP_EXPORT`).
    pub fn can_export(&self) -> bool {
        self.inner.caps & sys::drm::DRM_PRIME_CAP_EXPORT != 0
    }

    /// The device file (for driver ioctls on the handles).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    /// How many distinct GEM handles this library holds open on the
    /// device now.
    pub fn open_handles(&self) -> usize {
        self.lock().len()
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.inner.path, self.inner.driver)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, usize>> {
        self.inner.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers one more [`GemHandle`] on `handle`; the caller holds the
    /// lock across the ioctl that produced it.
    fn hold(&self, map: &mut HashMap<u32, usize>, handle: u32) -> GemHandle {
        *map.entry(handle).or_insert(0) += 1;
        GemHandle {
            device: self.clone(),
            handle,
        }
    }

    /// Imports `buffer` (a dma-buf) into the device.
    pub fn import(&self, buffer: &Buffer) -> Result<GemHandle> {
        match buffer.dma_buf() {
            Some(d) => self.import_dma_buf(d.as_fd(), &buffer.describe()),
            None => Err(Error::invalid(
                "PRIME import",
                format!("{} into {}", buffer.describe(), self.describe()),
                format!(
                    "a {} buffer is not a dma-buf; DRM PRIME imports dma-bufs only",
                    buffer.kind()
                ),
            )),
        }
    }

    /// Imports the dma-buf `fd` into the device; any other fd is refused.
    pub fn import_fd(&self, fd: BorrowedFd<'_>) -> Result<GemHandle> {
        let what = format!("fd {}", fd.as_raw_fd());
        let st = rustix::fs::fstatfs(fd).map_err(|e| {
            Error::os(
                "PRIME import",
                format!("{what} into {}", self.describe()),
                e,
            )
        })?;
        if st.f_type as i64 != sys::dma_buf::DMA_BUF_MAGIC {
            return Err(Error::invalid(
                "PRIME import",
                format!("{what} into {}", self.describe()),
                "not a dma-buf; DRM PRIME imports dma-bufs only",
            ));
        }
        self.import_dma_buf(fd, &what)
    }

    fn import_dma_buf(&self, fd: BorrowedFd<'_>, what: &str) -> Result<GemHandle> {
        let mut map = self.lock();
        let handle = sys::drm::prime_fd_to_handle(&self.inner.fd, fd).map_err(|e| {
            let obj = format!("{what} into {}", self.describe());
            match e {
                Errno::OPNOTSUPP | Errno::NOSYS | Errno::NODEV => Error::kernel(
                    "PRIME import",
                    obj,
                    e,
                    "the driver does not import dma-bufs",
                ),
                e => Error::os("PRIME import", obj, e),
            }
        })?;
        Ok(self.hold(&mut map, handle))
    }

    /// Imports every buffer of `frame`, each once: the handles are in the
    /// order of [`Frame::buffers`], so plane `i`'s handle is
    /// `handles[frame.layout().planes[i].buffer]`.
    pub fn import_frame(&self, frame: &Frame) -> Result<Vec<GemHandle>> {
        frame.buffers().iter().map(|b| self.import(b)).collect()
    }

    /// Creates a dumb buffer (`DRM_IOCTL_MODE_CREATE_DUMB`) of
    /// `width`×`height` at `bpp` bits per pixel; returns its handle and
    /// the pitch the driver chose.
    pub fn create_dumb(&self, width: u32, height: u32, bpp: u32) -> Result<(GemHandle, u32)> {
        let mut map = self.lock();
        let (handle, pitch) =
            sys::drm::create_dumb(&self.inner.fd, width, height, bpp).map_err(|e| {
                Error::os(
                    "create dumb buffer",
                    format!("{width}x{height}@{bpp}bpp on {}", self.describe()),
                    e,
                )
            })?;
        Ok((self.hold(&mut map, handle), pitch))
    }

    fn release(&self, handle: u32) {
        let mut map = self.lock();
        let Some(n) = map.get_mut(&handle) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            map.remove(&handle);
            // Nothing useful can be done with a failure on drop: the
            // handle is gone either way once the file closes.
            let _ = sys::drm::gem_close(&self.inner.fd, handle);
        }
    }
}

/// The device file ([`DrmDevice::fd`]).
impl AsFd for DrmDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

/// A GEM handle held open on a [`DrmDevice`]; the handle is closed when
/// the last `GemHandle` on it (from any import or clone) is dropped.
#[derive(Debug)]
pub struct GemHandle {
    device: DrmDevice,
    handle: u32,
}

impl GemHandle {
    /// The handle number, for the driver's ioctls on
    /// [`DrmDevice::fd`] (valid while this value lives).
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The device it belongs to.
    pub fn device(&self) -> &DrmDevice {
        &self.device
    }

    /// Exports the GEM object as a dma-buf (`O_CLOEXEC | O_RDWR`). For an
    /// imported buffer this is the original dma-buf again.
    pub fn export(&self) -> Result<Buffer> {
        let obj = || format!("GEM handle {} of {}", self.handle, self.device.describe());
        let fd = sys::drm::prime_handle_to_fd(
            self.device.fd(),
            self.handle,
            sys::drm::DRM_CLOEXEC | sys::drm::DRM_RDWR,
        )
        .map_err(|e| match e {
            Errno::OPNOTSUPP | Errno::NOSYS | Errno::NODEV => Error::kernel(
                "PRIME export",
                obj(),
                e,
                "the driver does not export GEM objects",
            ),
            e => Error::os("PRIME export", obj(), e),
        })?;
        Ok(Buffer::from_dma_buf(DmaBuf::from_fd(fd)?))
    }
}

impl Clone for GemHandle {
    fn clone(&self) -> GemHandle {
        let mut map = self.device.lock();
        self.device.hold(&mut map, self.handle)
    }
}

impl Drop for GemHandle {
    fn drop(&mut self) {
        self.device.release(self.handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_drm_devices_are_refused_by_name() {
        let e = DrmDevice::open("/dev/null").unwrap_err();
        assert!(e.to_string().contains("/dev/null"), "{e}");
        assert!(e.to_string().contains("not a DRM device"), "{e}");
        assert_eq!(e.errno(), Some(Errno::NOTTY));
        let e = DrmDevice::open("/nonexistent/card9").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotFound, "{e}");
    }
}

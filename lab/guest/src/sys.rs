//! The guest crate's own thin raw layer over the kernel: what the lab
//! tests need to ask the kernel directly (to check its own errnos with no
//! user-side check in the way, to make vgem fences, to map a buffer with
//! no library bookkeeping), and usbfs bulk transfers
//! (`linux/usbdevice_fs.h`) for the host side of the FunctionFS tests.
//!
//! The library keeps its kernel-facing layer private, so that safe code
//! outside it cannot reach raw ioctls or mappings; tests that need them
//! use these copies. The only `unsafe` of the guest crate: every block
//! carries a `// SAFETY:` line. Numbers and layouts are Linux 6.12's uapi
//! (pinned by the library's own tests of its copies, and here below).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::{Errno, Result};
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};

/// An ioctl whose argument is a pointer to a caller-prepared value (or an
/// integer), returning the raw non-negative result.
struct PtrIoctl {
    opcode: Opcode,
    arg: *mut std::ffi::c_void,
}

// SAFETY: `opcode` is the command and `as_ptr` the argument the caller of
// `ioctl_raw` prepared for it; the output is the raw return value.
unsafe impl Ioctl for PtrIoctl {
    type Output = std::ffi::c_int;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut std::ffi::c_void) -> Result<Self::Output> {
        Ok(out)
    }
}

/// `ioctl(fd, opcode, arg)`.
///
/// # Safety
///
/// `arg` must be what the kernel expects for `opcode`: a pointer to a live,
/// correctly laid out value (writable if the command writes back).
unsafe fn ioctl_raw(fd: BorrowedFd<'_>, opcode: Opcode, arg: *mut std::ffi::c_void) -> Result<i32> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { rustix::ioctl::ioctl(fd, PtrIoctl { opcode, arg }) }
}

/// `ioctl(fd, opcode, &mut value)`.
///
/// # Safety
///
/// `T` must be the argument type (layout and size) of `opcode`.
unsafe fn ioctl_with<T>(fd: impl AsFd, opcode: Opcode, value: &mut T) -> Result<i32> {
    // SAFETY: `value` is a live, exclusive `T`; the caller vouches for the type.
    unsafe { ioctl_raw(fd.as_fd(), opcode, (value as *mut T).cast()) }
}

/// Wraps a new fd the kernel just returned.
///
/// # Safety
///
/// `raw` must be a new fd owned by nobody else.
unsafe fn owned_fd(raw: i32) -> OwnedFd {
    // SAFETY: forwarded from the caller's contract.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// `include/uapi/linux/dma-buf.h`.
pub mod dma_buf {
    use super::*;

    /// `DMA_BUF_SYNC_READ`.
    pub const DMA_BUF_SYNC_READ: u64 = 1;
    /// `DMA_BUF_SYNC_WRITE`.
    pub const DMA_BUF_SYNC_WRITE: u64 = 2;
    /// `DMA_BUF_SYNC_RW`.
    pub const DMA_BUF_SYNC_RW: u64 = 3;
    /// `DMA_BUF_SYNC_START`.
    pub const DMA_BUF_SYNC_START: u64 = 0;
    /// `DMA_BUF_SYNC_END`.
    pub const DMA_BUF_SYNC_END: u64 = 4;

    /// `DMA_BUF_IOCTL_SYNC`.
    pub const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<u64>(b'b', 0);
    /// `DMA_BUF_SET_NAME` (`_IOW('b', 1, const char *)`).
    pub const DMA_BUF_SET_NAME: Opcode = opcode::write::<*const u8>(b'b', 1);
    /// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`.
    pub const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: Opcode = opcode::write::<[u32; 2]>(b'b', 3);

    /// `DMA_BUF_IOCTL_SYNC` with raw `flags`.
    pub fn sync(fd: impl AsFd, flags: u64) -> Result<()> {
        let mut arg = flags;
        // SAFETY: the command takes a pointer to `struct dma_buf_sync` (one u64).
        unsafe { ioctl_with(fd, DMA_BUF_IOCTL_SYNC, &mut arg) }.map(drop)
    }

    /// `DMA_BUF_SET_NAME` with no length check.
    pub fn set_name(fd: impl AsFd, name: &str) -> Result<()> {
        let c = std::ffi::CString::new(name).map_err(|_| Errno::INVAL)?;
        // SAFETY: the command takes a pointer to a NUL-terminated string,
        // which `c` is and keeps alive for the call.
        unsafe { ioctl_raw(fd.as_fd(), DMA_BUF_SET_NAME, c.as_ptr() as *mut _) }.map(drop)
    }

    /// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` with raw `flags`, of any fd.
    pub fn import_sync_file(fd: impl AsFd, flags: u32, sync_file: impl AsFd) -> Result<()> {
        // `struct dma_buf_import_sync_file { __u32 flags; __s32 fd; }`.
        let mut arg = [flags, sync_file.as_fd().as_raw_fd() as u32];
        // SAFETY: `arg` has the layout of `struct dma_buf_import_sync_file`.
        unsafe { ioctl_with(fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &mut arg) }.map(drop)
    }
}

/// `include/uapi/linux/dma-heap.h`.
pub mod dma_heap {
    use super::*;

    /// `struct dma_heap_allocation_data`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub struct DmaHeapAllocationData {
        /// Size in bytes.
        pub len: u64,
        /// Out: the new dma-buf fd.
        pub fd: u32,
        /// `O_*` flags for the fd.
        pub fd_flags: u32,
        /// Heap flags (none defined).
        pub heap_flags: u64,
    }

    /// `DMA_HEAP_IOCTL_ALLOC`.
    pub const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

    /// `DMA_HEAP_IOCTL_ALLOC` with raw flags, no user-side check.
    pub fn alloc(heap: impl AsFd, len: u64, fd_flags: u32, heap_flags: u64) -> Result<OwnedFd> {
        let mut arg = DmaHeapAllocationData {
            len,
            fd: 0,
            fd_flags,
            heap_flags,
        };
        // SAFETY: the command takes a pointer to `struct dma_heap_allocation_data`.
        unsafe { ioctl_with(heap, DMA_HEAP_IOCTL_ALLOC, &mut arg) }?;
        // SAFETY: on success the kernel stored a new dma-buf fd in `fd`.
        Ok(unsafe { owned_fd(arg.fd as i32) })
    }
}

/// `include/uapi/linux/sync_file.h`.
pub mod sync_file {
    use super::*;

    /// `struct sync_merge_data`.
    #[repr(C)]
    #[derive(Debug, Default)]
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

    /// `SYNC_IOC_MERGE`.
    pub const SYNC_IOC_MERGE: Opcode = opcode::read_write::<SyncMergeData>(b'>', 3);

    /// `SYNC_IOC_MERGE` of any two fds.
    pub fn merge(a: impl AsFd, b: impl AsFd, name: &str) -> Result<OwnedFd> {
        let mut arg = SyncMergeData {
            fd2: b.as_fd().as_raw_fd(),
            fence: -1,
            ..Default::default()
        };
        let n = name.len().min(31);
        arg.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: the command takes a pointer to `struct sync_merge_data`.
        unsafe { ioctl_with(a, SYNC_IOC_MERGE, &mut arg) }?;
        // SAFETY: on success the kernel stored a new sync-file fd in `fence`.
        Ok(unsafe { owned_fd(arg.fence) })
    }
}

/// vgem (`include/uapi/drm/vgem_drm.h`, `drm_mode.h`, `drm.h`): a dma-buf
/// exporter whose fences user space attaches and signals.
pub mod vgem {
    use super::*;

    /// `struct drm_mode_create_dumb`.
    #[repr(C)]
    #[derive(Debug, Default)]
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
    #[derive(Debug, Default)]
    pub struct DrmPrimeHandle {
        /// GEM handle.
        pub handle: u32,
        /// `DRM_CLOEXEC | DRM_RDWR`.
        pub flags: u32,
        /// Out: the dma-buf fd.
        pub fd: i32,
    }

    /// `struct drm_vgem_fence_attach`.
    #[repr(C)]
    #[derive(Debug, Default)]
    pub struct DrmVgemFenceAttach {
        /// GEM handle.
        pub handle: u32,
        /// `VGEM_FENCE_WRITE` (1) or 0.
        pub flags: u32,
        /// Out: fence id.
        pub out_fence: u32,
        /// Must be 0.
        pub pad: u32,
    }

    /// `DRM_IOCTL_MODE_CREATE_DUMB`.
    pub const DRM_IOCTL_MODE_CREATE_DUMB: Opcode =
        opcode::read_write::<DrmModeCreateDumb>(b'd', 0xb2);
    /// `DRM_IOCTL_PRIME_HANDLE_TO_FD`.
    pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: Opcode =
        opcode::read_write::<DrmPrimeHandle>(b'd', 0x2d);
    /// `DRM_IOCTL_VGEM_FENCE_ATTACH`.
    pub const DRM_IOCTL_VGEM_FENCE_ATTACH: Opcode =
        opcode::read_write::<DrmVgemFenceAttach>(b'd', 0x41);
    /// `DRM_IOCTL_VGEM_FENCE_SIGNAL` (`struct drm_vgem_fence_signal`: two u32).
    pub const DRM_IOCTL_VGEM_FENCE_SIGNAL: Opcode = opcode::write::<[u32; 2]>(b'd', 0x42);

    /// A dumb buffer of `width`×`height` at 32 bpp: (handle, size).
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

    /// Attaches an unsignalled fence to GEM `handle`; its id.
    pub fn fence_attach(card: impl AsFd, handle: u32, write: bool) -> Result<u32> {
        let mut arg = DrmVgemFenceAttach {
            handle,
            flags: u32::from(write),
            ..Default::default()
        };
        // SAFETY: the command takes a pointer to `struct drm_vgem_fence_attach`.
        unsafe { ioctl_with(card, DRM_IOCTL_VGEM_FENCE_ATTACH, &mut arg) }?;
        Ok(arg.out_fence)
    }

    /// Signals fence `fence` from [`fence_attach`].
    pub fn fence_signal(card: impl AsFd, fence: u32) -> Result<()> {
        let mut arg = [fence, 0u32];
        // SAFETY: `arg` has the layout of `struct drm_vgem_fence_signal`.
        unsafe { ioctl_with(card, DRM_IOCTL_VGEM_FENCE_SIGNAL, &mut arg) }.map(drop)
    }
}

/// DRM PRIME ioctls (`include/uapi/drm/drm.h`), to check the kernel's own
/// answers beside the library's.
pub mod drm {
    use super::vgem::{DrmPrimeHandle, DRM_IOCTL_PRIME_HANDLE_TO_FD};
    use super::*;

    /// `DRM_CLOEXEC` (`O_CLOEXEC`).
    pub const DRM_CLOEXEC: u32 = 0o2000000;
    /// `DRM_RDWR` (`O_RDWR`).
    pub const DRM_RDWR: u32 = 0o2;
    /// `DRM_IOCTL_PRIME_FD_TO_HANDLE`.
    pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: Opcode =
        opcode::read_write::<DrmPrimeHandle>(b'd', 0x2e);

    /// Exports GEM `handle` of `card` as a dma-buf fd with `flags`.
    pub fn prime_handle_to_fd(card: impl AsFd, handle: u32, flags: u32) -> Result<OwnedFd> {
        let mut arg = DrmPrimeHandle {
            handle,
            flags,
            fd: -1,
        };
        // SAFETY: the command takes a pointer to `struct drm_prime_handle`.
        unsafe { ioctl_with(card, DRM_IOCTL_PRIME_HANDLE_TO_FD, &mut arg) }?;
        // SAFETY: on success the kernel stored a new dma-buf fd in `fd`.
        Ok(unsafe { owned_fd(arg.fd) })
    }

    /// Imports `dmabuf` into `card`: its GEM handle.
    pub fn prime_fd_to_handle(card: impl AsFd, dmabuf: impl AsFd) -> Result<u32> {
        let mut arg = DrmPrimeHandle {
            handle: 0,
            flags: 0,
            fd: dmabuf.as_fd().as_raw_fd(),
        };
        // SAFETY: the command takes a pointer to `struct drm_prime_handle`.
        unsafe { ioctl_with(card, DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut arg) }?;
        Ok(arg.handle)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn numbers_are_linux_6_12s() {
            assert_eq!(super::DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xc00c642e);
        }
    }
}

/// IIO's DMABUF ioctls (`include/uapi/linux/iio/buffer.h`).
pub mod iio {
    use super::*;

    /// Repeat the transfer until the buffer is detached (output buffers only).
    pub const IIO_BUFFER_DMABUF_CYCLIC: u32 = 1 << 0;
    /// Every flag the kernel accepts.
    pub const IIO_BUFFER_DMABUF_SUPPORTED_FLAGS: u32 = 0x0000_0001;

    /// `struct iio_dmabuf`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct IioDmabuf {
        /// The attached dma-buf.
        pub fd: u32,
        /// `IIO_BUFFER_DMABUF_*`.
        pub flags: u32,
        /// Bytes of the buffer to use, 1..=size.
        pub bytes_used: u64,
    }

    /// `IIO_BUFFER_GET_FD_IOCTL`.
    pub const IIO_BUFFER_GET_FD_IOCTL: Opcode = opcode::read_write::<i32>(b'i', 0x91);
    /// `IIO_BUFFER_DMABUF_ATTACH_IOCTL`.
    pub const IIO_BUFFER_DMABUF_ATTACH_IOCTL: Opcode = opcode::write::<i32>(b'i', 0x92);
    /// `IIO_BUFFER_DMABUF_DETACH_IOCTL`.
    pub const IIO_BUFFER_DMABUF_DETACH_IOCTL: Opcode = opcode::write::<i32>(b'i', 0x93);
    /// `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL`.
    pub const IIO_BUFFER_DMABUF_ENQUEUE_IOCTL: Opcode = opcode::write::<IioDmabuf>(b'i', 0x94);

    /// `IIO_BUFFER_GET_FD_IOCTL`: the fd of buffer number `index` of the IIO
    /// device `dev` (`/dev/iio:deviceN`).
    pub fn buffer_fd(dev: impl AsFd, index: i32) -> Result<OwnedFd> {
        let mut arg = index;
        // SAFETY: the command takes a pointer to an `int`, replaced by the fd.
        unsafe { ioctl_with(dev, IIO_BUFFER_GET_FD_IOCTL, &mut arg) }?;
        // SAFETY: on success the kernel stored a new fd in `arg`.
        Ok(unsafe { owned_fd(arg) })
    }

    /// `IIO_BUFFER_DMABUF_ATTACH_IOCTL`.
    pub fn attach(buffer: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
        let mut fd = dmabuf.as_fd().as_raw_fd();
        // SAFETY: the command takes a pointer to an `int` fd.
        unsafe { ioctl_with(buffer, IIO_BUFFER_DMABUF_ATTACH_IOCTL, &mut fd) }.map(drop)
    }

    /// `IIO_BUFFER_DMABUF_DETACH_IOCTL`.
    pub fn detach(buffer: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
        let mut fd = dmabuf.as_fd().as_raw_fd();
        // SAFETY: the command takes a pointer to an `int` fd.
        unsafe { ioctl_with(buffer, IIO_BUFFER_DMABUF_DETACH_IOCTL, &mut fd) }.map(drop)
    }

    /// The argument of `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL` for a transfer.
    pub fn enqueue_arg(dmabuf: impl AsFd, flags: u32, bytes_used: u64) -> IioDmabuf {
        IioDmabuf {
            fd: dmabuf.as_fd().as_raw_fd() as u32,
            flags,
            bytes_used,
        }
    }

    /// `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL`.
    pub fn enqueue(buffer: impl AsFd, arg: &IioDmabuf) -> Result<()> {
        let mut arg = *arg;
        // SAFETY: the command takes a pointer to `struct iio_dmabuf`.
        unsafe { ioctl_with(buffer, IIO_BUFFER_DMABUF_ENQUEUE_IOCTL, &mut arg) }.map(drop)
    }
}

/// FunctionFS's DMABUF ioctls (`include/uapi/linux/usb/functionfs.h`).
pub mod functionfs {
    use super::*;

    /// `struct usb_ffs_dmabuf_transfer_req` (packed).
    #[repr(C, packed)]
    #[derive(Debug, Default)]
    pub struct UsbFfsDmabufTransferReq {
        /// The attached dma-buf.
        pub fd: i32,
        /// Must be 0.
        pub flags: u32,
        /// Bytes to transfer.
        pub length: u64,
    }

    /// `FUNCTIONFS_DMABUF_ATTACH`.
    pub const FUNCTIONFS_DMABUF_ATTACH: Opcode = opcode::write::<i32>(b'g', 131);
    /// `FUNCTIONFS_DMABUF_DETACH`.
    pub const FUNCTIONFS_DMABUF_DETACH: Opcode = opcode::write::<i32>(b'g', 132);
    /// `FUNCTIONFS_DMABUF_TRANSFER`.
    pub const FUNCTIONFS_DMABUF_TRANSFER: Opcode =
        opcode::write::<UsbFfsDmabufTransferReq>(b'g', 133);

    /// `FUNCTIONFS_DMABUF_ATTACH` of any fd.
    pub fn attach(ep: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
        let mut fd = dmabuf.as_fd().as_raw_fd();
        // SAFETY: the command takes a pointer to an `int` fd.
        unsafe { ioctl_with(ep, FUNCTIONFS_DMABUF_ATTACH, &mut fd) }.map(drop)
    }

    /// `FUNCTIONFS_DMABUF_DETACH` of any fd.
    pub fn detach(ep: impl AsFd, dmabuf: impl AsFd) -> Result<()> {
        let mut fd = dmabuf.as_fd().as_raw_fd();
        // SAFETY: the command takes a pointer to an `int` fd.
        unsafe { ioctl_with(ep, FUNCTIONFS_DMABUF_DETACH, &mut fd) }.map(drop)
    }

    /// `FUNCTIONFS_DMABUF_TRANSFER` with raw flags and length.
    pub fn transfer(ep: impl AsFd, dmabuf: impl AsFd, flags: u32, length: u64) -> Result<()> {
        let mut req = UsbFfsDmabufTransferReq {
            fd: dmabuf.as_fd().as_raw_fd(),
            flags,
            length,
        };
        // SAFETY: the command takes a pointer to the packed transfer request.
        unsafe { ioctl_with(ep, FUNCTIONFS_DMABUF_TRANSFER, &mut req) }.map(drop)
    }
}

/// `include/uapi/linux/udmabuf.h`, with no user-side checks.
pub mod udmabuf {
    use super::*;

    /// `struct udmabuf_create`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct UdmabufCreate {
        /// The memfd.
        pub memfd: u32,
        /// `UDMABUF_FLAGS_*`.
        pub flags: u32,
        /// Offset in the memfd.
        pub offset: u64,
        /// Size.
        pub size: u64,
    }

    /// `struct udmabuf_create_item`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct UdmabufCreateItem {
        /// The memfd.
        pub memfd: u32,
        /// Padding.
        pub pad: u32,
        /// Offset in the memfd.
        pub offset: u64,
        /// Size.
        pub size: u64,
    }

    /// `UDMABUF_CREATE`.
    pub const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);
    /// `UDMABUF_CREATE_LIST` (`struct udmabuf_create_list`: two u32, then items).
    pub const UDMABUF_CREATE_LIST: Opcode = opcode::write::<[u32; 2]>(b'u', 0x43);

    /// `UDMABUF_CREATE` on the `/dev/udmabuf` fd `dev`.
    pub fn create(dev: impl AsFd, arg: &UdmabufCreate) -> Result<OwnedFd> {
        let mut arg = *arg;
        // SAFETY: the command takes a pointer to `struct udmabuf_create`.
        let fd = unsafe { ioctl_with(dev, UDMABUF_CREATE, &mut arg) }?;
        // SAFETY: the return value is a new dma-buf fd owned by us.
        Ok(unsafe { owned_fd(fd) })
    }

    /// `UDMABUF_CREATE_LIST` of `items`, in order.
    pub fn create_list(dev: impl AsFd, flags: u32, items: &[UdmabufCreateItem]) -> Result<OwnedFd> {
        let count = u32::try_from(items.len()).map_err(|_| Errno::INVAL)?;
        // Head (8 bytes) then the 24-byte items, in one 8-aligned buffer.
        let mut buf = vec![0u64; 1 + 3 * items.len()];
        buf[0] = u64::from(flags) | (u64::from(count) << 32);
        for (i, it) in items.iter().enumerate() {
            buf[1 + 3 * i] = u64::from(it.memfd) | (u64::from(it.pad) << 32);
            buf[2 + 3 * i] = it.offset;
            buf[3 + 3 * i] = it.size;
        }
        #[cfg(target_endian = "big")]
        compile_error!("the udmabuf list packing above assumes little-endian");
        // SAFETY: `buf` holds the head followed by `count` items, laid out
        // as `struct udmabuf_create_list` and its items.
        let fd = unsafe { ioctl_raw(dev.as_fd(), UDMABUF_CREATE_LIST, buf.as_mut_ptr().cast()) }?;
        // SAFETY: the return value is a new dma-buf fd owned by us.
        Ok(unsafe { owned_fd(fd) })
    }
}

/// `include/uapi/linux/videodev2.h`: constants the tests read, and raw
/// multi-planar DMABUF ioctls for tests that probe what the kernel does
/// with requests the library refuses (x86_64 layouts, as the library's).
pub mod v4l2 {
    use super::*;

    /// `V4L2_BUF_CAP_SUPPORTS_DMABUF`.
    pub const V4L2_BUF_CAP_SUPPORTS_DMABUF: u32 = 1 << 2;
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`.
    pub const V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;
    /// `V4L2_MEMORY_DMABUF`.
    pub const V4L2_MEMORY_DMABUF: u32 = 4;

    /// `struct v4l2_format` (208 bytes): `type` and the union as bytes;
    /// `fmt.pix_mp` is at the start of the union.
    #[repr(C, align(8))]
    #[derive(Debug, Clone, Copy)]
    pub struct Format {
        pub type_: u32,
        pub _pad: u32,
        pub fmt: [u8; 200],
    }

    impl Format {
        /// `pix_mp.pixelformat`, `width`, `height` set, planes cleared.
        pub fn set_mp(&mut self, width: u32, height: u32, fourcc: &[u8; 4]) {
            self.fmt[0..4].copy_from_slice(&width.to_ne_bytes());
            self.fmt[4..8].copy_from_slice(&height.to_ne_bytes());
            self.fmt[8..12].copy_from_slice(fourcc);
            self.fmt[20..180].fill(0);
        }

        /// `pix_mp.num_planes`.
        pub fn num_planes(&self) -> u8 {
            self.fmt[180]
        }
    }

    /// `struct v4l2_requestbuffers` (20 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Requestbuffers {
        pub count: u32,
        pub type_: u32,
        pub memory: u32,
        pub capabilities: u32,
        pub flags: u8,
        pub reserved: [u8; 3],
    }

    /// `struct v4l2_buffer` (88 bytes on LP64), `m` as a `u64`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Buffer {
        pub index: u32,
        pub type_: u32,
        pub bytesused: u32,
        pub flags: u32,
        pub field: u32,
        pub _pad0: u32,
        pub timestamp: [i64; 2],
        pub timecode: [u32; 4],
        pub sequence: u32,
        pub memory: u32,
        pub m: u64,
        pub length: u32,
        pub reserved2: u32,
        pub request_fd: i32,
        pub _pad1: u32,
    }

    /// `struct v4l2_plane` (64 bytes), `m.fd` in the low half of `m`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Plane {
        pub bytesused: u32,
        pub length: u32,
        pub m: u64,
        pub data_offset: u32,
        pub reserved: [u32; 11],
    }

    const G_FMT: Opcode = opcode::read_write::<Format>(b'V', 4);
    const S_FMT: Opcode = opcode::read_write::<Format>(b'V', 5);
    const REQBUFS: Opcode = opcode::read_write::<Requestbuffers>(b'V', 8);
    const QBUF: Opcode = opcode::read_write::<Buffer>(b'V', 15);
    const DQBUF: Opcode = opcode::read_write::<Buffer>(b'V', 17);
    const STREAMON: Opcode = opcode::write::<i32>(b'V', 18);
    const STREAMOFF: Opcode = opcode::write::<i32>(b'V', 19);

    /// `VIDIOC_G_FMT` of `type_`.
    pub fn g_fmt(dev: impl AsFd, type_: u32) -> Result<Format> {
        let mut f = Format {
            type_,
            _pad: 0,
            fmt: [0; 200],
        };
        // SAFETY: the command reads and writes a `struct v4l2_format`.
        unsafe { ioctl_with(dev, G_FMT, &mut f) }?;
        Ok(f)
    }

    /// `VIDIOC_S_FMT`.
    pub fn s_fmt(dev: impl AsFd, f: &mut Format) -> Result<()> {
        // SAFETY: the command reads and writes a `struct v4l2_format`.
        unsafe { ioctl_with(dev, S_FMT, f) }.map(drop)
    }

    /// `VIDIOC_REQBUFS`.
    pub fn reqbufs(dev: impl AsFd, r: &mut Requestbuffers) -> Result<()> {
        // SAFETY: the command reads and writes a `struct v4l2_requestbuffers`.
        unsafe { ioctl_with(dev, REQBUFS, r) }.map(drop)
    }

    fn with_planes(dev: impl AsFd, op: Opcode, b: &mut Buffer, p: &mut [Plane]) -> Result<()> {
        b.m = p.as_mut_ptr() as u64;
        b.length = p.len() as u32;
        // SAFETY: `m.planes` points at `length` writable `struct
        // v4l2_plane`s borrowed for the call; the kernel keeps no pointer.
        let r = unsafe { ioctl_with(dev, op, b) }.map(drop);
        b.m = 0;
        r
    }

    /// `VIDIOC_QBUF` of a multi-planar buffer (`b.type_` must be one).
    pub fn qbuf_planes(dev: impl AsFd, b: &mut Buffer, p: &mut [Plane]) -> Result<()> {
        with_planes(dev, QBUF, b, p)
    }

    /// `VIDIOC_DQBUF` of a multi-planar buffer (`b.type_` must be one).
    pub fn dqbuf_planes(dev: impl AsFd, b: &mut Buffer, p: &mut [Plane]) -> Result<()> {
        with_planes(dev, DQBUF, b, p)
    }

    /// `VIDIOC_STREAMON` (`on`) or `VIDIOC_STREAMOFF`.
    pub fn stream(dev: impl AsFd, type_: u32, on: bool) -> Result<()> {
        let mut t = type_ as i32;
        let op = if on { STREAMON } else { STREAMOFF };
        // SAFETY: the command takes a pointer to an `int` buffer type.
        unsafe { ioctl_with(dev, op, &mut t) }.map(drop)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn layouts_match_the_uapi() {
            assert_eq!(std::mem::size_of::<Format>(), 208);
            assert_eq!(std::mem::size_of::<Buffer>(), 88);
            assert_eq!(std::mem::offset_of!(Buffer, m), 64);
            assert_eq!(std::mem::size_of::<Plane>(), 64);
            assert_eq!(QBUF, 0xc058_560f);
            assert_eq!(G_FMT, 0xc0d0_5604);
        }
    }
}

/// A raw shared mapping of any fd, with no bookkeeping: for tests that need
/// a mapping to outlive its fd (inspection finds buffers held by mappings).
/// Its bytes are never read through it.
#[derive(Debug)]
pub struct RawMapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl RawMapping {
    /// `mmap(NULL, len, PROT_READ [| PROT_WRITE], MAP_SHARED, fd, 0)`.
    pub fn new(fd: impl AsFd, len: usize, writable: bool) -> Result<RawMapping> {
        let prot = if writable {
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE
        } else {
            rustix::mm::ProtFlags::READ
        };
        // SAFETY: a new mapping at an address the kernel chooses touches no
        // Rust memory, and this type never reads or writes through it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Ok(RawMapping { ptr, len })
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, never referenced.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

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

    #[test]
    fn copies_match_uapi() {
        use std::mem::size_of;
        assert_eq!(dma_buf::DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        assert_eq!(dma_buf::DMA_BUF_SET_NAME, 0x4008_6201);
        assert_eq!(dma_buf::DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x4008_6203);
        assert_eq!(dma_heap::DMA_HEAP_IOCTL_ALLOC, 0xc018_4800);
        assert_eq!(size_of::<sync_file::SyncMergeData>(), 48);
        assert_eq!(sync_file::SYNC_IOC_MERGE, 0xc030_3e03);
        assert_eq!(size_of::<vgem::DrmModeCreateDumb>(), 32);
        assert_eq!(size_of::<vgem::DrmPrimeHandle>(), 12);
        assert_eq!(vgem::DRM_IOCTL_MODE_CREATE_DUMB, 0xc020_64b2);
        assert_eq!(vgem::DRM_IOCTL_PRIME_HANDLE_TO_FD, 0xc00c_642d);
        assert_eq!(vgem::DRM_IOCTL_VGEM_FENCE_ATTACH, 0xc010_6441);
        assert_eq!(vgem::DRM_IOCTL_VGEM_FENCE_SIGNAL, 0x4008_6442);
        assert_eq!(size_of::<functionfs::UsbFfsDmabufTransferReq>(), 16);
        assert_eq!(udmabuf::UDMABUF_CREATE, 0x4018_7542);
        assert_eq!(udmabuf::UDMABUF_CREATE_LIST, 0x4008_7543);
    }
}

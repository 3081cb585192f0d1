//! FunctionFS data endpoints (`/dev/ffs-NAME/ep1`…) with the DMABUF
//! interface of Linux 6.9+ and a copy-path fallback.
//!
//! # DOC: FunctionFS endpoints
//!
//! A USB gadget function written in user space (FunctionFS) moves data
//! through its endpoint files: an **IN** endpoint (device to host) takes
//! buffers [`Direction::ToDevice`] — the controller reads them — and an
//! **OUT** endpoint fills them, [`Direction::FromDevice`].
//!
//! **Attach** decides the data path per buffer:
//!
//! * a dma-buf is offered to the kernel with `FUNCTIONFS_DMABUF_ATTACH`,
//!   which maps it for the controller once. If that works, transfers of it
//!   are zero-copy: `FUNCTIONFS_DMABUF_TRANSFER` queues the controller's
//!   DMA, and the transfer's fence is a user fence the library owns,
//!   settled from the kernel's fence (see below);
//! * if the kernel answers `EPERM` (the controller has no scatter-gather:
//!   `gadget->sg_supported` is false — always so on `dummy_hcd`), `ENOTTY`
//!   (a kernel before 6.9) or `EINVAL` (the controller cannot map this
//!   buffer), the endpoint falls back to the [copy engine](super::copy)
//!   behind the same API: `write()`/`read()` on the endpoint file through
//!   a CPU window, one call per transfer up to 256 KiB (larger transfers
//!   are cut into 256 KiB calls, a multiple of every USB packet size, so
//!   the host sees one stream; the kernel copies each call through a
//!   `kmalloc`ed bounce buffer). A short read ends a from-device transfer,
//!   as a short packet ends a USB transfer;
//! * a portable buffer (not a dma-buf) always takes the copy path.
//!
//! [`Endpoint::data_path`] reports the path of the latest attach, with the
//! kernel's answer in words for the copy path, e.g. *"FUNCTIONFS_DMABUF_
//! ATTACH answered EPERM: the USB device controller has no scatter-gather
//! support (dummy_hcd never has)"*; [`FunctionFsEndpoint::path_of`] gives
//! each attachment's.
//!
//! **Zero-copy transfers.** The library first checks the request (length
//! 0 or past the buffer, unknown flags, not attached: `EINVAL`/`EPERM`
//! with a message, before the kernel sees it), then, in one step under the
//! buffer's reservation lock, waits for the library's own fences, CPU
//! windows and the kernel's fences in the way, at most
//! [`TransferOptions::timeout`], and publishes the transfer's fence
//! there, so no CPU window of this process opens between that wait and
//! the end of the transfer; the kernel then waits again (at most its own
//! 5 s; `O_NONBLOCK` is set on the endpoint file for the ioctl of a
//! non-blocking transfer). Right after the ioctl the kernel's fence of the
//! transfer is taken from the dma-buf's reservation with
//! `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` for **writing** (it covers every
//! fence, so it covers this transfer whatever usage the kernel gave it)
//! and handed to the endpoint's fence watcher thread, which settles the
//! transfer's fence — the one published before the ioctl and returned to
//! the caller, a [`UserFence`](crate::UserFence) the library owns — with
//! the kernel fence's status when it signals. The kernel's fence itself
//! never leaves the endpoint: on 6.12 its lock lives in the attachment,
//! and querying or closing a polled sync file of it after detach hangs
//! the machine (`endpoint::watch`, docs/kernel-findings.md); the library
//! lets go of an attachment's kernel fences before it detaches. If the
//! transfer completes before the export, the export holds the buffer's
//! other fences only (or none), and the transfer's fence signals when
//! those have. FunctionFS and IIO share this core (`endpoint::kernel`),
//! each with its own ioctls and errno mapping.
//!
//! **The 6.12 direction bug** (fixed upstream by 0145e7acd298, see
//! `docs/kernel-findings.md`):
//! Linux 6.12 adds the fence of an OUT transfer (the controller *writes*
//! the buffer) as a *read* fence, so `poll(POLLIN)`, read exports and
//! `DMA_BUF_IOCTL_SYNC START|READ` do not wait for it. The endpoint adds
//! the exported fence back as a write fence (`IMPORT_SYNC_FILE`) after
//! every from-device transfer, so CPU read windows wait for the data as
//! they must, on fixed and unfixed kernels alike.
//!
//! **Kernel errors** of the ioctls become errors naming the endpoint and
//! the buffer, with the errno: `EBUSY` (fences still active after the
//! kernel's wait, or the reservation lock taken, non-blocking) →
//! [`ErrorKind::Busy`]; `EPERM` (not attached in the kernel) →
//! [`ErrorKind::NotFound`]; `EINVAL` (length, flags) →
//! [`ErrorKind::InvalidInput`]; `ENODEV` (the function is not active) →
//! [`ErrorKind::NotSupported`]; `ESHUTDOWN` (the endpoint was disabled:
//! host reset or unbind) → [`ErrorKind::Cancelled`]; `EAGAIN` (the host
//! has not enabled the endpoint yet, non-blocking) →
//! [`ErrorKind::WouldBlock`]. A controller's failure after queueing is
//! the fence's error.
//!
//! **Detach** cancels pending transfers: their fences fail with
//! `ECANCELED` (copy path and zero-copy alike). On 6.12
//! `FUNCTIONFS_DMABUF_DETACH` dequeues only the attachment's *latest*
//! USB request; earlier zero-copy transfers of the same attachment stay
//! queued in the controller until the host takes them. Their fences fail
//! with `ECANCELED` too (their kernel fences cannot be watched once the
//! attachment is gone), but the dma-buf's own reservation keeps the
//! kernel's fences, so CPU windows (`DMA_BUF_IOCTL_SYNC`) and later
//! transfers still wait for the controller.
//!
//! Dropping the endpoint detaches everything and closes the file. It
//! never waits for ever: a copy-path `write()` that the host never takes
//! blocks in the kernel (`poll` on an endpoint file always says ready,
//! and `O_NONBLOCK` does not make a queued request return), so after
//! [`copy::DROP_WAIT`](super::copy::DROP_WAIT) the worker's call is
//! interrupted with a signal (f_fs dequeues the request and the call
//! returns `EINTR`), the transfer's fence fails with `ECANCELED` and the
//! worker closes its `dup` of the file; only a program that ignores
//! `SIGURG` gets the fallback of a detached worker (see
//! [`copy`](super::copy)).
//!
//! **UDC unbound.** After the UDC is unbound, 6.12 leaves the endpoint
//! files open and `FFS_ACTIVE` but clears `ffs->gadget`, and both
//! `FUNCTIONFS_DMABUF_TRANSFER` (`ffs_dmabuf_find_attachment`) and
//! `FUNCTIONFS_DMABUF_DETACH` dereference `ffs->gadget->dev.parent`: a
//! NULL pointer dereference (kernel oops) in the calling thread. Transfers
//! in flight at unbind fail with `ESHUTDOWN`; once the endpoint has seen
//! `ESHUTDOWN` (a fence or an enqueue; a host disconnect gives it too), it
//! asks before its next zero-copy transfer or detach with a probe
//! `FUNCTIONFS_DMABUF_ATTACH` of the same dma-buf — the one DMABUF ioctl
//! that checks the gadget (`EPERM` without one; a successful probe is
//! detached at once). With no gadget, a transfer is refused
//! ([`ErrorKind::Cancelled`], `ESHUTDOWN`, saying why) and a detach does
//! not issue the ioctl: the kernel releases the attachment when the
//! endpoint file is closed. After a rebind the probe succeeds and both
//! work again. An unbind with no transfer in flight is not seen: a
//! zero-copy transfer or detach issued then still meets the kernel bug.
//!
//! The endpoint file is shared by the ioctls and the copy worker (a `dup`,
//! one open file description: the kernel detaches every dma-buf of the
//! endpoint when *a* file description of it is released, so the endpoint
//! never opens the file twice).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::common::{name_of, set_nonblocking};
use super::copy::CopyOptions;
use super::kernel::{DmabufUapi, KernelDmabufCore};
use super::{Attachment, DataPath, Direction, Endpoint, TransferOptions};
use crate::buffer::Buffer;
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::Fence;
use crate::sys;

/// Largest `read`/`write` call of the copy path (a multiple of every USB
/// packet size).
pub const FUNCTIONFS_COPY_CHUNK: usize = 256 * 1024;

/// What [`Endpoint::data_path`] says before the first attach.
pub const UNDECIDED: &str =
    "not decided yet: the first attach of a dma-buf probes FUNCTIONFS_DMABUF_ATTACH";

/// A FunctionFS data endpoint. See the module documentation.
#[derive(Debug)]
pub struct FunctionFsEndpoint {
    core: KernelDmabufCore<FunctionFs>,
}

/// The FunctionFS DMABUF uAPI (Linux 6.12) for the kernel endpoint core.
#[derive(Debug)]
pub(crate) enum FunctionFs {}

impl DmabufUapi for FunctionFs {
    const ATTACH_IOCTL: &'static str = "FUNCTIONFS_DMABUF_ATTACH";
    const DEVICE: &'static str = "the controller";
    // Unfixed 6.12 adds an OUT transfer's fence as a reader (see above).
    const FIX_FROM_DEVICE_USAGE: bool = true;
    // A disabled endpoint (host reset, disconnect, or UDC unbound).
    const GONE_ERRNO: Option<Errno> = Some(Errno::SHUTDOWN);

    fn attach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()> {
        sys::functionfs::attach(fd, dmabuf)
    }

    fn detach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()> {
        sys::functionfs::detach(fd, dmabuf)
    }

    fn enqueue(
        fd: BorrowedFd<'_>,
        dmabuf: &DmaBuf,
        flags: u32,
        len: u64,
    ) -> rustix::io::Result<()> {
        sys::functionfs::transfer(fd, dmabuf, flags, len)
    }

    fn device_present(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> bool {
        // FUNCTIONFS_DMABUF_ATTACH is the one DMABUF ioctl that checks the
        // gadget pointer (EPERM without a gadget, or without sg, which
        // this endpoint's zero-copy attachment proves it had). A probe
        // attachment is the newest one of this dma-buf, so the detach
        // that follows removes it and not the caller's.
        match sys::functionfs::attach(fd, dmabuf) {
            Ok(()) => {
                let _ = sys::functionfs::detach(fd, dmabuf);
                true
            }
            Err(Errno::PERM) => false,
            Err(_) => true,
        }
    }

    fn gone_reason() -> &'static str {
        "FUNCTIONFS_DMABUF_ATTACH finds no gadget: the UDC was unbound, and 6.12's \
         FUNCTIONFS_DMABUF_TRANSFER and _DETACH would dereference the NULL gadget pointer; \
         the kernel releases the attachment when the endpoint file is closed"
    }

    fn fallback_reason(errno: Errno) -> Option<String> {
        fallback_reason(errno)
    }

    fn attach_error(obj: &str, e: Errno) -> Error {
        match e {
            Errno::NODEV => Error::kernel(
                "FunctionFS DMABUF attach",
                obj,
                e,
                "the FunctionFS function is not active",
            ),
            Errno::BUSY => Error::kernel(
                "FunctionFS DMABUF attach",
                obj,
                e,
                "the dma-buf's reservation is locked (non-blocking endpoint file)",
            ),
            e => Error::os("FunctionFS DMABUF attach", obj, e),
        }
    }

    fn transfer_error(obj: &str, errno: Errno) -> Error {
        transfer_error(obj, errno)
    }

    fn detach_error(obj: &str, e: Errno) -> Error {
        match e {
            Errno::PERM => Error::new(
                ErrorKind::NotFound,
                "FunctionFS DMABUF detach",
                obj,
                "the kernel has no attachment of this dma-buf to the endpoint",
            )
            .with_errno(e),
            e => Error::os("FunctionFS DMABUF detach", obj, e),
        }
    }

    fn check_flags(obj: &str, _: Direction, _: bool, flags: u32) -> Result<()> {
        if flags != 0 {
            return Err(Error::invalid(
                "transfer",
                obj,
                format!("unknown transfer flags {flags:#x} (no flags are defined)"),
            ));
        }
        Ok(())
    }
}

/// The reason in words for a copy-path fallback after `FUNCTIONFS_DMABUF_
/// ATTACH` answered `errno`, or `None` if that errno is a real failure.
pub fn fallback_reason(errno: Errno) -> Option<String> {
    let why = match errno {
        Errno::PERM => {
            "the USB device controller has no scatter-gather support (gadget->sg_supported \
             is false; dummy_hcd never has it)"
        }
        Errno::NOTTY => "this kernel has no FunctionFS DMABUF interface (it came in Linux 6.9)",
        Errno::INVAL => "the controller cannot import this dma-buf",
        _ => return None,
    };
    Some(format!(
        "{} answered {}: {why}",
        FunctionFs::ATTACH_IOCTL,
        name_of(errno)
    ))
}

/// The error for an errno of `FUNCTIONFS_DMABUF_TRANSFER`.
pub fn transfer_error(object: &str, errno: Errno) -> Error {
    let (kind, cause) = match errno {
        Errno::BUSY => (
            ErrorKind::Busy,
            "the kernel found fences of the dma-buf still active after its wait (at most \
             5 s, none for a non-blocking transfer) or its reservation locked",
        ),
        Errno::PERM => (
            ErrorKind::NotFound,
            "the kernel has no attachment of this dma-buf to the endpoint",
        ),
        Errno::INVAL => (
            ErrorKind::InvalidInput,
            "the kernel refused the length or the flags",
        ),
        Errno::NODEV => (
            ErrorKind::NotSupported,
            "the FunctionFS function is not active (not bound, or ep0 closed)",
        ),
        Errno::SHUTDOWN => (
            ErrorKind::Cancelled,
            "the endpoint was disabled while the transfer was queued (host reset or unbind)",
        ),
        Errno::AGAIN => (
            ErrorKind::WouldBlock,
            "the host has not enabled the endpoint yet, and the transfer is non-blocking",
        ),
        e => return Error::os("FunctionFS DMABUF transfer", object, e),
    };
    Error::new(kind, "FunctionFS DMABUF transfer", object, cause).with_errno(errno)
}

impl FunctionFsEndpoint {
    /// Opens the endpoint file at `path` (`/dev/ffs-NAME/ep1`) for
    /// `direction`: [`Direction::ToDevice`] for an IN endpoint,
    /// [`Direction::FromDevice`] for an OUT one.
    pub fn open(path: impl AsRef<Path>, direction: Direction) -> Result<FunctionFsEndpoint> {
        let path = path.as_ref();
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NODEV => Error::kernel(
                "open FunctionFS endpoint",
                path.display().to_string(),
                e,
                "the function is not active (descriptors not written, or not bound to a UDC)",
            ),
            e => Error::os("open FunctionFS endpoint", path.display().to_string(), e),
        })?;
        FunctionFsEndpoint::from_fd(fd, direction, &path.display().to_string())
    }

    /// An endpoint on an open endpoint file, named `name` in messages.
    /// Where the kernel tells the endpoint's descriptor at once
    /// (`FUNCTIONFS_ENDPOINT_DESC`; only once the host has enabled the
    /// endpoint), a direction that does not match it is refused.
    pub fn from_fd(fd: OwnedFd, direction: Direction, name: &str) -> Result<FunctionFsEndpoint> {
        let object = format!("FunctionFS endpoint {name} (fd {})", fd.as_raw_fd());
        // Non-blocking: the kernel waits for the host to enable the
        // endpoint before answering, and may never.
        let desc = match set_nonblocking(&fd, true) {
            Ok(old) => {
                let d = sys::functionfs::endpoint_desc(&fd);
                let _ = rustix::fs::fcntl_setfl(&fd, old);
                d
            }
            Err(e) => Err(e),
        };
        if let Ok(desc) = desc {
            let is_in = desc.b_endpoint_address & sys::functionfs::USB_DIR_IN != 0;
            let want_in = direction == Direction::ToDevice;
            if is_in != want_in {
                return Err(Error::invalid(
                    "FunctionFS endpoint",
                    object,
                    format!(
                        "endpoint address {:#04x} is an {} endpoint, which moves data {}; \
                         asked for {:?}",
                        desc.b_endpoint_address,
                        if is_in { "IN" } else { "OUT" },
                        if is_in {
                            "to the host (Direction::ToDevice)"
                        } else {
                            "from the host (Direction::FromDevice)"
                        },
                        direction
                    ),
                ));
            }
        }
        let core = KernelDmabufCore::new(
            fd,
            direction,
            name,
            object,
            UNDECIDED,
            CopyOptions {
                chunk: FUNCTIONFS_COPY_CHUNK,
                short_read_completes: true,
            },
        )?;
        Ok(FunctionFsEndpoint { core })
    }

    /// The data path of one attachment.
    pub fn path_of(&self, attachment: &Attachment) -> Result<DataPath> {
        self.core.path_of(attachment)
    }

    /// The full error of a copy-path transfer whose fence failed.
    pub fn failure(&self, fence: &Fence) -> Option<Error> {
        self.core.failure(fence)
    }

    /// Copy-path transfers queued or running (zero-copy transfers are the
    /// kernel's; their fences tell).
    pub fn pending(&self) -> usize {
        self.core.pending()
    }

    /// The endpoint's descriptor as the kernel has it (the function must
    /// be active).
    pub fn descriptor(&self) -> Result<sys::functionfs::UsbEndpointDescriptor> {
        sys::functionfs::endpoint_desc(self.core.file()).map_err(|e| {
            Error::kernel(
                "FunctionFS endpoint descriptor",
                self.core.object(),
                e,
                "FUNCTIONFS_ENDPOINT_DESC failed (is the function active?)",
            )
        })
    }
}

impl Endpoint for FunctionFsEndpoint {
    fn direction(&self) -> Direction {
        self.core.direction()
    }

    fn data_path(&self) -> DataPath {
        self.core.data_path()
    }

    fn attach(&mut self, buffer: &Buffer) -> Result<Attachment> {
        self.core.attach(buffer)
    }

    fn transfer(
        &mut self,
        attachment: &Attachment,
        len: u64,
        opts: TransferOptions,
    ) -> Result<Fence> {
        self.core.transfer(attachment, len, opts)
    }

    fn detach(&mut self, attachment: &Attachment) -> Result<()> {
        self.core.detach(attachment)
    }
}

impl AsFd for FunctionFsEndpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.core.file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_fallbacks_are_explained() {
        let why = fallback_reason(Errno::PERM).unwrap();
        assert!(
            why.starts_with("FUNCTIONFS_DMABUF_ATTACH answered EPERM: "),
            "{why}"
        );
        assert!(why.contains("scatter-gather"), "{why}");
        assert!(fallback_reason(Errno::NOTTY).unwrap().contains("6.9"));
        assert!(fallback_reason(Errno::INVAL).is_some());
        for real in [Errno::BADF, Errno::NODEV, Errno::BUSY, Errno::NOMEM] {
            assert!(fallback_reason(real).is_none(), "{real:?}");
        }
    }

    #[test]
    fn transfer_errnos_map_to_kinds_with_causes() {
        let cases = [
            (Errno::BUSY, ErrorKind::Busy, "still active"),
            (Errno::PERM, ErrorKind::NotFound, "no attachment"),
            (Errno::INVAL, ErrorKind::InvalidInput, "length or the flags"),
            (Errno::NODEV, ErrorKind::NotSupported, "not active"),
            (Errno::SHUTDOWN, ErrorKind::Cancelled, "disabled"),
            (Errno::AGAIN, ErrorKind::WouldBlock, "not enabled"),
            (Errno::NOMEM, ErrorKind::Os, "ENOMEM"),
        ];
        for (errno, kind, words) in cases {
            let e = transfer_error("ep1", errno);
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.errno(), Some(errno));
            assert_eq!(e.operation(), "FunctionFS DMABUF transfer");
            assert_eq!(e.object(), "ep1");
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn a_plain_file_is_refused_by_the_kernel_and_falls_back() {
        // A pipe is no FunctionFS endpoint: no descriptor to check, and a
        // portable buffer takes the copy path with its reason.
        let (_r, w) = rustix::pipe::pipe().unwrap();
        let mut ep = FunctionFsEndpoint::from_fd(w, Direction::ToDevice, "pipe").unwrap();
        assert_eq!(ep.data_path(), DataPath::Copy(UNDECIDED.into()));
        let buf = crate::Allocate::allocate(&crate::Portable, 4096, "p").unwrap();
        let a = ep.attach(&buf).unwrap();
        match ep.data_path() {
            DataPath::Copy(why) => assert!(why.contains("portable memory"), "{why}"),
            p => panic!("{p}"),
        }
        assert!(ep.descriptor().is_err());
        ep.detach(&a).unwrap();
    }
}

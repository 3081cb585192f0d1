//! IIO buffers (`/dev/iio:deviceN`, buffer fds from
//! `IIO_BUFFER_GET_FD_IOCTL`) with the IIO DMABUF interface of Linux
//! 6.11+ and a copy-path fallback.
//!
//! # DOC: IIO endpoints
//!
//! An IIO buffer is either an input (an ADC fills it:
//! [`Direction::FromDevice`]) or an output (a DAC reads it:
//! [`Direction::ToDevice`]); the kernel tells which in
//! `/sys/bus/iio/devices/iio:deviceN/bufferM/direction`, the caller says
//! which here. The buffer must be set up and enabled through sysfs as
//! usual (channels, length, `enable`); this endpoint only moves data.
//!
//! * **Attach** offers a dma-buf with `IIO_BUFFER_DMABUF_ATTACH_IOCTL`.
//!   If the buffer has no DMABUF support the kernel answers `EPERM` (and
//!   kernels before the interface answer `EINVAL` for the unknown ioctl);
//!   then, and for portable buffers, the endpoint uses the
//!   [copy engine](super::copy): `read()`/`write()` on the buffer fd
//!   through a CPU window. `EBUSY` (already attached) is an error.
//! * **Zero-copy transfers** are `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL` with
//!   `bytes_used = len`; the only flag is [`IIO_BUFFER_DMABUF_CYCLIC`]
//!   (repeat until detached), accepted in [`TransferOptions::flags`] for
//!   output buffers on the zero-copy path and refused (`EINVAL`, with a
//!   message) everywhere else. The library checks length, flags and the
//!   attachment before the kernel does, and waits for its own fences, CPU
//!   windows and the kernel's fences at most the transfer's timeout,
//!   publishing the transfer's fence in the same step (the kernel
//!   endpoint core shared with FunctionFS, `endpoint::kernel`); that fence
//!   is a user fence the library owns, settled by the endpoint's fence
//!   watcher from the kernel's fence, which is exported from the dma-buf
//!   right after the ioctl (`EXPORT_SYNC_FILE` for writing; IIO gives its
//!   fences the right usage, no direction fix is needed) and never handed
//!   out: on 6.12 its lock lives in the attachment, which detach frees
//!   (`endpoint::watch`, docs/kernel-findings.md).
//! * **Kernel errors** become errors with the errno: `EBUSY` (fences
//!   still active after the kernel's 5 s, or none when non-blocking) →
//!   [`ErrorKind::Busy`]; `EPERM` (not attached) →
//!   [`ErrorKind::NotFound`]; `EINVAL` (length, flags, cyclic on an
//!   input) → [`ErrorKind::InvalidInput`].
//! * **Detach** (`IIO_BUFFER_DMABUF_DETACH_IOCTL`) and drop behave as
//!   for every endpoint: the fences of pending enqueues fail with
//!   `ECANCELED`. The kernel itself cancels nothing at detach: the driver
//!   keeps the block until it is done or the buffer is disabled (the
//!   kernel's fence then fails with `EINTR`); until then the dma-buf's
//!   own reservation keeps the kernel's fence, so CPU windows and later
//!   transfers still wait for the device.
//!
//! **Tested against the kernel** in the lab (`lab/guest/tests/iio.rs`,
//! `lab/guest/tests/relay.rs`): Debian's 6.12 has `IIO_BUFFER=y` but no
//! DMABUF-capable driver, so the lab builds `industrialio-buffer-dma` from
//! the same source and a fake ADC fixture (`lab/fixtures/fake_adc/`) whose
//! samples the tests check byte for byte; attach, enqueue, `bytes_used`,
//! the flags, duplicate and unknown attachments, detach with an enqueue
//! pending, read windows waiting for an enqueue and the copy path run
//! there.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::common::name_of;
use super::copy::CopyOptions;
use super::kernel::{DmabufUapi, KernelDmabufCore};
use super::{Attachment, DataPath, Direction, Endpoint, TransferOptions};
use crate::buffer::Buffer;
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::Fence;
use crate::sys;

pub use crate::sys::iio::IIO_BUFFER_DMABUF_CYCLIC;

/// What [`Endpoint::data_path`] says before the first attach.
pub const UNDECIDED: &str =
    "not decided yet: the first attach of a dma-buf probes IIO_BUFFER_DMABUF_ATTACH_IOCTL";

/// An IIO buffer as an endpoint. See the module documentation.
#[derive(Debug)]
pub struct IioEndpoint {
    core: KernelDmabufCore<Iio>,
}

/// The IIO DMABUF uAPI (Linux 6.12) for the kernel endpoint core.
#[derive(Debug)]
pub(crate) enum Iio {}

impl DmabufUapi for Iio {
    const ATTACH_IOCTL: &'static str = "IIO_BUFFER_DMABUF_ATTACH_IOCTL";
    const DEVICE: &'static str = "the IIO buffer";
    // IIO gives its fences the right usage.
    const FIX_FROM_DEVICE_USAGE: bool = false;
    const GONE_ERRNO: Option<Errno> = None;

    fn attach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()> {
        sys::iio::attach(fd, dmabuf)
    }

    fn detach(fd: BorrowedFd<'_>, dmabuf: &DmaBuf) -> rustix::io::Result<()> {
        sys::iio::detach(fd, dmabuf)
    }

    fn enqueue(
        fd: BorrowedFd<'_>,
        dmabuf: &DmaBuf,
        flags: u32,
        len: u64,
    ) -> rustix::io::Result<()> {
        sys::iio::enqueue(fd, &sys::iio::enqueue_arg(dmabuf, flags, len))
    }

    fn device_present(_: BorrowedFd<'_>, _: &DmaBuf) -> bool {
        true
    }

    fn gone_reason() -> &'static str {
        "the IIO device was removed"
    }

    fn fallback_reason(errno: Errno) -> Option<String> {
        fallback_reason(errno)
    }

    fn attach_error(obj: &str, errno: Errno) -> Error {
        iio_error("IIO DMABUF attach", obj, errno)
    }

    fn transfer_error(obj: &str, errno: Errno) -> Error {
        iio_error("IIO DMABUF enqueue", obj, errno)
    }

    fn detach_error(obj: &str, errno: Errno) -> Error {
        iio_error("IIO DMABUF detach", obj, errno)
    }

    fn check_flags(obj: &str, direction: Direction, zero_copy: bool, flags: u32) -> Result<()> {
        check_flags(obj, direction, zero_copy, flags)
    }
}

/// The reason in words for a copy-path fallback after
/// `IIO_BUFFER_DMABUF_ATTACH_IOCTL` answered `errno`, or `None` if that
/// errno is a real failure.
pub fn fallback_reason(errno: Errno) -> Option<String> {
    let why = match errno {
        Errno::PERM => "this IIO buffer has no DMABUF support (no dmabuf ops in its driver)",
        Errno::INVAL | Errno::NOTTY => {
            "this kernel has no IIO DMABUF interface (it came in Linux 6.11)"
        }
        _ => return None,
    };
    Some(format!(
        "IIO_BUFFER_DMABUF_ATTACH_IOCTL answered {}: {why}",
        name_of(errno)
    ))
}

/// The error for an errno of `IIO_BUFFER_DMABUF_ENQUEUE_IOCTL` (`op`
/// `"IIO DMABUF enqueue"`) or of attach/detach.
pub fn iio_error(op: &'static str, object: &str, errno: Errno) -> Error {
    let (kind, cause) = match errno {
        Errno::BUSY if op == "IIO DMABUF attach" => (
            ErrorKind::Busy,
            "the dma-buf is already attached to this IIO buffer, or its reservation is locked",
        ),
        Errno::BUSY => (
            ErrorKind::Busy,
            "the kernel found fences of the dma-buf still active after its wait (at most \
             5 s, none for a non-blocking transfer) or its reservation locked",
        ),
        Errno::PERM => (
            ErrorKind::NotFound,
            "the kernel has no attachment of this dma-buf to the IIO buffer",
        ),
        Errno::INVAL => (
            ErrorKind::InvalidInput,
            "the kernel refused the length or the flags (cyclic is for output buffers only)",
        ),
        e => return Error::os(op, object, e),
    };
    Error::new(kind, op, object, cause).with_errno(errno)
}

/// Checks the flags of a transfer on an IIO buffer: only
/// [`IIO_BUFFER_DMABUF_CYCLIC`], only on output buffers' zero-copy path.
pub fn check_flags(object: &str, direction: Direction, zero_copy: bool, flags: u32) -> Result<()> {
    if flags == 0 {
        return Ok(());
    }
    let unknown = flags & !sys::iio::IIO_BUFFER_DMABUF_SUPPORTED_FLAGS;
    let cause = if unknown != 0 {
        format!("unknown transfer flags {unknown:#x} (IIO knows only CYCLIC, 0x1)")
    } else if direction == Direction::FromDevice {
        "CYCLIC is for output buffers (to-device) only".to_string()
    } else if !zero_copy {
        "CYCLIC needs the zero-copy DMABUF path; this attachment uses the copy path".to_string()
    } else {
        return Ok(());
    };
    Err(Error::invalid("transfer", object, cause))
}

impl IioEndpoint {
    /// Opens buffer number `index` of the IIO device at `device`
    /// (`/dev/iio:device0`) through `IIO_BUFFER_GET_FD_IOCTL`.
    pub fn open(device: impl AsRef<Path>, index: u32, direction: Direction) -> Result<IioEndpoint> {
        let device = device.as_ref();
        let dev = rustix::fs::open(
            device,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::os("open IIO device", device.display().to_string(), e))?;
        let index_i32 = i32::try_from(index).map_err(|_| {
            Error::invalid(
                "IIO buffer fd",
                device.display().to_string(),
                "buffer index too large",
            )
        })?;
        let fd = sys::iio::buffer_fd(&dev, index_i32).map_err(|e| {
            Error::kernel(
                "IIO buffer fd",
                format!("{} buffer {index}", device.display()),
                e,
                match e {
                    Errno::NOENT => "the device has no buffer of this index".to_string(),
                    Errno::BUSY => "the buffer is already open".to_string(),
                    e => format!("IIO_BUFFER_GET_FD_IOCTL failed ({})", name_of(e)),
                },
            )
        })?;
        IioEndpoint::from_buffer_fd(
            fd,
            direction,
            &format!("{} buffer {index}", device.display()),
        )
    }

    /// An endpoint on a buffer fd (from `IIO_BUFFER_GET_FD_IOCTL`), named
    /// `name` in messages.
    pub fn from_buffer_fd(fd: OwnedFd, direction: Direction, name: &str) -> Result<IioEndpoint> {
        let object = format!("IIO {name} (fd {})", fd.as_raw_fd());
        let core = KernelDmabufCore::new(
            fd,
            direction,
            name,
            object,
            UNDECIDED,
            CopyOptions::default(),
        )?;
        Ok(IioEndpoint { core })
    }

    /// The data path of one attachment.
    pub fn path_of(&self, attachment: &Attachment) -> Result<DataPath> {
        self.core.path_of(attachment)
    }

    /// The full error of a copy-path transfer whose fence failed.
    pub fn failure(&self, fence: &Fence) -> Option<Error> {
        self.core.failure(fence)
    }

    /// Copy-path transfers queued or running.
    pub fn pending(&self) -> usize {
        self.core.pending()
    }
}

impl Endpoint for IioEndpoint {
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

impl AsFd for IioEndpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.core.file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Allocate, Portable};

    #[test]
    fn enqueue_arg_carries_fd_flags_and_length() {
        let buf = Portable.allocate(8192, "iio-arg").unwrap();
        let arg = sys::iio::enqueue_arg(buf.fd(), IIO_BUFFER_DMABUF_CYCLIC, 4096);
        let (fd, flags, used) = (arg.fd, arg.flags, arg.bytes_used);
        assert_eq!(fd, buf.fd().as_raw_fd() as u32);
        assert_eq!(flags, 1);
        assert_eq!(used, 4096);
    }

    #[test]
    fn kernel_errnos_map_to_kinds_with_causes() {
        let e = iio_error("IIO DMABUF enqueue", "IIO buf", Errno::BUSY);
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(e.errno(), Some(Errno::BUSY));
        assert!(e.to_string().contains("still active"), "{e}");
        let e = iio_error("IIO DMABUF attach", "IIO buf", Errno::BUSY);
        assert!(e.to_string().contains("already attached"), "{e}");
        let e = iio_error("IIO DMABUF enqueue", "IIO buf", Errno::PERM);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.errno(), Some(Errno::PERM));
        let e = iio_error("IIO DMABUF enqueue", "IIO buf", Errno::INVAL);
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = iio_error("IIO DMABUF enqueue", "IIO buf", Errno::NOMEM);
        assert_eq!(e.kind(), ErrorKind::Os);
        assert_eq!(e.errno(), Some(Errno::NOMEM));
        assert!(e.to_string().starts_with("IIO DMABUF enqueue: IIO buf: "));
    }

    #[test]
    fn attach_fallbacks_are_explained() {
        let why = fallback_reason(Errno::PERM).unwrap();
        assert!(why.starts_with("IIO_BUFFER_DMABUF_ATTACH_IOCTL answered EPERM"));
        assert!(fallback_reason(Errno::INVAL).unwrap().contains("6.11"));
        assert!(fallback_reason(Errno::BUSY).is_none());
        assert!(fallback_reason(Errno::BADF).is_none());
    }

    #[test]
    fn flags_are_checked_per_direction_and_path() {
        let to = Direction::ToDevice;
        assert!(check_flags("o", to, true, 0).is_ok());
        assert!(check_flags("o", to, true, IIO_BUFFER_DMABUF_CYCLIC).is_ok());
        let e = check_flags("o", to, true, 0x2).unwrap_err();
        assert!(e.to_string().contains("unknown transfer flags 0x2"), "{e}");
        assert_eq!(e.errno(), Some(Errno::INVAL));
        let e = check_flags("o", Direction::FromDevice, true, 1).unwrap_err();
        assert!(e.to_string().contains("output buffers"), "{e}");
        let e = check_flags("o", to, false, 1).unwrap_err();
        assert!(e.to_string().contains("copy path"), "{e}");
    }

    #[test]
    fn copy_path_on_a_pipe_stands_in_for_a_buffer_fd() {
        // No IIO device exists on the host (the lab has one); a pipe
        // stands in for an output buffer fd: portable buffers take the
        // copy path and the bytes arrive.
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut ep = IioEndpoint::from_buffer_fd(w, Direction::ToDevice, "stand-in").unwrap();
        assert_eq!(ep.data_path(), DataPath::Copy(UNDECIDED.into()));
        let buf = Portable.allocate(4096, "iio-copy").unwrap();
        buf.map()
            .unwrap()
            .write()
            .unwrap()
            .write_at(0, b"iio!")
            .unwrap();
        let a = ep.attach(&buf).unwrap();
        match ep.path_of(&a).unwrap() {
            DataPath::Copy(why) => assert!(why.contains("portable memory"), "{why}"),
            p => panic!("unexpected path {p}"),
        }
        let e = ep
            .transfer(
                &a,
                4,
                TransferOptions {
                    flags: IIO_BUFFER_DMABUF_CYCLIC,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("copy path"), "{e}");
        let f = ep.transfer(&a, 4, TransferOptions::default()).unwrap();
        f.wait(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 4];
        assert_eq!(rustix::io::read(&r, &mut got).unwrap(), 4);
        assert_eq!(&got, b"iio!");
    }
}

//! The one error type of the library.
//!
//! # Rules
//!
//! Every failure names three things, so that a person reading the message
//! alone knows what went wrong:
//!
//! * the **operation** (`"udmabuf"`, `"mmap"`, `"sync-file merge"`…),
//! * the **object** it was applied to (`"memfd 5"`, `"/dev/dma_heap/system"`,
//!   `"buffer 'frames-0'"`), and
//! * the **cause** in words (`"offset 100 is not a multiple of the page size
//!   4096"`),
//!
//! and keeps the kernel's errno when there was one, so that programs can still
//! match on it ([`Error::errno`]) and `std::io::Error` conversions keep
//! `raw_os_error()` (std's OS form carries no message, so an error with an
//! errno converts to that errno alone; convert at the last moment, or keep
//! the `Error` for its words).
//!
//! An error made from another failure keeps it as its
//! [`source`](std::error::Error::source): a window refused because a fence
//! did not signal in time has the fence's own time-out error as its
//! source, an error from an `std::io::Error` that error. The message
//! itself stays whole (operation, object, cause), so a report that prints
//! every error of the chain may say a cause twice. Converting to an
//! `io::Error` keeps this chain when the error has no errno (the error is
//! the `io::Error`'s inner error).
//!
//! Where the library validates input before the kernel sees it (to give a
//! precise message), the error carries the errno the kernel *would* have
//! answered, so the two paths are indistinguishable to a program that only
//! looks at [`Error::kind`] or [`Error::errno`].

use std::fmt;
use std::io;
use std::sync::Arc;

pub use rustix::io::Errno;

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is, for programs that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something the operation cannot accept (EINVAL and
    /// friends).
    InvalidInput,
    /// The kernel, device or object does not offer this (ENOTTY, EOPNOTSUPP,
    /// a missing device node).
    NotSupported,
    /// A file, device, heap, buffer or attachment that does not exist.
    NotFound,
    /// The caller lacks the right (EPERM, EACCES, a read-only mapping).
    PermissionDenied,
    /// Something else holds the object (EBUSY, a conflicting CPU window, a
    /// pending fence past its timeout).
    Busy,
    /// A wait ran out of time.
    TimedOut,
    /// A non-blocking operation would have had to wait (EAGAIN).
    WouldBlock,
    /// A fence signalled with an error; the errno is the fence's error.
    FenceFailed,
    /// The fence or transfer was cancelled (a detach, a dropped producer).
    Cancelled,
    /// The peer process closed its end or died.
    PeerGone,
    /// A message from a peer was malformed or hostile.
    Protocol,
    /// Any other failure reported by the operating system.
    Os,
}

impl ErrorKind {
    /// The kind that best describes an errno from the kernel.
    pub fn from_errno(errno: Errno) -> Self {
        match errno {
            Errno::INVAL | Errno::BADFD | Errno::BADF | Errno::FAULT | Errno::RANGE => {
                ErrorKind::InvalidInput
            }
            Errno::NOTTY | Errno::OPNOTSUPP | Errno::NOSYS | Errno::NODEV | Errno::NXIO => {
                ErrorKind::NotSupported
            }
            Errno::NOENT => ErrorKind::NotFound,
            Errno::PERM | Errno::ACCESS | Errno::ROFS => ErrorKind::PermissionDenied,
            Errno::BUSY => ErrorKind::Busy,
            Errno::TIMEDOUT | Errno::TIME => ErrorKind::TimedOut,
            Errno::AGAIN => ErrorKind::WouldBlock,
            Errno::CANCELED | Errno::SHUTDOWN => ErrorKind::Cancelled,
            Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => ErrorKind::PeerGone,
            _ => ErrorKind::Os,
        }
    }
}

/// A failure of an operation of this library.
///
/// Display form: `"<operation>: <object>: <cause> (<ERRNO>)"`, for example
/// `udmabuf: memfd 5: offset 100 is not a multiple of the page size 4096 (EINVAL)`.
///
/// One pointer wide (its parts live on the heap, made only when an error
/// is): a `Result` of this library is returned in registers on the paths
/// that succeed, which is every call of a stream's per-item path.
#[derive(Clone)]
pub struct Error(Box<Parts>);

#[derive(Clone)]
struct Parts {
    op: &'static str,
    object: String,
    cause: String,
    kind: ErrorKind,
    errno: Option<Errno>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.0;
        f.debug_struct("Error")
            .field("op", &p.op)
            .field("object", &p.object)
            .field("cause", &p.cause)
            .field("kind", &p.kind)
            .field("errno", &p.errno)
            .field("source", &p.source)
            .finish()
    }
}

impl Error {
    /// A new error of `kind`, without an errno.
    pub fn new(
        kind: ErrorKind,
        op: &'static str,
        object: impl Into<String>,
        cause: impl Into<String>,
    ) -> Self {
        Error(Box::new(Parts {
            op,
            object: object.into(),
            cause: cause.into(),
            kind,
            errno: None,
            source: None,
        }))
    }

    /// Input rejected by the library on the user side; carries EINVAL, the
    /// errno the kernel would have answered.
    pub fn invalid(op: &'static str, object: impl Into<String>, cause: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, op, object, cause).with_errno(Errno::INVAL)
    }

    /// A failure answered by the kernel with `errno`; `cause` says what it
    /// means for this operation (use [`Error::os`] when nothing more
    /// specific than the errno's text is known).
    pub fn kernel(
        op: &'static str,
        object: impl Into<String>,
        errno: Errno,
        cause: impl Into<String>,
    ) -> Self {
        Error::new(ErrorKind::from_errno(errno), op, object, cause).with_errno(errno)
    }

    /// A failure answered by the kernel with `errno`, described by the
    /// errno's own text.
    pub fn os(op: &'static str, object: impl Into<String>, errno: Errno) -> Self {
        let cause = io::Error::from_raw_os_error(errno.raw_os_error()).to_string();
        // io::Error's text ends in " (os error N)"; the errno name is added by Display.
        let cause = match cause.find(" (os error") {
            Some(i) => cause[..i].to_string(),
            None => cause,
        };
        Error::kernel(op, object, errno, cause)
    }

    /// A failure of an `std::io` call (its errno kept, EIO if it has
    /// none), with the `io::Error` as its source.
    pub fn io(op: &'static str, object: impl Into<String>, error: io::Error) -> Self {
        Error::os(op, object, io_errno(&error)).with_source(error)
    }

    /// Sets the failure this error was made from (its
    /// [`source`](std::error::Error::source)).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// The same error with `cause` in other words (the kind, errno and
    /// source stay).
    pub(crate) fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.0.cause = cause.into();
        self
    }

    /// Sets the errno this error carries.
    pub fn with_errno(mut self, errno: Errno) -> Self {
        self.0.errno = Some(errno);
        self
    }

    /// Replaces the kind (when the errno alone would mislead).
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.0.kind = kind;
        self
    }

    /// The operation that failed, such as `"udmabuf"` or `"mmap"`.
    pub fn operation(&self) -> &'static str {
        self.0.op
    }

    /// The object it was applied to, such as `"memfd 5"`.
    pub fn object(&self) -> &str {
        &self.0.object
    }

    /// The cause in words.
    pub fn cause(&self) -> &str {
        &self.0.cause
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The errno from the kernel (or the one it would have given).
    pub fn errno(&self) -> Option<Errno> {
        self.0.errno
    }
}

/// The errno of an `std::io::Error` (EIO when it carries none).
pub(crate) fn io_errno(e: &io::Error) -> Errno {
    Errno::from_io_error(e).unwrap_or(Errno::IO)
}

/// The symbolic name of an errno (`"EINVAL"`), or its number.
pub fn errno_name(errno: Errno) -> String {
    let name = match errno {
        Errno::PERM => "EPERM",
        Errno::NOENT => "ENOENT",
        Errno::INTR => "EINTR",
        Errno::IO => "EIO",
        Errno::NXIO => "ENXIO",
        Errno::BADF => "EBADF",
        Errno::AGAIN => "EAGAIN",
        Errno::NOMEM => "ENOMEM",
        Errno::ACCESS => "EACCES",
        Errno::FAULT => "EFAULT",
        Errno::BUSY => "EBUSY",
        Errno::EXIST => "EEXIST",
        Errno::NODEV => "ENODEV",
        Errno::INVAL => "EINVAL",
        Errno::NOTTY => "ENOTTY",
        Errno::NOSPC => "ENOSPC",
        Errno::ROFS => "EROFS",
        Errno::PIPE => "EPIPE",
        Errno::RANGE => "ERANGE",
        Errno::NOSYS => "ENOSYS",
        Errno::TIME => "ETIME",
        Errno::BADFD => "EBADFD",
        Errno::OPNOTSUPP => "EOPNOTSUPP",
        Errno::CONNRESET => "ECONNRESET",
        Errno::NOTCONN => "ENOTCONN",
        Errno::SHUTDOWN => "ESHUTDOWN",
        Errno::TIMEDOUT => "ETIMEDOUT",
        Errno::CANCELED => "ECANCELED",
        Errno::PROTO => "EPROTO",
        Errno::MFILE => "EMFILE",
        Errno::NFILE => "ENFILE",
        Errno::OWNERDEAD => "EOWNERDEAD",
        Errno::NOBUFS => "ENOBUFS",
        _ => return format!("errno {}", errno.raw_os_error()),
    };
    name.to_string()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.op)?;
        if !self.0.object.is_empty() {
            write!(f, ": {}", self.0.object)?;
        }
        write!(f, ": {}", self.0.cause)?;
        if let Some(errno) = self.0.errno {
            write!(f, " ({})", errno_name(errno))?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.0.kind {
            ErrorKind::InvalidInput | ErrorKind::Protocol => io::ErrorKind::InvalidInput,
            ErrorKind::NotSupported => io::ErrorKind::Unsupported,
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::TimedOut => io::ErrorKind::TimedOut,
            ErrorKind::WouldBlock => io::ErrorKind::WouldBlock,
            ErrorKind::PeerGone => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::Other,
        };
        match e.0.errno {
            // std keeps an errno only in its OS form, which has no room
            // for a message: the errno wins (`raw_os_error()`, and the
            // kind std derives from it).
            Some(errno) => io::Error::from_raw_os_error(errno.raw_os_error()),
            // No errno: the message, with the `Error` reachable through
            // `get_ref()`/`into_inner()`.
            None => io::Error::new(kind, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_two_words() {
        // What the per-item paths return: in registers, not through memory.
        assert_eq!(std::mem::size_of::<Error>(), 8);
        assert!(std::mem::size_of::<Result<u64>>() <= 16);
    }

    #[test]
    fn display_names_operation_object_cause_and_errno() {
        let e = Error::invalid(
            "udmabuf",
            "memfd 5",
            "offset 100 is not a multiple of the page size 4096",
        );
        assert_eq!(
            e.to_string(),
            "udmabuf: memfd 5: offset 100 is not a multiple of the page size 4096 (EINVAL)"
        );
        assert_eq!(e.errno(), Some(Errno::INVAL));
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn os_error_uses_errno_text() {
        let e = Error::os("open", "/dev/udmabuf", Errno::NOENT);
        assert_eq!(
            e.to_string(),
            "open: /dev/udmabuf: No such file or directory (ENOENT)"
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn empty_object_is_left_out() {
        let e = Error::new(ErrorKind::Protocol, "share", "", "message too short");
        assert_eq!(e.to_string(), "share: message too short");
    }

    #[test]
    fn io_conversion_keeps_the_errno_or_the_message() {
        let e = Error::invalid("udmabuf", "memfd 5", "bad offset");
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        let e = Error::new(ErrorKind::Protocol, "share", "peer", "message too short");
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), None);
        assert!(io.to_string().contains("message too short"), "{io}");
        let inner = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(inner.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn kind_from_errno() {
        assert_eq!(ErrorKind::from_errno(Errno::BUSY), ErrorKind::Busy);
        assert_eq!(ErrorKind::from_errno(Errno::NOTTY), ErrorKind::NotSupported);
        assert_eq!(ErrorKind::from_errno(Errno::BADFD), ErrorKind::InvalidInput);
    }
}

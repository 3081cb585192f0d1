//! The kernel-facing layer: `#[repr(C)]` structs, ioctl numbers and thin
//! syscall wrappers, in the style of `rustix`.
//!
//! # Rules
//!
//! * This is the only module of the crate that contains `unsafe`
//!   (`#![deny(unsafe_code)]` at the crate root, allowed here only), and it
//!   is private to the crate: safe code outside the crate cannot reach a
//!   raw ioctl on an arbitrary fd or a mapping without bookkeeping. Every
//!   `unsafe` block carries a `// SAFETY:` line saying why it is sound
//!   (`clippy::undocumented_unsafe_blocks`); every `unsafe fn` a
//!   `# Safety` section. The crate calls its own only from safe functions
//!   that establish the precondition (`Region::map` behind
//!   `map_fixed_size`); `SharedWords::map` checks the file itself; the two
//!   public ones, `VolatileBytes::as_slice` and
//!   `VolatileBytesMut::as_mut_slice`, hand the assertion to the caller.
//! * Functions take `impl AsFd` (or `BorrowedFd`) arguments, return
//!   `OwnedFd` for new file descriptors and `rustix::io::Result`, so the
//!   kernel's errno is kept exactly. Nothing here validates input or
//!   produces friendly messages: that is the job of the modules above.
//! * Struct layouts, sizes and ioctl numbers are those of Linux 6.12's uapi
//!   headers, pinned by tests in each file.
//!   The numbers hold for the generic `_IOC` encoding (x86, arm, arm64,
//!   riscv).

pub mod dma_buf;
pub mod dma_heap;
pub mod drm;
pub mod functionfs;
pub mod futex;
pub mod iio;
pub mod inherit;
pub mod mem;
pub mod object;
pub mod signal;
pub mod sw_sync;
pub mod sync_file;
pub mod udmabuf;
pub mod v4l2;
pub mod vgem;
pub mod volatile;
pub mod wake;

#[cfg(feature = "tokio")]
pub mod readiness;

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

pub use rustix::io::{Errno, Result};
pub use rustix::ioctl::{opcode, Opcode};

/// An ioctl whose argument is a pointer to `T` (or an integer), and whose
/// return value (a new fd for some commands) is given back to the caller.
struct PtrIoctl {
    opcode: Opcode,
    arg: *mut std::ffi::c_void,
}

// SAFETY: `opcode` is the command, `as_ptr` returns the argument the caller
// prepared for that command (see `ioctl_ptr`), and the output is the raw
// return value, which needs no pointer to be read.
unsafe impl rustix::ioctl::Ioctl for PtrIoctl {
    type Output = std::ffi::c_int;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.arg
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _ptr: *mut std::ffi::c_void,
    ) -> Result<Self::Output> {
        Ok(out)
    }
}

/// Issues `ioctl(fd, opcode, arg)` and returns its non-negative result.
///
/// # Safety
///
/// `arg` must be what the kernel expects for `opcode`: a pointer to a live,
/// correctly laid out and sized value (writable if the command writes
/// back), or an integer for commands that take one.
unsafe fn ioctl_raw(
    fd: BorrowedFd<'_>,
    opcode: Opcode,
    arg: *mut std::ffi::c_void,
) -> Result<std::ffi::c_int> {
    let call = PtrIoctl { opcode, arg };
    // SAFETY: forwarded from the caller's contract.
    unsafe { rustix::ioctl::ioctl(fd, call) }
}

/// `ioctl(fd, opcode, &mut value)` for a command taking a pointer to `T`.
///
/// # Safety
///
/// `T` must be the type (layout and size) the kernel expects for `opcode`.
unsafe fn ioctl_with<T>(fd: impl AsFd, opcode: Opcode, value: &mut T) -> Result<std::ffi::c_int> {
    // SAFETY: `value` is a live, exclusive `T`; the caller guarantees that
    // `T` is the argument type of `opcode`.
    unsafe { ioctl_raw(fd.as_fd(), opcode, (value as *mut T).cast()) }
}

/// Wraps a file descriptor number returned by the kernel.
///
/// # Safety
///
/// `raw` must be a new file descriptor the kernel just returned to us and
/// that nothing else owns.
unsafe fn owned_fd(raw: std::ffi::c_int) -> OwnedFd {
    // SAFETY: forwarded from the caller's contract.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Copies `s` into a fixed-size, NUL-terminated C string field, truncating
/// at `N - 1` bytes.
pub fn c_name<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Reads a fixed-size C string field up to its first NUL (lossy UTF-8).
pub fn from_c_name(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_names_round_trip_and_truncate() {
        let f: [u8; 8] = c_name("abc");
        assert_eq!(from_c_name(&f), "abc");
        let f: [u8; 4] = c_name("abcdef");
        assert_eq!(&f, b"abc\0");
        assert_eq!(from_c_name(b"xyz"), "xyz");
    }
}

//! Handing an fd to a child process: kept open across `exec` in the child
//! only, and claimed once by the child.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};

use super::{Errno, Result};

/// Makes `fd` survive `exec` in the child that `cmd` spawns, and only there:
/// the parent's fd keeps `FD_CLOEXEC`, so children spawned at the same time
/// by other threads do not inherit it. The caller keeps `fd` open until the
/// child is spawned.
pub fn keep_open_in_child(cmd: &mut Command, fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: it makes one `fcntl` system call
    // (rustix issues it directly, no allocation, no lock) on a number that
    // the fork copied from the parent, where the caller keeps it open.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: `raw` is open in the child (inherited by fork).
            let fd = BorrowedFd::borrow_raw(raw);
            fcntl_setfd(fd, FdFlags::empty()).map_err(std::io::Error::from)
        });
    }
}

/// The fd numbers this process has claimed, never handed out twice.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Takes ownership of fd `raw`, inherited from the parent process (named
/// by it, e.g. in an environment variable): refuses a number that is not
/// open, a standard stream (0–2), or one this process claimed before.
/// The fd is made close-on-exec again.
///
/// Claiming is once per number per process, so two handles can never own
/// one inherited fd (the take-once protocol of systemd's `LISTEN_FDS`).
pub fn claim_inherited(raw: RawFd) -> Result<OwnedFd> {
    if raw <= 2 {
        return Err(Errno::BADF);
    }
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let claimed = claimed.get_or_insert_with(HashSet::new);
    if claimed.contains(&raw) {
        return Err(Errno::BUSY);
    }
    // SAFETY: only used for the `fcntl` checks below, while the number is
    // known to the kernel (F_GETFD fails with EBADF otherwise).
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl_getfd(borrowed)?;
    fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    claimed.insert(raw);
    // SAFETY: the number is open (F_GETFD succeeded); it was handed to this
    // process by its parent for the library to own, and the claim set makes
    // sure it is wrapped at most once in this process's life.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn an_fd_is_claimed_once_and_standard_streams_never() {
        assert_eq!(claim_inherited(0).unwrap_err(), Errno::BADF);
        assert_eq!(claim_inherited(2).unwrap_err(), Errno::BADF);
        let raw = rustix::io::dup(std::io::stdout()).unwrap().into_raw_fd();
        let fd = claim_inherited(raw).unwrap();
        assert!(fcntl_getfd(&fd).unwrap().contains(FdFlags::CLOEXEC));
        assert_eq!(claim_inherited(raw).unwrap_err(), Errno::BUSY);
        drop(fd);
    }

    #[test]
    fn a_closed_number_is_refused() {
        assert_eq!(claim_inherited(1_000_000).unwrap_err(), Errno::BADF);
    }
}

//! Awaiting readability of an fd with tokio's `AsyncFd` (feature `tokio`).

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Awaits, without blocking a thread, until `done()` is true, re-checking
/// it each time `fd` polls readable. `fd` is owned for the duration (pass a
/// dup). Used for sync files and user-fence eventfds, which stay readable
/// once signalled.
pub async fn until_readable_and(fd: OwnedFd, mut done: impl FnMut() -> bool) -> io::Result<()> {
    if done() {
        return Ok(());
    }
    // SAFETY: `fd` is an open fd owned by the AsyncFd for its whole life
    // (we never close or replace it), so its raw fd stays valid and refers
    // to the same file description until the AsyncFd is dropped.
    let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(io::Error::from)?;
    loop {
        if done() {
            return Ok(());
        }
        let mut guard = afd.readable().await?;
        if done() {
            return Ok(());
        }
        guard.clear_ready();
    }
}

/// Registers `fd` with tokio for readability (the pool's sockets and
/// fence fds). The `AsyncFd` owns it until dropped.
pub fn register_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an open fd moved into the AsyncFd, which owns it for
    // its whole life and never closes or replaces it, so the raw fd stays
    // valid and refers to the same file description until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

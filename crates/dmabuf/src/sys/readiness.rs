//! Awaiting readability of an fd with tokio's `AsyncFd` (feature `tokio`).

use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::task::Poll;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The first re-check interval of [`until_readable_and`]; it doubles up to
/// [`RECHECK_MAX`].
pub const RECHECK_MIN: Duration = Duration::from_millis(2);
/// The longest interval between two re-checks of [`until_readable_and`].
pub const RECHECK_MAX: Duration = Duration::from_millis(100);

/// Awaits, without blocking a thread, until `done()` is true, re-checking
/// it each time `fd` polls readable and at least every [`RECHECK_MAX`]
/// (a one-shot timerfd with doubling intervals): readiness is a hint, not
/// proof, so a readable fd whose condition is not met (an eventfd written
/// by someone else) costs one re-check per write and never a spin, and a
/// condition that changes without readiness (an eventfd whose counter
/// someone read, a local decision) is still seen. `fd` is owned for the
/// duration (pass a dup).
pub async fn until_readable_and(fd: OwnedFd, mut done: impl FnMut() -> bool) -> io::Result<()> {
    if done() {
        return Ok(());
    }
    let afd = register_readable(fd)?;
    let mut interval = RECHECK_MIN;
    loop {
        if done() {
            return Ok(());
        }
        let timer = register_readable(super::futex::oneshot_timer(interval)?)?;
        poll_fn(|cx| {
            for a in [&afd, &timer] {
                match a.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await?;
        interval = (interval * 2).min(RECHECK_MAX);
    }
}

/// A one-shot timer registered with tokio: readable `after` from now (for
/// bounded re-checks inside `AsyncFd` waits, without needing tokio's timer
/// driver).
pub fn timer(after: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    register_readable(super::futex::oneshot_timer(after)?)
}

/// Registers `fd` with tokio for readability (the pool's sockets and
/// fence fds). The `AsyncFd` owns it until dropped.
pub fn register_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an open fd moved into the AsyncFd, which owns it for
    // its whole life and never closes or replaces it, so the raw fd stays
    // valid and refers to the same file description until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

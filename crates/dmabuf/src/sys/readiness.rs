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
/// proof. A readable fd whose condition is not met (a pipe written by
/// someone else, or hung up, which tokio reports ready for good) costs one
/// re-check and is then not awaited again in this call: the re-checks go
/// by the timer alone, so it never spins. A condition that changes without
/// readiness (a wake-up byte someone read, a local decision) is still
/// seen. `fd` is owned for the duration (pass a dup).
pub async fn until_readable_and(fd: OwnedFd, mut done: impl FnMut() -> bool) -> io::Result<()> {
    if done() {
        return Ok(());
    }
    let mut afd = Some(register_readable(fd)?);
    let mut interval = RECHECK_MIN;
    loop {
        if done() {
            return Ok(());
        }
        let timer = register_readable(super::futex::oneshot_timer(interval)?)?;
        let by_fd = poll_fn(|cx| {
            if let Some(a) = &afd {
                match a.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        return Poll::Ready(Ok(true));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            match timer.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    Poll::Ready(Ok(false))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        if by_fd && !done() {
            afd = None;
        }
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

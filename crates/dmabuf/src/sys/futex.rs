//! Shared futexes (`futex(2)` without `FUTEX_PRIVATE_FLAG`, so that waiters
//! in several processes that map the same `MAP_SHARED` page meet), random
//! bytes (`getrandom(2)`) and one-shot timers (`timerfd_create(2)`), for
//! user fences.

use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

use super::{Errno, Result};

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// `FUTEX_WAIT` (shared): sleeps while `*word == expected`, at most
/// `timeout`. `Ok(())` when woken (possibly spuriously), `Err(AGAIN)` when
/// the word already differed, `Err(TIMEDOUT)` on timeout, `Err(INTR)` on a
/// signal.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Result<()> {
    futex::wait(
        word,
        futex::Flags::empty(),
        expected,
        Some(&timespec(timeout)),
    )
}

/// `FUTEX_WAKE` (shared): wakes every waiter on `word`, in any process;
/// how many were woken.
pub fn wake_all(word: &AtomicU32) -> Result<usize> {
    futex::wake(word, futex::Flags::empty(), i32::MAX as u32)
}

/// Eight random bytes from the kernel (`getrandom`, blocking only until
/// the pool is initialised once at boot), as a `u64`.
pub fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(u64::from_ne_bytes(b))
}

/// A non-blocking, close-on-exec `CLOCK_MONOTONIC` timerfd that becomes
/// readable once, `after` from now (a zero duration is rounded up to 1 ns,
/// since zero would disarm it).
pub fn oneshot_timer(after: Duration) -> Result<OwnedFd> {
    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags,
    };
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )?;
    let after = after.max(Duration::from_nanos(1));
    let spec = Itimerspec {
        it_interval: timespec(Duration::ZERO),
        it_value: timespec(after),
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wait_returns_again_when_the_word_differs_and_times_out_otherwise() {
        let w = AtomicU32::new(5);
        assert_eq!(wait(&w, 4, Duration::from_secs(1)), Err(Errno::AGAIN));
        let t = Instant::now();
        assert_eq!(wait(&w, 5, Duration::from_millis(20)), Err(Errno::TIMEDOUT));
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert_eq!(wake_all(&w), Ok(0));
    }

    #[test]
    fn random_words_differ() {
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }

    #[test]
    fn timer_fires_once() {
        let fd = oneshot_timer(Duration::from_millis(5)).unwrap();
        let ready = rustix::event::poll(
            &mut [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )],
            Some(&timespec(Duration::from_secs(2))),
        )
        .unwrap();
        assert_eq!(ready, 1);
    }
}

//! Memory shared with other processes as atomic words, and the futexes on
//! it: the one type for user-fence pages (mapped read-write by the fence's
//! owner and read-only by everyone else) and descriptor rings (mapped
//! read-write by both sides), with shared futexes on it (`futex(2)`
//! without `FUTEX_PRIVATE_FLAG`, so that waiters in several processes that
//! map the same `MAP_SHARED` page meet); random bytes (`getrandom(2)`) and
//! one-shot timers (`timerfd_create(2)`).
//!
//! A [`SharedWords`] is mapped only from a file that cannot shrink under
//! it (a memfd sealed with `F_SEAL_SHRINK`, or a dma-buf) and is long
//! enough, checked at [`SharedWords::map`]: a peer can never make an access
//! fault with `SIGBUS`. Another process writes it at any moment, so no
//! byte of it is ever given out as a plain slice or a reference to
//! non-atomic data.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

use super::{Errno, Result};

/// `words` 64-bit words at offset 0 of a file, mapped shared, accessed only
/// atomically. A read-only mapping offers loads and futex waits only: no
/// reference into it escapes ([`SharedWords::word`] and
/// [`SharedWords::word32`] answer `None`), so nothing can store into it
/// (which would fault).
#[derive(Debug)]
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    words: usize,
    writable: bool,
}

// SAFETY: the words are only ever accessed atomically, from any thread.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps `words` words of `fd` after checking that it cannot shrink
    /// under the mapping: a memfd sealed with `F_SEAL_SHRINK` (or a
    /// dma-buf) at least `words * 8` bytes long. `EINVAL` for a zero
    /// length, a file too short or a memfd without the seal, `EBADF` for
    /// any other kind of file.
    pub fn map(fd: impl AsFd, words: usize, writable: bool) -> Result<SharedWords> {
        let len = words.checked_mul(8).ok_or(Errno::INVAL)?;
        super::mem::check_fixed_size(fd.as_fd(), 0, len)?;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new mapping at an address chosen by the kernel touches
        // no existing Rust memory; the result is owned by `SharedWords`.
        // The file cannot shrink below `len` (checked above), so every
        // byte of the mapping stays backed for its life.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or(Errno::NOMEM)?;
        Ok(SharedWords {
            ptr,
            words,
            writable,
        })
    }

    fn at(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.words {
            return None;
        }
        // SAFETY: the mapping is page-aligned (so 8-byte aligned), `i` is in
        // bounds, it lives as long as `self`, and every access to it is
        // atomic (other processes use the same protocol). A reference into
        // a read-only mapping never leaves this type (see `word`).
        Some(unsafe { &*self.ptr.as_ptr().add(i) })
    }

    fn half(&self, i: usize) -> Option<&AtomicU32> {
        if i >= self.words * 2 {
            return None;
        }
        // SAFETY: as in `at`, for 4-byte half-word `i`; the caller's
        // layout never accesses a half-word's location 64 bits wide too.
        Some(unsafe { &*self.ptr.as_ptr().cast::<AtomicU32>().add(i) })
    }

    /// The number of 64-bit words mapped.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Word `i` of a read-write mapping, for callers that need their own
    /// orderings (rings); `None` past the end or on a read-only mapping
    /// (a store through it would fault).
    pub fn word(&self, i: usize) -> Option<&AtomicU64> {
        self.at(i).filter(|_| self.writable)
    }

    /// Half-word `i` (4-byte units, for futexes) of a read-write mapping;
    /// `None` past the end or on a read-only mapping.
    pub fn word32(&self, i: usize) -> Option<&AtomicU32> {
        self.half(i).filter(|_| self.writable)
    }

    /// Word `i`, or `None` past the end.
    pub fn load(&self, i: usize) -> Option<u64> {
        self.at(i).map(|w| w.load(Ordering::Acquire))
    }

    /// Stores into word `i`; `EROFS` on a read-only mapping, `EINVAL` past
    /// the end.
    pub fn store(&self, i: usize, v: u64) -> Result<()> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        self.at(i).ok_or(Errno::INVAL)?.store(v, Ordering::Release);
        Ok(())
    }

    /// Half-word `i` (4-byte units), or `None` past the end.
    pub fn load_u32(&self, i: usize) -> Option<u32> {
        self.half(i).map(|w| w.load(Ordering::Acquire))
    }

    /// Adds to half-word `i` and wakes every futex waiter on it, in any
    /// process; `EROFS` on a read-only mapping.
    pub fn bump_and_wake(&self, i: usize) -> Result<()> {
        if !self.writable {
            return Err(Errno::ROFS);
        }
        let w = self.half(i).ok_or(Errno::INVAL)?;
        w.fetch_add(1, Ordering::AcqRel);
        wake_all(w).map(drop)
    }

    /// `FUTEX_WAIT` on half-word `i` (see [`wait`]).
    pub fn futex_wait(&self, i: usize, expected: u32, timeout: Duration) -> Result<()> {
        wait(self.half(i).ok_or(Errno::INVAL)?, expected, timeout)
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; no reference into it
        // outlives a method call.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.words * 8) };
    }
}

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
    wake(word, i32::MAX as u32)
}

/// `FUTEX_WAKE` (shared): wakes at most `n` waiters on `word`, in any
/// process; how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> Result<usize> {
    futex::wake(word, futex::Flags::empty(), n)
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

    fn memfd(len: u64, seal: bool) -> OwnedFd {
        use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
        let fd = memfd_create(
            "shared-words-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&fd, len).unwrap();
        if seal {
            fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        }
        fd
    }

    #[test]
    fn files_that_can_shrink_short_files_and_zero_lengths_are_refused() {
        assert_eq!(
            SharedWords::map(memfd(4096, false), 512, true).unwrap_err(),
            Errno::INVAL
        );
        let fd = memfd(4096, true);
        assert_eq!(SharedWords::map(&fd, 1024, true).unwrap_err(), Errno::INVAL);
        assert_eq!(SharedWords::map(&fd, 0, true).unwrap_err(), Errno::INVAL);
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(SharedWords::map(&file, 1, false).unwrap_err(), Errno::BADF);
        assert!(SharedWords::map(&fd, 512, true).is_ok());
    }

    #[test]
    fn words_are_shared_and_bounded_and_read_only_mappings_hand_out_none() {
        let fd = memfd(4096, true);
        let a = SharedWords::map(&fd, 512, true).unwrap();
        let b = SharedWords::map(&fd, 512, true).unwrap();
        let r = SharedWords::map(&fd, 512, false).unwrap();
        a.word(511).unwrap().store(7, Ordering::SeqCst);
        assert_eq!(b.word(511).unwrap().load(Ordering::SeqCst), 7);
        assert_eq!(r.load(511), Some(7));
        assert!(a.word(512).is_none());
        assert!(a.word32(1024).is_none());
        assert!(r.word(0).is_none() && r.word32(0).is_none());
        assert_eq!(r.store(0, 1), Err(Errno::ROFS));
        a.word32(3).unwrap().store(9, Ordering::SeqCst);
        assert_eq!(b.word(1).unwrap().load(Ordering::SeqCst) >> 32, 9);
        assert_eq!(r.load_u32(3), Some(9));
    }

    #[test]
    fn a_futex_on_shared_words_times_out_or_sees_a_changed_word() {
        let fd = memfd(4096, true);
        let a = SharedWords::map(&fd, 512, true).unwrap();
        let w = a.word32(0).unwrap();
        assert_eq!(wait(w, 1, Duration::ZERO).unwrap_err(), Errno::AGAIN);
        let t = Instant::now();
        assert_eq!(
            wait(w, 0, Duration::from_millis(20)).unwrap_err(),
            Errno::TIMEDOUT
        );
        assert!(t.elapsed() >= Duration::from_millis(15));
        assert_eq!(wake(w, 1).unwrap(), 0);
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

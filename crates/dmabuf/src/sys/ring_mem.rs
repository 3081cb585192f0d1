//! Shared control memory for descriptor rings, and the futex calls that
//! sleep on it.
//!
//! A [`SharedWords`] is one `mmap(MAP_SHARED)` of a *sealed* memfd, seen
//! only as an array of atomic words: another process writes it at any
//! moment, so no byte of it is ever given out as a plain slice or a plain
//! reference to non-atomic data. The memfd must carry `F_SEAL_SHRINK`
//! (checked here), so the peer cannot truncate it under the mapping and
//! make an access fault with `SIGBUS`.

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

use super::{Errno, Result};

/// A shared read-write mapping of a sealed memfd, accessed only through
/// atomics (64-bit words, or 32-bit words for futexes).
#[derive(Debug)]
pub struct SharedWords {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is only ever accessed through atomics, from any
// thread; the mapping lives until `Drop`.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the first `len` bytes of `fd`, which must be a memfd sealed
    /// against shrinking and at least `len` bytes long (else `EINVAL`, or
    /// `EPERM` when the seal is missing). `len` must be a non-zero multiple
    /// of 8.
    pub fn map(fd: impl AsFd, len: usize) -> Result<SharedWords> {
        if len == 0 || len % 8 != 0 {
            return Err(Errno::INVAL);
        }
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Errno::PERM);
        }
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size < 0 || (size as u64) < len as u64 {
            return Err(Errno::INVAL);
        }
        // SAFETY: a new mapping at an address chosen by the kernel touches
        // no existing Rust memory; it is owned by the result. The file
        // cannot shrink (seal checked above), so every byte of it stays
        // backed for the mapping's life.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(SharedWords { ptr, len })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: zero lengths are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 64-bit word at byte offset `8 * i`, or `None` past the end.
    pub fn word(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.len / 8 {
            return None;
        }
        // SAFETY: the mapping is page-aligned, so `8 * i` is 8-byte
        // aligned; it is in bounds (checked), lives as long as `self`, and
        // every access to it (ours and the peer's) is atomic.
        Some(unsafe { &*self.ptr.as_ptr().add(i * 8).cast::<AtomicU64>() })
    }

    /// The 32-bit word at byte offset `4 * i` (for futexes), or `None` past
    /// the end.
    pub fn word32(&self, i: usize) -> Option<&AtomicU32> {
        if i >= self.len / 4 {
            return None;
        }
        // SAFETY: as for `word`, with 4-byte alignment.
        Some(unsafe { &*self.ptr.as_ptr().add(i * 4).cast::<AtomicU32>() })
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; every reference handed
        // out borrows `self`, so none is alive.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `FUTEX_WAIT` (shared, not private: the word may be mapped by another
/// process) while `*word == expected`, for at most `timeout`. Returns
/// `Ok(())` when woken, `EAGAIN` when the word already differed,
/// `ETIMEDOUT` on timeout and `EINTR` on a signal.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Result<()> {
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    futex::wait(word, futex::Flags::empty(), expected, Some(&ts))
}

/// `FUTEX_WAKE` (shared) of at most `n` waiters on `word`; the number
/// woken.
pub fn futex_wake(word: &AtomicU32, n: u32) -> Result<usize> {
    futex::wake(word, futex::Flags::empty(), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags};
    use std::sync::atomic::Ordering;

    fn memfd(len: u64, seal: bool) -> std::os::fd::OwnedFd {
        let fd = memfd_create(
            "ring-mem-test",
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
    fn unsealed_short_and_odd_lengths_are_refused() {
        assert_eq!(
            SharedWords::map(memfd(4096, false), 4096).unwrap_err(),
            Errno::PERM
        );
        let fd = memfd(4096, true);
        assert_eq!(SharedWords::map(&fd, 8192).unwrap_err(), Errno::INVAL);
        assert_eq!(SharedWords::map(&fd, 12).unwrap_err(), Errno::INVAL);
        assert_eq!(SharedWords::map(&fd, 0).unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn words_are_shared_and_bounded() {
        let fd = memfd(4096, true);
        let a = SharedWords::map(&fd, 4096).unwrap();
        let b = SharedWords::map(&fd, 4096).unwrap();
        a.word(511).unwrap().store(7, Ordering::SeqCst);
        assert_eq!(b.word(511).unwrap().load(Ordering::SeqCst), 7);
        assert!(a.word(512).is_none());
        assert!(a.word32(1024).is_none());
        a.word32(3).unwrap().store(9, Ordering::SeqCst);
        assert_eq!(b.word(1).unwrap().load(Ordering::SeqCst) >> 32, 9);
    }

    #[test]
    fn futex_wait_times_out_or_sees_a_changed_word() {
        let fd = memfd(4096, true);
        let a = SharedWords::map(&fd, 4096).unwrap();
        let w = a.word32(0).unwrap();
        assert_eq!(futex_wait(w, 1, Duration::ZERO).unwrap_err(), Errno::AGAIN);
        let t = std::time::Instant::now();
        assert_eq!(
            futex_wait(w, 0, Duration::from_millis(20)).unwrap_err(),
            Errno::TIMEDOUT
        );
        assert!(t.elapsed() >= Duration::from_millis(15));
        assert_eq!(futex_wake(w, 1).unwrap(), 0);
    }
}

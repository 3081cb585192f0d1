//! Wake-up pipes: one byte written to a pipe wakes whoever polls its read
//! end.
//!
//! # DOC: why pipes, and why every call says "do not wait"
//!
//! A wake-up fd is shared with another process: the side that sleeps polls
//! one end, the side that wakes it writes the other, and either end may
//! have been made by the peer. `O_NONBLOCK` belongs to the open file
//! description, which every holder of the fd shares, so a peer can clear
//! it at any moment; and a peer holding an end (or the read end, opened
//! again for writing through `/proc/PID/fd`) can fill the pipe. A plain
//! `read` or `write` that relies on the flag can then block until the peer
//! chooses. An eventfd is worse: its writes cannot be made non-blocking per
//! call, so a peer that clears the flag and sets the counter to its largest
//! value blocks every writer.
//!
//! So every read and write here passes `RWF_NOWAIT` (`preadv2`/`pwritev2`),
//! which the kernel honours for that call whatever the file's flags (pipes
//! support it on the kernels this crate targets; `EOPNOTSUPP` is returned
//! as is for a file that does not, such as a named FIFO, which the
//! callers refuse). A full pipe means a wake-up is already pending, so a
//! write that finds it full has done its job.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{fcntl_getfl, fstat, FileType, OFlags};
use rustix::io::{Errno, ReadWriteFlags, Result};
use rustix::pipe::{pipe_with, PipeFlags};

/// The current file position, for `preadv2`/`pwritev2` on a pipe.
const HERE: u64 = u64::MAX;

/// Most bytes one [`drain`] reads: an honest waker writes one byte per
/// sleep it ends, so more means a peer filling the pipe, and the pipe is
/// then left readable (the caller's next look costs a poll, not a loop
/// here).
pub const DRAIN_MAX: usize = 256;

/// A new wake-up pipe, `(read end, write end)`, both `O_NONBLOCK` and
/// close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)
}

/// Writes one byte to the write end `fd`, never waiting. `Ok` also when
/// the pipe is full (a wake-up is pending already).
pub fn wake(fd: impl AsFd) -> Result<()> {
    match rustix::io::pwritev2(fd, &[IoSlice::new(&[1])], HERE, ReadWriteFlags::NOWAIT) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads what is in the read end `fd`, at most [`DRAIN_MAX`] bytes,
/// never waiting; returns how many bytes it read (0: empty, or the write
/// ends all closed).
pub fn drain(fd: impl AsFd) -> Result<usize> {
    let fd = fd.as_fd();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < DRAIN_MAX {
        match rustix::io::preadv2(
            fd,
            &mut [IoSliceMut::new(&mut buf)],
            HERE,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(Errno::AGAIN) | Err(Errno::INTR) => break,
            Ok(n) => {
                got += n;
                if n < buf.len() {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Which end of a pipe an fd must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Opened read-only: polled and drained.
    Read,
    /// Opened write-only: written to wake.
    Write,
}

/// Whether `fd` is a FIFO (a pipe) opened as `end`, by `fstat` and
/// `F_GETFL` (nothing is read or written); `Ok(false)` for anything else.
pub fn is_end(fd: impl AsFd, end: End) -> Result<bool> {
    let fd = fd.as_fd();
    if FileType::from_raw_mode(fstat(fd)?.st_mode) != FileType::Fifo {
        return Ok(false);
    }
    let mode = fcntl_getfl(fd)? & OFlags::RWMODE;
    Ok(match end {
        End::Read => mode == OFlags::RDONLY,
        End::Write => mode == OFlags::WRONLY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::fcntl_setfl;

    #[test]
    fn neither_end_waits_whatever_the_shared_flags_say() {
        let (r, w) = pipe().unwrap();
        // Someone else holding the same file descriptions clears
        // O_NONBLOCK on both.
        fcntl_setfl(&r, OFlags::empty()).unwrap();
        fcntl_setfl(&w, OFlags::empty()).unwrap();
        // Empty: the drain reads nothing and returns.
        assert_eq!(drain(&r).unwrap(), 0);
        // Full: the wake-up returns (one is pending).
        let mut n = 0;
        loop {
            match rustix::io::pwritev2(
                &w,
                &[IoSlice::new(&[0; 4096])],
                HERE,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(_) => n += 1,
                Err(Errno::AGAIN) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(n > 0);
        wake(&w).unwrap();
        // A drain reads a bounded amount and leaves the rest.
        assert_eq!(drain(&r).unwrap(), DRAIN_MAX);
    }

    #[test]
    fn a_wake_up_is_one_byte_and_a_drain_takes_it() {
        let (r, w) = pipe().unwrap();
        wake(&w).unwrap();
        wake(&w).unwrap();
        assert_eq!(drain(&r).unwrap(), 2);
        assert_eq!(drain(&r).unwrap(), 0);
    }

    #[test]
    fn ends_are_told_apart_and_other_files_are_not_pipes() {
        let (r, w) = pipe().unwrap();
        assert!(is_end(&r, End::Read).unwrap());
        assert!(!is_end(&r, End::Write).unwrap());
        assert!(is_end(&w, End::Write).unwrap());
        assert!(!is_end(&w, End::Read).unwrap());
        let e = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        assert!(!is_end(&e, End::Read).unwrap());
        assert!(!is_end(&e, End::Write).unwrap());
    }
}

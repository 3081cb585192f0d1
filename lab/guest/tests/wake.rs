//! Wake-up fds shared with a peer, against the real kernel: `O_NONBLOCK`
//! belongs to the file description every holder shares, so a peer can
//! clear it; an eventfd's write then blocks at a full counter and cannot
//! be made non-blocking per call, while a pipe's reads and writes take
//! `RWF_NOWAIT` (but not once the pipe is opened again through
//! `/proc/self/fd`, as a named FIFO is). The library's user fences and
//! rings therefore wake through pipes (their behaviour against such a
//! peer is tested on the host: `tests/hostile_fences.rs` and the ring's
//! unit tests; the lab's stream tests run them between processes).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use rustix::fs::{fcntl_setfl, open, Mode, OFlags};
use rustix::io::{Errno, ReadWriteFlags};

/// The current file position, for `preadv2`/`pwritev2`.
const HERE: u64 = u64::MAX;

fn nowait_read(fd: impl AsFd) -> rustix::io::Result<usize> {
    let mut b = [0u8; 64];
    rustix::io::preadv2(
        fd,
        &mut [IoSliceMut::new(&mut b)],
        HERE,
        ReadWriteFlags::NOWAIT,
    )
}

fn nowait_write(fd: impl AsFd, bytes: &[u8]) -> rustix::io::Result<usize> {
    rustix::io::pwritev2(fd, &[IoSlice::new(bytes)], HERE, ReadWriteFlags::NOWAIT)
}

fn again(fd: &OwnedFd, mode: OFlags) -> OwnedFd {
    open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        mode | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

#[test]
fn a_pipe_takes_reads_and_writes_that_never_wait_whatever_its_flags() {
    let (r, w) = rustix::pipe::pipe().unwrap(); // blocking, as a peer may leave it
    assert_eq!(nowait_read(&r), Err(Errno::AGAIN));
    let mut n = 0;
    loop {
        match nowait_write(&w, &[0; 4096]) {
            Ok(_) => n += 1,
            Err(Errno::AGAIN) => break,
            Err(e) => panic!("pwritev2 RWF_NOWAIT on a pipe: {e}"),
        }
    }
    assert!(n > 0);
    assert_eq!(nowait_read(&r), Ok(64));
    // Opened again through /proc, the same pipe takes no RWF_NOWAIT.
    assert_eq!(
        nowait_read(again(&r, OFlags::RDONLY)),
        Err(Errno::OPNOTSUPP)
    );
    assert_eq!(
        nowait_write(again(&w, OFlags::WRONLY), &[1]),
        Err(Errno::OPNOTSUPP)
    );
}

#[test]
fn an_eventfd_write_blocks_once_a_peer_clears_the_flag_and_fills_the_counter() {
    let owner = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .unwrap();
    // Reads take RWF_NOWAIT, writes do not.
    assert_eq!(nowait_read(&owner), Err(Errno::AGAIN));
    assert_eq!(
        nowait_write(&owner, &1u64.to_ne_bytes()),
        Err(Errno::OPNOTSUPP)
    );
    // The peer's copy is the same file description.
    let peer = owner.try_clone().unwrap();
    fcntl_setfl(&peer, OFlags::empty()).unwrap();
    rustix::io::write(&peer, &(u64::MAX - 1).to_ne_bytes()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let w = owner.try_clone().unwrap();
    std::thread::spawn(move || {
        let r = rustix::io::write(&w, &1u64.to_ne_bytes());
        let _ = tx.send(r);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the owner's write returned though the counter was full and the flag cleared"
    );
    // Reading the counter lets it through.
    let mut b = [0u8; 8];
    rustix::io::read(&peer, &mut b).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Ok(8));
}

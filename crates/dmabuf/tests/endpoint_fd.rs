//! The fd endpoint and the copy engine, end to end on portable buffers:
//! pipes and sockets as devices.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use dmabuf::endpoint::{DataPath, Direction, Endpoint, FdEndpoint, TransferOptions};
use dmabuf::{Allocate, Buffer, Errno, ErrorKind, Fence, FenceStatus, Portable, Usage, UserFence};
use rustix::fs::OFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::pipe::PipeFlags;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap()
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

/// A byte pattern that differs per position and per `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

fn filled(size: u64, seed: u8) -> Buffer {
    let buf = Portable.allocate(size, &format!("src-{seed}")).unwrap();
    let data = pattern(size as usize, seed);
    buf.map().unwrap().write().unwrap().copy_from_slice(&data);
    buf
}

fn contents(buf: &Buffer) -> Vec<u8> {
    buf.map().unwrap().read().unwrap().to_vec()
}

fn opts_timeout(ms: u64) -> TransferOptions {
    TransferOptions {
        timeout: Duration::from_millis(ms),
        ..Default::default()
    }
}

/// Fills the pipe whose write end is `w` until it would block.
fn fill_pipe(w: &OwnedFd) -> usize {
    let old = rustix::fs::fcntl_getfl(w).unwrap();
    rustix::fs::fcntl_setfl(w, old | OFlags::NONBLOCK).unwrap();
    let chunk = [0x5au8; 4096];
    let mut n = 0;
    loop {
        match rustix::io::write(w, &chunk) {
            Ok(k) => n += k,
            Err(Errno::AGAIN) => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    rustix::fs::fcntl_setfl(w, old).unwrap();
    n
}

/// Reads everything available now (non-blocking).
fn drain(r: &OwnedFd) -> Vec<u8> {
    let old = rustix::fs::fcntl_getfl(r).unwrap();
    rustix::fs::fcntl_setfl(r, old | OFlags::NONBLOCK).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match rustix::io::read(r, &mut chunk) {
            Ok(0) | Err(Errno::AGAIN) => break,
            Ok(k) => out.extend_from_slice(&chunk[..k]),
            Err(e) => panic!("drain: {e}"),
        }
    }
    rustix::fs::fcntl_setfl(r, old).unwrap();
    out
}

fn round_trip(a: OwnedFd, b: OwnedFd, size: u64) {
    let mut tx = FdEndpoint::new(a, Direction::ToDevice).unwrap();
    let mut rx = FdEndpoint::new(b, Direction::FromDevice).unwrap();
    assert_eq!(
        tx.data_path(),
        DataPath::Copy("plain file descriptor".into())
    );
    assert_eq!(tx.direction(), Direction::ToDevice);
    assert_eq!(rx.direction(), Direction::FromDevice);
    let src = filled(size, 7);
    let dst = Portable.allocate(size, "dst").unwrap();
    let sa = tx.attach(&src).unwrap();
    let da = rx.attach(&dst).unwrap();
    // Larger than a pipe's or socket's buffer: both workers must run at
    // the same time.
    let fr = rx.transfer(&da, size, TransferOptions::default()).unwrap();
    let ft = tx.transfer(&sa, size, TransferOptions::default()).unwrap();
    ft.wait(WAIT).unwrap();
    fr.wait(WAIT).unwrap();
    assert_eq!(contents(&dst), pattern(size as usize, 7));
}

#[test]
fn pipe_round_trip_is_byte_exact() {
    let (r, w) = pipe();
    round_trip(w, r, 1 << 20);
}

#[test]
fn socketpair_round_trip_is_byte_exact() {
    let (a, b) = socketpair();
    round_trip(a, b, 3 << 20);
}

#[test]
fn partial_lengths_move_only_that_many_bytes() {
    let (a, b) = socketpair();
    let mut tx = FdEndpoint::new(a, Direction::ToDevice).unwrap();
    let src = filled(8192, 3);
    let at = tx.attach(&src).unwrap();
    tx.transfer(&at, 100, TransferOptions::default())
        .unwrap()
        .wait(WAIT)
        .unwrap();
    let got = drain(&b);
    assert_eq!(got, pattern(8192, 3)[..100].to_vec());
}

#[test]
fn fences_complete_in_queue_order_and_data_follows_it() {
    let (r, w) = pipe();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let bufs: Vec<Buffer> = (0..6).map(|i| filled(16384, 10 + i)).collect();
    let atts: Vec<_> = bufs.iter().map(|b| tx.attach(b).unwrap()).collect();
    let fences: Vec<Fence> = atts
        .iter()
        .map(|a| tx.transfer(a, 16384, TransferOptions::default()).unwrap())
        .collect();
    // The reader drains slowly, so transfers are still queued while we
    // watch the order of completions.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 4096];
        while all.len() < 6 * 16384 {
            let n = rustix::io::read(&r, &mut chunk).unwrap();
            assert!(n > 0);
            all.extend_from_slice(&chunk[..n]);
            std::thread::sleep(Duration::from_micros(200));
        }
        all
    });
    let start = Instant::now();
    while !fences.iter().all(|f| f.is_signalled()) {
        // A later fence never signals before an earlier one.
        let states: Vec<bool> = fences.iter().map(|f| f.is_signalled()).collect();
        for w in states.windows(2) {
            assert!(w[0] || !w[1], "out of order: {states:?}");
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::yield_now();
    }
    let stamps: Vec<u64> = fences
        .iter()
        .map(|f| match f {
            Fence::User(u) => u.timestamp_ns().unwrap(),
            f => panic!("copy path gives user fences, got {}", f.describe()),
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    let seqnos: Vec<u64> = fences
        .iter()
        .map(|f| match f {
            Fence::User(u) => u.seqno(),
            _ => unreachable!(),
        })
        .collect();
    assert!(seqnos.windows(2).all(|w| w[0] < w[1]), "{seqnos:?}");
    let all = reader.join().unwrap();
    for (i, part) in all.chunks(16384).enumerate() {
        assert_eq!(part, &pattern(16384, 10 + i as u8)[..], "transfer {i}");
    }
}

#[test]
fn write_to_a_closed_pipe_fails_the_fence_with_epipe() {
    let (r, w) = pipe();
    drop(r);
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let src = filled(4096, 1);
    let a = tx.attach(&src).unwrap();
    let f = tx.transfer(&a, 4096, TransferOptions::default()).unwrap();
    let e = f.wait(WAIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FenceFailed);
    assert_eq!(e.errno(), Some(Errno::PIPE));
    assert_eq!(f.status(), FenceStatus::Error(Errno::PIPE));
    let full = tx.failure(&f).expect("the full error is kept");
    assert_eq!(full.errno(), Some(Errno::PIPE));
    assert_eq!(full.operation(), "transfer");
    assert!(
        full.cause().contains("write failed after 0 of 4096 bytes"),
        "{full}"
    );
    assert!(full.object().contains("pipe fd"), "{full}");
    // A failed transfer does not poison the buffer: its fence is done.
    assert_eq!(contents(&src)[..8], pattern(4096, 1)[..8]);
    // The next transfer fails on its own fence too, and the endpoint
    // keeps working.
    let f2 = tx.transfer(&a, 10, TransferOptions::default()).unwrap();
    assert_eq!(f2.wait(WAIT).unwrap_err().errno(), Some(Errno::PIPE));
}

#[test]
fn end_of_file_before_len_fails_with_enodata() {
    let (r, w) = pipe();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let dst = Portable.allocate(4096, "dst").unwrap();
    let a = rx.attach(&dst).unwrap();
    let f = rx.transfer(&a, 100, TransferOptions::default()).unwrap();
    rustix::io::write(&w, b"only ten!!").unwrap();
    drop(w);
    let e = f.wait(WAIT).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::NODATA));
    let full = rx.failure(&f).unwrap();
    assert!(
        full.cause().contains("end of file after 10 of 100 bytes"),
        "{full}"
    );
}

#[test]
fn busy_after_timeout_names_the_blocking_fence() {
    let (_r, w) = pipe();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let src = filled(4096, 2);
    let a = tx.attach(&src).unwrap();
    let writer = UserFence::new().unwrap();
    src.add_fence(writer.clone().into(), Usage::Write).unwrap();
    let t0 = Instant::now();
    let e = tx.transfer(&a, 4096, opts_timeout(150)).unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert_eq!(e.errno(), Some(Errno::BUSY));
    let name = format!("user fence {}#{}", writer.context(), writer.seqno());
    assert!(e.cause().contains(&name), "{e}");
    assert!(e.cause().contains("150ms"), "{e}");
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(tx.pending(), 0, "a refused transfer is not queued");
    // Once the writer signals, the same transfer goes through.
    writer.signal().unwrap();
    tx.transfer(&a, 4096, opts_timeout(150))
        .unwrap()
        .wait(WAIT)
        .unwrap();
}

#[test]
fn readers_do_not_block_a_to_device_transfer_but_block_a_from_device_one() {
    let (r, w) = pipe();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let buf = filled(4096, 4);
    let reader = UserFence::new().unwrap();
    buf.add_fence(reader.clone().into(), Usage::Read).unwrap();
    let at = tx.attach(&buf).unwrap();
    // The device reads too: readers share.
    tx.transfer(&at, 64, opts_timeout(100))
        .unwrap()
        .wait(WAIT)
        .unwrap();
    // The device would write: it waits for the reader.
    let ar = rx.attach(&buf).unwrap();
    let e = rx.transfer(&ar, 64, opts_timeout(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains("user fence"), "{e}");
    reader.signal().unwrap();
    rx.transfer(&ar, 64, opts_timeout(100))
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(contents(&buf)[..64], pattern(4096, 4)[..64]);
}

#[test]
fn nonblocking_fails_at_once() {
    let (_r, w) = pipe();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let src = filled(4096, 5);
    let a = tx.attach(&src).unwrap();
    let writer = UserFence::new().unwrap();
    src.add_fence(writer.clone().into(), Usage::Write).unwrap();
    let t0 = Instant::now();
    let e = tx
        .transfer(
            &a,
            4096,
            TransferOptions {
                nonblocking: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains("non-blocking"), "{e}");
    assert_eq!(tx.pending(), 0);
}

#[test]
fn transfer_waits_for_an_open_cpu_write_window() {
    let (r, w) = pipe();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let buf = Portable.allocate(4096, "window").unwrap();
    let a = tx.attach(&buf).unwrap();
    let map = buf.map().unwrap();
    let mut win = map.write().unwrap();
    win.write_at(0, b"early").unwrap();
    // With a short timeout the window is named as the blocker.
    let e = tx.transfer(&a, 5, opts_timeout(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains("open CPU write window"), "{e}");
    // With a long one the transfer waits for the window to close, and
    // sends what was written in it last: it returns only after the window
    // was closed (a flag set just before the close, not a timing).
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = closed.clone();
    let worker = std::thread::spawn(move || {
        let f = tx.transfer(&a, 5, TransferOptions::default());
        (f, seen.load(std::sync::atomic::Ordering::SeqCst), tx)
    });
    std::thread::sleep(Duration::from_millis(300));
    win.write_at(0, b"final").unwrap();
    closed.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(win);
    let (f, after_close, _tx) = worker.join().unwrap();
    f.unwrap().wait(WAIT).unwrap();
    assert!(
        after_close,
        "the transfer was queued while the window was open"
    );
    assert_eq!(drain(&r), b"final");
}

#[test]
fn cpu_window_waits_for_a_queued_from_device_transfer() {
    let (r, w) = pipe();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let buf = Portable.allocate(4096, "landing").unwrap();
    let a = rx.attach(&buf).unwrap();
    let f = rx.transfer(&a, 6, TransferOptions::default()).unwrap();
    let map = buf.map().unwrap();
    // The transfer's fence is in the reservation as a writer.
    assert_eq!(buf.reservation().fences_for(dmabuf::Access::Read).len(), 1);
    let e = map
        .window::<dmabuf::mapping::ReadOnly>(0..6, Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains(&f.describe()), "{e}");
    rustix::io::write(&w, b"landed").unwrap();
    f.wait(WAIT).unwrap();
    assert_eq!(&map.read().unwrap().to_vec()[..6], b"landed");
}

#[test]
fn detach_cancels_pending_transfers() {
    let (r, w) = pipe();
    let filler = fill_pipe(&w);
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let buf = filled(8192, 6);
    let other = filled(4096, 8);
    let a = tx.attach(&buf).unwrap();
    let b = tx.attach(&other).unwrap();
    // The first blocks on the full pipe; the others wait behind it.
    let fences: Vec<Fence> = (0..3)
        .map(|_| tx.transfer(&a, 8192, TransferOptions::default()).unwrap())
        .collect();
    let fb = tx.transfer(&b, 4096, TransferOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(fences.iter().all(|f| !f.is_signalled()));
    tx.detach(&a).unwrap();
    for f in &fences {
        let e = f.wait(WAIT).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert_eq!(e.errno(), Some(Errno::CANCELED));
    }
    let why = tx.failure(&fences[0]).unwrap();
    assert!(why.cause().contains("detached"), "{why}");
    // The pipe holds the filler; the cancelled transfer wrote nothing
    // (the first chunk never fit), and the other attachment still runs.
    let mut got = Vec::new();
    while got.len() < filler + 4096 {
        got.extend(drain(&r));
    }
    fb.wait(WAIT).unwrap();
    got.extend(drain(&r));
    assert_eq!(got.len(), filler + 4096);
    assert!(got[..filler].iter().all(|&x| x == 0x5a));
    assert_eq!(got[filler..], pattern(4096, 8)[..]);
    // The detached attachment is gone.
    let e = tx.transfer(&a, 1, TransferOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.errno(), Some(Errno::PERM));
    assert!(e.cause().contains("not attached"), "{e}");
    let e = tx.detach(&a).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::PERM));
    assert_eq!(e.operation(), "detach");
}

#[test]
fn dropping_the_endpoint_cancels_and_joins() {
    let (_r, w) = pipe();
    fill_pipe(&w);
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let buf = filled(4096, 9);
    let a = tx.attach(&buf).unwrap();
    let f1 = tx.transfer(&a, 4096, TransferOptions::default()).unwrap();
    let f2 = tx.transfer(&a, 4096, TransferOptions::default()).unwrap();
    let t0 = Instant::now();
    drop(tx);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(f1.status(), FenceStatus::Error(Errno::CANCELED));
    assert_eq!(f2.status(), FenceStatus::Error(Errno::CANCELED));
    // Nothing holds the buffer any more.
    drop(buf.map().unwrap().write().unwrap());
}

#[test]
fn bad_inputs_are_refused_with_their_reason() {
    let (r, w) = pipe();
    let mut tx = FdEndpoint::new(w.try_clone().unwrap(), Direction::ToDevice).unwrap();
    let buf = filled(4096, 11);
    let a = tx.attach(&buf).unwrap();

    let e = tx.transfer(&a, 0, TransferOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(e.errno(), Some(Errno::INVAL));
    assert!(e.cause().contains("length 0"), "{e}");

    let e = tx
        .transfer(&a, 4097, TransferOptions::default())
        .unwrap_err();
    assert_eq!(e.errno(), Some(Errno::INVAL));
    assert!(
        e.cause()
            .contains("length 4097 is past the end of the buffer (4096 bytes)"),
        "{e}"
    );

    let e = tx
        .transfer(
            &a,
            1,
            TransferOptions {
                flags: 0x4,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.errno(), Some(Errno::INVAL));
    assert!(e.cause().contains("unknown transfer flags 0x4"), "{e}");

    // Attached twice.
    let e = tx.attach(&buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains("already attached"), "{e}");

    // An attachment of another endpoint.
    let mut other = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let buf2 = filled(4096, 12);
    let a2 = other.attach(&buf2).unwrap();
    let e = tx.transfer(&a2, 1, TransferOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.cause().contains("is not attached to this endpoint"),
        "{e}"
    );
    assert!(e.object().contains(&buf2.describe()), "{e}");

    // The same buffer attached to another endpoint: that attachment is
    // still not this endpoint's.
    let a3 = other.attach(&buf).unwrap();
    let e = tx.transfer(&a3, 1, TransferOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_ne!(a3.id, a.id);

    // A read-only buffer cannot be written by a from-device endpoint.
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let ro = read_only_copy(&buf);
    assert!(!ro.is_writable());
    let e = rx.attach(&ro).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert_eq!(e.errno(), Some(Errno::ACCESS));
    assert!(e.cause().contains("read-only"), "{e}");
    // ... but it can be sent (by an endpoint that does not hold the same
    // memory already: every handle on one memory is the same buffer).
    let e = tx.attach(&ro).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let mut tx2 = FdEndpoint::new(pipe().1, Direction::ToDevice).unwrap();
    tx2.attach(&ro).unwrap();

    // An fd open the wrong way.
    let (r2, w2) = pipe();
    let e = FdEndpoint::new(r2, Direction::ToDevice).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::BADF));
    assert!(e.cause().contains("not open for writing"), "{e}");
    let e = FdEndpoint::new(w2, Direction::FromDevice).unwrap_err();
    assert!(e.cause().contains("not open for reading"), "{e}");
}

/// A read-only handle on the same memfd.
fn read_only_copy(buf: &Buffer) -> Buffer {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", buf.fd().as_fd().as_raw_fd());
    let fd = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    Buffer::from_memfd(fd, "ro").unwrap()
}

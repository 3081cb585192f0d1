//! The reservation's ordering rules through the public API: usage-aware
//! replacement, windows against endpoint transfers (wait and publish in
//! one step), and endpoints that never hang on drop. Portable buffers;
//! the dma-buf side is in the lab (`lab/guest/tests/ordering.rs`).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmabuf::endpoint::{Direction, Endpoint, FdEndpoint, TransferOptions};
use dmabuf::mapping::{ReadOnly, WriteOnly};
use dmabuf::{
    Access, Allocate, Buffer, Errno, ErrorKind, Fence, FenceContext, FenceStatus, Portable, Usage,
    UserFence,
};
use rustix::pipe::PipeFlags;

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap()
}

fn buffer(size: u64, name: &str) -> Buffer {
    Portable.allocate(size, name).unwrap()
}

fn opts_ms(ms: u64) -> TransferOptions {
    TransferOptions {
        timeout: Duration::from_millis(ms),
        ..Default::default()
    }
}

#[test]
fn a_later_read_fence_of_a_timeline_keeps_readers_waiting_for_its_write() {
    let b = buffer(4096, "usage");
    let ctx = FenceContext::new("gpu");
    let write = ctx.next_fence().unwrap();
    let read = ctx.next_fence().unwrap();
    b.add_fence(write.clone().into(), Usage::Write).unwrap();
    b.add_fence(read.clone().into(), Usage::Read).unwrap();
    let m = b.map().unwrap();
    let e = m
        .window::<ReadOnly>(0..4096, Some(Duration::from_millis(30)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(
        e.cause()
            .contains(&format!("user fence {}#{}", write.context(), write.seqno())),
        "{e}"
    );
    write.signal().unwrap();
    m.window::<ReadOnly>(0..4096, Some(Duration::ZERO)).unwrap();
}

#[test]
fn a_transfer_blocked_by_a_window_publishes_nothing() {
    let (_r, w) = pipe();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let b = buffer(4096, "blocked");
    let a = tx.attach(&b).unwrap();
    let m = b.map().unwrap();
    let win = m.write().unwrap();
    let e = tx.transfer(&a, 4096, opts_ms(50)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains("open CPU write window"), "{e}");
    assert!(b.reservation().is_empty(), "no fence was published");
    assert_eq!(tx.pending(), 0);
    drop(win);
}

/// A read window waits for a from-device transfer in flight, and sees the
/// bytes the transfer left.
#[test]
fn a_window_waits_for_a_published_transfer_and_sees_its_bytes() {
    let (r, w) = pipe();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let b = buffer(4096, "in-flight");
    let a = rx.attach(&b).unwrap();
    let f = rx.transfer(&a, 5, TransferOptions::default()).unwrap();
    assert_eq!(f.status(), FenceStatus::Active, "no data yet");
    let m = b.map().unwrap();
    let e = m
        .window::<ReadOnly>(0..4096, Some(Duration::from_millis(50)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.cause().contains(&f.describe()), "{e} / {}", f.describe());
    rustix::io::write(&w, b"hello").unwrap();
    let win = m
        .window::<ReadOnly>(0..4096, Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(&win.to_vec()[..5], b"hello");
    assert_eq!(f.status(), FenceStatus::Signalled);
}

/// Threads race windows against transfers on one buffer. Every write
/// window fills the buffer with its own byte and checks, before closing,
/// that no transfer wrote into it meanwhile; every transfer either is
/// refused (Busy, nothing queued) or completes — never fails in the
/// worker because a window slipped in after it was queued.
#[test]
fn windows_and_transfers_racing_never_overlap() {
    let (r, w) = pipe();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    let b = buffer(4096, "race");
    let a = rx.attach(&b).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let torn = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut cpu = Vec::new();
    for t in 0..3u8 {
        let (b, stop, torn, opened) = (b.clone(), stop.clone(), torn.clone(), opened.clone());
        cpu.push(std::thread::spawn(move || {
            let m = b.map().unwrap();
            let mark = 0xA0 + t;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut win) = m.window::<WriteOnly>(0..4096, Some(Duration::from_millis(20)))
                else {
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                win.fill(mark);
                std::thread::yield_now();
                if win.bytes().iter().any(|x| x != mark) {
                    torn.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The "device": feeds the pipe so that queued transfers complete.
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let page = [0x11u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let _ = rustix::io::write(&w, &page);
            }
            w
        })
    };
    let mut done = 0;
    let mut refused = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        match rx.transfer(&a, 4096, opts_ms(20)) {
            Ok(f) => {
                f.wait(Some(Duration::from_secs(10)))
                    .unwrap_or_else(|e| panic!("{e} / {:?}", rx.failure(&f)));
                done += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in cpu {
        t.join().unwrap();
    }
    drop(rx);
    drop(feeder.join().unwrap());
    assert_eq!(
        torn.load(Ordering::Relaxed),
        0,
        "a transfer wrote into an open window"
    );
    assert!(done > 0, "some transfers ran ({refused} refused)");
    assert!(opened.load(Ordering::Relaxed) > 0, "some windows opened");
}

/// `/dev/ptmx` with no one on the other side: `poll` says writable, and a
/// 1 MiB `write` blocks for ever — the shape of a FunctionFS IN transfer
/// that no host reads. Shutting the endpoint down must not wait for ever:
/// after its timeout the blocked call is interrupted (`SIGURG`, `EINTR`),
/// the transfer's fence fails with `ECANCELED`, and the buffer is free.
#[test]
fn an_endpoint_whose_worker_is_stuck_in_a_write_is_dropped_in_bounded_time() {
    let ptmx: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .expect("/dev/ptmx")
        .into();
    let mut tx = FdEndpoint::new(ptmx, Direction::ToDevice).unwrap();
    let b = buffer(1 << 20, "stuck");
    let a = tx.attach(&b).unwrap();
    let f = tx
        .transfer(&a, 1 << 20, TransferOptions::default())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(f.status(), FenceStatus::Active, "the worker is blocked");
    let t0 = Instant::now();
    tx.shutdown(Duration::from_millis(300))
        .expect("the blocked write was interrupted and the worker stopped");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(f.status(), FenceStatus::Error(Errno::CANCELED));
    let t0 = Instant::now();
    drop(tx);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // The transfer is over: writers are not held up any more.
    b.map()
        .unwrap()
        .window::<WriteOnly>(0..4096, Some(Duration::from_millis(20)))
        .unwrap();
}

#[test]
fn a_received_fence_cannot_make_a_local_write_fence_disappear() {
    let b = buffer(4096, "forged");
    let ctx = FenceContext::new("local");
    let mine = ctx.next_fence().unwrap();
    let later = ctx.next_fence().unwrap();
    // What a peer would send: our context, a higher sequence number.
    let peer = UserFence::from_fds(
        later.state_fd().try_clone_to_owned().unwrap(),
        later.wake_fd().try_clone_to_owned().unwrap(),
    )
    .unwrap();
    b.add_fence(mine.clone().into(), Usage::Write).unwrap();
    b.add_fence(peer.into(), Usage::Read).unwrap();
    let waiting = b.reservation().fences_for(Access::Read);
    assert_eq!(waiting.len(), 1);
    assert!(matches!(&waiting[0], Fence::User(u) if u.same_as(&mine)));
}

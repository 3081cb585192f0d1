//! User fences against a peer that writes their pages and wake-up pipes
//! at any moment: no panic, no spin, no forgery, no stall, no cross-talk.

mod hostile_peer;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use dmabuf::fence::RECEIVED_CONTEXT_BIT;
use dmabuf::share::Message;
use dmabuf::{Errno, ErrorKind, Fence, FenceContext, FenceStatus, UserFence};
use hostile_peer::*;

#[test]
fn failed_with_an_impossible_errno_is_a_corrupt_page_not_a_panic() {
    for errno in [0u64, 4096, 5000, u32::MAX as u64] {
        let fake = FakeFence::new(FAILED | (errno << 32), 9, 1);
        // Through a channel, as a peer would send it.
        let (ch, raw) = pair();
        raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2), &fake.fds())
            .unwrap();
        let Message::Fence { fence, .. } = ch.recv(T).unwrap() else {
            panic!("not a fence")
        };
        assert_eq!(fence.status(), FenceStatus::Error(Errno::PROTO));
        let e = fence.wait(Some(Duration::from_secs(1))).unwrap_err();
        assert_err(&e, ErrorKind::FenceFailed, "state page is corrupt");
        assert!(e.to_string().contains(&format!("errno {errno}")), "{e}");
        assert_eq!(e.errno(), Some(Errno::PROTO));
    }
}

#[test]
fn a_page_scribbled_during_a_wait_fails_the_wait_at_once() {
    for (word, what) in [
        (FAILED | (5000 << 32), "outside 1..=4095"),
        (0x77, "unknown state word"),
        (PENDING | (1 << 40), "unknown state word"),
    ] {
        let fake = FakeFence::pending();
        let r = fake.import();
        let t0 = Instant::now();
        let waiter = std::thread::spawn(move || r.wait(Some(Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(30));
        fake.set_state(word);
        let e = bounded(Duration::from_secs(5), move || waiter.join().unwrap()).unwrap_err();
        within(t0, Duration::from_secs(2));
        assert_err(&e, ErrorKind::FenceFailed, what);
    }
    // The magic overwritten.
    let fake = FakeFence::pending();
    let r = fake.import();
    fake.set(0, 0);
    assert_eq!(r.status(), FenceStatus::Error(Errno::PROTO));
    assert!(r.failure_note().unwrap().contains("magic"));
}

#[test]
fn final_states_are_latched_here() {
    let fake = FakeFence::pending();
    let r = fake.import();
    fake.set(2, 12345);
    fake.set_state(SIGNALLED);
    assert_eq!(r.status(), FenceStatus::Signalled);
    assert_eq!(r.timestamp_ns(), Some(12345));
    // Flipped back to pending, then to failed: this process has seen it
    // signalled and stays so.
    fake.set_state(PENDING);
    assert_eq!(r.status(), FenceStatus::Signalled);
    fake.set_state(FAILED | (5 << 32));
    fake.set(2, 1);
    r.wait(Some(Duration::ZERO)).unwrap();
    assert_eq!(r.timestamp_ns(), Some(12345));

    let fake = FakeFence::pending();
    let r = fake.import();
    fake.set_state(FAILED | (5 << 32));
    assert_eq!(r.status(), FenceStatus::Error(Errno::IO));
    fake.set_state(SIGNALLED);
    assert_eq!(r.status(), FenceStatus::Error(Errno::IO));
}

#[test]
fn a_wake_up_pipe_written_or_hung_up_while_pending_makes_no_wait_spin() {
    // Written by someone else, or hung up (every write end closed: the
    // owner's process gone): readable from now on, the fence still
    // pending.
    let poked = FakeFence::pending();
    poked.poke();
    let hung_up = FakeFence::pending();
    hung_up.hang_up();
    for fake in [poked, hung_up] {
        let r = fake.import();
        let (e, cpu, wall) = bounded(Duration::from_secs(5), move || {
            let (c0, t0) = (thread_cpu(), Instant::now());
            let e = r.wait(Some(Duration::from_millis(400))).unwrap_err();
            (e, thread_cpu() - c0, t0.elapsed())
        });
        assert_err(&e, ErrorKind::TimedOut, "did not signal within 400ms");
        assert!(wall < Duration::from_secs(2), "{wall:?}");
        assert!(
            cpu < wall / 4,
            "blocking wait used {cpu:?} of CPU in {wall:?}"
        );

        // Async: the same pipe, awaited.
        let r = fake.import();
        let (res, cpu, wall) = bounded(Duration::from_secs(5), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (c0, t0) = (thread_cpu(), Instant::now());
            let res = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(400), Fence::from(r).wait_async()).await
            });
            (res.is_err(), thread_cpu() - c0, t0.elapsed())
        });
        assert!(res, "the async wait ended though nothing signalled");
        assert!(cpu < wall / 4, "async wait used {cpu:?} of CPU in {wall:?}");
    }
}

#[test]
fn a_peer_bumping_the_futex_cannot_make_a_wait_spin() {
    let fake = FakeFence::pending();
    let r = fake.import();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let state = fake.state.try_clone().unwrap();
    let noise = std::thread::spawn(move || {
        let mut v = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            v = v.wrapping_add(1);
            rustix::io::pwrite(&state, &v.to_le_bytes(), 40).unwrap();
        }
    });
    let (e, cpu, wall) = bounded(Duration::from_secs(5), move || {
        let (c0, t0) = (thread_cpu(), Instant::now());
        let e = r.wait(Some(Duration::from_millis(400))).unwrap_err();
        (e, thread_cpu() - c0, t0.elapsed())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noise.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(cpu < wall / 2, "wait used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_signaller_stuck_half_way_is_resolved_as_failed() {
    let fake = FakeFence::new(SIGNALLING | (4242 << 32), 7, 3);
    let r = fake.import();
    let t0 = Instant::now();
    let e = bounded(Duration::from_secs(5), move || {
        r.wait(Some(Duration::from_secs(10))).unwrap_err()
    });
    let took = within(t0, Duration::from_secs(3));
    assert!(took >= dmabuf::fence::STUCK_SIGNALLING, "{took:?}");
    assert_err(&e, ErrorKind::FenceFailed, "pid 4242");
    assert!(e.to_string().contains("stopped half-way"), "{e}");
    assert_eq!(e.errno(), Some(Errno::OWNERDEAD));
    // Async too.
    let fake = FakeFence::new(SIGNALLING | (4242 << 32), 7, 3);
    let r = fake.import();
    let res = bounded(Duration::from_secs(5), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
            .block_on(r.wait_async())
    });
    assert_eq!(res.unwrap_err().errno(), Some(Errno::OWNERDEAD));
}

#[test]
fn a_wake_up_lost_to_someone_reading_the_counter_is_not_a_hang() {
    let f = UserFence::new().unwrap();
    let r = UserFence::from_fds(
        f.state_fd().try_clone_to_owned().unwrap(),
        f.wake_fd().try_clone_to_owned().unwrap(),
    )
    .unwrap();
    let r2 = r.clone();
    let waiter = std::thread::spawn(move || r2.wait(Some(Duration::from_secs(10))));
    let a = Fence::from(
        UserFence::from_fds(
            f.state_fd().try_clone_to_owned().unwrap(),
            f.wake_fd().try_clone_to_owned().unwrap(),
        )
        .unwrap(),
    );
    let async_waiter = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
            .block_on(a.wait_async())
    });
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    f.signal().unwrap();
    // Someone drains the eventfd right away: readiness is gone.
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(f.wake_fd(), &mut buf);
    bounded(Duration::from_secs(5), move || waiter.join().unwrap()).unwrap();
    bounded(Duration::from_secs(5), move || async_waiter.join().unwrap()).unwrap();
    within(t0, Duration::from_secs(2));
}

#[test]
fn a_receiver_that_blocks_and_fills_the_wake_up_fd_cannot_stall_the_signaller() {
    // A receiver holds the same file description as the owner: it can
    // clear O_NONBLOCK on it and fill it, so that a plain write would
    // block until someone reads (and the receiver never will).
    let f = UserFence::new().unwrap();
    let theirs = f.wake_fd().try_clone_to_owned().unwrap();
    let r = UserFence::from_fds(
        f.state_fd().try_clone_to_owned().unwrap(),
        theirs.try_clone().unwrap(),
    )
    .unwrap();
    let _filled = fill(theirs.as_fd());
    make_blocking(theirs.as_fd());
    let g = f.clone();
    bounded(Duration::from_secs(5), move || g.signal()).unwrap();
    assert_eq!(r.status(), FenceStatus::Signalled);
    // Failing a fence wakes the same way.
    let f = UserFence::new().unwrap();
    let theirs = f.wake_fd().try_clone_to_owned().unwrap();
    let _filled = fill(theirs.as_fd());
    make_blocking(theirs.as_fd());
    bounded(Duration::from_secs(5), move || f.fail(Errno::IO)).unwrap();
}

#[test]
fn receivers_cannot_write_a_page_made_here() {
    let f = UserFence::new().unwrap();
    let path = format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        f.state_fd().as_raw_fd()
    });
    // Even reopened read-write, the memfd refuses writes (F_SEAL_FUTURE_WRITE).
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let e = rustix::io::pwrite(reopened.as_fd(), &[0u8; 8], 8).unwrap_err();
    assert_eq!(e, Errno::PERM);
    assert_eq!(f.status(), FenceStatus::Active);
    f.signal().unwrap();
}

#[test]
fn peer_gone_is_decided_locally_and_the_page_is_untouched() {
    let f = UserFence::new().unwrap();
    let (a1, b1) = dmabuf::share::Channel::pair().unwrap();
    let (a2, b2) = dmabuf::share::Channel::pair().unwrap();
    for a in [&a1, &a2] {
        a.send(&Message::Fence {
            tag: 1,
            fence: f.clone().into(),
        })
        .unwrap();
    }
    let Message::Fence { fence: r1, .. } = b1.recv(T).unwrap() else {
        panic!()
    };
    let Message::Fence { fence: r2, .. } = b2.recv(T).unwrap() else {
        panic!()
    };
    // One receiver gives up on its peer.
    b1.fail_received_fences();
    assert_eq!(r1.status(), FenceStatus::Error(Errno::CONNRESET));
    let e = r1.wait(Some(Duration::ZERO)).unwrap_err();
    assert!(e.to_string().contains("in this process only"), "{e}");
    // Nobody else is affected: not the other receiver, not the owner.
    assert_eq!(r2.status(), FenceStatus::Active);
    assert_eq!(f.status(), FenceStatus::Active);
    f.signal().unwrap();
    r2.wait(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(r1.status(), FenceStatus::Error(Errno::CONNRESET));
}

#[test]
fn a_forged_context_cannot_replace_a_local_fence() {
    let ctx = FenceContext::new("local");
    let a = ctx.next_fence().unwrap();
    // The peer claims our context with a far later sequence number, and
    // says it signalled.
    let fake = FakeFence::new(SIGNALLED, ctx.id(), 1000);
    let r = fake.import();
    assert_ne!(r.context(), ctx.id());
    assert_eq!(r.context() & !RECEIVED_CONTEXT_BIT, ctx.id());
    assert_eq!(r.owned_context(), None);
    for m in [
        Fence::merge([Fence::from(a.clone()), Fence::from(r.clone())]).unwrap(),
        Fence::merge([Fence::from(r.clone()), Fence::from(a.clone())]).unwrap(),
    ] {
        // The local pending fence survives the merge.
        assert_eq!(m.status(), FenceStatus::Active, "{m:?}");
    }
    // A pending forged fence is kept beside it, not instead of it.
    let fake = FakeFence::new(PENDING, ctx.id(), 1000);
    let r = fake.import();
    let m = Fence::merge([Fence::from(a.clone()), Fence::from(r.clone())]).unwrap();
    match &m {
        Fence::All(v) => assert_eq!(v.len(), 2),
        other => panic!("expected both fences, got {other:?}"),
    }
    // The same received object twice is one fence.
    let m = Fence::merge([Fence::from(r.clone()), Fence::from(r.clone())]).unwrap();
    assert!(matches!(m, Fence::User(_)), "{m:?}");
    a.signal().unwrap();
}

#[test]
fn context_ids_are_random_and_never_marked_received() {
    let pid = std::process::id() as u64;
    let ids: std::collections::HashSet<u64> =
        (0..1000).map(|_| FenceContext::new("x").id()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(ids
        .iter()
        .all(|id| id & RECEIVED_CONTEXT_BIT == 0 && *id != 0));
    // Not "pid << 32 | counter".
    assert!(ids.iter().filter(|id| *id >> 32 == pid).count() < 2);
}

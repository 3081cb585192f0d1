//! User fences and the `Fence` type: ordering, errors, timeouts, merge,
//! cross-process waits and async.

use std::time::{Duration, Instant};

use dmabuf::{Errno, ErrorKind, Fence, FenceContext, FenceStatus, UserFence};

#[test]
fn a_fence_signals_once_with_a_timestamp() {
    let f = UserFence::new().unwrap();
    assert_eq!(f.status(), FenceStatus::Active);
    assert_eq!(f.timestamp_ns(), None);
    let before = dmabuf::fence::monotonic_ns();
    f.signal().unwrap();
    let ts = f.timestamp_ns().unwrap();
    assert!(ts >= before && ts <= dmabuf::fence::monotonic_ns());
    let e = f.signal().unwrap_err();
    assert!(e.to_string().contains("already signalled"), "{e}");
    assert_eq!(f.status(), FenceStatus::Signalled);
}

#[test]
fn errors_travel_to_waiters() {
    let f = UserFence::new().unwrap();
    f.fail(Errno::IO).unwrap();
    assert_eq!(f.status(), FenceStatus::Error(Errno::IO));
    let e = f.wait(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FenceFailed);
    assert_eq!(e.errno(), Some(Errno::IO));
    assert!(e.to_string().contains("signalled with error EIO"), "{e}");
}

#[test]
fn waits_time_out() {
    let f = UserFence::new().unwrap();
    let start = Instant::now();
    let e = f.wait(Some(Duration::from_millis(30))).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(e.to_string().contains("did not signal within 30ms"), "{e}");
}

#[test]
fn every_waiter_wakes() {
    let f = UserFence::new().unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || f.wait(Some(Duration::from_secs(10))))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    f.signal().unwrap();
    for w in waiters {
        w.join().unwrap().unwrap();
    }
}

#[test]
fn contexts_hand_out_increasing_seqnos_and_signal_in_order() {
    let ctx = FenceContext::new("timeline");
    let fences: Vec<_> = (0..5).map(|_| ctx.next_fence().unwrap()).collect();
    let seqnos: Vec<u64> = fences.iter().map(|f| f.seqno()).collect();
    assert!(seqnos.windows(2).all(|w| w[1] == w[0] + 1), "{seqnos:?}");
    assert!(fences.iter().all(|f| f.context() == ctx.id()));
    fences[3].signal().unwrap();
    for (i, f) in fences.iter().enumerate() {
        assert_eq!(f.is_signalled(), i <= 3, "fence {i}");
    }
    // An earlier fence signalled by a later one cannot be signalled again.
    assert!(fences[1].signal().is_err());
    fences[4].signal().unwrap();
}

#[test]
fn dropping_the_owner_cancels_a_pending_fence() {
    let f = UserFence::new().unwrap();
    let received = UserFence::from_fds(
        f.state_fd().try_clone_to_owned().unwrap(),
        f.wake_fd().try_clone_to_owned().unwrap(),
    )
    .unwrap();
    drop(f);
    let e = received.wait(Some(Duration::from_secs(1))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert_eq!(e.errno(), Some(Errno::CANCELED));
}

#[test]
fn received_fences_wait_but_cannot_signal() {
    let f = UserFence::new().unwrap();
    let r = UserFence::from_fds(
        f.state_fd().try_clone_to_owned().unwrap(),
        f.wake_fd().try_clone_to_owned().unwrap(),
    )
    .unwrap();
    assert!(!r.is_owner());
    // The sender's identity, marked as received: never a context of ours.
    assert_eq!(
        (
            r.context() & !dmabuf::fence::RECEIVED_CONTEXT_BIT,
            r.seqno()
        ),
        (f.context(), f.seqno())
    );
    assert_ne!(r.context(), f.context());
    assert_eq!(r.owned_context(), None);
    let e = r.signal().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    f.signal().unwrap();
    r.wait(Some(Duration::ZERO)).unwrap();
    assert_eq!(r.timestamp_ns(), f.timestamp_ns());
}

#[test]
fn bad_fence_fds_are_refused() {
    let f = UserFence::new().unwrap();
    // Swapped fds.
    let e = UserFence::from_fds(
        f.wake_fd().try_clone_to_owned().unwrap(),
        f.state_fd().try_clone_to_owned().unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("state fd is not a memfd"), "{e}");
    // A sealed memfd that is not a fence.
    let m = rustix::fs::memfd_create(
        "x",
        rustix::fs::MemfdFlags::ALLOW_SEALING | rustix::fs::MemfdFlags::CLOEXEC,
    )
    .unwrap();
    rustix::fs::ftruncate(&m, 4096).unwrap();
    rustix::fs::fcntl_add_seals(
        &m,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )
    .unwrap();
    let e = UserFence::from_fds(m, f.wake_fd().try_clone_to_owned().unwrap()).unwrap_err();
    assert!(e.to_string().contains("bad magic"), "{e}");
    // An unsealed memfd.
    let m = rustix::fs::memfd_create("y", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let e = UserFence::from_fds(m, f.wake_fd().try_clone_to_owned().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not sealed"), "{e}");
}

#[test]
fn merge_flattens_drops_signalled_and_keeps_latest_per_timeline() {
    let ctx = FenceContext::new("m");
    let a = ctx.next_fence().unwrap();
    let b = ctx.next_fence().unwrap();
    let other = UserFence::new().unwrap();
    let done = UserFence::new().unwrap();
    done.signal().unwrap();
    let m = Fence::merge([
        Fence::from(a.clone()),
        Fence::Signalled,
        Fence::merge([Fence::from(b.clone()), Fence::from(done)]).unwrap(),
        Fence::from(other.clone()),
    ])
    .unwrap();
    match &m {
        Fence::All(v) => assert_eq!(v.len(), 2),
        f => panic!("expected two fences, got {f:?}"),
    }
    assert_eq!(m.status(), FenceStatus::Active);
    b.signal().unwrap();
    assert_eq!(m.status(), FenceStatus::Active);
    other.fail(Errno::IO).unwrap();
    assert_eq!(m.status(), FenceStatus::Error(Errno::IO));
    assert_eq!(m.wait(None).unwrap_err().errno(), Some(Errno::IO));
    assert!(matches!(Fence::merge([]).unwrap(), Fence::Signalled));
}

#[test]
fn async_waits_need_no_thread_per_fence() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fences: Vec<UserFence> = (0..64).map(|_| UserFence::new().unwrap()).collect();
        let waits: Vec<_> = fences
            .iter()
            .map(|f| {
                let f = Fence::from(f.clone());
                tokio::spawn(async move { f.wait_async().await })
            })
            .collect();
        let signaller = fences.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            for (i, f) in signaller.iter().enumerate() {
                if i == 7 {
                    f.fail(Errno::IO).unwrap();
                } else {
                    f.signal().unwrap();
                }
            }
        });
        for (i, w) in waits.into_iter().enumerate() {
            let r = w.await.unwrap();
            assert_eq!(r.is_err(), i == 7, "fence {i}");
        }
    });
}

#[test]
fn a_failure_on_a_timeline_waits_for_the_fences_before_it() {
    let ctx = dmabuf::FenceContext::new("in-order");
    let first = ctx.next_fence().unwrap();
    let refused = ctx.next_fence().unwrap();
    // A refused transfer fails its fence: the one queued before it goes on.
    refused.fail(Errno::CANCELED).unwrap();
    assert_eq!(first.status(), FenceStatus::Active);
    assert_eq!(refused.status(), FenceStatus::Active, "waits in line");
    assert!(refused.fail(Errno::CANCELED).is_err(), "failed once only");
    first.signal().unwrap();
    assert_eq!(refused.status(), FenceStatus::Error(Errno::CANCELED));
    // A later success signals the earlier ones, keeping a deferred error.
    let a = ctx.next_fence().unwrap();
    let b = ctx.next_fence().unwrap();
    let c = ctx.next_fence().unwrap();
    b.fail(Errno::IO).unwrap();
    c.signal().unwrap();
    assert_eq!(a.status(), FenceStatus::Signalled);
    assert_eq!(b.status(), FenceStatus::Error(Errno::IO));
    assert_eq!(c.status(), FenceStatus::Signalled);
    // An owner dropping an earlier fence (cancelled) lets a deferred one go.
    let d = ctx.next_fence().unwrap();
    let e = ctx.next_fence().unwrap();
    e.fail(Errno::INTR).unwrap();
    drop(d);
    assert_eq!(e.status(), FenceStatus::Error(Errno::INTR));
}

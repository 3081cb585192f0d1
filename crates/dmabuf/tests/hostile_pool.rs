//! The streaming pool (blocking and async) against hostile producers and
//! consumers that speak the wire format with raw `sendmsg` and write the
//! descriptor rings by hand: named errors, no crash, no hang, no spin,
//! bounded queues, other consumers served.
//!
//! Every test holds `LOCK` (fd counts).

mod hostile_peer;

use std::time::{Duration, Instant};

use dmabuf::share::pool::{AsyncConsumer, AsyncProducer, Consumer, Producer, LEAVE_GRACE};
use dmabuf::share::ring::{ProducerRing, Wake};
use dmabuf::share::Channel;
use dmabuf::{Allocate, Buffer, Errno, ErrorKind, Fence, Portable, UserFence};
use hostile_peer::*;

fn portables(n: usize) -> Vec<Buffer> {
    (0..n)
        .map(|i| Portable.allocate(4096, &format!("p{i}")).unwrap())
        .collect()
}

/// A consumer set up against a raw producer with `n` buffers.
fn consumer_of_raw(n: usize) -> (Consumer, Raw, RawRing, Vec<std::os::fd::OwnedFd>) {
    let (ch, raw) = pair();
    let bufs = memfds(n, 4096);
    let ring = raw.give_handshake(&bufs, 4096);
    let c = Consumer::new(ch, T).unwrap();
    (c, raw, ring, bufs)
}

/// Publishes an item on the ring; with a fence, the fence goes over the
/// socket first as fence message `tag` (as the pool does).
fn item(raw: &Raw, ring: &RawRing, buffer: u64, seq: u64, fence: Option<(&FakeFence, u64)>) {
    let tag = match fence {
        None => 0,
        Some((f, tag)) => {
            raw.send(&msg(T_FENCE, &fence_body(tag, &[2]), 2), &f.fds())
                .unwrap();
            tag
        }
    };
    ring.item(buffer, seq, 16, tag);
}

// ---- hostile producers ----------------------------------------------------

#[test]
fn handshake_lies_are_refused() {
    let _g = lock();
    let base = open_fds();
    let bufs = memfds(2, 4096);
    /// Messages (bytes, index of the memfd to attach) and the expected words.
    type Case = (Vec<(Vec<u8>, usize)>, &'static str);
    let cases: Vec<Case> = vec![
        // A replayed buffer id.
        (
            vec![
                (msg(T_BUFFER, &buffer_body(0, 4096, 1, "a"), 1), 0),
                (msg(T_BUFFER, &buffer_body(0, 4096, 1, "a"), 1), 1),
            ],
            "buffer id 0 out of order",
        ),
        // More buffers announced than sent.
        (
            vec![
                (msg(T_BUFFER, &buffer_body(0, 4096, 1, "a"), 1), 0),
                (msg(T_POOL_READY, &pool_ready_body(2, 0), 0), 9),
            ],
            "pool-ready announces 2 buffers but 1 arrived",
        ),
        // An item before the pool.
        (
            vec![(msg(T_ITEM, &item_body(0, 1, 1, &[]), 0), 9)],
            "unexpected item message before the pool was shared",
        ),
        // An empty pool.
        (
            vec![(msg(T_POOL_READY, &pool_ready_body(0, 0), 0), 9)],
            "pool-ready announces 0 buffers",
        ),
    ];
    for (msgs, words) in cases {
        let (ch, raw) = pair();
        for (m, fd) in &msgs {
            use std::os::fd::AsFd;
            let fds: Vec<_> = bufs.get(*fd).map(|b| b.as_fd()).into_iter().collect();
            raw.send(m, &fds).unwrap();
        }
        let t0 = Instant::now();
        let e = Consumer::new(ch, T).unwrap_err();
        within(t0, Duration::from_secs(2));
        assert_err(&e, ErrorKind::Protocol, words);
    }
    drop(bufs);
    assert_eq!(open_fds(), base);
}

#[test]
fn a_producer_dying_at_every_handshake_stage_is_found_at_once() {
    let _g = lock();
    let base = open_fds();
    let bufs = memfds(3, 4096);
    for k in 0..=3 {
        let (ch, raw) = pair();
        for (i, b) in bufs.iter().take(k).enumerate() {
            use std::os::fd::AsFd;
            raw.send(
                &msg(T_BUFFER, &buffer_body(i as u64, 4096, 1, "a"), 1),
                &[b.as_fd()],
            )
            .unwrap();
        }
        drop(raw);
        let t0 = Instant::now();
        let e = Consumer::new(ch, T).unwrap_err();
        within(t0, Duration::from_secs(2));
        assert_eq!(e.kind(), ErrorKind::PeerGone, "after {k} buffers: {e}");
    }
    drop(bufs);
    assert_eq!(open_fds(), base);
}

#[test]
fn an_item_in_a_buffer_still_held_is_refused() {
    let _g = lock();
    let (mut c, raw, ring, _bufs) = consumer_of_raw(2);
    item(&raw, &ring, 0, 1, None);
    let held = c.next(T).unwrap().unwrap();
    assert_eq!(held.slot(), 0);
    item(&raw, &ring, 0, 2, None);
    let e = c.next(T).unwrap_err();
    assert_err(
        &e,
        ErrorKind::Protocol,
        "item 2 in slot 0, which this consumer still holds (item 1)",
    );
    // The ring stays refused.
    assert_err(&c.next(T).unwrap_err(), ErrorKind::Protocol, "still holds");
    drop(held);
}

#[test]
fn items_and_releases_on_the_socket_are_protocol_errors() {
    let _g = lock();
    // A producer sending an item message: refused by the consumer.
    let (mut c, raw, _ring, _bufs) = consumer_of_raw(2);
    raw.send(&msg(T_ITEM, &item_body(0, 1, 16, &[]), 0), &[])
        .unwrap();
    assert_err(
        &c.next(T).unwrap_err(),
        ErrorKind::Protocol,
        "unexpected item message from the producer",
    );
    // A consumer sending a release message: dropped by the producer, the
    // other consumer still served.
    let (mut producer, good, raw) = healthy_and_raw(2, |raw| {
        raw.take_handshake();
        raw
    });
    raw.send(&msg(T_RELEASE, &release_body(0, 1, &[]), 0), &[])
        .unwrap();
    let mut errors = Vec::new();
    for _ in 0..10 {
        match producer.acquire(T) {
            Ok(l) => {
                if let Err(e) = l.submit(8, Fence::Signalled) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_err(
        &errors[0],
        ErrorKind::Protocol,
        "unexpected release message from a consumer",
    );
    assert_eq!(producer.consumers(), 1);
    producer.finish(T).unwrap();
    assert!(good.join().unwrap().unwrap() >= 9);
}

#[test]
fn corrupt_item_descriptors_are_refused_with_their_field_named() {
    let _g = lock();
    type Write = fn(&Raw, &RawRing);
    let cases: [(Write, &str); 6] = [
        (
            |_, r| r.item(7, 1, 16, 0),
            "item slot 7 is not below the pool size 2",
        ),
        (
            |_, r| r.item(0, 1, 4097, 0),
            "item length 4097 is past the 4096-byte buffer of slot 0",
        ),
        (
            |_, r| r.item(0, 3, 16, 0),
            "item sequence 3, expected 1 (skipped)",
        ),
        (
            |_, r| r.item(0, 1, 16, 1),
            "names fence 1, which was not sent",
        ),
        (
            |_, r| r.item(0, 1, 16, 9),
            "item fence reference 9, expected 0 or 1",
        ),
        (
            |_, r| {
                r.set(R_ITEM_HEAD, 1000);
                r.wake_consumer();
            },
            "item head 1000 is outside",
        ),
    ];
    for (write, words) in cases {
        let base = open_fds();
        {
            let (mut c, raw, ring, _bufs) = consumer_of_raw(2);
            write(&raw, &ring);
            let t0 = Instant::now();
            let e = c.next(T).unwrap_err();
            within(t0, Duration::from_secs(2));
            assert_err(&e, ErrorKind::Protocol, words);
            assert_eq!(e.errno(), Some(Errno::PROTO));
        }
        assert_eq!(open_fds(), base, "{words}");
    }
}

#[test]
fn a_producer_that_stops_mid_batch_times_out_without_spinning() {
    let _g = lock();
    let (c, raw, ring, _bufs) = consumer_of_raw(4);
    item(&raw, &ring, 0, 1, None);
    item(&raw, &ring, 1, 2, None);
    // A descriptor written but its head never moved: not an item.
    ring.set(32 + 2 * 8, 2);
    let (_c, got, e, cpu, wall) = bounded(Duration::from_secs(10), move || {
        let mut c = c;
        let a = c.next(T).unwrap().unwrap().seq();
        let b = c.next(T).unwrap().unwrap().seq();
        let (c0, t0) = (thread_cpu(), Instant::now());
        let e = c.next(Some(Duration::from_millis(400))).unwrap_err();
        (c, (a, b), e, thread_cpu() - c0, t0.elapsed())
    });
    assert_eq!(got, (1, 2));
    assert_err(&e, ErrorKind::TimedOut, "no item within");
    assert!(cpu < wall / 4, "next used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_producer_that_wakes_the_consumer_for_nothing_does_not_make_it_spin() {
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _g = lock();
    // A producer that plays the handshake by hand, with a real ring whose
    // `wake_consumer` it calls in a loop: every time the consumer raises
    // its waiting word, a FUTEX_WAKE with nothing published.
    let (ch, raw) = pair();
    let bufs = memfds(4, 4096);
    for (i, b) in bufs.iter().enumerate() {
        raw.send(
            &msg(T_BUFFER, &buffer_body(i as u64, 4096, 1, "h"), 1),
            &[b.as_fd()],
        )
        .unwrap();
    }
    let ring = ProducerRing::create(&[4096; 4], Wake::Pipe, "consumer 0").unwrap();
    raw.send(&msg(T_RING, &4u32.to_le_bytes(), 3), &ring.shared_fds())
        .unwrap();
    raw.send(&msg(T_POOL_READY, &pool_ready_body(4, 0), 0), &[])
        .unwrap();
    let c = Consumer::new(ch, T).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let waker = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            ring.wake_consumer().unwrap();
            std::thread::yield_now();
        }
    });
    // Word sleeps allowed for the whole wait: only the rule "a word sleep
    // that ends early with no item ends them" keeps it calm.
    let (e, cpu, wall) = wait_for_nothing(c);
    stop.store(true, Ordering::Relaxed);
    waker.join().unwrap();
    drop(raw);
    assert_calm(&e, cpu, wall);
}

/// `next` on `c` for 400 ms with word sleeps allowed for 10 s, bounded:
/// its error, the CPU it used and the time it took.
fn wait_for_nothing(c: Consumer) -> (dmabuf::Error, Duration, Duration) {
    let (_c, e, cpu, wall) = bounded(Duration::from_secs(10), move || {
        let mut c = c;
        c.set_word_sleep(Duration::from_secs(10));
        let (c0, t0) = (thread_cpu(), Instant::now());
        let e = c.next(Some(Duration::from_millis(400))).unwrap_err();
        (c, e, thread_cpu() - c0, t0.elapsed())
    });
    (e, cpu, wall)
}

/// The wait timed out with no item, in time, using under a quarter of
/// its wall time in CPU.
fn assert_calm(e: &dmabuf::Error, cpu: Duration, wall: Duration) {
    assert_err(e, ErrorKind::TimedOut, "no item within");
    assert!(wall < Duration::from_secs(5));
    assert!(cpu < wall / 4, "next used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_producer_whose_count_of_messages_lies_does_not_make_the_consumer_spin() {
    // The count of messages sent, on the ring, says many messages wait;
    // the socket has none. The consumer looks once, stops believing the
    // count, and sleeps: its CPU stays a fraction of the wait.
    let _g = lock();
    let (c, raw, ring, _bufs) = consumer_of_raw(4);
    ring.set(R_SENT, 1_000_000);
    let (e, cpu, wall) = wait_for_nothing(c);
    drop(raw);
    assert_calm(&e, cpu, wall);
}

#[test]
fn a_producer_that_dies_while_the_consumer_sleeps_on_its_word_is_found() {
    let _g = lock();
    let (c, raw, ring, _bufs) = consumer_of_raw(4);
    let (_c, e, wall) = bounded(Duration::from_secs(10), move || {
        let mut c = c;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(raw);
            drop(ring);
        });
        let t0 = Instant::now();
        let e = c.next(Some(Duration::from_secs(5))).unwrap_err();
        killer.join().unwrap();
        (c, e, t0.elapsed())
    });
    assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
    assert!(wall < Duration::from_secs(1), "found after {wall:?}");
}

#[test]
fn replayed_sequences_and_messages_after_bye_are_refused() {
    let _g = lock();
    let (mut c, raw, ring, _bufs) = consumer_of_raw(2);
    item(&raw, &ring, 0, 1, None);
    drop(c.next(T).unwrap().unwrap());
    item(&raw, &ring, 1, 1, None);
    assert_err(
        &c.next(T).unwrap_err(),
        ErrorKind::Protocol,
        "item sequence 1, expected 2 (replayed)",
    );

    // An item published after the bye (the bye closes the ring at its
    // head as it was then).
    let (mut c, raw, ring, _bufs) = consumer_of_raw(2);
    let fake = FakeFence::pending();
    item(&raw, &ring, 0, 1, Some((&fake, 1)));
    raw.send(&msg(T_BYE, &[], 0), &[]).unwrap();
    // The consumer takes item 1, waits for its fence and reads the bye.
    let e = c.next(Some(Duration::from_millis(100))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    item(&raw, &ring, 1, 2, None);
    fake.set_state(SIGNALLED);
    let _first = c.next(T).unwrap().unwrap();
    assert_err(
        &c.next(T).unwrap_err(),
        ErrorKind::Protocol,
        "1 items published after the producer's bye",
    );

    // A socket message after the bye.
    let (mut c, raw, ring, _bufs) = consumer_of_raw(2);
    let fake = FakeFence::pending();
    item(&raw, &ring, 0, 1, Some((&fake, 1)));
    raw.send(&msg(T_BYE, &[], 0), &[]).unwrap();
    raw.send(&msg(T_FENCE, &fence_body(2, &[2]), 2), &fake.fds())
        .unwrap();
    assert_err(
        &c.next(T).unwrap_err(),
        ErrorKind::Protocol,
        "fence message after the producer's bye",
    );
}

#[test]
fn items_flooding_behind_a_pending_ready_fence_are_bounded_by_the_pool() {
    let _g = lock();
    let base = open_fds();
    let rss0 = rss_kb();
    {
        let (mut c, raw, ring, _bufs) = consumer_of_raw(4);
        let fake = FakeFence::pending();
        // Fences announced ahead of their items: at most one per buffer
        // is kept.
        for tag in 1..=4 {
            raw.send(&msg(T_FENCE, &fence_body(tag, &[2]), 2), &fake.fds())
                .unwrap();
        }
        raw.send(&msg(T_FENCE, &fence_body(5, &[2]), 2), &fake.fds())
            .unwrap();
        let t0 = Instant::now();
        let e = c.next(Some(Duration::from_secs(5))).unwrap_err();
        within(t0, Duration::from_secs(2));
        assert_err(
            &e,
            ErrorKind::Protocol,
            "more fences announced than the 4 buffers in flight",
        );
        // A fresh consumer: 4 items behind a pending fence are taken (the
        // ring holds no more), one more in a buffer it holds is refused.
        let (mut c, raw, ring2, _bufs2) = consumer_of_raw(4);
        drop(ring);
        for i in 0..4 {
            item(&raw, &ring2, i, i + 1, Some((&fake, i + 1)));
        }
        let e = c.next(Some(Duration::from_millis(50))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        item(&raw, &ring2, 0, 5, Some((&fake, 5)));
        fake.set_state(SIGNALLED);
        let mut held = Vec::new();
        let e = loop {
            match c.next(Some(Duration::from_secs(5))) {
                Ok(Some(i)) => held.push(i),
                Ok(None) => panic!("ended"),
                Err(e) => break e,
            }
        };
        within(t0, Duration::from_secs(4));
        assert_err(&e, ErrorKind::Protocol, "which this consumer still holds");
        fake.set_state(PENDING);
        // The flood goes on over the socket; the consumer refuses it and
        // keeps nothing.
        for s in 6..100u64 {
            if raw
                .send(&msg(T_FENCE, &fence_body(s, &[2]), 2), &fake.fds())
                .is_err()
            {
                break;
            }
            let _ = c.next(Some(Duration::ZERO));
        }
        assert!(c.channel().pending_fences() <= 4);
        drop(held);
    }
    assert_eq!(open_fds(), base);
    let grew = rss_kb().saturating_sub(rss0);
    assert!(grew < 16 * 1024, "RSS grew by {grew} kB");
}

#[test]
fn a_noisy_or_scribbled_ready_fence_neither_spins_nor_crashes_the_consumer() {
    let _g = lock();
    let (c, raw, ring, _bufs) = consumer_of_raw(2);
    let fake = FakeFence::pending();
    fake.poke();
    item(&raw, &ring, 0, 1, Some((&fake, 1)));
    let (c, e, cpu, wall) = bounded(Duration::from_secs(10), move || {
        let mut c = c;
        let (c0, t0) = (thread_cpu(), Instant::now());
        let e = c.next(Some(Duration::from_millis(400))).unwrap_err();
        (c, e, thread_cpu() - c0, t0.elapsed())
    });
    assert_err(
        &e,
        ErrorKind::TimedOut,
        "ready fence of item 1 did not signal within 400ms (the last ",
    );
    // The item was there at once: the whole wait went to its fence.
    assert!(
        e.to_string()
            .contains("of them waiting for this fence, the rest for the item"),
        "{e}"
    );
    // And it names the fence and what its page says.
    assert!(
        e.to_string()
            .contains("received user fence 0x1234#1, its page pending)"),
        "{e}"
    );
    assert!(cpu < wall / 4, "next used {cpu:?} of CPU in {wall:?}");
    // Now the page says failed with an impossible errno.
    fake.set_state(FAILED | (5000 << 32));
    let mut c = c;
    let e = c.next(T).unwrap_err();
    assert_err(&e, ErrorKind::FenceFailed, "state page is corrupt");
    assert_eq!(e.errno(), Some(Errno::PROTO));
}

#[test]
fn a_ready_fence_stuck_signalling_is_resolved() {
    let _g = lock();
    let (mut c, raw, ring, _bufs) = consumer_of_raw(1);
    let fake = FakeFence::new(SIGNALLING | (777 << 32), 1, 1);
    item(&raw, &ring, 0, 1, Some((&fake, 1)));
    let t0 = Instant::now();
    let e = c.next(T).unwrap_err();
    within(t0, Duration::from_secs(3));
    assert_eq!(e.errno(), Some(Errno::OWNERDEAD), "{e}");
    assert!(e.to_string().contains("stopped half-way"), "{e}");
}

#[test]
fn the_async_consumer_does_not_spin_on_a_noisy_ready_fence() {
    let _g = lock();
    let (ch, raw) = pair();
    let bufs = memfds(1, 4096);
    let ring = raw.give_handshake(&bufs, 4096);
    let fake = FakeFence::pending();
    fake.poke();
    item(&raw, &ring, 0, 1, Some((&fake, 1)));
    let (timed_out, cpu, wall) = bounded(Duration::from_secs(10), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = AsyncConsumer::new(ch).await.unwrap();
            let (c0, t0) = (thread_cpu(), Instant::now());
            let r = tokio::time::timeout(Duration::from_millis(400), c.next()).await;
            (r.is_err(), thread_cpu() - c0, t0.elapsed())
        })
    });
    assert!(timed_out);
    assert!(cpu < wall / 4, "async next used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_producer_that_keeps_writing_the_consumers_eventfd_does_not_make_it_spin() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _g = lock();
    let (c, _raw, ring, _bufs) = consumer_of_raw(4);
    let ring = Arc::new(ring);
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (ring.clone(), stop.clone());
    // The consumer's wake-up eventfd, written over and over with nothing
    // on the ring.
    let waker = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            r.wake_consumer();
            std::thread::yield_now();
        }
    });
    let (_c, e, cpu, wall) = bounded(Duration::from_secs(10), move || {
        let mut c = c;
        // Straight to the eventfd and socket (no word sleep first).
        c.set_word_sleep(Duration::ZERO);
        let (c0, t0) = (thread_cpu(), Instant::now());
        let e = c.next(Some(Duration::from_millis(400))).unwrap_err();
        (c, e, thread_cpu() - c0, t0.elapsed())
    });
    stop.store(true, Ordering::Relaxed);
    waker.join().unwrap();
    assert_err(&e, ErrorKind::TimedOut, "no item within");
    assert!(cpu < wall / 4, "next used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_producer_that_keeps_writing_the_async_consumers_eventfd_does_not_make_it_spin() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _g = lock();
    let (ch, raw) = pair();
    let bufs = memfds(4, 4096);
    let ring = Arc::new(raw.give_handshake(&bufs, 4096));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (ring.clone(), stop.clone());
    // The consumer's wake-up eventfd, written over and over with nothing
    // on the ring: each write would wake tokio's reactor while the
    // eventfd is registered.
    let waker = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            r.wake_consumer();
            std::thread::yield_now();
        }
    });
    let (timed_out, cpu, wall) = bounded(Duration::from_secs(10), move || {
        // A current-thread runtime: its reactor runs on this thread, so
        // this thread's CPU time is the task's and the reactor's.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = AsyncConsumer::new(ch).await.unwrap();
            let (c0, t0) = (thread_cpu(), Instant::now());
            let r = tokio::time::timeout(Duration::from_millis(400), c.next()).await;
            (r.is_err(), thread_cpu() - c0, t0.elapsed())
        })
    });
    stop.store(true, Ordering::Relaxed);
    waker.join().unwrap();
    drop(raw);
    assert!(timed_out, "no item, so the wait ran out");
    assert!(cpu < wall / 4, "async next used {cpu:?} of CPU in {wall:?}");
}

// ---- hostile consumers ----------------------------------------------------

/// Leases a buffer and submits an 8-byte item with a signalled fence; its
/// sequence number.
fn send(producer: &mut Producer) -> u64 {
    producer
        .acquire(T)
        .unwrap()
        .submit(8, Fence::Signalled)
        .unwrap()
}

/// A well-behaved consumer on a thread: takes and releases every item;
/// returns how many it got.
fn healthy(ch: Channel) -> std::thread::JoinHandle<dmabuf::Result<u64>> {
    std::thread::spawn(move || {
        let mut c = Consumer::new(ch, T)?;
        let mut n = 0;
        while let Some(item) = c.next(T)? {
            n += 1;
            item.release(Fence::Signalled)?;
        }
        Ok(n)
    })
}

/// A producer of `n` portable buffers to two consumers: a healthy one (on
/// a thread, see [`healthy`]) and a raw one played by `raw_side` (on a
/// thread while the producer shares the pool, so it must take the
/// handshake); what `raw_side` returns comes back with them.
fn healthy_and_raw<R: Send + 'static>(
    n: usize,
    raw_side: impl FnOnce(Raw) -> R + Send + 'static,
) -> (Producer, std::thread::JoinHandle<dmabuf::Result<u64>>, R) {
    let (p1, c1) = Channel::pair().unwrap();
    let (p2, raw) = pair();
    let good = healthy(c1);
    let raw = std::thread::spawn(move || raw_side(raw));
    let producer = Producer::new(portables(n), vec![p1, p2]).unwrap();
    (producer, good, raw.join().unwrap())
}

#[test]
fn a_consumer_lying_in_its_pool_ready_is_dropped_with_the_cause() {
    let _g = lock();
    let cases: [(&[Vec<u8>], &str); 3] = [
        (
            &[pool_ready_body(3, 0)],
            "pool-ready names 3 buffers and consumer 0; the pool has 2 buffers and this is consumer 0",
        ),
        (&[pool_ready_body(2, 5)], "consumer 5"),
        (
            &[pool_ready_body(2, 0), pool_ready_body(2, 0)],
            "a second pool-ready",
        ),
    ];
    for (bodies, words) in cases {
        let (p, raw) = pair();
        let raw = std::thread::spawn(move || {
            raw.take_handshake();
            raw
        });
        let mut producer = Producer::new(portables(2), vec![p]).unwrap();
        let raw = raw.join().unwrap();
        for b in bodies {
            raw.send(&msg(T_POOL_READY, b, 0), &[]).unwrap();
        }
        let e = producer.wait_ready(T).unwrap_err();
        assert_err(&e, ErrorKind::Protocol, words);
        assert_eq!(producer.consumers(), 0, "{words}");
    }
}

#[test]
fn a_consumer_saying_bye_before_asking_is_not_waited_for() {
    let _g = lock();
    let (mut producer, good, raw) = healthy_and_raw(2, |raw| {
        raw.take_handshake();
        raw.send(&msg(T_BYE, &[], 0), &[]).unwrap();
        raw
    });
    // No error: a bye is a clean departure; only the other one is waited for.
    producer.wait_ready(T).unwrap();
    assert_eq!(producer.consumers(), 1);
    send(&mut producer);
    drop(raw);
    producer.finish(T).unwrap();
    assert_eq!(good.join().unwrap().unwrap(), 1);
}

#[test]
fn a_consumer_gone_before_asking_is_not_waited_for() {
    let _g = lock();
    let (mut producer, good, ()) = healthy_and_raw(2, |raw| {
        raw.take_handshake();
        // Gone without asking for an item.
        drop(raw);
    });
    let t0 = Instant::now();
    let e = producer.wait_ready(T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
    producer.wait_ready(T).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(producer.consumers(), 1);
    for _ in 0..3 {
        send(&mut producer);
    }
    producer.finish(T).unwrap();
    assert_eq!(good.join().unwrap().unwrap(), 3);
}

#[test]
fn a_consumer_speaking_garbage_is_dropped_and_the_others_are_served() {
    let _g = lock();
    let (mut producer, good, raw) = healthy_and_raw(2, |raw| {
        raw.take_handshake();
        raw
    });
    raw.send(b"garbage", &[]).unwrap();
    let mut errors = Vec::new();
    let mut submitted = 0;
    for _ in 0..50 {
        match producer.acquire(T) {
            Ok(l) => {
                submitted += 1;
                if let Err(e) = l.submit(8, Fence::Signalled) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_err(
        &errors[0],
        ErrorKind::Protocol,
        "shorter than the 16-byte header",
    );
    assert!(errors[0].to_string().contains("peer pid"), "{}", errors[0]);
    assert_eq!(producer.consumers(), 1);
    producer.finish(T).unwrap();
    assert!(submitted >= 49);
    assert_eq!(good.join().unwrap().unwrap(), submitted);
}

#[test]
fn a_noisy_pending_release_fence_neither_spins_nor_crashes_the_producer() {
    let _g = lock();
    let (p, raw) = pair();
    let raw = std::thread::spawn(move || {
        let (_, ring) = raw.take_handshake_ring();
        (raw, ring)
    });
    let mut producer = Producer::new(portables(1), vec![p]).unwrap();
    let (raw, ring) = raw.join().unwrap();
    let seq = send(&mut producer);
    let got = ring.wait_item(Duration::from_secs(5)).unwrap();
    assert_eq!((got.0, got.2), (0, seq));
    let fake = FakeFence::pending();
    fake.poke();
    raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2), &fake.fds())
        .unwrap();
    ring.release(0, seq, 1);
    let (producer, e, cpu, wall) = bounded(Duration::from_secs(10), move || {
        let mut producer = producer;
        let (c0, t0) = (thread_cpu(), Instant::now());
        let e = producer
            .acquire(Some(Duration::from_millis(400)))
            .map(|_| ())
            .unwrap_err();
        (producer, e, thread_cpu() - c0, t0.elapsed())
    });
    assert_err(&e, ErrorKind::TimedOut, "still in flight");
    assert!(cpu < wall / 4, "acquire used {cpu:?} of CPU in {wall:?}");
    // The page scribbled with an impossible errno: a failed release, the
    // buffer is free again; nothing panics.
    fake.set_state(FAILED | (70000 << 32));
    let mut producer = producer;
    let t0 = Instant::now();
    drop(producer.acquire(T).unwrap());
    within(t0, Duration::from_secs(1));
}

#[test]
fn the_async_producer_does_not_spin_on_a_noisy_release_fence() {
    let _g = lock();
    let (p, raw) = pair();
    let raw = std::thread::spawn(move || {
        let (_, ring) = raw.take_handshake_ring();
        (raw, ring)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = FakeFence::pending();
    fake.poke();
    let (timed_out, cpu, wall) = rt.block_on(async {
        let mut producer = AsyncProducer::new(portables(1), vec![p]).unwrap();
        let (raw, ring) = raw.join().unwrap();
        let seq = producer
            .acquire()
            .await
            .unwrap()
            .submit(8, Fence::Signalled)
            .unwrap();
        assert_eq!(ring.wait_item(Duration::from_secs(5)).unwrap().2, seq);
        raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2), &fake.fds())
            .unwrap();
        ring.release(0, seq, 1);
        let (c0, t0) = (thread_cpu(), Instant::now());
        let r = tokio::time::timeout(Duration::from_millis(400), producer.acquire()).await;
        (r.is_err(), thread_cpu() - c0, t0.elapsed())
    });
    assert!(timed_out);
    assert!(
        cpu < wall / 4,
        "async acquire used {cpu:?} of CPU in {wall:?}"
    );
}

#[test]
fn a_consumer_that_stops_reading_is_dropped_without_hurting_the_others() {
    let _g = lock();
    const N: usize = 600;
    let (mut producer, good, _raw) = healthy_and_raw(N, |raw| {
        assert_eq!(raw.take_handshake(), N);
        raw // and never reads again
    });
    producer.set_send_timeout(Some(Duration::from_millis(300)));
    let t0 = Instant::now();
    let mut errors = Vec::new();
    let mut submitted = 0u64;
    for _ in 0..N + 100 {
        match producer.acquire(T) {
            Ok(l) => {
                submitted += 1;
                if let Err(e) = l.submit(8, Fence::Signalled) {
                    errors.push(e);
                }
            }
            // Once every buffer waits on its ring untaken for the send
            // timeout, the next acquire drops it.
            Err(e) => errors.push(e),
        }
    }
    within(t0, Duration::from_secs(20));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_err(
        &errors[0],
        ErrorKind::TimedOut,
        "has not read its messages for 300ms",
    );
    assert_eq!(producer.consumers(), 1);
    producer.finish(T).unwrap();
    assert_eq!(submitted, (N + 99) as u64);
    assert_eq!(good.join().unwrap().unwrap(), submitted);
}

#[test]
fn a_clean_bye_waits_for_the_consumers_releases() {
    let _g = lock();
    let (p1, c1) = Channel::pair().unwrap();
    let (p2, c2) = Channel::pair().unwrap();
    let mut producer = Producer::new(portables(1), vec![p1, p2]).unwrap();
    let mut a = Consumer::new(c1, T).unwrap();
    let mut b = Consumer::new(c2, T).unwrap();
    send(&mut producer);
    drop(b.next(T).unwrap().unwrap());
    // A is still reading its item when it says bye.
    let reading = a.next(T).unwrap().unwrap();
    a.leave().unwrap();
    let short = Some(Duration::from_millis(300));
    assert_eq!(
        producer.acquire(short).map(|_| ()).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    // It releases with a fence still pending: not failed, waited for.
    let done = UserFence::new().unwrap();
    reading.release(done.clone().into()).unwrap();
    assert_eq!(
        producer.acquire(short).map(|_| ()).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    done.signal().unwrap();
    drop(producer.acquire(T).unwrap());
    assert_eq!(producer.consumers(), 1);
    drop(b);
}

#[test]
fn a_consumer_that_says_bye_but_keeps_its_buffers_loses_them_after_the_grace() {
    let _g = lock();
    let (p1, c1) = Channel::pair().unwrap();
    let (p2, c2) = Channel::pair().unwrap();
    let mut producer = Producer::new(portables(1), vec![p1, p2]).unwrap();
    let mut a = Consumer::new(c1, T).unwrap();
    let b = healthy(c2);
    send(&mut producer);
    let kept = a.next(T).unwrap().unwrap();
    a.leave().unwrap();
    let t0 = Instant::now();
    let e = producer.acquire(T).map(|_| ()).unwrap_err();
    let took = within(t0, LEAVE_GRACE + Duration::from_secs(3));
    assert!(took + Duration::from_millis(100) >= LEAVE_GRACE, "{took:?}");
    assert_err(&e, ErrorKind::TimedOut, "said bye but");
    drop(producer.acquire(T).unwrap());
    producer.finish(T).unwrap();
    assert_eq!(b.join().unwrap().unwrap(), 1);
    drop(kept);
}

#[test]
fn a_consumer_dying_at_every_stage_is_reported_once_and_the_pool_carries_on() {
    let _g = lock();
    for stage in 0..3 {
        let (mut producer, good, (raw, ring)) = healthy_and_raw(2, |raw| {
            let (_, ring) = raw.take_handshake_ring();
            (raw, ring)
        });
        let seq = send(&mut producer);
        let fake = FakeFence::pending();
        match stage {
            0 => {}
            1 => assert_eq!(ring.wait_item(Duration::from_secs(5)).unwrap().2, seq),
            _ => {
                let (slot, _, s, _) = ring.wait_item(Duration::from_secs(5)).unwrap();
                assert_eq!(s, seq);
                raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2), &fake.fds())
                    .unwrap();
                ring.release(slot, seq, 1);
            }
        }
        drop(raw);
        drop(ring);
        let mut errors = Vec::new();
        let mut submitted = 1;
        for _ in 0..10 {
            match producer.acquire(T) {
                Ok(l) => {
                    // A submit that reports the dead consumer still
                    // reached the live one.
                    submitted += 1;
                    if let Err(e) = l.submit(8, Fence::Signalled) {
                        errors.push(e)
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        assert_eq!(errors.len(), 1, "stage {stage}: {errors:?}");
        assert_eq!(errors[0].kind(), ErrorKind::PeerGone, "{}", errors[0]);
        producer.finish(T).unwrap();
        assert_eq!(good.join().unwrap().unwrap(), submitted);
        // The dead consumer's release fence was failed here only.
        let mut w = [0u8; 8];
        rustix::io::pread(&fake.state, &mut w, 8).unwrap();
        assert_eq!(u64::from_le_bytes(w), PENDING);
    }
}

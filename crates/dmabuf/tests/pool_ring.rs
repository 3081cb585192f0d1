//! The pool's per-item path on its descriptor rings: a steady stream puts
//! nothing on the sockets, a real fence does, and a forged handshake is
//! refused.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmabuf::share::pool::{AsyncConsumer, AsyncProducer, Consumer, Producer};
use dmabuf::share::{Channel, Message};
use dmabuf::{Allocate, Buffer, ErrorKind, Fence, Portable, UserFence};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn portable(size: u64, name: &str) -> Buffer {
    Portable.allocate(size, name).unwrap()
}

fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut p, Some(&zero)).unwrap() == 1
}

/// A producer and a consumer of 4 buffers, with a second handle on each
/// socket to watch it.
fn pool() -> (Producer, Consumer, OwnedFd, OwnedFd) {
    let (p, c) = Channel::pair().unwrap();
    let (pw, cw) = (
        p.fd().try_clone_to_owned().unwrap(),
        c.fd().try_clone_to_owned().unwrap(),
    );
    let bufs = (0..4).map(|i| portable(4096, &format!("r{i}"))).collect();
    let producer = Producer::new(bufs, vec![p]).unwrap();
    let consumer = Consumer::new(c, T).unwrap();
    (producer, consumer, pw, cw)
}

#[test]
fn a_steady_stream_sends_no_socket_message() {
    let (mut producer, mut consumer, to_producer, to_consumer) = pool();
    // The consumer's first call for an item tells the producer, once (the
    // only message of a steady stream).
    let e = consumer.next(Some(Duration::ZERO)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(readable(to_producer.as_fd()));
    producer.wait_ready(T).unwrap();
    for round in 0..50u64 {
        for _ in 0..3 {
            let lease = producer.acquire(T).unwrap();
            lease.submit(4096, Fence::Signalled).unwrap();
        }
        // Items, with signalled fences: nothing on the consumer's socket.
        assert!(!readable(to_consumer.as_fd()), "round {round}");
        for k in 1..=3 {
            let item = consumer.next(T).unwrap().unwrap();
            assert_eq!(item.seq(), round * 3 + k);
            item.release(Fence::Signalled).unwrap();
        }
        // Releases with signalled fences: nothing on the producer's socket.
        assert!(!readable(to_producer.as_fd()), "round {round}");
    }
    producer.finish(T).unwrap();
    assert!(consumer.next(T).unwrap().is_none());
}

#[test]
fn a_real_fence_travels_over_the_socket() {
    let (mut producer, mut consumer, to_producer, to_consumer) = pool();
    let ready = UserFence::new().unwrap();
    producer
        .acquire(T)
        .unwrap()
        .submit(10, ready.clone().into())
        .unwrap();
    assert!(readable(to_consumer.as_fd()), "the fence message");
    let e = consumer.next(Some(Duration::from_millis(30))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    ready.signal().unwrap();
    let item = consumer.next(T).unwrap().unwrap();
    assert_eq!((item.seq(), item.len()), (1, 10));
    let release = UserFence::new().unwrap();
    item.release(release.clone().into()).unwrap();
    assert!(readable(to_producer.as_fd()), "the release fence message");
    // Three other buffers are free; the fourth comes back once the
    // release fence signals.
    let mut sent = 0;
    while let Some(lease) = producer.try_acquire().unwrap() {
        assert_ne!(lease.slot(), 0, "reused before its release fence signalled");
        lease.submit(1, Fence::Signalled).unwrap();
        sent += 1;
        assert!(sent <= 3);
    }
    assert_eq!(sent, 3);
    release.signal().unwrap();
    assert_eq!(producer.acquire(T).unwrap().slot(), 0);
}

#[test]
fn a_pool_ready_without_a_ring_is_refused() {
    let (p, c) = Channel::pair().unwrap();
    p.send(&Message::Buffer {
        id: 0,
        buffer: portable(4096, "x"),
    })
    .unwrap();
    p.send(&Message::PoolReady {
        buffers: 1,
        consumer: 0,
    })
    .unwrap();
    let e = Consumer::new(c, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.to_string().contains("pool-ready before the ring message"),
        "{e}"
    );
}

#[test]
fn a_forged_ring_is_refused_with_its_cause() {
    // A ring message whose memfd is not sealed, and whose wake fds are
    // eventfds.
    let (p, c) = Channel::pair().unwrap();
    p.send(&Message::Buffer {
        id: 0,
        buffer: portable(4096, "x"),
    })
    .unwrap();
    let memfd = rustix::fs::memfd_create("forged", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, 4096).unwrap();
    let ev = || rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let (r, w) = (ev(), ev());
    p.send(&Message::Ring {
        capacity: 1,
        fds: Arc::new(vec![memfd, r, w]),
    })
    .unwrap();
    p.send(&Message::PoolReady {
        buffers: 1,
        consumer: 0,
    })
    .unwrap();
    let e = Consumer::new(c, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.to_string()
            .contains("the consumer's wake-up fd is not the read end of a pipe"),
        "{e}"
    );
}

#[test]
fn a_consumer_asleep_on_its_ring_word_is_woken_by_items_and_by_the_bye() {
    let (mut producer, mut consumer, _pw, _cw) = pool();
    // Word sleeps for the whole wait: an item or a bye that did not wake
    // the word would be seen only after 10 s.
    consumer.set_word_sleep(Duration::from_secs(10));
    let t = std::thread::spawn(move || {
        let mut got = Vec::new();
        let t0 = std::time::Instant::now();
        while let Some(item) = consumer.next(Some(Duration::from_secs(20))).unwrap() {
            got.push(item.seq());
        }
        (got, t0.elapsed())
    });
    for _ in 0..3 {
        // Let the consumer fall asleep first.
        std::thread::sleep(Duration::from_millis(30));
        let lease = producer.acquire(T).unwrap();
        lease.submit(16, Fence::Signalled).unwrap();
    }
    std::thread::sleep(Duration::from_millis(30));
    producer.finish(T).unwrap();
    let (got, took) = t.join().unwrap();
    assert_eq!(got, [1, 2, 3]);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn items_taken_on_one_thread_are_released_on_others_with_their_fences() {
    // The consumer takes items on its thread and hands them to two
    // threads that release them, every fifth with a real release fence
    // (signalled at once, from another thread again): the taking thread
    // takes no lock of theirs, and every item and release arrives, in
    // order, with its fence.
    const N: u64 = 2_000;
    let (mut producer, mut consumer, _pw, _cw) = pool();
    let (tx, rx) = std::sync::mpsc::channel::<dmabuf::share::pool::Item>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let releasers: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || loop {
                let next = rx.lock().unwrap().recv();
                let Ok(item) = next else { break };
                if item.seq() % 5 == 0 {
                    let f = UserFence::new().unwrap();
                    item.release(f.clone().into()).unwrap();
                    std::thread::spawn(move || f.signal().unwrap());
                } else {
                    item.release(Fence::Signalled).unwrap();
                }
            })
        })
        .collect();
    let taker = std::thread::spawn(move || {
        let mut last = 0;
        while let Some(item) = consumer.next(T).unwrap() {
            assert_eq!(item.seq(), last + 1);
            last = item.seq();
            tx.send(item).unwrap();
        }
        last
    });
    for n in 0..N {
        producer
            .acquire(T)
            .unwrap()
            .submit(n % 4096, Fence::Signalled)
            .unwrap();
    }
    producer.finish(T).unwrap();
    assert_eq!(taker.join().unwrap(), N);
    for r in releasers {
        r.join().unwrap();
    }
}

#[test]
fn an_item_released_while_the_consumer_sleeps_does_not_wait_for_the_sleep() {
    // The consumer's `next` sleeps for lack of items (on the ring's word,
    // then on its eventfd and socket); meanwhile another thread releases
    // an item it holds. The release goes through the ring's releasing
    // half, apart from the sleeping consumer: it must go through at once,
    // not when the sleep ends.
    for word_sleep in [Duration::from_secs(3), Duration::ZERO] {
        let (mut producer, mut consumer, _pw, _cw) = pool();
        consumer.set_word_sleep(word_sleep);
        producer
            .acquire(T)
            .unwrap()
            .submit(4096, Fence::Signalled)
            .unwrap();
        let item = consumer.next(T).unwrap().unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let t0 = std::time::Instant::now();
            item.release(Fence::Signalled).unwrap();
            t0.elapsed()
        });
        let t0 = std::time::Instant::now();
        let e = consumer.next(Some(Duration::from_secs(3))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() >= Duration::from_secs(3));
        let took = releaser.join().unwrap();
        assert!(
            took < Duration::from_secs(1),
            "word sleep {word_sleep:?}: the release waited {took:?} for the consumer's sleep"
        );
        // The release reached the producer.
        let _ = producer.acquire(T).unwrap();
    }
}

#[test]
fn a_consumer_says_once_that_it_asks_for_items_and_the_producer_can_wait_for_that() {
    let (mut producer, mut consumer, to_producer, _cw) = pool();
    // Before the consumer asks: a bounded wait, and an error saying so.
    let t0 = Instant::now();
    let e = producer
        .wait_ready(Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(
        e.to_string()
            .contains("1 of 1 consumers had not asked for an item after 100ms"),
        "{e}"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The consumer asks from another thread; the producer's wait ends
    // then, before any item exists.
    let t = std::thread::spawn(move || {
        let item = consumer.next(T).unwrap().unwrap();
        assert_eq!(item.seq(), 1);
        item.release(Fence::Signalled).unwrap();
        consumer
    });
    producer.wait_ready(T).unwrap();
    producer
        .acquire(T)
        .unwrap()
        .submit(4096, Fence::Signalled)
        .unwrap();
    let mut consumer = t.join().unwrap();
    // Only once: later calls put nothing on the producer's socket.
    producer
        .acquire(T)
        .unwrap()
        .submit(4096, Fence::Signalled)
        .unwrap();
    consumer
        .next(T)
        .unwrap()
        .unwrap()
        .release(Fence::Signalled)
        .unwrap();
    assert!(!readable(to_producer.as_fd()));
    producer.wait_ready(Some(Duration::ZERO)).unwrap();
    producer.finish(T).unwrap();
    assert!(consumer.next(T).unwrap().is_none());
}

#[test]
fn the_async_producer_awaits_the_async_consumers_first_call() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (p, c) = Channel::pair().unwrap();
        let bufs = (0..2).map(|i| portable(4096, &format!("a{i}"))).collect();
        let mut producer = AsyncProducer::new(bufs, vec![p]).unwrap();
        let mut consumer = AsyncConsumer::new(c).await.unwrap();
        let short = Duration::from_millis(100);
        assert!(
            tokio::time::timeout(short, producer.wait_ready())
                .await
                .is_err(),
            "the producer did not wait for a consumer that had not asked"
        );
        // The consumer asks (and, with no item, is given up on); the
        // producer's wait ends meanwhile.
        let (waited, asked) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), producer.wait_ready()),
            tokio::time::timeout(Duration::from_millis(300), consumer.next()),
        );
        waited.expect("wait_ready ended").unwrap();
        assert!(asked.is_err(), "no item was there to take");
    });
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn finish_waits_for_a_held_buffer_without_spinning_on_a_release_already_done() {
    // A buffer came back with a release fence that has signalled, and is
    // free, untaken; another is still held. Finish waits for the held one:
    // the release that is done is no reason to look again (it would
    // spin), only one to take a buffer.
    let (mut producer, mut consumer, _pw, _cw) = pool();
    for _ in 0..2 {
        producer
            .acquire(T)
            .unwrap()
            .submit(4096, Fence::Signalled)
            .unwrap();
    }
    let first = consumer.next(T).unwrap().unwrap();
    let done = UserFence::new().unwrap();
    first.release(done.clone().into()).unwrap();
    done.signal().unwrap();
    let held = consumer.next(T).unwrap().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        drop(held);
        // The bye, then the end.
        assert!(consumer.next(T).unwrap().is_none());
    });
    let (c0, t0) = (thread_cpu(), Instant::now());
    producer.finish(T).unwrap();
    let (cpu, wall) = (thread_cpu() - c0, t0.elapsed());
    t.join().unwrap();
    assert!(wall >= Duration::from_millis(300), "{wall:?}");
    assert!(cpu < wall / 4, "finish used {cpu:?} of CPU in {wall:?}");
}

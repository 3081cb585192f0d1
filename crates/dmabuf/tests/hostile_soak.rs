//! A soak: a pool streaming with user fences both ways, two consumers,
//! while a hostile peer keeps opening channels and sending junk, fake
//! fences and floods. File descriptors and resident memory must stay flat.
//!
//! Runs `DMABUF_SOAK_SECS` seconds (default 3, so `cargo test` stays
//! quick); for a long soak: `DMABUF_SOAK_SECS=300 cargo test -p dmabuf
//! --release --test hostile_soak -- --nocapture`.

mod hostile_peer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::{Channel, Message};
use dmabuf::{Allocate, Portable, UserFence};
use hostile_peer::*;

fn consumer(ch: Channel) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut c = Consumer::new(ch, T).unwrap();
        let mut n = 0;
        while let Some(item) = c.next(T).unwrap() {
            n += 1;
            let done = UserFence::new().unwrap();
            item.release(done.clone().into()).unwrap();
            done.signal().unwrap();
        }
        n
    })
}

/// One round of hostility on a fresh channel.
fn hostile_round(round: u64) {
    let (ch, raw) = pair();
    let fake = FakeFence::pending();
    let junk: [&[u8]; 3] = [b"", b"DMBS", &[0xff; 100]];
    for j in junk {
        let _ = raw.send(j, &[]);
        let _ = ch.recv(Some(Duration::from_millis(100)));
    }
    for _ in 0..20 {
        raw.send(&msg(T_FENCE, &fence_body(round, &[2]), 2), &fake.fds())
            .unwrap();
        if let Ok(Message::Fence { fence, .. }) = ch.recv(T) {
            assert!(!fence.is_signalled());
        }
    }
    fake.set_state(FAILED | (5000 << 32));
    drop(raw);
    let _ = ch.recv(Some(Duration::from_millis(100)));
}

#[test]
fn fds_and_memory_stay_flat_under_streaming_and_hostility() {
    let secs: u64 = std::env::var("DMABUF_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(2);
    let start_fds = open_fds();
    let (p1, c1) = Channel::pair().unwrap();
    let (p2, c2) = Channel::pair().unwrap();
    let (a, b) = (consumer(c1), consumer(c2));
    let buffers = (0..4)
        .map(|i| Portable.allocate(64 << 10, &format!("soak{i}")).unwrap())
        .collect();
    let mut producer = Producer::new(buffers, vec![p1, p2]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let hostile = std::thread::spawn(move || {
        let mut round = 0;
        while !stop2.load(Ordering::Relaxed) {
            hostile_round(round);
            round += 1;
        }
        round
    });
    let t0 = Instant::now();
    let warm = Duration::from_secs(1);
    let mut baseline = None;
    let mut items = 0u64;
    let mut worst_fds = 0;
    let mut worst_rss = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        let ready = UserFence::new().unwrap();
        producer
            .acquire(T)
            .unwrap()
            .submit(4096, ready.clone().into())
            .unwrap();
        ready.signal().unwrap();
        items += 1;
        if t0.elapsed() >= warm {
            let (fds, rss) = (open_fds(), rss_kb());
            let (f0, r0) = *baseline.get_or_insert((fds, rss));
            worst_fds = worst_fds.max(fds.saturating_sub(f0));
            worst_rss = worst_rss.max(rss.saturating_sub(r0));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = hostile.join().unwrap();
    producer.finish(T).unwrap();
    let (got_a, got_b) = (a.join().unwrap(), b.join().unwrap());
    println!(
        "soak {secs} s: {items} items, consumers got {got_a} and {got_b}, {rounds} hostile rounds; \
         after warm-up fds grew at most {worst_fds}, RSS at most {worst_rss} kB"
    );
    assert_eq!((got_a, got_b), (items, items));
    assert!(rounds > 0);
    // Fds: a round in flight holds a few (a channel, a fake fence, its
    // imports), and the stream's fences in flight are bounded by the pool:
    // per consumer at most 4 ready fences received ahead of their items
    // and 4 release fences received ahead of their ring descriptors, 2 fds
    // each (fences travel over the socket before the descriptor that names
    // them). Never a growing number.
    assert!(worst_fds <= 2 * (4 + 4) * 2 + 16, "fds grew by {worst_fds}");
    assert!(worst_rss < 16 * 1024, "RSS grew by {worst_rss} kB");
    assert_eq!(open_fds(), start_fds, "fds not back to where they started");
}

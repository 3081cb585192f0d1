//! Micro-benchmark of the descriptor ring (`dmabuf::share::ring`): futex
//! against eventfd wake-ups, side by side in one run, two threads.
//!
//! * **stream**: the producer publishes items through 4 slots as fast as
//!   the consumer gives them back; descriptors per second.
//! * **ping-pong**: one item, then wait for its release, so that both
//!   sides sleep every time: the round trip over two (p50, p99).
//!
//! Each with no spinning (every wait sleeps) and with the default spin.
//!
//! `cargo run --release -p dmabuf --example ring_bench [-- ITEMS]`

use std::time::{Duration, Instant};

use dmabuf::share::ring::{ConsumerReleases, ConsumerRing, ProducerRing, Wake, DEFAULT_SPIN};

const SIZES: [u64; 4] = [4096; 4];
const T: Duration = Duration::from_secs(10);

fn pair(wake: Wake, spin: Duration) -> (ProducerRing, ConsumerRing, ConsumerReleases) {
    let mut p = ProducerRing::create(&SIZES, wake, "consumer").expect("ring");
    let fds = p
        .shared_fds()
        .into_iter()
        .map(|f| f.try_clone_to_owned().expect("dup"))
        .collect();
    let (mut c, r) = ConsumerRing::open(fds, &SIZES, "producer").expect("open");
    p.set_spin(spin);
    c.set_spin(spin);
    (p, c, r)
}

fn stream(wake: Wake, spin: Duration, n: u64) -> f64 {
    let (mut p, mut c, mut r) = pair(wake, spin);
    let t = std::thread::spawn(move || {
        for _ in 0..n {
            let d = c.recv_item(T).expect("item");
            r.send_release(d.slot, d.seq, false).expect("release");
        }
    });
    let start = Instant::now();
    let mut free: Vec<usize> = (0..4).collect();
    for _ in 0..n {
        let slot = match free.pop() {
            Some(s) => s,
            None => p.recv_release(T).expect("release").slot,
        };
        p.send_item(slot, 4096, 0, false).expect("send");
    }
    t.join().expect("consumer");
    n as f64 / start.elapsed().as_secs_f64()
}

fn ping_pong(wake: Wake, spin: Duration, n: u64) -> (f64, f64) {
    let (mut p, mut c, mut r) = pair(wake, spin);
    let t = std::thread::spawn(move || {
        for _ in 0..n {
            let d = c.recv_item(T).expect("item");
            r.send_release(d.slot, d.seq, false).expect("release");
        }
    });
    let mut half = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = Instant::now();
        p.send_item((i % 4) as usize, 1, 0, false).expect("send");
        p.recv_release(T).expect("release");
        half.push(s.elapsed().as_nanos() as f64 / 2.0 / 1000.0);
    }
    t.join().expect("consumer");
    half.sort_by(f64::total_cmp);
    let at = |q: f64| half[((half.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    println!("descriptor ring, two threads, {n} items per cell");
    for spin in [Duration::ZERO, DEFAULT_SPIN] {
        for wake in [Wake::Futex, Wake::Pipe] {
            let rate = stream(wake, spin, n);
            let (p50, p99) = ping_pong(wake, spin, (n / 20).max(100));
            println!(
                "{wake:?}, spin {spin:?}: stream {:.2} M descriptors/s; ping-pong one way p50 {p50:.1} µs, p99 {p99:.1} µs",
                rate / 1e6
            );
        }
    }
}

//! Ring tests: the honest protocol, then a hostile peer that writes the
//! shared words directly.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const SIZES: [u64; 4] = [4096, 4096, 8192, 100];
const SHORT: Duration = Duration::from_millis(50);

/// Both halves of a consumer's end, used from one thread.
#[derive(Debug)]
struct Both {
    items: ConsumerRing,
    releases: ConsumerReleases,
}

impl std::ops::Deref for Both {
    type Target = ConsumerRing;
    fn deref(&self) -> &ConsumerRing {
        &self.items
    }
}

impl std::ops::DerefMut for Both {
    fn deref_mut(&mut self) -> &mut ConsumerRing {
        &mut self.items
    }
}

impl Both {
    fn send_release(&mut self, slot: usize, seq: u64, socket: bool) -> Result<ReleaseDesc> {
        self.releases.send_release(slot, seq, socket)
    }
}

/// A producer end, a consumer end, and a raw view of the shared memory
/// for playing the hostile peer.
fn pair(wake: Wake) -> (ProducerRing, Both, SharedWords) {
    let p = ProducerRing::create(&SIZES, wake, "consumer 0").unwrap();
    let fds: Vec<OwnedFd> = p
        .shared_fds()
        .into_iter()
        .map(|f| f.try_clone_to_owned().unwrap())
        .collect();
    let raw = SharedWords::map(&fds[0], ring_len(SIZES.len()) / 8, true).unwrap();
    let (items, releases) = ConsumerRing::open(fds, &SIZES, "producer").unwrap();
    (p, Both { items, releases }, raw)
}

fn w(raw: &SharedWords, i: usize) -> &AtomicU64 {
    raw.word(i).unwrap()
}

fn item_word(raw: &SharedWords, index: usize, field: usize) -> &AtomicU64 {
    w(raw, W_ITEMS + index * ITEM_WORDS + field)
}

fn rel_word(raw: &SharedWords, index: usize, field: usize) -> &AtomicU64 {
    w(
        raw,
        W_ITEMS + SIZES.len() * ITEM_WORDS + index * REL_WORDS + field,
    )
}

/// How a forged descriptor is published: by the head word alone, or by
/// the descriptor's mark alone.
#[derive(Debug, Clone, Copy)]
enum By {
    Head,
    Mark,
}

/// Writes item descriptor `index` (slot, length, sequence, sent at,
/// fence) and publishes `count` items by head or by mark, as a (possibly
/// hostile) producer would.
fn forge_item_by(raw: &SharedWords, by: By, index: usize, d: [u64; 5], count: u64) {
    for (i, v) in d.into_iter().enumerate() {
        item_word(raw, index, i).store(v, Ordering::Relaxed);
    }
    match by {
        By::Head => w(raw, W_ITEM_HEAD).store(count, Ordering::Release),
        By::Mark => item_word(raw, index, ITEM_MARK).store(count, Ordering::Release),
    }
}

fn forge_item(raw: &SharedWords, index: usize, d: [u64; 5], head: u64) {
    forge_item_by(raw, By::Head, index, d, head)
}

/// Writes release descriptor `index` (slot, sequence, fence, items
/// taken) and publishes `count` releases by head or by mark.
fn forge_release_by(raw: &SharedWords, by: By, index: usize, d: [u64; 4], count: u64) {
    for (i, v) in [0, 1, 2, REL_TAKEN].into_iter().zip(d) {
        rel_word(raw, index, i).store(v, Ordering::Relaxed);
    }
    match by {
        By::Head => w(raw, W_REL_HEAD).store(count, Ordering::Release),
        By::Mark => rel_word(raw, index, REL_MARK).store(count, Ordering::Release),
    }
}

fn forge_release(raw: &SharedWords, index: usize, d: [u64; 4], head: u64) {
    forge_release_by(raw, By::Head, index, d, head)
}

#[track_caller]
fn assert_protocol<T: std::fmt::Debug>(r: Result<T>, needle: &str) -> Error {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert_eq!(e.errno(), Some(Errno::PROTO));
    assert!(e.to_string().contains(needle), "'{e}' lacks '{needle}'");
    e
}

// ---- the honest protocol --------------------------------------------------

#[test]
fn items_and_releases_round_trip_with_fence_tags() {
    for wake in [Wake::Futex, Wake::Pipe] {
        let (mut p, mut c, _raw) = pair(wake);
        assert_eq!(c.try_recv_item().unwrap(), None);
        let a = p.send_item(2, 8000, 11, false).unwrap();
        let b = p.send_item(0, 1, 12, true).unwrap();
        assert_eq!((a.seq, a.fence), (1, FenceRef::Signalled));
        assert_eq!((b.seq, b.fence), (2, FenceRef::Socket(1)));
        assert_eq!(c.recv_item(SHORT).unwrap(), a);
        assert_eq!(c.recv_item(SHORT).unwrap(), b);
        assert_eq!(c.held(), 2);
        assert_eq!(p.in_flight(), 2);
        // Releases in any order.
        let rb = c.send_release(0, 2, true).unwrap();
        let ra = c.send_release(2, 1, false).unwrap();
        assert_eq!(rb.fence, FenceRef::Socket(1));
        assert_eq!(p.recv_release(SHORT).unwrap(), rb);
        assert_eq!(p.try_recv_release().unwrap(), Some(ra));
        assert_eq!(p.try_recv_release().unwrap(), None);
        assert_eq!(p.in_flight(), 0);
        // The slots can be used again, and the ring wraps around.
        for round in 0..10u64 {
            for slot in 0..4 {
                p.send_item(slot, 100, round, false).unwrap();
            }
            for slot in 0..4 {
                let d = c.recv_item(SHORT).unwrap();
                assert_eq!(d.slot, slot);
                c.send_release(d.slot, d.seq, false).unwrap();
            }
            for _ in 0..4 {
                p.recv_release(SHORT).unwrap();
            }
        }
    }
}

#[test]
fn items_are_taken_on_one_thread_and_given_back_on_another() {
    // The producer, the taking half and the releasing half each on a
    // thread of their own: every item comes in order, every release
    // reaches the producer, and slots refilled as soon as their release
    // is read are never taken for ones still held.
    let (mut p, c, _raw) = pair(Wake::Pipe);
    let Both {
        mut items,
        mut releases,
    } = c;
    const N: u64 = 20_000;
    let (tx, rx) = std::sync::mpsc::sync_channel::<ItemDesc>(4);
    let taker = std::thread::spawn(move || {
        for n in 1..=N {
            let d = items.recv_item(Duration::from_secs(10)).unwrap();
            assert_eq!(d.seq, n);
            tx.send(d).unwrap();
        }
        items
    });
    let giver = std::thread::spawn(move || {
        for d in rx {
            releases.send_release(d.slot, d.seq, false).unwrap();
        }
        releases
    });
    let mut free: Vec<usize> = (0..4).collect();
    for n in 1..=N {
        let slot = match free.pop() {
            Some(s) => s,
            None => p.recv_release(Duration::from_secs(10)).unwrap().slot,
        };
        p.send_item(slot, n % 100, 0, false).unwrap();
    }
    let items = taker.join().unwrap();
    giver.join().unwrap();
    for _ in 0..4 {
        p.recv_release(SHORT).unwrap();
    }
    assert_eq!((items.held(), p.in_flight()), (0, 0));
    // A breach the taking half finds breaks the releasing half too (and
    // the other way round: `a_corrupt_release_tail_or_a_ring_never_drained_is_refused`).
    let (mut p, c, raw) = pair(Wake::Futex);
    let Both {
        mut items,
        releases: mut gives,
    } = c;
    p.send_item(0, 1, 0, false).unwrap();
    let d = items.recv_item(SHORT).unwrap();
    w(&raw, W_ITEM_HEAD).store(100, Ordering::Release);
    assert_protocol(items.try_recv_item(), "item head 100");
    assert_protocol(gives.send_release(d.slot, d.seq, false), "item head 100");
}

#[test]
fn local_misuse_is_invalid_input_not_protocol() {
    let (mut p, mut c, _raw) = pair(Wake::Futex);
    let kind = |r: Result<ItemDesc>| r.unwrap_err().kind();
    assert_eq!(kind(p.send_item(4, 1, 0, false)), ErrorKind::InvalidInput);
    assert_eq!(kind(p.send_item(3, 101, 0, false)), ErrorKind::InvalidInput);
    p.send_item(3, 100, 0, false).unwrap();
    assert_eq!(kind(p.send_item(3, 1, 0, false)), ErrorKind::InvalidInput);
    let e = c.send_release(3, 1, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let d = c.recv_item(SHORT).unwrap();
    assert_eq!(
        c.send_release(d.slot, d.seq + 1, false).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    c.send_release(d.slot, d.seq, false).unwrap();
}

#[test]
fn a_stream_between_threads_keeps_order_in_both_wake_modes() {
    for wake in [Wake::Futex, Wake::Pipe] {
        let (mut p, mut c, _raw) = pair(wake);
        const N: u64 = 20_000;
        let t = std::thread::spawn(move || {
            for n in 1..=N {
                let d = c.recv_item(Duration::from_secs(10)).unwrap();
                assert_eq!(d.seq, n);
                assert_eq!(d.len, n % 100);
                c.send_release(d.slot, d.seq, n % 7 == 0).unwrap();
            }
        });
        let mut free: Vec<usize> = (0..4).collect();
        let mut rel_tags = 0;
        for n in 1..=N {
            let slot = match free.pop() {
                Some(s) => s,
                None => {
                    let r = p.recv_release(Duration::from_secs(10)).unwrap();
                    if let FenceRef::Socket(t) = r.fence {
                        rel_tags += 1;
                        assert_eq!(t, rel_tags);
                    }
                    r.slot
                }
            };
            p.send_item(slot, n % 100, n, false).unwrap();
        }
        t.join().unwrap();
    }
}

/// Runs `f` on a thread; fails the test if it takes longer than `limit`.
fn bounded<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("did not finish within {limit:?} ({e}): a hang"))
}

#[test]
fn a_producer_that_blocks_and_fills_the_wake_up_fds_cannot_stall_the_consumer() {
    use rustix::fs::{fcntl_setfl, open, Mode, OFlags};
    use std::os::fd::AsRawFd;
    let (mut p, c, _raw) = pair(Wake::Pipe);
    // The producer made both wake-up pipes and keeps the file descriptions
    // it sent: it clears O_NONBLOCK on both, fills the pipe the consumer
    // writes to wake it, and leaves empty the one the consumer drains.
    let sent: Vec<OwnedFd> = p.shared_fds()[1..]
        .iter()
        .map(|f| f.try_clone_to_owned().unwrap())
        .collect();
    let filler = open(
        format!("/proc/self/fd/{}", sent[1].as_raw_fd()),
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let mut n = 0;
    while rustix::io::write(&filler, &[0; 4096]).is_ok() {
        n += 1;
    }
    assert!(n > 0);
    for f in &sent {
        fcntl_setfl(f, OFlags::empty()).unwrap();
    }
    p.send_item(0, 1, 0, false).unwrap();
    // The producer sleeps: a release must wake it, through the full pipe.
    assert!(!p.begin_wait().unwrap());
    bounded(Duration::from_secs(5), move || {
        let mut c = c;
        let d = c.try_recv_item().unwrap().unwrap();
        c.send_release(d.slot, d.seq, false).unwrap();
        // The consumer's own sleep ends by draining its empty pipe.
        assert!(!c.begin_wait().unwrap());
        c.end_wait();
        // And a sleep through the ring ends at its bound.
        assert_eq!(
            c.recv_item(Duration::from_millis(20)).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
    });
    p.end_wait();
}

#[test]
fn a_wake_up_pipe_hung_up_by_the_producer_makes_no_wait_spin() {
    let (p, mut c, _raw) = pair(Wake::Pipe);
    // Every write end of the consumer's pipe closes with the producer's
    // end: the read end polls ready for good, with nothing in it.
    drop(p);
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let (c0, t0) = (cpu(), Instant::now());
    let e = c.recv_item(Duration::from_millis(300)).unwrap_err();
    let (used, wall) = (cpu() - c0, t0.elapsed());
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(wall < Duration::from_secs(2), "{wall:?}");
    assert!(used < wall / 4, "the wait used {used:?} of CPU in {wall:?}");
}

#[test]
fn no_wake_up_reaches_a_consumer_that_is_not_sleeping() {
    let (mut p, mut c, raw) = pair(Wake::Pipe);
    for slot in 0..3 {
        p.send_item(slot, 1, 0, false).unwrap();
    }
    // The consumer never slept: its eventfd was never written.
    let mut b = [0u8; 8];
    assert_eq!(
        rustix::io::read(c.wait_fd().unwrap(), &mut b).unwrap_err(),
        Errno::AGAIN
    );
    // The batch is taken with no wait.
    for _ in 0..3 {
        assert!(c.try_recv_item().unwrap().is_some());
    }
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        0
    );
    // A sleeping consumer is woken by the next item.
    let t = std::thread::spawn(move || c.recv_item(Duration::from_secs(10)).map(|d| d.slot));
    while raw
        .word32(H_CONSUMER_WAITING)
        .unwrap()
        .load(Ordering::SeqCst)
        == 0
    {
        std::thread::yield_now();
    }
    p.send_item(3, 1, 0, false).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), 3);
}

#[test]
fn waits_time_out() {
    for wake in [Wake::Futex, Wake::Pipe] {
        let (mut p, mut c, _raw) = pair(wake);
        let t = Instant::now();
        let e = c.recv_item(SHORT).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        let e = p.recv_release(SHORT).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() >= 2 * SHORT - Duration::from_millis(10));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

// ---- opening a ring the peer made ---------------------------------------

fn sealed_memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

#[test]
fn a_forged_ring_memfd_is_refused_with_a_named_cause() {
    let len = ring_len(4) as u64;
    let all = SealFlags::SHRINK | SealFlags::GROW;
    assert_protocol(
        ConsumerRing::open(vec![sealed_memfd(len, SealFlags::GROW)], &SIZES, "p"),
        "not sealed",
    );
    assert_protocol(
        ConsumerRing::open(vec![sealed_memfd(len * 2, all)], &SIZES, "p"),
        "bytes, expected",
    );
    assert_protocol(
        ConsumerRing::open(vec![sealed_memfd(len, all)], &SIZES, "p"),
        "ring magic",
    );
    // Right magic, wrong capacity.
    let p = ProducerRing::create(&SIZES[..2], Wake::Futex, "c").unwrap();
    let fd = p.shared_fds()[0].try_clone_to_owned().unwrap();
    let mut sizes8 = SIZES.to_vec();
    sizes8.extend_from_slice(&SIZES);
    let fd2 = fd.try_clone().unwrap();
    // (Rings of 1, 2 and 8 slots all fit one page.)
    assert_protocol(
        ConsumerRing::open(vec![fd], &sizes8, "p"),
        "ring capacity 2, expected 8 (the pool size)",
    );
    assert_protocol(
        ConsumerRing::open(vec![fd2], &SIZES[..1], "p"),
        "ring capacity 2, expected 1",
    );
    // Wake fds that are not pipe ends of the right direction, or ends on
    // which reads and writes could be made to wait; a wrong number of fds.
    let p = ProducerRing::create(&SIZES, Wake::Futex, "c").unwrap();
    let m = || p.shared_fds()[0].try_clone_to_owned().unwrap();
    let ev = || rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    assert_protocol(
        ConsumerRing::open(vec![m(), ev(), ev()], &SIZES, "p"),
        "the consumer's wake-up fd is not the read end of a pipe",
    );
    let (r, w) = rustix::pipe::pipe().unwrap();
    assert_protocol(
        ConsumerRing::open(vec![m(), w, r], &SIZES, "p"),
        "the consumer's wake-up fd is not the read end of a pipe",
    );
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let (r2, _w2) = rustix::pipe::pipe().unwrap();
    assert_protocol(
        ConsumerRing::open(vec![m(), r, r2], &SIZES, "p"),
        "the producer's wake-up fd is not the write end of a pipe",
    );
    // A pipe opened again through /proc (as a named FIFO is opened) takes
    // no RWF_NOWAIT: a peer holding it could make this side's reads wait.
    let (r, w) = rustix::pipe::pipe().unwrap();
    let again = |fd: &OwnedFd, mode| {
        use std::os::fd::AsRawFd;
        rustix::fs::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            mode | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    };
    let (r_again, w_again) = (
        again(&r, rustix::fs::OFlags::RDONLY),
        again(&w, rustix::fs::OFlags::WRONLY),
    );
    assert_protocol(
        ConsumerRing::open(vec![m(), r_again, w.try_clone().unwrap()], &SIZES, "p"),
        "the consumer's wake-up fd does not take reads and writes that never wait",
    );
    assert_protocol(
        ConsumerRing::open(vec![m(), r.try_clone().unwrap(), w_again], &SIZES, "p"),
        "the producer's wake-up fd does not take reads and writes that never wait",
    );
    assert_protocol(
        ConsumerRing::open(vec![m(), m()], &SIZES, "p"),
        "expected 1 or 3",
    );
    assert_protocol(ConsumerRing::open(vec![], &SIZES, "p"), "expected 1 or 3");
}

// ---- a hostile producer -------------------------------------------------

#[test]
fn a_corrupt_item_head_is_a_protocol_error() {
    let (_p, mut c, raw) = pair(Wake::Futex);
    w(&raw, W_ITEM_HEAD).store(5, Ordering::Release);
    let e = assert_protocol(c.try_recv_item(), "item head 5 is outside 0..=4");
    // The ring stays broken, even once the word is put right.
    w(&raw, W_ITEM_HEAD).store(0, Ordering::Release);
    assert_eq!(c.try_recv_item().unwrap_err().to_string(), e.to_string());
    assert_eq!(c.recv_item(SHORT).unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn an_item_head_that_moves_back_or_wraps_is_refused() {
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    p.send_item(1, 1, 0, false).unwrap();
    c.try_recv_item().unwrap().unwrap();
    w(&raw, W_ITEM_HEAD).store(u64::MAX, Ordering::Release);
    // Still one seen and not taken: taken without reading the head again.
    c.try_recv_item().unwrap().unwrap();
    assert_protocol(c.try_recv_item(), "item head 18446744073709551615");
    // Back behind a head read before (the honest producer's item was
    // found by its mark; the empty ring's next look reads the head).
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    c.try_recv_item().unwrap().unwrap();
    assert_eq!(c.try_recv_item().unwrap(), None);
    w(&raw, W_ITEM_HEAD).store(0, Ordering::Release);
    assert_protocol(c.try_recv_item(), "item head 0 is outside 1..=5");
}

#[test]
fn a_mark_only_says_where_to_look_and_a_head_behind_the_marks_is_not_yet_written() {
    // Items published by their marks alone are taken, the head never
    // written; a head behind them later is not an error.
    let (_p, mut c, raw) = pair(Wake::Futex);
    forge_item_by(&raw, By::Mark, 0, [0, 1, 1, 0, 0], 1);
    forge_item_by(&raw, By::Mark, 1, [1, 1, 2, 0, 0], 2);
    assert_eq!(c.try_recv_item().unwrap().unwrap().seq, 1);
    assert_eq!(c.try_recv_item().unwrap().unwrap().seq, 2);
    assert_eq!(c.try_recv_item().unwrap(), None);
    w(&raw, W_ITEM_HEAD).store(1, Ordering::Release);
    assert_eq!(c.try_recv_item().unwrap(), None);
    // A mark other than the next count (ahead, from the last lap, or
    // any value) is not taken: the head decides, and nothing is there.
    for mark in [4, 2, u64::MAX, 0] {
        forge_item_by(&raw, By::Mark, 2, [2, 1, 3, 0, 0], mark);
        assert_eq!(c.try_recv_item().unwrap(), None, "mark {mark}");
    }
    // The head says it is there: taken, whatever its mark.
    w(&raw, W_ITEM_HEAD).store(3, Ordering::Release);
    assert_eq!(c.try_recv_item().unwrap().unwrap().seq, 3);
    assert_eq!(c.held(), 3);
    // After the producer's bye the head alone counts: an item past it,
    // marked as the next, is not taken.
    c.close().unwrap();
    forge_item_by(&raw, By::Mark, 3, [3, 1, 4, 0, 0], 4);
    assert_eq!(c.try_recv_item().unwrap(), None);

    // The same for releases, on the producer's side.
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    p.send_item(1, 1, 0, false).unwrap();
    c.recv_item(SHORT).unwrap();
    c.recv_item(SHORT).unwrap();
    forge_release_by(&raw, By::Mark, 0, [1, 2, 0, 2], 2);
    assert_eq!(p.try_recv_release().unwrap(), None, "a mark ahead");
    forge_release_by(&raw, By::Mark, 0, [1, 2, 0, 2], 1);
    assert_eq!(p.try_recv_release().unwrap().unwrap().seq, 2);
    w(&raw, W_REL_HEAD).store(0, Ordering::Release);
    assert_eq!(
        p.try_recv_release().unwrap(),
        None,
        "a head behind the marks"
    );
    forge_release(&raw, 1, [0, 1, 0, 2], 2);
    assert_eq!(p.try_recv_release().unwrap().unwrap().seq, 1);
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn forged_item_fields_are_named() {
    let cases: [([u64; 5], &str); 7] = [
        ([4, 1, 1, 0, 0], "item slot 4 is not below the pool size 4"),
        ([u64::MAX, 1, 1, 0, 0], "item slot 18446744073709551615"),
        (
            [3, 101, 1, 0, 0],
            "item length 101 is past the 100-byte buffer of slot 3",
        ),
        ([0, u64::MAX, 1, 0, 0], "item length 18446744073709551615"),
        ([0, 1, 0, 0, 0], "item sequence 0, expected 1 (replayed)"),
        ([0, 1, 2, 0, 0], "item sequence 2, expected 1 (skipped)"),
        ([0, 1, 1, 0, 2], "item fence reference 2, expected 0 or 1"),
    ];
    // Found by the head or by the mark, a descriptor is checked alike.
    for (d, needle) in cases {
        for by in [By::Head, By::Mark] {
            let (_p, mut c, raw) = pair(Wake::Futex);
            forge_item_by(&raw, by, 0, d, 1);
            assert_protocol(c.try_recv_item(), needle);
            assert_eq!(c.held(), 0, "{needle} ({by:?}): nothing taken");
        }
    }
}

#[test]
fn replayed_items_and_items_in_held_buffers_are_refused() {
    let (_p, mut c, raw) = pair(Wake::Futex);
    forge_item(&raw, 0, [0, 1, 1, 0, 1], 1);
    assert_eq!(
        c.try_recv_item().unwrap().unwrap().fence,
        FenceRef::Socket(1)
    );
    // The same descriptor again (a replay): sequence and fence tag.
    forge_item(&raw, 1, [1, 1, 1, 0, 0], 2);
    assert_protocol(c.try_recv_item(), "item sequence 1, expected 2 (replayed)");

    let (_p, mut c, raw) = pair(Wake::Futex);
    forge_item(&raw, 0, [0, 1, 1, 0, 1], 1);
    c.try_recv_item().unwrap().unwrap();
    forge_item(&raw, 1, [1, 1, 2, 0, 1], 2);
    assert_protocol(c.try_recv_item(), "item fence reference 1, expected 0 or 2");

    let (_p, mut c, raw) = pair(Wake::Futex);
    forge_item(&raw, 0, [2, 1, 1, 0, 0], 1);
    c.try_recv_item().unwrap().unwrap();
    forge_item(&raw, 1, [2, 1, 2, 0, 0], 2);
    assert_protocol(
        c.try_recv_item(),
        "item 2 in slot 2, which this consumer still holds (item 1)",
    );
}

#[test]
fn a_producer_that_stops_mid_batch_is_caught_or_times_out() {
    // It published two items but wrote only the first descriptor: the
    // second reads as zeros.
    let (_p, mut c, raw) = pair(Wake::Futex);
    forge_item(&raw, 0, [0, 1, 1, 0, 0], 2);
    c.recv_item(SHORT).unwrap();
    assert_protocol(c.recv_item(SHORT), "item sequence 0, expected 2 (replayed)");
    // It published one item of a batch of three and stopped.
    for wake in [Wake::Futex, Wake::Pipe] {
        let (mut p, mut c, _raw) = pair(wake);
        p.send_item(0, 1, 0, false).unwrap();
        c.recv_item(SHORT).unwrap();
        let t = Instant::now();
        assert_eq!(c.recv_item(SHORT).unwrap_err().kind(), ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_peer_that_keeps_clearing_the_waiting_word_costs_spinning_not_a_hang() {
    for wake in [Wake::Futex, Wake::Pipe] {
        let (_p, mut c, raw) = pair(wake);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let raw = Arc::new(raw);
        let r = raw.clone();
        let spinner = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                r.word32(H_CONSUMER_WAITING)
                    .unwrap()
                    .store(0, Ordering::SeqCst);
                r.word32(H_PRODUCER_WAITING)
                    .unwrap()
                    .store(1, Ordering::SeqCst);
            }
        });
        let t = Instant::now();
        let e = c.recv_item(Duration::from_millis(100)).unwrap_err();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_raised_waiting_word_only_costs_wake_ups() {
    let (mut p, mut c, raw) = pair(Wake::Futex);
    for n in 0..100u64 {
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .store(1, Ordering::SeqCst);
        let slot = (n % 4) as usize;
        p.send_item(slot, 1, 0, false).unwrap();
        let d = c.recv_item(SHORT).unwrap();
        c.send_release(d.slot, d.seq, false).unwrap();
        p.recv_release(SHORT).unwrap();
    }
}

#[test]
fn each_head_tail_and_waiting_word_has_a_cache_line_of_its_own() {
    let bytes = [
        W_ITEM_HEAD * 8,
        W_REL_TAIL * 8,
        H_PRODUCER_WAITING * 4,
        W_ITEM_TAIL * 8,
        W_REL_HEAD * 8,
        H_CONSUMER_WAITING * 4,
    ];
    let lines: std::collections::BTreeSet<usize> = bytes.iter().map(|b| b / 64).collect();
    assert_eq!(lines.len(), bytes.len(), "{bytes:?}");
    // Not the header's line (magic, capacity), not a descriptor's.
    assert!(
        lines.iter().all(|l| (1..W_ITEMS * 8 / 64).contains(l)),
        "{lines:?}"
    );
    assert_eq!(ring_len(4) % crate::sys::mem::page_size(), 0);
    assert!(ring_len(4) >= W_ITEMS * 8 + 4 * (ITEM_WORDS + REL_WORDS) * 8);
}

#[test]
fn a_corrupt_release_tail_or_a_ring_never_drained_is_refused() {
    // The consumer reads the producer's release tail only when its own
    // count says the release ring may be full: after 4 releases the
    // producer has not taken (as far as it knows), a 5th reads it.
    // The corrupt tail is there from the start: until then it is not read
    // (the four releases go through), and it decides nothing.
    let (_p, mut c, raw) = pair(Wake::Futex);
    w(&raw, W_REL_TAIL).store(7, Ordering::Release);
    for seq in 1..=4u64 {
        forge_item(&raw, (seq - 1) as usize, [0, 1, seq, 0, 0], seq);
        let d = c.recv_item(SHORT).unwrap();
        c.send_release(d.slot, d.seq, false).unwrap();
    }
    forge_item(&raw, 0, [0, 1, 5, 0, 0], 5);
    let d = c.recv_item(SHORT).unwrap();
    assert_protocol(
        c.send_release(d.slot, d.seq, false),
        "release tail 7 is outside 0..=4",
    );
    // Broken for good: the next call says the same.
    assert_protocol(
        c.send_release(d.slot, d.seq, false),
        "release tail 7 is outside 0..=4",
    );

    // A producer that reuses released slots without ever taking the
    // releases: the release ring fills.
    let (_p, mut c, raw) = pair(Wake::Futex);
    for seq in 1..=4u64 {
        forge_item(&raw, (seq - 1) as usize, [0, 1, seq, 0, 0], seq);
        let d = c.recv_item(SHORT).unwrap();
        c.send_release(d.slot, d.seq, false).unwrap();
    }
    forge_item(&raw, 0, [0, 1, 5, 0, 0], 5);
    let d = c.recv_item(SHORT).unwrap();
    assert_protocol(
        c.send_release(d.slot, d.seq, false),
        "release ring full: the producer took none of 4 releases",
    );
    // Found by the releasing half, it breaks the taking half too.
    assert_protocol(c.try_recv_item(), "release ring full");
}

// ---- a hostile consumer -------------------------------------------------

#[test]
fn forged_releases_are_named() {
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    c.recv_item(SHORT).unwrap();
    w(&raw, W_REL_HEAD).store(5, Ordering::Release);
    assert_protocol(p.try_recv_release(), "release head 5 is outside 0..=4");
    assert_protocol(p.send_item(1, 1, 0, false), "release head 5");
    // Slot, sequence, fence, items taken; found by the head or by the
    // mark, a release is checked alike.
    let cases: [([u64; 4], &str); 8] = [
        ([4, 1, 0, 1], "release slot 4 is not below the pool size 4"),
        (
            [1, 1, 0, 1],
            "release sequence 1 of slot 1: that slot has no item in flight",
        ),
        (
            [0, 2, 0, 1],
            "release sequence 2 of slot 0: its item in flight is sequence 1",
        ),
        ([0, 0, 0, 1], "release sequence 0 of slot 0"),
        ([0, 1, 2, 1], "release fence reference 2, expected 0 or 1"),
        // Released before it was taken off the ring.
        (
            [0, 1, 0, 0],
            "release sequence 1 of an item not yet taken off the ring (0 taken)",
        ),
        // More taken than was ever published.
        (
            [0, 1, 0, 2],
            "release of slot 0 says 2 items taken, outside 0..=1",
        ),
        ([0, 1, 0, u64::MAX], "says 18446744073709551615 items taken"),
    ];
    for (d, needle) in cases {
        for by in [By::Head, By::Mark] {
            let (mut p, mut c, raw) = pair(Wake::Futex);
            p.send_item(0, 1, 0, false).unwrap();
            c.recv_item(SHORT).unwrap();
            forge_release_by(&raw, by, 0, d, 1);
            assert_protocol(p.try_recv_release(), needle);
            assert_eq!(p.in_flight(), 1, "{needle} ({by:?}): nothing released");
            assert_protocol(p.send_item(1, 1, 0, false), needle);
        }
    }
    // The count of items taken never goes back.
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    p.send_item(1, 1, 0, false).unwrap();
    c.recv_item(SHORT).unwrap();
    c.recv_item(SHORT).unwrap();
    forge_release(&raw, 0, [1, 2, 0, 2], 1);
    assert_eq!(p.try_recv_release().unwrap().unwrap().seq, 2);
    forge_release(&raw, 1, [0, 1, 0, 1], 2);
    assert_protocol(
        p.try_recv_release(),
        "release of slot 0 says 1 items taken, outside 2..=2",
    );
    // A tail read meanwhile may be ahead of a release written before it:
    // not an error.
    let (mut p, mut c, _raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    p.send_item(1, 1, 0, false).unwrap();
    let d = c.recv_item(SHORT).unwrap();
    c.send_release(d.slot, d.seq, false).unwrap();
    c.recv_item(SHORT).unwrap();
    assert_eq!(p.untaken().unwrap(), (2, 0));
    assert_eq!(p.try_recv_release().unwrap().unwrap().seq, 1);
}

#[test]
fn a_replayed_release_is_refused() {
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    let d = c.recv_item(SHORT).unwrap();
    c.send_release(d.slot, d.seq, false).unwrap();
    p.recv_release(SHORT).unwrap();
    forge_release(&raw, 1, [0, 1, 0, 1], 2);
    assert_protocol(
        p.try_recv_release(),
        "release sequence 1 of slot 0: that slot has no item in flight",
    );
}

#[test]
fn a_corrupt_item_tail_is_refused_where_it_is_read() {
    // The producer reads the consumer's item tail when asked how many
    // items wait (`untaken`)…
    for bad in [2u64, u64::MAX] {
        let (mut p, _c, raw) = pair(Wake::Futex);
        p.send_item(0, 1, 0, false).unwrap();
        w(&raw, W_ITEM_TAIL).store(bad, Ordering::Release);
        let why = format!("item tail {bad} is outside 0..=1");
        assert_protocol(p.untaken(), &why);
        assert_protocol(p.send_item(1, 1, 0, false), &why);
    }
    // …never behind what a release said was taken. (Its read when its
    // count says the item ring may be full cannot be reached through a
    // slot that is free: every release says at least the item it gives
    // back was taken, so every item not yet given back that the count
    // holds is one in flight.)
    let (mut p, mut c, raw) = pair(Wake::Futex);
    p.send_item(0, 1, 0, false).unwrap();
    p.send_item(1, 1, 0, false).unwrap();
    c.recv_item(SHORT).unwrap();
    let d = c.recv_item(SHORT).unwrap();
    c.send_release(d.slot, d.seq, false).unwrap();
    assert_eq!(p.try_recv_release().unwrap().unwrap().seq, 2);
    w(&raw, W_ITEM_TAIL).store(1, Ordering::Release);
    assert_protocol(p.untaken(), "item tail 1 is outside 2..=2");
}

#[test]
fn a_consumer_that_stops_releasing_makes_the_producer_time_out() {
    for wake in [Wake::Futex, Wake::Pipe] {
        let (mut p, mut c, _raw) = pair(wake);
        for slot in 0..4 {
            p.send_item(slot, 1, 0, false).unwrap();
        }
        c.recv_item(SHORT).unwrap();
        let t = Instant::now();
        assert_eq!(
            p.recv_release(SHORT).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

// ---- sleeping outside the ring (with a socket, or tokio) ----------------

fn readable(fd: BorrowedFd<'_>, ms: i64) -> bool {
    let mut p = [PollFd::new(&fd, PollFlags::IN)];
    let ts = rustix::time::Timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    rustix::event::poll(&mut p, Some(&ts)).unwrap() == 1
}

#[test]
fn begin_wait_arms_the_wake_fd_only_when_nothing_is_there() {
    let (mut p, mut c, raw) = pair(Wake::Pipe);
    // Nothing there: armed; an item then makes the fd readable.
    assert!(!c.begin_wait().unwrap());
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        1
    );
    p.send_item(1, 1, 0, false).unwrap();
    assert!(readable(c.wait_fd().unwrap(), 1000));
    c.end_wait();
    assert!(!readable(c.wait_fd().unwrap(), 0), "drained");
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        0
    );
    // Something there: not armed, no sleep.
    assert!(c.begin_wait().unwrap());
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        0
    );
    let d = c.try_recv_item().unwrap().unwrap();
    // The same on the producer's side, for releases.
    assert!(!p.begin_wait().unwrap());
    c.send_release(d.slot, d.seq, false).unwrap();
    assert!(readable(p.wait_fd().unwrap(), 1000));
    p.end_wait();
    assert!(p.begin_wait().unwrap());
    assert_eq!(p.try_recv_release().unwrap().unwrap().slot, 1);
    // A corrupt head is caught while arming, too.
    w(&raw, W_ITEM_HEAD).store(99, Ordering::Release);
    assert_protocol(c.begin_wait(), "item head 99");
}

// ---- sleeping on the waiting word itself ----------------------------------

#[test]
fn a_consumer_asleep_on_the_word_is_woken_by_futex_not_its_eventfd() {
    for wake in [Wake::Futex, Wake::Pipe] {
        let (mut p, mut c, raw) = pair(wake);
        let raw = Arc::new(raw);
        let r = raw.clone();
        let t = std::thread::spawn(move || {
            let t0 = Instant::now();
            let got = c.sleep_on_word(Duration::from_secs(10)).unwrap();
            (got, t0.elapsed(), c)
        });
        let want = if wake == Wake::Pipe {
            SLEEPS_ON_WORD
        } else {
            1
        };
        while r.word32(H_CONSUMER_WAITING).unwrap().load(Ordering::SeqCst) != want {
            std::thread::yield_now();
        }
        std::thread::sleep(SHORT);
        p.send_item(2, 1, 0, false).unwrap();
        let (got, slept, mut c) = t.join().unwrap();
        assert!(got, "{wake:?}: an item is there");
        assert!(
            slept < Duration::from_secs(5),
            "{wake:?}: woken, not timed out"
        );
        assert_eq!(
            raw.word32(H_CONSUMER_WAITING)
                .unwrap()
                .load(Ordering::SeqCst),
            0,
            "lowered after the sleep"
        );
        if let Some(fd) = c.wait_fd() {
            assert!(!readable(fd, 0), "the eventfd was not written");
        }
        assert_eq!(c.try_recv_item().unwrap().unwrap().slot, 2);
        // An item already there: no sleep at all.
        p.send_item(0, 1, 0, false).unwrap();
        let t0 = Instant::now();
        assert!(c.sleep_on_word(Duration::from_secs(10)).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_sleep_on_the_word_is_bounded_and_reports_nothing_to_take() {
    let (_p, mut c, raw) = pair(Wake::Pipe);
    // Nobody publishes: the sleep lasts its bound, then says "nothing".
    let t0 = Instant::now();
    assert!(!c.sleep_on_word(SHORT).unwrap());
    assert!(t0.elapsed() >= SHORT - Duration::from_millis(5));
    assert!(t0.elapsed() < Duration::from_secs(5));
    // A peer that wakes the word with nothing published ends the sleep
    // early with nothing to take (the caller then stops sleeping on the
    // word).
    let raw = Arc::new(raw);
    let r = raw.clone();
    let waker = std::thread::spawn(move || {
        let word = r.word32(H_CONSUMER_WAITING).unwrap();
        while word.load(Ordering::SeqCst) != SLEEPS_ON_WORD {
            std::thread::yield_now();
        }
        std::thread::sleep(SHORT);
        futex::wake(word, 1).unwrap();
    });
    let t0 = Instant::now();
    assert!(!c.sleep_on_word(Duration::from_secs(10)).unwrap());
    assert!(t0.elapsed() < Duration::from_secs(5), "woken early");
    waker.join().unwrap();
    // A peer that keeps lowering the word: the sleep ends early or at its
    // bound, with nothing to take, never past it.
    let r = raw.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let spoiler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            r.word32(H_CONSUMER_WAITING)
                .unwrap()
                .store(0, Ordering::SeqCst);
        }
    });
    let t0 = Instant::now();
    let got = c.sleep_on_word(Duration::from_millis(500)).unwrap();
    stop.store(true, Ordering::Relaxed);
    spoiler.join().unwrap();
    assert!(!got);
    assert!(t0.elapsed() < Duration::from_secs(5));
    // A corrupt head is caught, not slept on.
    w(&raw, W_ITEM_HEAD).store(99, Ordering::Release);
    assert_protocol(c.sleep_on_word(SHORT), "item head 99");
}

#[test]
fn a_word_sleep_in_steps_needs_no_borrow_of_the_ring_while_asleep() {
    let (mut p, mut c, raw) = pair(Wake::Pipe);
    let sleeper = c.sleeper();
    assert!(sleeper.wait_fd().is_some());
    // Nothing there: raised, slept (bounded) without the ring, lowered.
    assert!(!c.begin_word_sleep().unwrap());
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        SLEEPS_ON_WORD
    );
    let t0 = Instant::now();
    sleeper.sleep_on_word(SHORT).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!c.end_word_sleep().unwrap());
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        0
    );
    // The ring is used meanwhile (here: an item published and seen by
    // `end_word_sleep`), and the sleeper, apart from it, is woken.
    assert!(!c.begin_word_sleep().unwrap());
    let t = std::thread::spawn(move || {
        let t0 = Instant::now();
        sleeper.sleep_on_word(Duration::from_secs(10)).unwrap();
        t0.elapsed()
    });
    std::thread::sleep(SHORT);
    p.send_item(1, 1, 0, false).unwrap();
    assert!(t.join().unwrap() < Duration::from_secs(5), "woken");
    assert!(c.end_word_sleep().unwrap());
    // An item already there: begin says so and lowers the word.
    assert!(c.begin_word_sleep().unwrap());
    assert_eq!(
        raw.word32(H_CONSUMER_WAITING)
            .unwrap()
            .load(Ordering::SeqCst),
        0
    );
}

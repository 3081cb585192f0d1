//! Passing buffers and fences between processes: round trips, refusals of
//! hostile messages, the streaming pool, peers that die, fd leaks.
//!
//! Every test holds `LOCK`, so that counting `/proc/self/fd` is not
//! disturbed by another test of this binary opening fds meanwhile.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::{Channel, Listener, Message};
use dmabuf::{Allocate, Buffer, ErrorKind, Fence, FenceStatus, Portable, UserFence};
use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

const T: Option<Duration> = Some(Duration::from_secs(10));

fn portable(size: u64, name: &str) -> Buffer {
    Portable.allocate(size, name).unwrap()
}

fn memfd(size: u64, seals: SealFlags) -> OwnedFd {
    let fd = memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&fd, size).unwrap();
    if !seals.is_empty() {
        fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// A hand-made message: header + body (the format of the module docs).
fn raw(ty: u16, body: &[u8], fds: u16) -> Vec<u8> {
    let mut out = b"DMBS".to_vec();
    out.extend_from_slice(&dmabuf::share::VERSION.to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&fds.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn buffer_body(id: u64, size: u64, kind: u8, detail: &str, name: &str) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[kind, detail.len() as u8, name.len() as u8, 0]);
    b.extend_from_slice(detail.as_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

fn fill(buf: &Buffer, v: u8) {
    let map = buf.map().unwrap();
    map.write().unwrap().fill(v);
}

fn all_bytes_are(buf: &Buffer, len: usize, v: u8) -> bool {
    let map = buf.map_read_only().unwrap();
    let w = map.read().unwrap();
    let all = w.bytes().subslice(0..len).unwrap().iter().all(|b| b == v);
    all
}

#[test]
fn buffer_round_trip_shares_memory() {
    let _g = lock();
    let before = open_fds();
    {
        let (a, b) = Channel::pair().unwrap();
        let buf = portable(8192, "frames-0");
        fill(&buf, 0x5a);
        a.send(&Message::Buffer {
            id: 42,
            buffer: buf.clone(),
        })
        .unwrap();
        let Message::Buffer { id, buffer } = b.recv(T).unwrap() else {
            panic!("not a buffer")
        };
        assert_eq!(id, 42);
        assert_eq!(buffer.size(), 8192);
        assert_eq!(buffer.name(), "frames-0");
        assert_eq!(buffer.kind(), &dmabuf::BufferKind::Portable);
        assert!(all_bytes_are(&buffer, 8192, 0x5a));
        // Writes on one side are seen on the other: the same memory.
        fill(&buffer, 0x11);
        assert!(all_bytes_are(&buf, 8192, 0x11));
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn fence_round_trip_signal_and_failure_travel() {
    let _g = lock();
    let before = open_fds();
    {
        let (a, b) = Channel::pair().unwrap();
        let f = UserFence::new().unwrap();
        a.send(&Message::Fence {
            tag: 7,
            fence: f.clone().into(),
        })
        .unwrap();
        let Message::Fence { tag, fence } = b.recv(T).unwrap() else {
            panic!("not a fence")
        };
        assert_eq!(tag, 7);
        assert_eq!(fence.status(), FenceStatus::Active);
        f.signal().unwrap();
        fence.wait(Some(Duration::from_secs(5))).unwrap();

        // A signalled fence travels as no fence at all.
        a.send(&Message::Fence {
            tag: 8,
            fence: Fence::Signalled,
        })
        .unwrap();
        let Message::Fence { fence, .. } = b.recv(T).unwrap() else {
            panic!()
        };
        assert!(matches!(fence, Fence::Signalled));

        // Several fences travel as a set; an error travels too.
        let (f1, f2) = (UserFence::new().unwrap(), UserFence::new().unwrap());
        let set = Fence::All(vec![Fence::from(f1.clone()), Fence::from(f2.clone())].into());
        a.send(&Message::Fence { tag: 9, fence: set }).unwrap();
        let Message::Fence { fence, .. } = b.recv(T).unwrap() else {
            panic!()
        };
        f1.signal().unwrap();
        f2.fail(rustix::io::Errno::IO).unwrap();
        let e = fence.wait(Some(Duration::from_secs(5))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FenceFailed);
        assert_eq!(e.errno(), Some(rustix::io::Errno::IO));

        // Control messages.
        a.send(&Message::Bye).unwrap();
        assert!(matches!(b.recv(T).unwrap(), Message::Bye));
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

/// Sends `bytes` with `fds` from a hostile peer and returns the receiver's
/// error text, checking its kind and that no fd stayed open.
fn refused(bytes: &[u8], fds: &[BorrowedFd<'_>]) -> String {
    let before = open_fds();
    let (a, b) = Channel::pair().unwrap();
    a.send_raw(bytes, fds).unwrap();
    let e = b.recv(T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    drop((a, b));
    assert_eq!(open_fds(), before, "fds leaked after: {e}");
    e.to_string()
}

#[test]
fn every_validation_failure_is_refused_with_a_clear_message() {
    let _g = lock();
    let sealed = memfd(4096, SealFlags::SHRINK | SealFlags::GROW);
    let unsealed = memfd(4096, SealFlags::empty());
    let only_shrink = memfd(4096, SealFlags::SHRINK);
    let (pr, pw) = rustix::pipe::pipe().unwrap();

    let e = refused(
        &raw(1, &buffer_body(1, 4096, 1, "", "x"), 1),
        &[unsealed.as_fd()],
    );
    assert!(
        e.contains("memfd lacks F_SEAL_SHRINK and F_SEAL_GROW"),
        "{e}"
    );
    assert!(e.contains("SIGBUS"), "{e}");
    let e = refused(
        &raw(1, &buffer_body(1, 4096, 1, "", "x"), 1),
        &[only_shrink.as_fd()],
    );
    assert!(e.contains("memfd lacks F_SEAL_GROW"), "{e}");
    let e = refused(
        &raw(1, &buffer_body(1, 8192, 1, "", "x"), 1),
        &[sealed.as_fd()],
    );
    assert!(
        e.contains("announces 8192 bytes but the fd has 4096"),
        "{e}"
    );
    let e = refused(&raw(1, &buffer_body(1, 4096, 1, "", "x"), 1), &[pr.as_fd()]);
    assert!(e.contains("not a memfd"), "{e}");
    let e = refused(
        &raw(1, &buffer_body(1, 4096, 2, "", "x"), 1),
        &[sealed.as_fd()],
    );
    assert!(e.contains("not a dma-buf"), "{e}");
    let e = refused(
        &raw(1, &buffer_body(1, 4096, 3, "system", "x"), 1),
        &[sealed.as_fd()],
    );
    assert!(e.contains("not a dma-buf"), "{e}");

    // fd counts: one more, one fewer than the message says.
    let e = refused(&raw(6, &[], 0), &[sealed.as_fd()]);
    assert!(e.contains("header announces 0 fds but 1 arrived"), "{e}");
    let e = refused(&raw(1, &buffer_body(1, 4096, 1, "", "x"), 1), &[]);
    assert!(e.contains("header announces 1 fds but 0 arrived"), "{e}");
    let e = refused(
        &raw(1, &buffer_body(1, 4096, 1, "", "x"), 2),
        &[sealed.as_fd(), pr.as_fd()],
    );
    assert!(
        e.contains("buffer message needs 1 fds but 2 arrived"),
        "{e}"
    );
    // Far more fds than any message carries: the control data is cut.
    let many: Vec<BorrowedFd<'_>> = (0..20).map(|_| pr.as_fd()).collect();
    let e = refused(&raw(6, &[], 20), &many);
    assert!(
        e.contains("more fds were attached than any message carries"),
        "{e}"
    );

    // User fences: the wake fd must be a pipe's read end, the memfd a fence.
    let mut fence_body = 3u64.to_le_bytes().to_vec();
    fence_body.extend_from_slice(&[1, 2]);
    let e = refused(&raw(2, &fence_body, 2), &[sealed.as_fd(), pw.as_fd()]);
    assert!(e.contains("wake fd is not the read end of a pipe"), "{e}");
    let f = UserFence::new().unwrap();
    let e = refused(&raw(2, &fence_body, 2), &[sealed.as_fd(), f.wake_fd()]);
    assert!(e.contains("bad magic"), "{e}");
    let e = refused(&raw(2, &fence_body, 2), &[unsealed.as_fd(), f.wake_fd()]);
    assert!(e.contains("not sealed"), "{e}");
    // A sync file must be a sync file.
    let mut sync_body = 3u64.to_le_bytes().to_vec();
    sync_body.extend_from_slice(&[1, 1]);
    let e = refused(&raw(2, &sync_body, 1), &[sealed.as_fd()]);
    assert!(e.contains("not a sync file"), "{e}");

    // Malformed bytes.
    let e = refused(b"hello, this is not a message", &[]);
    assert!(e.contains("bad magic"), "{e}");
    let e = refused(&vec![0u8; 4000], &[]);
    assert!(e.contains("message longer than"), "{e}");
    // Another version, older or newer, is refused by number.
    for v in [dmabuf::share::VERSION - 1, dmabuf::share::VERSION + 1] {
        let mut other = raw(6, &[], 0);
        other[4..6].copy_from_slice(&v.to_le_bytes());
        let e = refused(&other, &[]);
        assert!(
            e.contains(&format!("protocol version {v} is not supported")),
            "{e}"
        );
    }
}

#[test]
fn the_producer_takes_releases_in_batches() {
    let _g = lock();
    let (p, c) = Channel::pair().unwrap();
    let n = 2 * dmabuf::share::pool::RELEASE_BATCH;
    let bufs = (0..n).map(|i| portable(4096, &format!("b{i}"))).collect();
    let mut producer = Producer::new(bufs, vec![p]).unwrap();
    let mut consumer = Consumer::new(c, T).unwrap();
    let send = |producer: &mut Producer| {
        let lease = producer.acquire(T).unwrap();
        let slot = lease.slot();
        lease.submit(16, Fence::Signalled).unwrap();
        slot
    };
    let first = send(&mut producer);
    let item = consumer.next(T).unwrap().unwrap();
    // Dropped: released on the ring.
    drop(item);
    // While more than one buffer in RELEASE_BATCH is free, acquire leaves
    // the release on the ring: the buffer still counts as in flight, and
    // is not leased again.
    let mut sent = vec![first];
    while n - sent.len() > n / dmabuf::share::pool::RELEASE_BATCH {
        sent.push(send(&mut producer));
        assert_eq!(producer.in_flight(), sent.len(), "release not read yet");
    }
    let mut all: Vec<usize> = sent.clone();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), sent.len(), "no buffer leased twice: {sent:?}");
    // Now few are free: the next acquire reads the releases first (the
    // first buffer came back, one more went out).
    send(&mut producer);
    assert_eq!(producer.in_flight(), sent.len(), "the release was read");
}

#[test]
fn pool_streams_with_back_pressure() {
    let _g = lock();
    let before = open_fds();
    {
        let (p, c) = Channel::pair().unwrap();
        let bufs = vec![portable(4096, "a"), portable(4096, "b")];
        let mut producer = Producer::new(bufs, vec![p]).unwrap();
        let mut consumer = Consumer::new(c, T).unwrap();
        assert_eq!(consumer.buffers().len(), 2);

        for v in [1u8, 2] {
            let lease = producer.acquire(T).unwrap();
            fill(lease.buffer(), v);
            lease.submit(4096, Fence::Signalled).unwrap();
        }
        assert_eq!(producer.in_flight(), 2);
        // Every buffer is in flight: no lease now, a timeout when waiting.
        assert!(producer.try_acquire().unwrap().is_none());
        let t0 = Instant::now();
        let e = producer
            .acquire(Some(Duration::from_millis(50)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(
            e.to_string().contains("all 2 buffers still in flight"),
            "{e}"
        );
        // It says where they are: with the consumer, untaken.
        assert!(
            e.to_string()
                .contains("holds 2, 2 untaken; 0 back with a release fence pending)"),
            "{e}"
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));

        let item = consumer.next(T).unwrap().unwrap();
        assert_eq!((item.seq(), item.len(), item.slot()), (1, 4096, 0));
        assert!(all_bytes_are(item.buffer(), 4096, 1));
        // Released with a pending fence: not reusable until it signals.
        let release = UserFence::new().unwrap();
        item.release(release.clone().into()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(producer.try_acquire().unwrap().is_none());
        release.signal().unwrap();
        let lease = producer.acquire(T).unwrap();
        assert_eq!(lease.slot(), 0);
        fill(lease.buffer(), 3);
        lease.submit(100, Fence::Signalled).unwrap();

        let item = consumer.next(T).unwrap().unwrap();
        assert!(all_bytes_are(item.buffer(), 4096, 2));
        drop(item); // dropping releases
        let item = consumer.next(T).unwrap().unwrap();
        assert_eq!((item.seq(), item.len()), (3, 100));
        assert!(all_bytes_are(item.buffer(), 100, 3));
        drop(item);
        producer.finish(T).unwrap();
        assert!(consumer.next(T).unwrap().is_none());
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn pool_reuses_a_buffer_only_when_every_consumer_released_it() {
    let _g = lock();
    let before = open_fds();
    {
        let (p1, c1) = Channel::pair().unwrap();
        let (p2, c2) = Channel::pair().unwrap();
        let mut producer = Producer::new(vec![portable(4096, "only")], vec![p1, p2]).unwrap();
        let mut a = Consumer::new(c1, T).unwrap();
        let mut b = Consumer::new(c2, T).unwrap();
        assert_eq!((a.index(), b.index()), (0, 1));
        let ready = UserFence::new().unwrap();
        let lease = producer.acquire(T).unwrap();
        fill(lease.buffer(), 9);
        lease.submit(4096, ready.clone().into()).unwrap();
        // The ready fence holds the consumers back until it signals.
        let e = a.next(Some(Duration::from_millis(30))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        ready.signal().unwrap();
        let ia = a.next(T).unwrap().unwrap();
        let ib = b.next(T).unwrap().unwrap();
        assert!(all_bytes_are(ia.buffer(), 4096, 9) && all_bytes_are(ib.buffer(), 4096, 9));
        ia.release(Fence::Signalled).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            producer.try_acquire().unwrap().is_none(),
            "reused while b holds it"
        );
        ib.release(Fence::Signalled).unwrap();
        assert!(producer.acquire(T).is_ok());
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn pool_refuses_a_release_on_the_socket() {
    let _g = lock();
    let (p, c) = Channel::pair().unwrap();
    let mut producer = Producer::new(vec![portable(4096, "x")], vec![p]).unwrap();
    let consumer = Consumer::new(c, T).unwrap();
    // The only buffer is in flight, so the next acquire waits and reads the
    // consumer's socket.
    producer
        .acquire(T)
        .unwrap()
        .submit(1, Fence::Signalled)
        .unwrap();
    // Releases travel on the ring; one on the socket breaks the protocol.
    consumer
        .channel()
        .send(&Message::Release {
            buffer: 0,
            seq: 1,
            fence: Fence::Signalled,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let e = producer.acquire(T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.to_string()
            .contains("unexpected release message from a consumer"),
        "{e}"
    );
    // The misbehaving consumer was dropped.
    assert_eq!(producer.consumers(), 0);
    assert_eq!(producer.acquire(T).unwrap_err().kind(), ErrorKind::PeerGone);
}

#[test]
fn consumer_leaving_cleanly_returns_its_buffers() {
    let _g = lock();
    let (p1, c1) = Channel::pair().unwrap();
    let (p2, c2) = Channel::pair().unwrap();
    let mut producer = Producer::new(vec![portable(4096, "x")], vec![p1, p2]).unwrap();
    let mut a = Consumer::new(c1, T).unwrap();
    let b = Consumer::new(c2, T).unwrap();
    producer
        .acquire(T)
        .unwrap()
        .submit(1, Fence::Signalled)
        .unwrap();
    drop(a.next(T).unwrap());
    b.leave().unwrap();
    if let Err(e) = producer.acquire(T) {
        panic!("{e}");
    }
    assert_eq!(producer.consumers(), 1);
}

// ---- peers in other processes -------------------------------------------

const ROLE: &str = "DMABUF_SHARE_TEST_ROLE";
const SOCK: &str = "DMABUF_SHARE_TEST_SOCKET";

/// Not a test of its own: the body of the child processes below (does
/// nothing unless started by one of them).
#[test]
fn peer_helper() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = std::env::var(SOCK).unwrap();
    let ch = Channel::connect(&path).unwrap();
    let say = |s: &str| println!("HELPER {s}");
    match role.as_str() {
        // Connects, then waits to be killed before sharing anything.
        "producer-silent" => {
            say("connected");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Shares, sends an item whose ready fence never signals, waits.
        "producer-stalls" => {
            let mut p = Producer::new(vec![portable(4096, "s")], vec![ch]).unwrap();
            let ready = UserFence::new().unwrap();
            p.acquire(T)
                .unwrap()
                .submit(4096, ready.clone().into())
                .unwrap();
            say("submitted");
            std::thread::sleep(Duration::from_secs(60));
            drop(ready);
        }
        // Shares, streams two items, then waits to be killed mid-stream.
        "producer-streams" => {
            let mut p =
                Producer::new(vec![portable(4096, "s"), portable(4096, "t")], vec![ch]).unwrap();
            for _ in 0..2 {
                p.acquire(T)
                    .unwrap()
                    .submit(4096, Fence::Signalled)
                    .unwrap();
            }
            say("streamed");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Takes every item and holds them, releasing nothing.
        "consumer-holds" => {
            let mut c = Consumer::new(ch, T).unwrap();
            let mut held = Vec::new();
            for _ in 0..2 {
                held.push(c.next(T).unwrap().unwrap());
            }
            say("holding");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Connects and exits before the pool is shared.
        "consumer-exits" => {
            drop(ch);
            say("gone");
        }
        r => panic!("unknown role {r}"),
    }
}

struct Helper {
    child: Child,
}

impl Helper {
    fn start(role: &str, path: &std::path::Path) -> Helper {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "peer_helper", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(SOCK, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Helper { child }
    }

    /// Waits for the helper to print `HELPER <word>`.
    fn wait_for(&mut self, word: &str) {
        use std::io::BufRead;
        let out = self.child.stdout.as_mut().unwrap();
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                r.read_line(&mut line).unwrap() > 0,
                "helper ended before '{word}'"
            );
            if line.trim().ends_with(&format!("HELPER {word}")) {
                return;
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn sock_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "dmabuf-share-test-{}-{tag}.sock",
        std::process::id()
    ))
}

fn assert_peer_gone_fast(e: dmabuf::Error, t0: Instant) {
    assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
    assert!(
        e.to_string()
            .contains("the peer closed the connection or died")
            || e.to_string().contains("went away"),
        "{e}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn producer_dies_before_sharing() {
    let _g = lock();
    let before = open_fds();
    {
        let path = sock_path("before");
        let l = Listener::bind(&path).unwrap();
        let mut h = Helper::start("producer-silent", &path);
        let ch = l.accept(T).unwrap();
        h.wait_for("connected");
        h.kill();
        let t0 = Instant::now();
        let e = Consumer::new(ch, None).unwrap_err();
        assert_peer_gone_fast(e, t0);
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn producer_dies_while_a_ready_fence_is_pending() {
    let _g = lock();
    let before = open_fds();
    {
        let path = sock_path("stall");
        let l = Listener::bind(&path).unwrap();
        let mut h = Helper::start("producer-stalls", &path);
        let ch = l.accept(T).unwrap();
        let mut c = Consumer::new(ch, T).unwrap();
        h.wait_for("submitted");
        // Kill it while this side waits for the ready fence (no timeout).
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            h.kill();
            Instant::now()
        });
        let e = c.next(None).unwrap_err();
        let t0 = killer.join().unwrap();
        assert_peer_gone_fast(e, t0);
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn producer_dies_mid_stream() {
    let _g = lock();
    let before = open_fds();
    {
        let path = sock_path("mid");
        let l = Listener::bind(&path).unwrap();
        let mut h = Helper::start("producer-streams", &path);
        let ch = l.accept(T).unwrap();
        let mut c = Consumer::new(ch, T).unwrap();
        h.wait_for("streamed");
        let item = c.next(T).unwrap().unwrap();
        h.kill();
        // Items already delivered still arrive; then the loss is reported.
        let second = c.next(T).unwrap().unwrap();
        assert_eq!((item.seq(), second.seq()), (1, 2));
        let t0 = Instant::now();
        assert_peer_gone_fast(c.next(None).unwrap_err(), t0);
        // Releasing to a dead producer is an error, not a signal or a hang.
        assert_eq!(
            item.release(Fence::Signalled).unwrap_err().kind(),
            ErrorKind::PeerGone
        );
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn consumer_dies_while_holding_buffers() {
    let _g = lock();
    let before = open_fds();
    {
        let path = sock_path("hold");
        let l = Listener::bind(&path).unwrap();
        let mut h = Helper::start("consumer-holds", &path);
        let ch = l.accept(T).unwrap();
        let mut p =
            Producer::new(vec![portable(4096, "a"), portable(4096, "b")], vec![ch]).unwrap();
        for _ in 0..2 {
            p.acquire(T)
                .unwrap()
                .submit(4096, Fence::Signalled)
                .unwrap();
        }
        h.wait_for("holding");
        assert!(p.try_acquire().unwrap().is_none());
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            h.kill();
            Instant::now()
        });
        let e = p.acquire(None).unwrap_err();
        let t0 = killer.join().unwrap();
        assert_peer_gone_fast(e, t0);
        assert_eq!(p.consumers(), 0);
        assert_eq!(p.in_flight(), 0, "the dead consumer's buffers came back");
        let e = p.acquire(None).unwrap_err();
        assert!(
            e.to_string().contains("every consumer has gone away"),
            "{e}"
        );
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

#[test]
fn consumer_dies_before_sharing() {
    let _g = lock();
    let before = open_fds();
    {
        let path = sock_path("cbefore");
        let l = Listener::bind(&path).unwrap();
        let mut h = Helper::start("consumer-exits", &path);
        let ch = l.accept(T).unwrap();
        h.wait_for("gone");
        h.kill_or_wait();
        let t0 = Instant::now();
        let e = Producer::new(vec![portable(4096, "a")], vec![ch]).unwrap_err();
        assert_peer_gone_fast(e, t0);
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

impl Helper {
    fn kill_or_wait(mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }
}

#[cfg(feature = "tokio")]
#[test]
fn an_async_producers_bye_wakes_a_blocking_consumer_asleep_on_its_word() {
    let _g = lock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    let (p, c) = Channel::pair().unwrap();
    let bufs = vec![portable(4096, "a"), portable(4096, "b")];
    let producer = dmabuf::share::pool::AsyncProducer::new(bufs, vec![p]).unwrap();
    let mut consumer = Consumer::new(c, T).unwrap();
    // Word sleeps for the whole wait: a bye that did not wake the word
    // would be seen only after 10 s.
    consumer.set_word_sleep(Duration::from_secs(10));
    let t = std::thread::spawn(move || {
        let t0 = Instant::now();
        let end = consumer.next(Some(Duration::from_secs(20))).unwrap();
        (end.is_none(), t0.elapsed())
    });
    // Let the consumer fall asleep first.
    std::thread::sleep(Duration::from_millis(50));
    rt.block_on(producer.finish()).unwrap();
    let (ended, took) = t.join().unwrap();
    assert!(ended, "the stream ended");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[cfg(feature = "tokio")]
#[test]
fn async_pool_streams() {
    let _g = lock();
    let before = open_fds();
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use dmabuf::share::pool::{AsyncConsumer, AsyncProducer};
            let (p, c) = Channel::pair().unwrap();
            let bufs = vec![portable(4096, "a"), portable(4096, "b")];
            let mut producer = AsyncProducer::new(bufs, vec![p]).unwrap();
            let consumer = tokio::spawn(async move {
                let mut c = AsyncConsumer::new(c).await.unwrap();
                let mut n = 0u8;
                while let Some(item) = c.next().await.unwrap() {
                    n += 1;
                    assert!(all_bytes_are(item.buffer(), 4096, n));
                    item.release(Fence::Signalled).unwrap();
                }
                n
            });
            for v in 1..=20u8 {
                let lease = producer.acquire().await.unwrap();
                fill(lease.buffer(), v);
                let ready = UserFence::new().unwrap();
                lease.submit(4096, ready.clone().into()).unwrap();
                ready.signal().unwrap();
            }
            producer.finish().await.unwrap();
            assert_eq!(consumer.await.unwrap(), 20);
        });
    }
    assert_eq!(open_fds(), before, "fds leaked");
}

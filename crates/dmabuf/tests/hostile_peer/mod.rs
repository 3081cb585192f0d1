//! A test-only hostile peer: speaks the wire format of `dmabuf::share` with
//! raw `sendmsg` (through rustix, no library code on the sending side) and
//! makes fake user-fence pages it can scribble on at any moment.
//!
//! Shared by the `hostile_*` test binaries (not every binary uses every
//! helper).
#![allow(dead_code)]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
use rustix::net::{
    sendmsg, socketpair, AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketFlags, SocketType,
};
use rustix::pipe::PipeFlags;

/// Message types of the wire format.
pub const T_BUFFER: u16 = 1;
pub const T_FENCE: u16 = 2;
pub const T_POOL_READY: u16 = 3;
pub const T_ITEM: u16 = 4;
pub const T_RELEASE: u16 = 5;
pub const T_BYE: u16 = 6;
pub const T_RING: u16 = 7;

/// The fence page's magic (version 2) and state codes.
pub const FENCE_MAGIC: u64 = 0x444d_4246_4e43_0002;
pub const PENDING: u64 = 0;
pub const SIGNALLING: u64 = 1;
pub const SIGNALLED: u64 = 2;
pub const FAILED: u64 = 3;

/// Bounded waits everywhere.
pub const T: Option<Duration> = Some(Duration::from_secs(10));

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident set size of this process, in kB.
pub fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// CPU time used by the calling thread.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A raw seqpacket end: the hostile side of a connection.
pub struct Raw {
    pub fd: OwnedFd,
}

/// A connected pair: (the library's end, the hostile raw end).
pub fn pair() -> (dmabuf::share::Channel, Raw) {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    (dmabuf::share::Channel::from_fd(a).unwrap(), Raw { fd: b })
}

impl Raw {
    /// Sends `bytes` with `fds` as one datagram.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> rustix::io::Result<usize> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(cmsg.push(SendAncillaryMessage::ScmRights(fds)));
        }
        sendmsg(
            &self.fd,
            &[IoSlice::new(bytes)],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        )
    }
}

/// Header + body, with `fds` announced.
pub fn msg(ty: u16, body: &[u8], fds: u16) -> Vec<u8> {
    let mut out = b"DMBS".to_vec();
    out.extend_from_slice(&dmabuf::share::VERSION.to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&fds.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(body);
    out
}

pub fn buffer_body(id: u64, size: u64, kind: u8, name: &str) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[kind, 0, name.len() as u8, 0]);
    b.extend_from_slice(name.as_bytes());
    b
}

/// A fence message carrying `kinds` (1 sync file, 2 user fence).
pub fn fence_body(tag: u64, kinds: &[u8]) -> Vec<u8> {
    let mut b = tag.to_le_bytes().to_vec();
    b.push(kinds.len() as u8);
    b.extend_from_slice(kinds);
    b
}

pub fn item_body(buffer: u64, seq: u64, len: u64, kinds: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [buffer, seq, len, dmabuf::fence::monotonic_ns()] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(kinds.len() as u8);
    b.extend_from_slice(kinds);
    b
}

pub fn release_body(buffer: u64, seq: u64, kinds: &[u8]) -> Vec<u8> {
    let mut b = buffer.to_le_bytes().to_vec();
    b.extend_from_slice(&seq.to_le_bytes());
    b.push(kinds.len() as u8);
    b.extend_from_slice(kinds);
    b
}

pub fn pool_ready_body(buffers: u32, consumer: u32) -> Vec<u8> {
    let mut b = buffers.to_le_bytes().to_vec();
    b.extend_from_slice(&consumer.to_le_bytes());
    b
}

/// A memfd of `size` bytes with `seals`.
pub fn memfd(size: u64, seals: SealFlags) -> OwnedFd {
    let fd = memfd_create("hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&fd, size).unwrap();
    if !seals.is_empty() {
        fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// A fence page made by the hostile peer (sealed against resizing only,
/// so it can scribble on it with `pwrite` whenever it likes), and its
/// wake-up pipe (the read end is sent; the write end stays here, `None`
/// once hung up).
pub struct FakeFence {
    pub state: OwnedFd,
    pub wake: OwnedFd,
    pub wake_write: std::sync::Mutex<Option<OwnedFd>>,
}

impl FakeFence {
    pub fn new(state: u64, context: u64, seqno: u64) -> FakeFence {
        let (wake, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).unwrap();
        let f = FakeFence {
            state: memfd(4096, SealFlags::SHRINK | SealFlags::GROW),
            wake,
            wake_write: std::sync::Mutex::new(Some(w)),
        };
        f.set(3, context);
        f.set(4, seqno);
        f.set(1, state);
        f.set(0, FENCE_MAGIC);
        f
    }

    pub fn pending() -> FakeFence {
        FakeFence::new(PENDING, 0x1234, 1)
    }

    /// Writes word `i` of the page.
    pub fn set(&self, i: u64, v: u64) {
        assert_eq!(
            rustix::io::pwrite(&self.state, &v.to_le_bytes(), i * 8).unwrap(),
            8
        );
    }

    pub fn set_state(&self, v: u64) {
        self.set(1, v);
    }

    /// Writes the futex half-word (bytes 40..44).
    pub fn set_futex(&self, v: u32) {
        rustix::io::pwrite(&self.state, &v.to_le_bytes(), 40).unwrap();
    }

    /// Makes the wake-up pipe readable without signalling anything.
    pub fn poke(&self) {
        let w = self.wake_write.lock().unwrap();
        rustix::io::write(w.as_ref().expect("not hung up"), &[1]).unwrap();
    }

    /// Closes the write end: the read end polls as hung up (readable)
    /// from now on, the fence still pending.
    pub fn hang_up(&self) {
        self.wake_write.lock().unwrap().take();
    }

    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.state.as_fd(), self.wake.as_fd()]
    }

    /// Imports it directly (as a receiver would after the message).
    pub fn import(&self) -> dmabuf::UserFence {
        dmabuf::UserFence::from_fds(
            self.state.try_clone().unwrap(),
            self.wake.try_clone().unwrap(),
        )
        .unwrap()
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than
/// `limit` (no test may hang).
pub fn bounded<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not finish within {limit:?}: a hang")
        }
        Err(_) => panic!("the bounded call panicked (see above)"),
    }
}

/// Asserts that `e` has `kind` and its message contains `words`.
#[track_caller]
pub fn assert_err(e: &dmabuf::Error, kind: dmabuf::ErrorKind, words: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(words), "'{words}' not in: {e}");
}

/// Elapsed since `t0`, asserting it stays under `limit`.
#[track_caller]
pub fn within(t0: Instant, limit: Duration) -> Duration {
    let e = t0.elapsed();
    assert!(e < limit, "took {e:?}, limit {limit:?}");
    e
}

/// One received datagram: its type, its body, how many fds came (closed).
pub struct Got {
    pub ty: u16,
    pub body: Vec<u8>,
    pub fds: usize,
}

impl Got {
    pub fn u64_at(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.body[i..i + 8].try_into().unwrap())
    }
}

impl Raw {
    /// Receives one datagram, waiting at most `timeout`; `None` on timeout
    /// or end of file. Attached fds are closed.
    pub fn recv(&self, timeout: Duration) -> Option<Got> {
        self.recv_fds(timeout).map(|(g, _)| g)
    }

    /// As [`Raw::recv`], keeping the attached fds.
    pub fn recv_fds(&self, timeout: Duration) -> Option<(Got, Vec<OwnedFd>)> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut p = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        if rustix::event::poll(&mut p, Some(&ts)).ok()? == 0 {
            return None;
        }
        let mut bytes = vec![0u8; 2048];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
        let r = recvmsg(&self.fd, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC).ok()?;
        let mut fds = Vec::new();
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        if r.bytes < 16 {
            return None;
        }
        Some((
            Got {
                ty: u16::from_le_bytes([bytes[6], bytes[7]]),
                body: bytes[16..r.bytes].to_vec(),
                fds: fds.len(),
            },
            fds,
        ))
    }

    /// Plays a consumer's handshake: reads buffer messages up to the
    /// pool-ready one; the number of buffers.
    pub fn take_handshake(&self) -> usize {
        self.take_handshake_ring().0
    }

    /// Plays a consumer's handshake, keeping the ring the producer sent:
    /// the number of buffers and the ring.
    pub fn take_handshake_ring(&self) -> (usize, RawRing) {
        let mut n = 0;
        let mut ring = None;
        loop {
            let (g, fds) = self.recv_fds(Duration::from_secs(10)).expect("handshake");
            match g.ty {
                T_BUFFER => n += 1,
                T_RING => ring = Some(RawRing::from_fds(fds, n)),
                T_POOL_READY => return (n, ring.expect("a ring message before pool-ready")),
                t => panic!("unexpected type {t} in the handshake"),
            }
        }
    }

    /// Plays a producer's handshake: `buffers` sealed memfds of `size`,
    /// and a ring it writes by hand.
    pub fn give_handshake(&self, buffers: &[OwnedFd], size: u64) -> RawRing {
        for (i, b) in buffers.iter().enumerate() {
            self.send(
                &msg(T_BUFFER, &buffer_body(i as u64, size, 1, "h"), 1),
                &[b.as_fd()],
            )
            .unwrap();
        }
        let ring = RawRing::new(buffers.len());
        self.send(
            &msg(T_RING, &(buffers.len() as u32).to_le_bytes(), 3),
            &ring.fds(),
        )
        .unwrap();
        self.send(
            &msg(T_POOL_READY, &pool_ready_body(buffers.len() as u32, 0), 0),
            &[],
        )
        .unwrap();
        ring
    }
}

/// A descriptor ring (see `dmabuf::share::ring`'s layout) written and
/// read by hand with `pwrite`/`pread`: the hostile side of the pool's
/// per-item path.
pub struct RawRing {
    pub memfd: OwnedFd,
    /// The read end of the consumer's wake-up pipe (sent to it).
    pub consumer_read: OwnedFd,
    /// The write end of the producer's wake-up pipe (sent to the
    /// consumer, written to wake the producer).
    pub producer_write: OwnedFd,
    /// The write end of the consumer's wake-up pipe, when the ring was
    /// made here (written to wake the consumer).
    pub consumer_write: Option<OwnedFd>,
    /// The read end of the producer's wake-up pipe, when made here.
    pub producer_read: Option<OwnedFd>,
    pub cap: u64,
}

/// Word indices of the ring layout.
pub const R_ITEM_HEAD: u64 = 8;
/// The producer's count of messages sent on the socket (a hint).
pub const R_SENT: u64 = 9;
pub const R_REL_TAIL: u64 = 16;
pub const R_ITEM_TAIL: u64 = 32;
pub const R_REL_HEAD: u64 = 40;
const R_ITEMS: u64 = 64;

impl RawRing {
    /// A ring of `cap` slots, as a producer makes it.
    pub fn new(cap: usize) -> RawRing {
        let raw = R_ITEMS * 8 + cap as u64 * 16 * 8;
        let len = raw.div_ceil(4096) * 4096;
        let pipe = || rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).unwrap();
        let ((consumer_read, consumer_write), (producer_read, producer_write)) = (pipe(), pipe());
        let r = RawRing {
            memfd: memfd(len, SealFlags::SHRINK | SealFlags::GROW),
            consumer_read,
            producer_write,
            consumer_write: Some(consumer_write),
            producer_read: Some(producer_read),
            cap: cap as u64,
        };
        r.set(0, u64::from_le_bytes(*b"DMBRING3"));
        r.set(1, cap as u64);
        r
    }

    /// The ring a producer sent (memfd, the read end of the consumer's
    /// wake-up pipe, the write end of the producer's).
    pub fn from_fds(fds: Vec<OwnedFd>, cap: usize) -> RawRing {
        let mut it = fds.into_iter();
        RawRing {
            memfd: it.next().unwrap(),
            consumer_read: it.next().unwrap(),
            producer_write: it.next().unwrap(),
            consumer_write: None,
            producer_read: None,
            cap: cap as u64,
        }
    }

    /// Writes the consumer's wake-up pipe (a ring made here).
    pub fn wake_consumer(&self) {
        if let Some(w) = &self.consumer_write {
            let _ = rustix::io::write(w, &[1]);
        }
    }

    /// The fds of a ring message.
    pub fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.memfd.as_fd(),
            self.consumer_read.as_fd(),
            self.producer_write.as_fd(),
        ]
    }

    pub fn get(&self, i: u64) -> u64 {
        let mut w = [0u8; 8];
        assert_eq!(rustix::io::pread(&self.memfd, &mut w, i * 8).unwrap(), 8);
        u64::from_le_bytes(w)
    }

    pub fn set(&self, i: u64, v: u64) {
        assert_eq!(
            rustix::io::pwrite(&self.memfd, &v.to_le_bytes(), i * 8).unwrap(),
            8
        );
    }

    /// Publishes an item descriptor (slot, length, sequence, fence
    /// reference) at the item head, moves the head (no mark) and wakes
    /// the consumer.
    pub fn item(&self, slot: u64, seq: u64, len: u64, fence_ref: u64) {
        let head = self.get(R_ITEM_HEAD);
        let base = R_ITEMS + (head % self.cap) * 8;
        for (k, v) in [slot, len, seq, dmabuf::fence::monotonic_ns(), fence_ref]
            .into_iter()
            .enumerate()
        {
            self.set(base + k as u64, v);
        }
        self.set(R_ITEM_HEAD, head + 1);
        self.wake_consumer();
    }

    /// Takes the next item descriptor off the ring, as a consumer:
    /// (slot, length, sequence, fence reference).
    pub fn take_item(&self) -> Option<(u64, u64, u64, u64)> {
        let tail = self.get(R_ITEM_TAIL);
        if tail >= self.get(R_ITEM_HEAD) {
            return None;
        }
        let base = R_ITEMS + (tail % self.cap) * 8;
        let d = (
            self.get(base),
            self.get(base + 1),
            self.get(base + 2),
            self.get(base + 4),
        );
        self.set(R_ITEM_TAIL, tail + 1);
        Some(d)
    }

    /// Waits up to `timeout` for an item and takes it.
    pub fn wait_item(&self, timeout: Duration) -> Option<(u64, u64, u64, u64)> {
        let t0 = Instant::now();
        loop {
            if let Some(d) = self.take_item() {
                return Some(d);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Publishes a release descriptor (slot, sequence, fence reference,
    /// and the items taken as the item tail says) by the release head
    /// (no mark) and wakes the producer.
    pub fn release(&self, slot: u64, seq: u64, fence_ref: u64) {
        let head = self.get(R_REL_HEAD);
        let base = R_ITEMS + self.cap * 8 + (head % self.cap) * 8;
        let taken = self.get(R_ITEM_TAIL);
        for (k, v) in [slot, seq, fence_ref, taken].into_iter().enumerate() {
            self.set(base + k as u64, v);
        }
        self.set(R_REL_HEAD, head + 1);
        let _ = rustix::io::write(&self.producer_write, &[1]);
    }
}

/// `n` sealed memfds of `size` bytes (a hostile producer's pool).
pub fn memfds(n: usize, size: u64) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| memfd(size, SealFlags::SHRINK | SealFlags::GROW))
        .collect()
}

/// Serialises the tests of one binary that count open fds or time CPU (a
/// failed test does not poison it for the others).
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`LOCK`].
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one hostile message; the receiver must refuse it with a protocol
/// error containing `words`, close every fd, and still take the next
/// (valid) message. Returns the refusal's text.
#[track_caller]
pub fn refused_then_ok(
    ch: &dmabuf::share::Channel,
    raw: &Raw,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    words: &str,
) -> String {
    let before = open_fds();
    raw.send(bytes, fds).unwrap();
    let e = ch.recv(T).unwrap_err();
    assert_err(&e, dmabuf::ErrorKind::Protocol, words);
    assert_eq!(open_fds(), before, "fds kept after: {e}");
    raw.send(&msg(T_BYE, &[], 0), &[]).unwrap();
    assert!(matches!(ch.recv(T).unwrap(), dmabuf::share::Message::Bye));
    e.to_string()
}

/// What a peer can do to a wake-up fd it shares with this process (an fd
/// it sent, or one it was sent and kept): clear `O_NONBLOCK` on the file
/// description both sides hold, so that a read or write that honours the
/// flag blocks.
pub fn make_blocking(fd: BorrowedFd<'_>) {
    rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::empty()).unwrap();
}

/// Fills a shared wake-up fd to the brim, as a peer can: an eventfd's
/// counter to its largest value, or a pipe to its capacity (a pipe's read
/// end is opened again for writing through `/proc/self/fd`, which the
/// kernel allows). Returns the write end opened for it, if any.
pub fn fill(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    use rustix::fs::{fcntl_getfl, open, Mode, OFlags};
    use std::os::fd::AsRawFd;
    let big = (u64::MAX - 1).to_ne_bytes();
    let writable = fcntl_getfl(fd).unwrap() & OFlags::RWMODE != OFlags::RDONLY;
    let reopened = (!writable).then(|| {
        open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    });
    let w = reopened.as_ref().map_or(fd, |r| r.as_fd());
    // An eventfd takes one write of the largest value; a pipe takes bytes
    // until it is full. Either way the last write fails with EAGAIN.
    let mut n = 0;
    while rustix::io::write(w, &big).is_ok() {
        n += 1;
        assert!(n < 1 << 20, "the fd never filled up");
    }
    assert!(n > 0, "nothing could be written");
    reopened
}

//! The references: the `ideal` ring and the raw wake-up, written with
//! `rustix` alone (no `dmabuf` library).
//!
//! **ideal**: a memfd shared by two processes holds one control page and
//! the same number of buffers as the pool. The producer writes the pattern
//! into buffer `head % N` once `head - tail < N`, then publishes `head + 1`
//! (a release store); the consumer checks buffer `tail % N` once
//! `tail < head`, then publishes `tail + 1`. A side that finds nothing to
//! do spins for [`SPIN`] (the same as the library's rings; the consumer
//! only while its items come less than [`BUSY_GAP`] apart, so that an
//! item after a pause finds it asleep already) and then raises
//! its waiting word and sleeps in `FUTEX_WAIT`; the other side issues a
//! `FUTEX_WAKE` only when it sees that word raised. No descriptors, no
//! validation, no fences: what zero-copy with wake-ups costs here.
//!
//! **wake**: the raw wake-up, at the pace of the latency runs: every
//! 500 µs the parent stamps CLOCK_MONOTONIC into shared memory and wakes
//! the sleeping child, through a futex word or an eventfd, with nothing
//! else; the child records the time from the stamp to being awake.
//!
//! # `unsafe` in this module
//!
//! Shared atomics cannot be reached without `mmap`, which `rustix` marks
//! `unsafe`, and the library's own mapping layer is deliberately not used
//! (the reference must not depend on the code it measures). [`Shm`] holds
//! the only `unsafe` blocks of the CLI: the mapping, the atomic words of its
//! control page, and the byte slices of its buffers, which are only formed
//! by the side that owns the buffer under the head/tail protocol above (both
//! sides are this program).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

use super::cases::{now_ns, BenchReport, Lat};
use super::BoxResult;
use crate::pattern;
use crate::stream::Limit;

/// How long a side of the ideal ring looks again before sleeping (the
/// library's `share::ring::DEFAULT_SPIN`).
pub const SPIN: Duration = Duration::from_micros(5);

/// The consumer spins only if its last two items came less than this far
/// apart (the library's consumer follows the same rule,
/// `dmabuf::share::pool::SPIN_GAP`; see `docs/benchmarks.md`: a spin
/// before every sleep made the next wake-up several µs later on its
/// test machine).
pub const BUSY_GAP: Duration = dmabuf::share::pool::SPIN_GAP;

const PAGE: usize = 4096;
const HEAD: usize = 0; // u64 word index (byte 0)
const TAIL: usize = 8; // u64 word index (byte 64)
const END: usize = 16; // u64 word index (byte 128): items in all, once known
const P_WAIT: usize = 48; // u32 index (byte 192)
const C_WAIT: usize = 64; // u32 index (byte 256)
const PING: usize = 80; // u32 index (byte 320)
const PONG: usize = 96; // u32 index (byte 384)
const STAMP: usize = 56; // u64 word index (byte 448)
const NO_END: u64 = u64::MAX;

/// A shared mapping of a memfd.
pub struct Shm {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

impl Shm {
    /// A new memfd of `len` bytes, mapped.
    pub fn create(len: usize) -> BoxResult<Shm> {
        let fd = rustix::fs::memfd_create("dmabuf-bench-ideal", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        Shm::map(fd, len)
    }

    /// The memfd `fd` of process `pid` (our parent), mapped.
    pub fn open(pid_fd: &str, len: usize) -> BoxResult<Shm> {
        let (pid, fd) = pid_fd.split_once(':').ok_or("expected PID:FD")?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/fd/{fd}"))?;
        Shm::map(f.into(), len)
    }

    fn map(fd: OwnedFd, len: usize) -> BoxResult<Shm> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if len < PAGE || size != len as i64 {
            return Err(format!("shared memory of {size} bytes, expected {len}").into());
        }
        // SAFETY: a new shared mapping at an address the kernel picks
        // overlaps no Rust object; the memfd is ours and never truncated,
        // and the mapping is unmapped only in `Drop`.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Shm { fd, ptr, len })
    }

    /// `PID:FD` for a child to open this memfd with [`Shm::open`].
    pub fn handle(&self) -> String {
        format!("{}:{}", std::process::id(), self.fd.as_raw_fd())
    }

    fn w64(&self, i: usize) -> &AtomicU64 {
        assert!(i * 8 + 8 <= PAGE);
        // SAFETY: inside the control page (checked), 8-byte aligned (the
        // mapping is page-aligned), alive as long as `self`, and only ever
        // accessed atomically by both processes.
        unsafe { &*self.ptr.as_ptr().add(i * 8).cast::<AtomicU64>() }
    }

    fn w32(&self, i: usize) -> &AtomicU32 {
        assert!(i * 4 + 4 <= PAGE);
        // SAFETY: as in `w64`, 4-byte aligned.
        unsafe { &*self.ptr.as_ptr().add(i * 4).cast::<AtomicU32>() }
    }

    /// Runs `f` on buffer `slot` of `size` bytes, which the caller owns
    /// under the ring protocol.
    fn with_slot<R>(&self, slot: usize, size: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let start = PAGE + slot * size;
        assert!(start + size <= self.len);
        // SAFETY: the range is inside the mapping (checked). The protocol
        // gives buffer `slot` to one side at a time (the producer while
        // `head - tail < N` says it is free, the consumer from the head's
        // publication until it publishes its tail), with release/acquire
        // ordering at each handoff, so no other access to these bytes
        // happens while this slice lives; it does not outlive `f`.
        let s = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), size) };
        f(s)
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; every reference into it
        // borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Bytes of the ideal ring's memfd.
pub fn ring_len(size: u64, buffers: usize) -> usize {
    PAGE + size as usize * buffers
}

/// Waits until `ready()` holds: spins for `spin`, then sleeps on waiting
/// word `flag` in slices; fails after `limit`.
fn wait(
    shm: &Shm,
    flag: usize,
    spin: Duration,
    limit: Duration,
    ready: impl Fn() -> bool,
) -> BoxResult<()> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited < spin {
            std::hint::spin_loop();
            continue;
        }
        if waited > limit {
            return Err("the other side of the ideal ring stopped".into());
        }
        let f = shm.w32(flag);
        f.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if ready() {
            f.store(0, Ordering::Relaxed);
            return Ok(());
        }
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let _ = futex::wait(f, futex::Flags::empty(), 1, Some(&ts));
    }
}

fn wake(shm: &Shm, flag: usize) {
    fence(Ordering::SeqCst);
    let f = shm.w32(flag);
    if f.load(Ordering::Relaxed) == 1 && f.swap(0, Ordering::SeqCst) == 1 {
        let _ = futex::wake(f, futex::Flags::empty(), 1);
    }
}

/// Makes a new ring ready for its consumer (before the consumer starts:
/// until the producer says how many items there were, there is no end).
pub fn prepare(shm: &Shm) {
    shm.w64(END).store(NO_END, Ordering::Release);
}

/// The producer of the ideal ring (after [`prepare`]): writes stamped pattern items until
/// `limit`, pausing `gap` after each; the first write's time and the count.
pub fn produce(
    shm: &Shm,
    size: u64,
    buffers: usize,
    limit: Limit,
    gap: Option<Duration>,
) -> BoxResult<(u64, u64)> {
    let start = Instant::now();
    let start_ns = now_ns();
    let mut head = 0u64;
    let n = buffers as u64;
    while !super::cases::done(limit, head, start) {
        let tail = shm.w64(TAIL);
        wait(shm, P_WAIT, SPIN, Duration::from_secs(30), || {
            head - tail.load(Ordering::Acquire) < n
        })?;
        shm.with_slot((head % n) as usize, size as usize, |b| {
            pattern::fill(&mut b[8..], head + 1);
            b[..8].copy_from_slice(&now_ns().to_le_bytes());
        });
        head += 1;
        shm.w64(HEAD).store(head, Ordering::Release);
        wake(shm, C_WAIT);
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
    }
    shm.w64(END).store(head, Ordering::Release);
    wake(shm, C_WAIT);
    Ok((start_ns, head))
}

/// The consumer of the ideal ring (in the worker process).
pub fn consume(shm: &Shm, size: u64, buffers: usize) -> BoxResult<BenchReport> {
    let mut rep = BenchReport::default();
    let mut lat = Lat::new()?;
    let n = buffers as u64;
    let mut tail = 0u64;
    let mut last: Option<Instant> = None;
    let mut busy = true;
    loop {
        let head = shm.w64(HEAD);
        let end = shm.w64(END);
        // Spin only while items come close together.
        let spin = if busy { SPIN } else { Duration::ZERO };
        wait(shm, C_WAIT, spin, Duration::from_secs(60), || {
            head.load(Ordering::Acquire) > tail || end.load(Ordering::Acquire) == tail
        })?;
        let h = head.load(Ordering::Acquire);
        if h == tail {
            break;
        }
        while tail < h {
            let seq = tail + 1;
            let r = shm.with_slot((tail % n) as usize, size as usize, |b| {
                let arrived = now_ns();
                if let Some(at) = pattern::check(&b[8..], seq) {
                    return Err(format!("item {seq}: byte {} breaks the pattern", at + 8));
                }
                let mut t = [0u8; 8];
                t.copy_from_slice(&b[..8]);
                Ok(arrived.saturating_sub(u64::from_le_bytes(t)))
            })?;
            // The same warm-up as every other case's histogram.
            if tail >= super::cases::WARM_UP {
                lat.record(r);
            }
            tail += 1;
            let now = Instant::now();
            busy = last.is_none_or(|t| now.duration_since(t) < BUSY_GAP);
            last = Some(now);
            shm.w64(TAIL).store(tail, Ordering::Release);
            wake(shm, P_WAIT);
            rep.items += 1;
            rep.bytes += size;
        }
    }
    rep.end_ns = now_ns();
    rep.latency = Some(lat.summary());
    Ok(rep)
}

// ---- the raw wake-up ------------------------------------------------------

/// How the wake-up reference ping-pongs.
#[derive(Debug, Clone, Copy)]
pub enum WakeKind {
    /// A futex word in shared memory.
    Futex,
    /// A pair of eventfds.
    EventFd,
}

/// The shared objects of a wake-up ping-pong, made by the parent: a
/// control page and two blocking eventfds, handed to the child over a Unix
/// socket (`SCM_RIGHTS`; eventfds cannot be reopened through `/proc`).
pub struct WakeRig {
    shm: Shm,
    ping: OwnedFd,
    pong: OwnedFd,
    listener: std::os::unix::net::UnixListener,
    path: std::path::PathBuf,
}

impl WakeRig {
    /// The objects, and a socket at `path` for the child to fetch them.
    pub fn new(path: std::path::PathBuf) -> BoxResult<WakeRig> {
        let ev = || rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC);
        let _ = std::fs::remove_file(&path);
        Ok(WakeRig {
            shm: Shm::create(PAGE)?,
            ping: ev()?,
            pong: ev()?,
            listener: std::os::unix::net::UnixListener::bind(&path)?,
            path,
        })
    }

    /// What the child needs to find the parent: the socket's path.
    pub fn handle(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Hands the memfd and the eventfds to the child that connects.
    pub fn hand_over(&self) -> BoxResult<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let (s, _) = self.listener.accept()?;
        let _ = std::fs::remove_file(&self.path);
        let fds = [self.shm.fd.as_fd(), self.ping.as_fd(), self.pong.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        anc.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &s,
            &[std::io::IoSlice::new(b"w")],
            &mut anc,
            SendFlags::empty(),
        )?;
        Ok(())
    }
}

fn fetch_fds(path: &str) -> BoxResult<Vec<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let s = std::os::unix::net::UnixStream::connect(path)?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut b = [0u8; 1];
    rustix::net::recvmsg(
        &s,
        &mut [std::io::IoSliceMut::new(&mut b)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    if fds.len() != 3 {
        return Err(format!("got {} fds from the parent, expected 3", fds.len()).into());
    }
    Ok(fds)
}

fn ev_wait(fd: &OwnedFd) -> BoxResult<()> {
    let mut p = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let ts = rustix::time::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut p, Some(&ts))? == 0 {
        return Err("the other side of the wake-up reference stopped".into());
    }
    let mut b = [0u8; 8];
    rustix::io::read(fd, &mut b)?;
    Ok(())
}

fn futex_until(w: &AtomicU32, v: u32) -> BoxResult<()> {
    let start = Instant::now();
    loop {
        let now = w.load(Ordering::Acquire);
        if now == v {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the other side of the wake-up reference stopped".into());
        }
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let _ = futex::wait(w, futex::Flags::empty(), now, Some(&ts));
    }
}

/// The parent's side: `n` wake-ups, one every `gap`, each stamped with
/// CLOCK_MONOTONIC just before the wake.
pub fn ping(rig: &WakeRig, kind: WakeKind, n: u64, gap: Duration) -> BoxResult<()> {
    for i in 1..=n {
        std::thread::sleep(gap);
        // The child has taken the previous one (bounded wait).
        let t = Instant::now();
        while rig.shm.w32(PONG).load(Ordering::Acquire) != (i - 1) as u32 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the other side of the wake-up reference stopped".into());
            }
            std::thread::yield_now();
        }
        rig.shm.w64(STAMP).store(now_ns(), Ordering::Relaxed);
        match kind {
            WakeKind::Futex => {
                rig.shm.w32(PING).store(i as u32, Ordering::Release);
                futex::wake(rig.shm.w32(PING), futex::Flags::empty(), 1)?;
            }
            WakeKind::EventFd => {
                rig.shm.w32(PING).store(i as u32, Ordering::Release);
                rustix::io::write(&rig.ping, &1u64.to_ne_bytes())?;
            }
        }
    }
    Ok(())
}

/// The child's side of [`ping`]: sleeps until woken, and records the time
/// from the stamp to being awake.
pub fn pong(handle: &str, kind: WakeKind, n: u64) -> BoxResult<BenchReport> {
    let mut fds = fetch_fds(handle)?.into_iter();
    let (Some(m), Some(ping), Some(_pong)) = (fds.next(), fds.next(), fds.next()) else {
        return Err("missing fds".into());
    };
    let shm = Shm::map(m, PAGE)?;
    super::cases::ready()?;
    let mut lat = Lat::new()?;
    for i in 1..=n {
        match kind {
            WakeKind::Futex => futex_until(shm.w32(PING), i as u32)?,
            WakeKind::EventFd => {
                ev_wait(&ping)?;
                if shm.w32(PING).load(Ordering::Acquire) != i as u32 {
                    return Err("wake-up reference out of step".into());
                }
            }
        }
        let arrived = now_ns();
        if i > super::cases::WARM_UP {
            lat.record(arrived.saturating_sub(shm.w64(STAMP).load(Ordering::Relaxed)));
        }
        shm.w32(PONG).store(i as u32, Ordering::Release);
    }
    Ok(BenchReport {
        items: n,
        latency: Some(lat.summary()),
        ..BenchReport::default()
    })
}

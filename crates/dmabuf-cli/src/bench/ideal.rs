//! The references: the `ideal` ring and the raw wake-up, written with
//! `rustix` alone: of the `dmabuf` library only the byte loops that every
//! case of the bench writes and checks its items with (volatile views of
//! plain slices, see `cases::fill_stamped`), no mapping, ring or pool.
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
//! validation, no fences: what zero-copy with wake-ups costs here. Each
//! side reads the clock once per item (the producer's stamp; the
//! consumer's arrival, which also says whether items come close
//! together), plus while a wait that does not end at once spins, and the
//! producer for its time limit as every producer of the bench does
//! ([`Stop`]): no more than the stream itself reads.
//!
//! **ideal-kind**: the same ring with its control page alone in the memfd
//! and one buffer of the bench's backend per slot (a system-heap dma-buf,
//! a udmabuf, or a memfd), handed to the consumer over a Unix socket
//! (`SCM_RIGHTS`) and mapped by each side itself. On dma-bufs every write
//! and every check is bracketed by `DMA_BUF_IOCTL_SYNC` START and END
//! (WRITE for the producer, READ for the consumer), as the kernel's
//! CPU-access rule asks of any program: what the kind of memory costs,
//! with nothing of the library.
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
//! (the reference must not depend on the code it measures; `ideal-kind`
//! takes its buffers from the library's allocator, and nothing of it after
//! that but the byte loops every case shares). [`Shm`] and [`sync`] hold
//! the only `unsafe` blocks of the CLI: the mapping, the atomic words of
//! its control page, the byte slices of its buffers, which are only formed
//! by the side that owns the buffer under the head/tail protocol above
//! (both sides are this program), and the raw `DMA_BUF_IOCTL_SYNC`.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

use super::cases::{now_ns, BenchReport, Lat};
use super::BoxResult;
use crate::stream::{Limit, Stop};

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

/// A shared mapping of a memfd (the ring's control page, or the whole
/// `ideal` ring), or of one buffer of `ideal-kind`.
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

    /// Maps memfd `fd`, which must hold exactly `len` bytes (at least a
    /// page: the control words live in the first).
    fn map(fd: OwnedFd, len: usize) -> BoxResult<Shm> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if len < PAGE || size != len as i64 {
            return Err(format!("shared memory of {size} bytes, expected {len}").into());
        }
        Shm::map_raw(fd, len)
    }

    /// Maps the first `len` bytes of buffer `fd` (a dma-buf or a memfd of
    /// at least `len` bytes).
    fn map_buffer(fd: OwnedFd, len: usize) -> BoxResult<Shm> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if len == 0 || size < len as i64 {
            return Err(format!("a buffer of {size} bytes, expected {len}").into());
        }
        Shm::map_raw(fd, len)
    }

    fn map_raw(fd: OwnedFd, len: usize) -> BoxResult<Shm> {
        // SAFETY: a new shared mapping at an address the kernel picks
        // overlaps no Rust object; the file is never truncated while the
        // bench runs (memfds are ours; dma-bufs cannot shrink), and the
        // mapping is unmapped only in `Drop`.
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
        // Every page mapped now, as the stream populates its buffers
        // (`Mapping::populate`): no page fault on the first pass. Best
        // effort, like the stream's: dma-bufs' raw page-frame mappings
        // answer EINVAL (the system heap has mapped them all already).
        // SAFETY: the range is exactly the mapping just made; populating
        // faults its pages in and changes no byte.
        let _ = unsafe { rustix::mm::madvise(p, len, rustix::mm::Advice::LinuxPopulateWrite) };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Shm { fd, ptr, len })
    }

    /// `PID:FD` for a child to open this memfd with [`Shm::open`].
    pub fn handle(&self) -> String {
        format!("{}:{}", std::process::id(), self.fd.as_raw_fd())
    }

    fn w64(&self, i: usize) -> &AtomicU64 {
        assert!(i * 8 + 8 <= PAGE.min(self.len));
        // SAFETY: inside the control page (checked), 8-byte aligned (the
        // mapping is page-aligned), alive as long as `self`, and only ever
        // accessed atomically by both processes.
        unsafe { &*self.ptr.as_ptr().add(i * 8).cast::<AtomicU64>() }
    }

    fn w32(&self, i: usize) -> &AtomicU32 {
        assert!(i * 4 + 4 <= PAGE.min(self.len));
        // SAFETY: as in `w64`, 4-byte aligned.
        unsafe { &*self.ptr.as_ptr().add(i * 4).cast::<AtomicU32>() }
    }

    /// Runs `f` on bytes `start..start + size`, which the caller owns
    /// under the ring protocol.
    fn with_bytes<R>(&self, start: usize, size: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        assert!(start.checked_add(size).is_some_and(|e| e <= self.len));
        // SAFETY: the range is inside the mapping (checked). The protocol
        // gives a buffer to one side at a time (the producer while
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
        // SAFETY: exactly the mapping made in `map_raw`; every reference
        // into it borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// ---- the CPU-access rule, raw ------------------------------------------

const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_WRITE: u64 = 2;
const DMA_BUF_SYNC_END: u64 = 4; // START is 0
const DMA_BUF_IOCTL_SYNC: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<u64>(b'b', 0);

/// `DMA_BUF_IOCTL_SYNC` with `flags` on dma-buf `fd`, again while the
/// kernel answers EINTR or EAGAIN.
fn sync(fd: &OwnedFd, flags: u64) -> BoxResult<()> {
    loop {
        // SAFETY: DMA_BUF_IOCTL_SYNC is _IOW('b', 0, struct dma_buf_sync),
        // whose only field is a u64 of flags; the kernel reads it and keeps
        // no pointer.
        let r = unsafe {
            rustix::ioctl::ioctl(
                fd,
                rustix::ioctl::Setter::<DMA_BUF_IOCTL_SYNC, u64>::new(flags),
            )
        };
        match r {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(format!("DMA_BUF_IOCTL_SYNC (flags {flags:#x}): {e}").into()),
        }
    }
}

// ---- the ring ------------------------------------------------------------

/// Where the ring's buffers are.
enum Slots {
    /// After the control page, in the same memfd (`ideal`).
    InRing,
    /// One buffer of the bench's backend per slot, each mapped here
    /// (`ideal-kind`); with `bracket`, every access to a dma-buf between
    /// `DMA_BUF_IOCTL_SYNC` START and END, as the CPU-access rule asks.
    Own { maps: Vec<Shm>, bracket: bool },
}

/// A ring: the control page (head, tail, end, waiting words) and its
/// buffers.
pub struct Ring {
    ctl: Shm,
    slots: Slots,
}

impl Ring {
    /// A new `ideal` ring of `buffers` buffers of `size` bytes in one memfd.
    pub fn create(size: u64, buffers: usize) -> BoxResult<Ring> {
        Ok(Ring {
            ctl: Shm::create(ring_len(size, buffers))?,
            slots: Slots::InRing,
        })
    }

    /// The `ideal` ring made by our parent ([`Ring::handle`]).
    pub fn open(handle: &str, size: u64, buffers: usize) -> BoxResult<Ring> {
        Ok(Ring {
            ctl: Shm::open(handle, ring_len(size, buffers))?,
            slots: Slots::InRing,
        })
    }

    /// `PID:FD` of an `ideal` ring, for [`Ring::open`].
    pub fn handle(&self) -> String {
        self.ctl.handle()
    }

    /// A new `ideal-kind` ring over `buffers` (the backend's, at least
    /// `size` bytes each), bracketed if they are dma-bufs; and the fds
    /// its consumer needs, in the order [`Ring::fetch`] expects.
    pub fn over(buffers: &[dmabuf::Buffer], size: u64) -> BoxResult<(Ring, HandOver)> {
        let bracket = buffers.iter().any(|b| b.dma_buf().is_some());
        let ctl = Shm::create(PAGE)?;
        let mut fds = vec![ctl.fd.try_clone()?];
        let mut maps = Vec::with_capacity(buffers.len());
        for b in buffers {
            let fd = b.fd().try_clone_to_owned()?;
            fds.push(fd.try_clone()?);
            maps.push(Shm::map_buffer(fd, size as usize)?);
        }
        let tag = if bracket { TAG_BRACKET } else { TAG_PLAIN };
        Ok((
            Ring {
                ctl,
                slots: Slots::Own { maps, bracket },
            },
            HandOver { tag, fds },
        ))
    }

    /// The consumer's side of [`Ring::over`]: the fds from the socket at
    /// `path`, mapped.
    pub fn fetch(path: &str, size: u64, buffers: usize) -> BoxResult<Ring> {
        let (tag, fds) = fetch_fds(path, 1 + buffers)?;
        let mut fds = fds.into_iter();
        let ctl = Shm::map(fds.next().ok_or("missing fds")?, PAGE)?;
        let maps = fds
            .map(|fd| Shm::map_buffer(fd, size as usize))
            .collect::<BoxResult<Vec<Shm>>>()?;
        let bracket = match tag {
            TAG_BRACKET => true,
            TAG_PLAIN => false,
            t => return Err(format!("unknown ring tag {t}").into()),
        };
        Ok(Ring {
            ctl,
            slots: Slots::Own { maps, bracket },
        })
    }

    /// Runs `f` on buffer `slot` of `size` bytes (for writing if `write`),
    /// which the caller owns under the ring protocol.
    fn with_slot<R>(
        &self,
        slot: usize,
        size: usize,
        write: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> BoxResult<R> {
        match &self.slots {
            Slots::InRing => Ok(self.ctl.with_bytes(PAGE + slot * size, size, f)),
            Slots::Own { maps, bracket } => {
                let m = maps.get(slot).ok_or("ring slot out of range")?;
                let dir = if write {
                    DMA_BUF_SYNC_WRITE
                } else {
                    DMA_BUF_SYNC_READ
                };
                if *bracket {
                    sync(&m.fd, dir)?;
                }
                let r = m.with_bytes(0, size, f);
                if *bracket {
                    sync(&m.fd, DMA_BUF_SYNC_END | dir)?;
                }
                Ok(r)
            }
        }
    }
}

// ---- handing fds to the worker -------------------------------------------

const TAG_PLAIN: u8 = b'p';
const TAG_BRACKET: u8 = b'b';
const TAG_WAKE: u8 = b'w';
/// Fds per `SCM_RIGHTS` message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 128;

/// Fds for a worker, sent once it connects to a socket ([`send_fds`]).
pub struct HandOver {
    tag: u8,
    fds: Vec<OwnedFd>,
}

impl HandOver {
    /// Waits (at most `timeout`) for the worker to connect to `listener`,
    /// then sends it the fds.
    pub fn send(
        &self,
        listener: &std::os::unix::net::UnixListener,
        timeout: Duration,
    ) -> BoxResult<()> {
        let fds: Vec<_> = self.fds.iter().map(|f| f.as_fd()).collect();
        send_fds(listener, self.tag, &fds, timeout)
    }
}

/// Accepts one connection on `listener` (waiting at most `timeout`) and
/// sends it `fds` in messages of one byte, `tag`, and at most
/// [`FDS_PER_MESSAGE`] fds each.
fn send_fds(
    listener: &std::os::unix::net::UnixListener,
    tag: u8,
    fds: &[std::os::fd::BorrowedFd<'_>],
    timeout: Duration,
) -> BoxResult<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut p = [rustix::event::PollFd::new(
        listener,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec::try_from(timeout)?;
    if rustix::event::poll(&mut p, Some(&ts))? == 0 {
        return Err("the bench worker did not connect".into());
    }
    let (s, _) = listener.accept()?;
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let mut space =
            [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(chunk)) {
            return Err("too many fds for one message".into());
        }
        rustix::net::sendmsg(
            &s,
            &[std::io::IoSlice::new(&[tag])],
            &mut anc,
            SendFlags::empty(),
        )?;
    }
    Ok(())
}

/// The worker's side of [`send_fds`]: connects to `path` and receives
/// `want` fds; their tag.
fn fetch_fds(path: &str, want: usize) -> BoxResult<(u8, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut fds = Vec::with_capacity(want);
    let mut tag = None;
    while fds.len() < want {
        let mut space =
            [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let mut b = [0u8; 1];
        let got = rustix::net::recvmsg(
            &s,
            &mut [std::io::IoSliceMut::new(&mut b)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if got.bytes == 0 {
            return Err(format!("the parent sent {} of {want} fds", fds.len()).into());
        }
        if tag.is_some_and(|t| t != b[0]) {
            return Err("the parent's fd messages disagree".into());
        }
        tag = Some(b[0]);
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
    }
    if fds.len() != want {
        return Err(format!("got {} fds from the parent, expected {want}", fds.len()).into());
    }
    Ok((tag.unwrap_or(0), fds))
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
    // The clock is read only once there is something to wait for.
    if ready() {
        return Ok(());
    }
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
pub fn prepare(ring: &Ring) {
    ring.ctl.w64(END).store(NO_END, Ordering::Release);
}

/// The producer of the ideal ring (after [`prepare`]): writes stamped pattern items until
/// `limit`, pausing `gap` after each; the first write's time and the count.
pub fn produce(
    ring: &Ring,
    size: u64,
    buffers: usize,
    limit: Limit,
    gap: Option<Duration>,
) -> BoxResult<(u64, u64)> {
    let start_ns = now_ns();
    let shm = &ring.ctl;
    let mut head = 0u64;
    let n = buffers as u64;
    let mut stop = Stop::new(limit);
    while !stop.done(head) {
        let tail = shm.w64(TAIL);
        wait(shm, P_WAIT, SPIN, Duration::from_secs(30), || {
            head - tail.load(Ordering::Acquire) < n
        })?;
        ring.with_slot((head % n) as usize, size as usize, true, |b| {
            super::cases::fill_stamped(b, head + 1);
        })?;
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
pub fn consume(ring: &Ring, size: u64, buffers: usize) -> BoxResult<BenchReport> {
    let shm = &ring.ctl;
    let mut rep = BenchReport::default();
    let mut lat = Lat::new()?;
    let n = buffers as u64;
    let mut tail = 0u64;
    // When the last item was checked (its `arrived` stamp: no second
    // clock read per item), 0 before the first.
    let mut last = 0u64;
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
            let mut arrived = 0;
            let sent = ring.with_slot((tail % n) as usize, size as usize, false, |b| {
                arrived = now_ns();
                super::cases::check_stamped(b, seq)
            })??;
            // The same warm-up as every other case's histogram.
            if tail >= super::cases::WARM_UP {
                lat.record(arrived.saturating_sub(sent));
            }
            tail += 1;
            busy = last == 0 || arrived.saturating_sub(last) < BUSY_GAP.as_nanos() as u64;
            last = arrived;
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

    /// Hands the memfd and the eventfds to the child that connects
    /// (waiting for it at most `timeout`).
    pub fn hand_over(&self, timeout: Duration) -> BoxResult<()> {
        let fds = [self.shm.fd.as_fd(), self.ping.as_fd(), self.pong.as_fd()];
        let r = send_fds(&self.listener, TAG_WAKE, &fds, timeout);
        let _ = std::fs::remove_file(&self.path);
        r
    }
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
    let (tag, fds) = fetch_fds(handle, 3)?;
    if tag != TAG_WAKE {
        return Err(format!("unknown wake-up tag {tag}").into());
    }
    let mut fds = fds.into_iter();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("ideal-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    /// `Ring::fetch` against a parent that sends `tag` and `fds` (then
    /// closes the socket): its error.
    fn fetch_from(tag: u8, fds: Vec<OwnedFd>, size: u64, buffers: usize) -> String {
        let dir = crate::tempdir::PrivateDir::new().unwrap();
        let path = dir.join("ring");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let parent = std::thread::spawn(move || {
            let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            send_fds(&l, tag, &b, Duration::from_secs(10)).unwrap();
        });
        let e = Ring::fetch(&path.to_string_lossy(), size, buffers).err();
        parent.join().unwrap();
        e.map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_ring_handed_over_wrongly_is_refused_with_the_cause() {
        let page = PAGE as u64;
        let good = || {
            (0..3)
                .map(|i| memfd(if i == 0 { page } else { 8192 }))
                .collect()
        };
        // Fewer fds than the ring needs, then the end of the socket.
        let e = fetch_from(TAG_PLAIN, good(), 8192, 4);
        assert!(e.contains("the parent sent 3 of 5 fds"), "{e}");
        // A tag that is neither plain nor bracketed.
        let e = fetch_from(b'x', good(), 8192, 2);
        assert!(e.contains("unknown ring tag 120"), "{e}");
        // Buffers smaller than the items.
        let e = fetch_from(TAG_PLAIN, good(), 16384, 2);
        assert!(e.contains("a buffer of 8192 bytes, expected 16384"), "{e}");
        // A control page of the wrong size.
        let fds = vec![memfd(2 * page), memfd(8192), memfd(8192)];
        let e = fetch_from(TAG_PLAIN, fds, 8192, 2);
        assert!(e.contains("expected 4096"), "{e}");
        // And the right ones are taken, in more than one message.
        let fds: Vec<OwnedFd> = (0..=2 * FDS_PER_MESSAGE)
            .map(|i| memfd(if i == 0 { page } else { 4096 }))
            .collect();
        assert_eq!(fetch_from(TAG_BRACKET, fds, 4096, 2 * FDS_PER_MESSAGE), "");
    }

    #[test]
    fn a_worker_that_never_connects_is_not_waited_for_without_limit() {
        let dir = crate::tempdir::PrivateDir::new().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.join("ring")).unwrap();
        let fd = memfd(4096);
        let t = Instant::now();
        let e = send_fds(&l, TAG_PLAIN, &[fd.as_fd()], Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("did not connect"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

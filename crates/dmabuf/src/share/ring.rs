//! Single-producer/single-consumer descriptor rings in shared memory: the
//! per-item path of a streaming pool, with no socket message and no system
//! call per item while both sides are busy.
//!
//! # DOC: descriptor rings
//!
//! One ring joins a producer to one consumer. It lives in a memfd the
//! producer creates, sizes and seals (`F_SEAL_SHRINK | F_SEAL_GROW |
//! F_SEAL_SEAL`) before the consumer sees it ([`ProducerRing::shared_fds`]
//! travel over the pool's socket). It holds two rings of `capacity`
//! descriptors each, `capacity` being the number of buffers of the pool:
//!
//! * **items**, producer → consumer: slot, length, sequence number, the
//!   producer's CLOCK_MONOTONIC time of sending, a fence reference and
//!   the descriptor's mark;
//! * **releases**, consumer → producer: slot, sequence number of the item
//!   given back, a fence reference, the consumer's count of items taken
//!   off the ring when it wrote the release, and the descriptor's mark.
//!
//! A fence reference is 0 for a signalled fence (it costs nothing), or
//! the tag of a fence that travels over the socket, numbered 1, 2, 3… in
//! each direction: a fence fd travels only when a real fence must.
//!
//! ## Rules
//!
//! * **Each side writes only its own words.** The producer writes the item
//!   descriptors, the item head and the release tail; the consumer the
//!   release descriptors, the release head and the item tail. Head and tail
//!   are counts of descriptors ever published and taken, so the ring is
//!   empty at `head == tail` and full at `head - tail == capacity`.
//!   Descriptors are written and read with atomic accesses only, and a
//!   head is published with release ordering after its descriptors.
//! * **A descriptor's mark says it is there.** The last word a side
//!   writes in a descriptor, with release ordering, is its mark: the
//!   count of descriptors published in that direction with this one (1
//!   for the first), before the head says the same. A reader finds the
//!   next descriptor by its mark alone — the count it expects next, read
//!   with acquire ordering — without reading the peer's head, whose cache
//!   line the peer writes at every descriptor; it reads the head only
//!   when the mark is not the expected one (not written yet, from the
//!   last lap, or wrong). A mark is only a hint: a wrong one sends the
//!   reader to the head, a head behind what the marks showed is not yet
//!   written, and the descriptor is validated the same way however it was
//!   found. Once the producer has said bye, its consumer goes by the item
//!   head alone ([`ConsumerRing::close`]).
//! * **Everything read from the peer is validated before use, and used
//!   from a private copy.** A peer's head or tail must move forward and
//!   stay within `capacity` of what this side published or took; a
//!   descriptor is copied out once and then checked: slot below the pool
//!   size, length at most the slot's buffer size, sequence exactly one
//!   past the previous one (no replay, no gap), an item never in a slot
//!   this consumer still holds, a release only of an item this consumer
//!   took off the ring and still has in flight (by the release's count of
//!   items taken, which never goes back, covers the item released, and
//!   does not pass what was published), fence tags exactly one past the
//!   previous one. Every breach is an [`ErrorKind::Protocol`]
//!   error (errno `EPROTO`) naming the field and its value, after which
//!   the ring refuses every further call with the same error. The peer's
//!   later writes never change a decision taken on a copy.
//! * **Wake-ups only when the other side sleeps.** A side that finds its
//!   ring empty raises its *waiting* word, looks again, and only then
//!   sleeps; a side that publishes wakes the other one only if that word
//!   was raised (one `FUTEX_WAKE`, or one byte written to a pipe). With
//!   [`Wake::Pipe`] a consumer may still sleep on the word itself
//!   ([`ConsumerRing::sleep_on_word`], the cheaper wake-up): it raises the
//!   word to 2 instead of 1, and the producer, reading 2, wakes it with
//!   `FUTEX_WAKE` rather than the pipe. Items that queue
//!   while the consumer is busy are taken in one batch with no system
//!   call at all.
//! * **Every wait has a deadline.** [`ConsumerRing::recv_item`] and
//!   [`ProducerRing::recv_release`] wait at most their timeout and then
//!   return [`ErrorKind::TimedOut`]; a peer that clears or spins the
//!   waiting words costs wake-ups or spinning until then, never a hang.
//!   A ring does not watch for the death of its peer: callers wait in
//!   slices and check their socket, or, with [`Wake::Pipe`], raise
//!   the waiting word with `begin_wait`, poll `wait_fd` together with the
//!   socket (or register it with tokio), and lower it with `end_wait`
//!   ([`ConsumerRing::begin_wait`], [`ProducerRing::begin_wait`]), or
//!   sleep on the word in bounded slices with
//!   [`ConsumerRing::sleep_on_word`] and look at the socket in between.
//!   A caller can also sleep through a [`ConsumerSleep`] (the word and
//!   the pipe apart from the ring), which borrows neither half.
//! * **The consumer's end has two halves.** [`ConsumerRing`] takes items
//!   and [`ConsumerReleases`] gives them back, so that items can be
//!   released from any thread (behind the caller's lock) while the
//!   thread that takes them takes no lock. They share, within this
//!   process, which items are held and how many were taken; a protocol
//!   error found by either breaks both.
//!
//! ## Layout (little-endian, offsets in bytes)
//!
//! | offset | size | written by | field                                   |
//! |-------:|-----:|------------|-----------------------------------------|
//! | 0      | 8    | producer   | magic `"DMBRING2"`                      |
//! | 8      | 8    | producer   | capacity                                |
//! | 64     | 8    | producer   | item head                               |
//! | 72     | 8    | producer   | messages sent on the socket (a hint)    |
//! | 128    | 8    | producer   | release tail                            |
//! | 192    | 4    | producer   | producer waiting (futex word)           |
//! | 256    | 8    | consumer   | item tail                               |
//! | 320    | 8    | consumer   | release head                            |
//! | 384    | 4    | consumer   | consumer waiting (futex word)           |
//! | 512    | 64 × capacity | producer | items: slot, length, sequence, sent at, fence, mark |
//! | 512 + 64 × capacity | 64 × capacity | consumer | releases: slot, sequence, fence, items taken, mark |
//!
//! The length of the memfd is that, rounded up to a page. Each head, tail
//! and waiting word has a 64-byte cache line of its own: a word written
//! per item never shares a line with one the other side reads per item
//! (the waiting words, read at every publish, are written only around a
//! sleep). A side reads the other's tail only when its own count says
//! the ring may be full (the producer also learns how far the consumer
//! has taken from each release), and the other's head only when a mark
//! is not the expected one: in a steady stream a side reads, per item,
//! the descriptor lines the other side wrote and no head or tail.
//!
//! The count of messages sent is the number of messages the producer's
//! end of the socket has sent whole, written after each send that the
//! consumer must see while it may sleep on the word (before the wake-up
//! that follows). It shares the item head's line, as both are written
//! by the producer and read by the consumer before it sleeps; it changes
//! only when a message is sent. A consumer compares it with the messages
//! it has received: it only tells it whether to look at the socket
//! before sleeping, and a count that lies costs one look (see the pool's
//! consumer). A ring from a producer that never writes it reads 0 there.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::{Errno, Error, ErrorKind, Result};
use crate::sys::futex::{self, SharedWords};
use crate::sys::wake;

/// The magic word at offset 0: `"DMBRING3"` (the layout above; version 2
/// had no marks and 32-byte releases, version 1 kept the heads, tails and
/// waiting words of a side on one cache line).
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"DMBRING3");
/// Most descriptors a ring holds in each direction (the pool's limit).
pub const MAX_RING_CAPACITY: usize = super::pool::MAX_POOL_BUFFERS;

const W_MAGIC: usize = 0;
const W_CAPACITY: usize = 1;
const W_ITEM_HEAD: usize = 8; // byte 64
const W_SENT: usize = 9; // byte 72
const W_REL_TAIL: usize = 16; // byte 128
const H_PRODUCER_WAITING: usize = 48; // 32-bit index: byte 192
const W_ITEM_TAIL: usize = 32; // byte 256
const W_REL_HEAD: usize = 40; // byte 320
const H_CONSUMER_WAITING: usize = 96; // 32-bit index: byte 384
const W_ITEMS: usize = 64; // byte 512
const ITEM_WORDS: usize = 8;
/// Word of an item descriptor that holds its mark.
const ITEM_MARK: usize = 5;
const REL_WORDS: usize = 8;
/// Word of a release descriptor that holds the consumer's items taken.
const REL_TAKEN: usize = 3;
/// Word of a release descriptor that holds its mark.
const REL_MARK: usize = 4;
/// Waiting-word value of a side asleep in `FUTEX_WAIT` on the word itself
/// in a ring with wake-up pipes ([`ConsumerRing::sleep_on_word`]); 1 is a
/// side asleep on its pipe (or, without pipes, on the word).
const SLEEPS_ON_WORD: u32 = 2;
/// How long a side looks again before it sleeps, unless set otherwise
/// ([`ProducerRing::set_spin`], [`ConsumerRing::set_spin`]).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(5);

/// The byte length of a ring memfd of `capacity` descriptors per direction.
pub fn ring_len(capacity: usize) -> usize {
    let raw = W_ITEMS * 8 + capacity * (ITEM_WORDS + REL_WORDS) * 8;
    let page = crate::sys::mem::page_size();
    raw.div_ceil(page) * page
}

/// How a sleeping side is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// `FUTEX_WAIT`/`FUTEX_WAKE` on the waiting word itself (no extra fd).
    Futex,
    /// One pipe per direction: the sleeper polls its read end (so it can
    /// poll a socket or register with tokio at the same time), the waker
    /// writes one byte to its write end. Neither side's read or write can
    /// be made to block by the other (see "Wake-up pipes" in the module
    /// documentation).
    Pipe,
}

/// A fence reference in a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceRef {
    /// The fence has signalled: nothing travels.
    Signalled,
    /// The fence travels over the socket as a fence message with this tag
    /// (1, 2, 3… in each direction).
    Socket(u64),
}

impl FenceRef {
    fn word(self) -> u64 {
        match self {
            FenceRef::Signalled => 0,
            FenceRef::Socket(t) => t,
        }
    }
}

/// An item descriptor, as validated by the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemDesc {
    /// Buffer index in the pool.
    pub slot: usize,
    /// Bytes of the item (at most the buffer's size).
    pub len: u64,
    /// Sequence number: 1 for the first item of the ring, then one more
    /// for each.
    pub seq: u64,
    /// The producer's CLOCK_MONOTONIC ns when it published the item
    /// (informational: not validated, used only for latency reports).
    pub sent_ns: u64,
    /// The ready fence.
    pub fence: FenceRef,
}

/// A release descriptor, as validated by the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseDesc {
    /// Buffer index in the pool.
    pub slot: usize,
    /// Sequence number of the item given back.
    pub seq: u64,
    /// The release fence.
    pub fence: FenceRef,
}

fn protocol(obj: &str, cause: String) -> Error {
    Error::new(ErrorKind::Protocol, "ring", obj.to_string(), cause).with_errno(Errno::PROTO)
}

fn timed_out(obj: &str, what: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        "ring",
        obj.to_string(),
        format!("no {what} within {timeout:?}"),
    )
    .with_errno(Errno::TIMEDOUT)
}

/// The shared words and wake-up means of one side.
#[derive(Debug)]
struct Shared {
    /// Shared with [`ConsumerSleep`], which sleeps on it without the ring.
    mem: Arc<SharedWords>,
    cap: usize,
    /// Wake-up pipes (Pipe mode): the read end this side sleeps on, and
    /// the write end it writes to wake the peer.
    mine: Option<Arc<OwnedFd>>,
    theirs: Option<OwnedFd>,
    name: String,
    /// Set on the first protocol error; every later call returns it (on
    /// the consumer's side, through either half: they share it).
    broken: Arc<OnceLock<Error>>,
    /// How long to look again before sleeping.
    spin: Duration,
}

impl Shared {
    fn w(&self, i: usize) -> &AtomicU64 {
        // Indices are constants or below the validated capacity, and the
        // mapping was sized for that capacity.
        self.mem.word(i).expect("ring word inside the mapping")
    }

    fn h(&self, i: usize) -> &AtomicU32 {
        self.mem.word32(i).expect("ring word inside the mapping")
    }

    fn check(&self) -> Result<()> {
        match self.broken.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&self, e: Error) -> Error {
        if e.kind() == ErrorKind::Protocol {
            // The first error stays: a later one is the same ring broken.
            let _ = self.broken.set(e.clone());
        }
        e
    }

    /// Reads the peer's head word `word` (named `what` in errors) and
    /// checks it against what this side knows: never behind the head seen
    /// before, never more than the capacity ahead of what was taken. A head
    /// outside that breaks the ring with a Protocol error. (It may be
    /// behind what was taken: the marks are written before the head.)
    fn peer_head(&mut self, word: usize, what: &str, seen: u64, taken: u64) -> Result<u64> {
        let h = self.w(word).load(Ordering::Acquire);
        if h < seen || h.saturating_sub(taken) > self.cap as u64 {
            let e = protocol(
                &self.name,
                format!(
                    "{what} head {h} is outside {seen}..={} (seen before .. taken + capacity)",
                    taken + self.cap as u64
                ),
            );
            return Err(self.fail(e));
        }
        Ok(h)
    }

    /// Reads the peer's tail word `word` (named `what` in errors) and
    /// checks it against what this side knows: never behind the tail seen
    /// before, never past what this side published. A tail outside that
    /// breaks the ring with a Protocol error.
    fn peer_tail(&mut self, word: usize, what: &str, seen: u64, published: u64) -> Result<u64> {
        let t = self.w(word).load(Ordering::Acquire);
        if t < seen || t > published {
            let e = protocol(
                &self.name,
                format!(
                    "{what} tail {t} is outside {seen}..={published} (taken before .. published)"
                ),
            );
            return Err(self.fail(e));
        }
        Ok(t)
    }

    /// Whether the descriptor at word `base` carries mark `expected` in
    /// its word `mark` (read with acquire ordering: its other words, written
    /// before, are then seen).
    fn marked(&self, base: usize, mark: usize, expected: u64) -> bool {
        self.w(base + mark).load(Ordering::Acquire) == expected
    }

    /// Publishes the descriptor at word `base`: its `fields` (word in the
    /// descriptor, value), then `count` as its mark (word `mark`) and in
    /// the head word `head`, both with release ordering and in that order
    /// (see "Marks" in the module documentation).
    fn publish(&self, base: usize, fields: &[(usize, u64)], mark: usize, head: usize, count: u64) {
        for &(i, v) in fields {
            self.w(base + i).store(v, Ordering::Relaxed);
        }
        self.w(base + mark).store(count, Ordering::Release);
        self.w(head).store(count, Ordering::Release);
    }

    /// Wakes the peer if its waiting word (32-bit index `flag`) is raised.
    fn wake_peer(&self, flag: usize) -> Result<()> {
        // Pairs with the fence in `wait`: either the peer sees what we
        // published before sleeping, or we see its raised flag here.
        fence(Ordering::SeqCst);
        let f = self.h(flag);
        if f.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let how = f.swap(0, Ordering::SeqCst);
        if how == 0 {
            return Ok(());
        }
        // A peer asleep on the word itself says so with `SLEEPS_ON_WORD`
        // (any other value: on its pipe, if the ring has pipes). A
        // wrong value from a hostile peer only picks the wrong means: it
        // then sleeps until its own bound.
        match &self.theirs {
            Some(_) if how == SLEEPS_ON_WORD => {
                futex::wake(f, 1).map_err(|e| Error::os("ring wake", self.name.clone(), e))?;
            }
            None => {
                futex::wake(f, 1).map_err(|e| Error::os("ring wake", self.name.clone(), e))?;
            }
            // Never waits, whatever the peer did to the pipe (a full one
            // has a wake-up pending).
            Some(fd) => wake::wake(fd).map_err(|e| Error::os("ring wake", self.name.clone(), e))?,
        }
        Ok(())
    }

    /// Sleeps on this side's waiting word (32-bit index `flag`), raised by
    /// the caller, for at most `left`.
    fn sleep(&self, flag: usize, left: Duration) -> Result<()> {
        let on_word = || match futex::wait(self.h(flag), 1, left) {
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => Ok(()),
            Err(e) => Err(Error::os("ring wait", self.name.clone(), e)),
        };
        match &self.mine {
            None => on_word(),
            Some(fd) => {
                let ts = rustix::time::Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                };
                let mut p = [PollFd::new(fd, PollFlags::IN)];
                match rustix::event::poll(&mut p, Some(&ts)) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(Error::os("ring wait", self.name.clone(), e)),
                }
                let got =
                    wake::drain(&**fd).map_err(|e| Error::os("ring wait", self.name.clone(), e))?;
                // Hung up with nothing in it: every write end is closed
                // (the peer's process is gone, or it closed its end), so
                // the pipe polls ready for good. Sleep on the word instead,
                // which still ends at the bound, rather than spin.
                if got == 0 && p[0].revents().contains(PollFlags::HUP) {
                    return on_word();
                }
                Ok(())
            }
        }
    }

    /// Lowers waiting word `flag` and drains this side's pipe.
    fn end_wait(&self, flag: usize) {
        self.h(flag).store(0, Ordering::Relaxed);
        if let Some(fd) = &self.mine {
            let _ = wake::drain(&**fd);
        }
    }

    /// Runs `attempt` until it yields, sleeping on waiting word `flag` in
    /// between, for at most `timeout`.
    fn wait<T, S>(
        this: &mut S,
        flag: usize,
        timeout: Duration,
        what: &str,
        shared: impl Fn(&mut S) -> &mut Shared,
        mut attempt: impl FnMut(&mut S) -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let deadline = start + timeout;
        let spin = shared(this).spin.min(timeout);
        loop {
            if let Some(v) = attempt(this)? {
                return Ok(v);
            }
            // A peer that is busy publishes soon: look again for a few
            // microseconds before paying for a sleep and a wake-up.
            if start.elapsed() < spin {
                std::hint::spin_loop();
                continue;
            }
            shared(this).h(flag).store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            match attempt(this) {
                Ok(None) => {}
                Ok(Some(v)) => {
                    shared(this).h(flag).store(0, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => {
                    shared(this).h(flag).store(0, Ordering::Relaxed);
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let s = shared(this);
                s.h(flag).store(0, Ordering::Relaxed);
                return Err(timed_out(&s.name, what, timeout));
            }
            shared(this).sleep(flag, deadline - now)?;
        }
    }
}

/// A count of descriptors written or taken on one side of a ring, with
/// the index of the next one (`count % capacity`, kept beside the count
/// so that no descriptor costs a division).
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    count: u64,
    at: usize,
}

impl Position {
    /// One descriptor further, in a ring of `cap`.
    fn advance(&mut self, cap: usize) {
        self.count += 1;
        self.at = if self.at + 1 == cap { 0 } else { self.at + 1 };
    }
}

fn wake_pipe(name: &str) -> Result<(OwnedFd, OwnedFd)> {
    wake::pipe().map_err(|e| Error::os("pipe", name.to_string(), e))
}

/// The producer's end of a ring. See the module documentation.
#[derive(Debug)]
pub struct ProducerRing {
    s: Shared,
    memfd: OwnedFd,
    /// With [`Wake::Pipe`], the ends the consumer gets: the read end of its
    /// wake-up pipe and the write end of this side's. Both are kept: the
    /// write end so that this side's read end never reads as hung up
    /// while the ring lives, whatever the consumer closes.
    sent: Option<(OwnedFd, OwnedFd)>,
    sizes: Vec<u64>,
    head: Position,
    tail_seen: u64,
    rel_tail: Position,
    rel_head_seen: u64,
    /// Items taken, as the last release said.
    rel_taken: u64,
    seq: u64,
    fence_out: u64,
    rel_fence_in: u64,
    /// Per slot: the sequence number in flight to this consumer, 0 if none.
    in_flight: Vec<u64>,
}

impl ProducerRing {
    /// Creates a ring for a pool whose buffer `i` holds `sizes[i]` bytes,
    /// named `name` in errors (such as `"consumer 0"`).
    pub fn create(sizes: &[u64], wake: Wake, name: &str) -> Result<ProducerRing> {
        let cap = sizes.len();
        if cap == 0 || cap > MAX_RING_CAPACITY {
            return Err(Error::invalid(
                "ring",
                name,
                format!("{cap} slots; a ring has 1 to {MAX_RING_CAPACITY}"),
            ));
        }
        let len = ring_len(cap);
        let memfd = rustix::fs::memfd_create(
            "dmabuf-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| Error::os("memfd_create", name.to_string(), e))?;
        rustix::fs::ftruncate(&memfd, len as u64)
            .map_err(|e| Error::os("ftruncate", name.to_string(), e))?;
        rustix::fs::fcntl_add_seals(
            &memfd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| Error::os("seal", name.to_string(), e))?;
        let mem =
            SharedWords::map(&memfd, len / 8, true).map_err(|e| Error::os("mmap", name, e))?;
        mem.word(W_MAGIC)
            .expect("inside")
            .store(RING_MAGIC, Ordering::Relaxed);
        mem.word(W_CAPACITY)
            .expect("inside")
            .store(cap as u64, Ordering::Release);
        let (mine, theirs, sent) = match wake {
            Wake::Futex => (None, None, None),
            Wake::Pipe => {
                let (consumer_read, consumer_write) = wake_pipe(name)?;
                let (producer_read, producer_write) = wake_pipe(name)?;
                (
                    Some(Arc::new(producer_read)),
                    Some(consumer_write),
                    Some((consumer_read, producer_write)),
                )
            }
        };
        Ok(ProducerRing {
            s: Shared {
                mem: Arc::new(mem),
                cap,
                mine,
                theirs,
                name: name.to_string(),
                broken: Arc::default(),
                spin: DEFAULT_SPIN,
            },
            memfd,
            sent,
            sizes: sizes.to_vec(),
            head: Position::default(),
            tail_seen: 0,
            rel_tail: Position::default(),
            rel_head_seen: 0,
            rel_taken: 0,
            seq: 0,
            fence_out: 0,
            rel_fence_in: 0,
            in_flight: vec![0; cap],
        })
    }

    /// The fds the consumer needs, in order: the ring memfd, then (with
    /// [`Wake::Pipe`]) the read end of the consumer's wake-up pipe and the
    /// write end of the producer's.
    pub fn shared_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v = vec![self.memfd.as_fd()];
        if let Some((consumer_read, producer_write)) = &self.sent {
            v.push(consumer_read.as_fd());
            v.push(producer_write.as_fd());
        }
        v
    }

    /// Wakes the consumer if it sleeps (after a socket message it must see
    /// soon, such as a bye, while it may sleep on the ring's word).
    pub fn wake_consumer(&self) -> Result<()> {
        self.s.wake_peer(H_CONSUMER_WAITING)
    }

    /// Publishes `sent`, the messages this side's socket has sent whole
    /// so far, then wakes the consumer if it sleeps: a consumer about to
    /// sleep on the word sees either the count or the wake-up (see the
    /// layout).
    pub fn publish_sent(&self, sent: u64) -> Result<()> {
        self.s.w(W_SENT).store(sent, Ordering::Release);
        self.wake_consumer()
    }

    /// The fd to poll for a wake-up while waiting for releases (with
    /// [`Wake::Pipe`]).
    pub fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.s.mine.as_ref().map(|f| f.as_fd())
    }

    /// Sets how long a wait looks again before it sleeps (0: sleep at
    /// once). Spinning saves the wake-up when the peer is busy, and wastes
    /// the core when it is not.
    pub fn set_spin(&mut self, spin: Duration) {
        self.s.spin = spin;
    }

    /// The tag the next item's socket fence will carry.
    pub fn next_fence_tag(&self) -> u64 {
        self.fence_out + 1
    }

    /// Descriptors per direction (the pool size).
    pub fn capacity(&self) -> usize {
        self.s.cap
    }

    /// Items published and not yet released.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|&&s| s != 0).count()
    }

    /// The consumer's item tail (items it took off the ring, validated)
    /// and how many published items it has not taken yet.
    pub fn untaken(&mut self) -> Result<(u64, u64)> {
        self.s.check()?;
        let t = self.refresh_tail()?;
        Ok((t, self.head.count - t))
    }

    /// Refreshes the consumer's item tail, validated.
    fn refresh_tail(&mut self) -> Result<u64> {
        let t = self
            .s
            .peer_tail(W_ITEM_TAIL, "item", self.tail_seen, self.head.count)?;
        self.tail_seen = t;
        Ok(t)
    }

    /// Publishes an item in `slot` of `len` bytes; `socket_fence` says
    /// whether its ready fence travels over the socket (then the returned
    /// descriptor carries its tag, which the fence message must use).
    /// Wakes the consumer only if it sleeps.
    pub fn send_item(
        &mut self,
        slot: usize,
        len: u64,
        sent_ns: u64,
        socket_fence: bool,
    ) -> Result<ItemDesc> {
        self.s.check()?;
        let name = &self.s.name;
        let size = *self.sizes.get(slot).ok_or_else(|| {
            Error::invalid("ring send item", name.clone(), format!("slot {slot}"))
        })?;
        if len > size {
            return Err(Error::invalid(
                "ring send item",
                name.clone(),
                format!("length {len} past the {size}-byte buffer of slot {slot}"),
            ));
        }
        if self.in_flight[slot] != 0 {
            return Err(Error::invalid(
                "ring send item",
                name.clone(),
                format!(
                    "slot {slot} still in flight (sequence {})",
                    self.in_flight[slot]
                ),
            ));
        }
        // The consumer's tail is read only when the ring may be full.
        if self.head.count - self.tail_seen >= self.s.cap as u64 {
            let tail = self.refresh_tail()?;
            if self.head.count - tail >= self.s.cap as u64 {
                let e = protocol(
                    &self.s.name,
                    format!(
                        "item ring full ({} items not taken) although slot {slot} is free",
                        self.head.count - tail
                    ),
                );
                return Err(self.s.fail(e));
            }
        }
        self.seq += 1;
        let fence = if socket_fence {
            self.fence_out += 1;
            FenceRef::Socket(self.fence_out)
        } else {
            FenceRef::Signalled
        };
        let d = ItemDesc {
            slot,
            len,
            seq: self.seq,
            sent_ns,
            fence,
        };
        let base = W_ITEMS + self.head.at * ITEM_WORDS;
        self.head.advance(self.s.cap);
        let fields = [
            (0, slot as u64),
            (1, len),
            (2, d.seq),
            (3, sent_ns),
            (4, fence.word()),
        ];
        self.s
            .publish(base, &fields, ITEM_MARK, W_ITEM_HEAD, self.head.count);
        self.in_flight[slot] = d.seq;
        self.s.wake_peer(H_CONSUMER_WAITING)?;
        Ok(d)
    }

    /// The next release, if one is there (no waiting, no system call).
    pub fn try_recv_release(&mut self) -> Result<Option<ReleaseDesc>> {
        if !self.release_pending()? {
            return Ok(None);
        }
        let base = self.release_base();
        // One copy; every check below is on it.
        let [slot, seq, fref, taken] =
            [0, 1, 2, REL_TAKEN].map(|i| self.s.w(base + i).load(Ordering::Relaxed));
        let r = self.check_release(slot, seq, fref, taken);
        let d = r.map_err(|e| self.s.fail(e))?;
        self.in_flight[d.slot] = 0;
        self.rel_tail.advance(self.s.cap);
        self.s
            .w(W_REL_TAIL)
            .store(self.rel_tail.count, Ordering::Release);
        Ok(Some(d))
    }

    /// The first word of the next release descriptor.
    fn release_base(&self) -> usize {
        W_ITEMS + self.s.cap * ITEM_WORDS + self.rel_tail.at * REL_WORDS
    }

    /// Whether a release is waiting: its mark says so, or else the
    /// consumer's release head, read and validated when every release it
    /// showed before was taken.
    fn release_pending(&mut self) -> Result<bool> {
        self.s.check()?;
        if self
            .s
            .marked(self.release_base(), REL_MARK, self.rel_tail.count + 1)
        {
            return Ok(true);
        }
        if self.rel_tail.count >= self.rel_head_seen {
            let h = self.s.peer_head(
                W_REL_HEAD,
                "release",
                self.rel_head_seen,
                self.rel_tail.count,
            )?;
            self.rel_head_seen = h;
        }
        Ok(self.rel_head_seen > self.rel_tail.count)
    }

    /// For a caller that sleeps outside the ring (polling [`wait_fd`]
    /// together with other fds, with [`Wake::Pipe`]): raises the
    /// producer's waiting word and looks again. `Ok(true)`: a release is
    /// there, do not sleep (the word is lowered again). `Ok(false)`: sleep,
    /// then call [`end_wait`](Self::end_wait).
    ///
    /// [`wait_fd`]: Self::wait_fd
    pub fn begin_wait(&mut self) -> Result<bool> {
        self.s.h(H_PRODUCER_WAITING).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let r = self.release_pending();
        if !matches!(r, Ok(false)) {
            self.s.h(H_PRODUCER_WAITING).store(0, Ordering::Relaxed);
        }
        r
    }

    /// Ends a sleep begun with [`begin_wait`](Self::begin_wait): lowers
    /// the waiting word and drains the wake-up fd.
    pub fn end_wait(&mut self) {
        self.s.end_wait(H_PRODUCER_WAITING);
    }

    fn check_release(&mut self, slot: u64, seq: u64, fref: u64, taken: u64) -> Result<ReleaseDesc> {
        // The ring's name is copied only into an error: nothing per release.
        if slot >= self.s.cap as u64 {
            return Err(protocol(
                &self.s.name,
                format!(
                    "release slot {slot} is not below the pool size {}",
                    self.s.cap
                ),
            ));
        }
        let held = self.in_flight[slot as usize];
        if seq == 0 || seq != held {
            return Err(protocol(
                &self.s.name,
                format!(
                    "release sequence {seq} of slot {slot}: {}",
                    if held == 0 {
                        "that slot has no item in flight".to_string()
                    } else {
                        format!("its item in flight is sequence {held}")
                    }
                ),
            ));
        }
        // The consumer's count of items taken, as it wrote it in the
        // release: it must not go back or pass what was published, and it
        // covers the item given back. It is what the producer knows of the
        // consumer's tail from then on (read from the tail word itself
        // only when the ring may be full).
        // (Against the count of the release before: the tail word, read
        // meanwhile, may be ahead of a release written before it.)
        let name = &self.s.name;
        if taken < self.rel_taken || taken > self.head.count {
            return Err(protocol(
                name,
                format!(
                    "release of slot {slot} says {taken} items taken, outside {}..={} (the release before .. published)",
                    self.rel_taken, self.head.count
                ),
            ));
        }
        if seq > taken {
            return Err(protocol(
                name,
                format!(
                    "release sequence {seq} of an item not yet taken off the ring ({taken} taken)"
                ),
            ));
        }
        let fence = match fref {
            0 => FenceRef::Signalled,
            t if t == self.rel_fence_in + 1 => {
                self.rel_fence_in = t;
                FenceRef::Socket(t)
            }
            t => {
                return Err(protocol(
                    name,
                    format!(
                        "release fence reference {t}, expected 0 or {}",
                        self.rel_fence_in + 1
                    ),
                ))
            }
        };
        self.rel_taken = taken;
        self.tail_seen = self.tail_seen.max(taken);
        Ok(ReleaseDesc {
            slot: slot as usize,
            seq,
            fence,
        })
    }

    /// The next release, waiting at most `timeout` (then
    /// [`ErrorKind::TimedOut`]).
    pub fn recv_release(&mut self, timeout: Duration) -> Result<ReleaseDesc> {
        Shared::wait(
            self,
            H_PRODUCER_WAITING,
            timeout,
            "release",
            |p| &mut p.s,
            |p| p.try_recv_release(),
        )
    }
}

/// The consumer's end of a ring, the half that takes items (see the
/// module documentation). The other half, [`ConsumerReleases`], gives
/// them back; [`ConsumerRing::open`] makes both.
#[derive(Debug)]
pub struct ConsumerRing {
    s: Shared,
    sizes: Vec<u64>,
    tail: Position,
    head_seen: u64,
    seq: u64,
    fence_in: u64,
    taken: Arc<Taken>,
    /// The producer's item head when it said it was done ([`close`]):
    /// no item may be published past it.
    ///
    /// [`close`]: ConsumerRing::close
    limit: Option<u64>,
}

/// The consumer's end of a ring, the half that gives items back: it
/// writes the release descriptors, the release head, and wakes the
/// producer. It is apart from [`ConsumerRing`] so that items can be
/// released from other threads (behind the caller's lock) while the
/// thread that takes them does so without one.
#[derive(Debug)]
pub struct ConsumerReleases {
    s: Shared,
    rel_head: Position,
    rel_tail_seen: u64,
    rel_fence_out: u64,
    taken: Arc<Taken>,
}

/// What the consumer's two halves share, written by this process only:
/// the items held and the count of items taken.
#[derive(Debug)]
struct Taken {
    /// Per slot: the sequence number held, 0 if none. The taking half
    /// sets it when it takes an item, the releasing half clears it just
    /// before it publishes the release (so an item the producer puts in
    /// the slot after reading that release is never taken for one still
    /// held).
    held: Box<[AtomicU64]>,
    /// Items taken off the ring (the item tail), which the releasing half
    /// writes into each release: a release is written only for an item
    /// taken before, so the count covers it, and it never goes back.
    count: AtomicU64,
}

impl Taken {
    fn held(&self, slot: usize) -> u64 {
        self.held.get(slot).map_or(0, |h| h.load(Ordering::Acquire))
    }
}

/// The waiting word's value of a consumer asleep on the word itself.
fn word_sleep_value(mine: &Option<Arc<OwnedFd>>) -> u32 {
    if mine.is_some() {
        SLEEPS_ON_WORD
    } else {
        1
    }
}

/// A consumer's means of sleeping, apart from its ring: the waiting word
/// (the ring's mapping, shared) and the wake-up pipe. It holds no
/// state of the ring and borrows neither half, so a caller can keep it
/// beside the ring (or register its fd with an event loop):
/// [`ConsumerRing::begin_wait`] or [`ConsumerRing::begin_word_sleep`],
/// then [`wait_fd`](Self::wait_fd) polled or
/// [`sleep_on_word`](Self::sleep_on_word), then
/// [`ConsumerRing::end_wait`] or [`ConsumerRing::end_word_sleep`].
#[derive(Debug, Clone)]
pub struct ConsumerSleep {
    mem: Arc<SharedWords>,
    mine: Option<Arc<OwnedFd>>,
    name: String,
}

impl ConsumerSleep {
    /// The fd to poll for a wake-up (with [`Wake::Pipe`]); the same as
    /// [`ConsumerRing::wait_fd`].
    pub fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.mine.as_ref().map(|f| f.as_fd())
    }

    /// The producer's count of messages sent on the socket, as written
    /// on the ring ([`ProducerRing::publish_sent`]): a hint, never trusted
    /// for more than whether to look at the socket before sleeping (see
    /// the layout).
    pub fn messages_sent(&self) -> u64 {
        self.mem
            .word(W_SENT)
            .map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// Sleeps in `FUTEX_WAIT` on the consumer's waiting word while it
    /// holds the value [`ConsumerRing::begin_word_sleep`] raised it to,
    /// for at most `max`. Returns on a wake-up, a changed word, a signal
    /// or the bound alike: the caller looks at the ring after.
    pub fn sleep_on_word(&self, max: Duration) -> Result<()> {
        sleep_on_consumer_word(&self.mem, &self.mine, &self.name, max)
    }
}

/// `FUTEX_WAIT` on the consumer's waiting word while it holds the value
/// of a word sleep, for at most `max`.
fn sleep_on_consumer_word(
    mem: &SharedWords,
    mine: &Option<Arc<OwnedFd>>,
    name: &str,
    max: Duration,
) -> Result<()> {
    let word = mem
        .word32(H_CONSUMER_WAITING)
        .expect("ring word inside the mapping");
    match futex::wait(word, word_sleep_value(mine), max) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => Ok(()),
        Err(e) => Err(Error::os("ring wait", name.to_string(), e)),
    }
}

/// Checks a wake-up fd the producer sent: a pipe end of the right
/// direction, on which a read or write that never waits works (tried
/// once: draining this side's read end, which holds nothing yet from an
/// honest producer, or one byte to the producer's, a spurious wake-up it
/// ignores). The producer made the pipe and may hold the same file
/// description: only such calls keep it from blocking this side.
fn check_wake_end(fd: &OwnedFd, end: wake::End, name: &str) -> Result<()> {
    let (what, want) = match end {
        wake::End::Read => ("the consumer's wake-up fd", "the read end of a pipe"),
        wake::End::Write => ("the producer's wake-up fd", "the write end of a pipe"),
    };
    if !wake::is_end(fd, end).unwrap_or(false) {
        return Err(protocol(name, format!("{what} is not {want}")));
    }
    let tried = match end {
        wake::End::Read => wake::drain(fd).map(drop),
        wake::End::Write => wake::wake(fd),
    };
    tried.map_err(|e| {
        protocol(
            name,
            format!("{what} does not take reads and writes that never wait (RWF_NOWAIT): {e}"),
        )
    })
}

impl ConsumerRing {
    /// Opens the ring from the fds the producer sent
    /// ([`ProducerRing::shared_fds`]), for a pool whose buffer `i` holds
    /// `sizes[i]` bytes (as this side received them): the half that takes
    /// items and the half that gives them back. Checks the memfd's seals,
    /// size, magic and capacity, and that the wake-up fds are the read end
    /// and the write end of pipes that take reads and writes that never
    /// wait (`RWF_NOWAIT`).
    pub fn open(
        fds: Vec<OwnedFd>,
        sizes: &[u64],
        name: &str,
    ) -> Result<(ConsumerRing, ConsumerReleases)> {
        let cap = sizes.len();
        if cap == 0 || cap > MAX_RING_CAPACITY {
            return Err(Error::invalid(
                "ring",
                name,
                format!("{cap} slots; a ring has 1 to {MAX_RING_CAPACITY}"),
            ));
        }
        let mut fds = fds.into_iter();
        let (memfd, mine, theirs) = match (fds.next(), fds.next(), fds.next(), fds.next()) {
            (Some(m), None, None, None) => (m, None, None),
            (Some(m), Some(a), Some(b), None) => {
                check_wake_end(&a, wake::End::Read, name)?;
                check_wake_end(&b, wake::End::Write, name)?;
                (m, Some(a), Some(b))
            }
            _ => return Err(protocol(name, "ring fds: expected 1 or 3".into())),
        };
        let len = ring_len(cap);
        let seals = rustix::fs::fcntl_get_seals(&memfd).map_err(|e| {
            protocol(name, format!("ring memfd: cannot read its seals ({e})")).with_errno(e)
        })?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(protocol(
                name,
                "ring memfd is not sealed against shrinking and growing".into(),
            ));
        }
        let size = rustix::fs::fstat(&memfd)
            .map_err(|e| Error::os("fstat", name.to_string(), e))?
            .st_size;
        if size != len as i64 {
            return Err(protocol(
                name,
                format!("ring memfd of {size} bytes, expected {len} for {cap} slots"),
            ));
        }
        let mem =
            SharedWords::map(&memfd, len / 8, true).map_err(|e| Error::os("mmap", name, e))?;
        let magic = mem.word(W_MAGIC).expect("inside").load(Ordering::Acquire);
        let c = mem
            .word(W_CAPACITY)
            .expect("inside")
            .load(Ordering::Acquire);
        if magic != RING_MAGIC {
            return Err(protocol(name, format!("ring magic {magic:#018x}")));
        }
        if c != cap as u64 {
            return Err(protocol(
                name,
                format!("ring capacity {c}, expected {cap} (the pool size)"),
            ));
        }
        let items = Shared {
            mem: Arc::new(mem),
            cap,
            mine: mine.map(Arc::new),
            theirs: None,
            name: name.to_string(),
            broken: Arc::default(),
            spin: DEFAULT_SPIN,
        };
        let releases = Shared {
            mem: items.mem.clone(),
            cap,
            mine: None,
            theirs,
            name: name.to_string(),
            broken: items.broken.clone(),
            spin: DEFAULT_SPIN,
        };
        let taken = Arc::new(Taken {
            held: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
        });
        let ring = ConsumerRing {
            s: items,
            sizes: sizes.to_vec(),
            tail: Position::default(),
            head_seen: 0,
            seq: 0,
            fence_in: 0,
            taken: taken.clone(),
            limit: None,
        };
        let releases = ConsumerReleases {
            s: releases,
            rel_head: Position::default(),
            rel_tail_seen: 0,
            rel_fence_out: 0,
            taken,
        };
        Ok((ring, releases))
    }

    /// The fd to poll for a wake-up while waiting for items (with
    /// [`Wake::Pipe`]).
    pub fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.s.mine.as_ref().map(|f| f.as_fd())
    }

    /// Sets how long a wait looks again before it sleeps (0: sleep at
    /// once).
    pub fn set_spin(&mut self, spin: Duration) {
        self.s.spin = spin;
    }

    /// Descriptors per direction (the pool size).
    pub fn capacity(&self) -> usize {
        self.s.cap
    }

    /// Items taken and not yet released.
    pub fn held(&self) -> usize {
        (0..self.s.cap).filter(|&s| self.taken.held(s) != 0).count()
    }

    /// The next item, if one is there (no waiting, no system call).
    pub fn try_recv_item(&mut self) -> Result<Option<ItemDesc>> {
        if !self.item_pending()? {
            return Ok(None);
        }
        let base = self.item_base();
        // One copy; every check below is on it.
        let [slot, len, seq, sent_ns, fref] =
            [0, 1, 2, 3, 4].map(|i| self.s.w(base + i).load(Ordering::Relaxed));
        let d = self
            .check_item(slot, len, seq, sent_ns, fref)
            .map_err(|e| self.s.fail(e))?;
        self.seq = d.seq;
        if let FenceRef::Socket(t) = d.fence {
            self.fence_in = t;
        }
        self.taken.held[d.slot].store(d.seq, Ordering::Relaxed);
        self.tail.advance(self.s.cap);
        self.taken.count.store(self.tail.count, Ordering::Release);
        self.s
            .w(W_ITEM_TAIL)
            .store(self.tail.count, Ordering::Release);
        Ok(Some(d))
    }

    /// The first word of the next item descriptor.
    fn item_base(&self) -> usize {
        W_ITEMS + self.tail.at * ITEM_WORDS
    }

    /// Whether an item is waiting: its mark says so (until the producer's
    /// bye), or else the producer's item head, read and validated when
    /// every item it showed before was taken.
    fn item_pending(&mut self) -> Result<bool> {
        self.s.check()?;
        if self.limit.is_none()
            && self
                .s
                .marked(self.item_base(), ITEM_MARK, self.tail.count + 1)
        {
            return Ok(true);
        }
        if self.tail.count >= self.head_seen {
            let h = self
                .s
                .peer_head(W_ITEM_HEAD, "item", self.head_seen, self.tail.count)?;
            if let Some(limit) = self.limit.filter(|&l| h > l) {
                let e = protocol(
                    &self.s.name,
                    format!(
                        "item head {h}: {} items published after the producer's bye (at {limit})",
                        h - limit
                    ),
                );
                return Err(self.s.fail(e));
            }
            self.head_seen = h;
        }
        Ok(self.head_seen > self.tail.count)
    }

    /// The producer said it is done (its bye, sent after its last item was
    /// published): items up to the item head as it is now are still
    /// taken, and any item published after it is a protocol error.
    pub fn close(&mut self) -> Result<()> {
        self.s.check()?;
        let h = self
            .s
            .peer_head(W_ITEM_HEAD, "item", self.head_seen, self.tail.count)?;
        self.head_seen = h;
        self.limit = Some(h);
        Ok(())
    }

    /// For a caller that sleeps outside the ring (polling [`wait_fd`]
    /// together with its socket, or through tokio, with
    /// [`Wake::Pipe`]): raises the consumer's waiting word and looks
    /// again. `Ok(true)`: an item is there, do not sleep (the word is
    /// lowered again). `Ok(false)`: sleep, then call
    /// [`end_wait`](Self::end_wait).
    ///
    /// [`wait_fd`]: Self::wait_fd
    pub fn begin_wait(&mut self) -> Result<bool> {
        self.s.h(H_CONSUMER_WAITING).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let r = self.item_pending();
        if !matches!(r, Ok(false)) {
            self.s.h(H_CONSUMER_WAITING).store(0, Ordering::Relaxed);
        }
        r
    }

    /// Ends a sleep begun with [`begin_wait`](Self::begin_wait): lowers
    /// the waiting word and drains the wake-up fd.
    pub fn end_wait(&mut self) {
        self.s.end_wait(H_CONSUMER_WAITING);
    }

    /// Sleeps on the consumer's waiting word itself (`FUTEX_WAIT`, the
    /// cheapest wake-up; with [`Wake::Pipe`] too, where the producer
    /// sees from the word's value that it must `FUTEX_WAKE` rather than
    /// write the eventfd) until the producer publishes, for at most
    /// `max`. `Ok(true)` if an item is there now. The socket is not
    /// watched meanwhile: the caller bounds `max` and looks at its socket
    /// after. A sleep can end early with nothing to take (a spurious
    /// wake-up, or a peer that lowered the word): the caller must not
    /// loop on it unbounded.
    ///
    /// The same as [`begin_word_sleep`](Self::begin_word_sleep), then
    /// [`ConsumerSleep::sleep_on_word`], then
    /// [`end_word_sleep`](Self::end_word_sleep).
    pub fn sleep_on_word(&mut self, max: Duration) -> Result<bool> {
        if self.begin_word_sleep()? {
            return Ok(true);
        }
        let r = sleep_on_consumer_word(&self.s.mem, &self.s.mine, &self.s.name, max);
        let pending = self.end_word_sleep();
        r?;
        pending
    }

    /// First step of a sleep on the word: raises the consumer's waiting
    /// word and looks again. `Ok(true)`: an item is there, do not sleep
    /// (the word is lowered again). `Ok(false)`: sleep with
    /// [`ConsumerSleep::sleep_on_word`], then call
    /// [`end_word_sleep`](Self::end_word_sleep).
    pub fn begin_word_sleep(&mut self) -> Result<bool> {
        self.s
            .h(H_CONSUMER_WAITING)
            .store(word_sleep_value(&self.s.mine), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let r = self.item_pending();
        if !matches!(r, Ok(false)) {
            self.s.h(H_CONSUMER_WAITING).store(0, Ordering::Relaxed);
        }
        r
    }

    /// Last step of a sleep on the word: lowers the waiting word and says
    /// whether an item is there now.
    pub fn end_word_sleep(&mut self) -> Result<bool> {
        self.s.h(H_CONSUMER_WAITING).store(0, Ordering::Relaxed);
        self.item_pending()
    }

    /// This consumer's means of sleeping, which does not borrow the ring
    /// (see [`ConsumerSleep`]).
    pub fn sleeper(&self) -> ConsumerSleep {
        ConsumerSleep {
            mem: self.s.mem.clone(),
            mine: self.s.mine.clone(),
            name: self.s.name.clone(),
        }
    }

    fn check_item(
        &self,
        slot: u64,
        len: u64,
        seq: u64,
        sent_ns: u64,
        fref: u64,
    ) -> Result<ItemDesc> {
        let name = &self.s.name;
        if slot >= self.s.cap as u64 {
            return Err(protocol(
                name,
                format!("item slot {slot} is not below the pool size {}", self.s.cap),
            ));
        }
        let size = self.sizes[slot as usize];
        if len > size {
            return Err(protocol(
                name,
                format!("item length {len} is past the {size}-byte buffer of slot {slot}"),
            ));
        }
        if seq != self.seq + 1 {
            return Err(protocol(
                name,
                format!(
                    "item sequence {seq}, expected {} ({})",
                    self.seq + 1,
                    if seq <= self.seq {
                        "replayed"
                    } else {
                        "skipped"
                    }
                ),
            ));
        }
        let held = self.taken.held(slot as usize);
        if held != 0 {
            return Err(protocol(
                name,
                format!("item {seq} in slot {slot}, which this consumer still holds (item {held})"),
            ));
        }
        let fence = match fref {
            0 => FenceRef::Signalled,
            t if t == self.fence_in + 1 => FenceRef::Socket(t),
            t => {
                return Err(protocol(
                    name,
                    format!(
                        "item fence reference {t}, expected 0 or {}",
                        self.fence_in + 1
                    ),
                ))
            }
        };
        Ok(ItemDesc {
            slot: slot as usize,
            len,
            seq,
            sent_ns,
            fence,
        })
    }

    /// The next item, waiting at most `timeout` (then
    /// [`ErrorKind::TimedOut`]).
    pub fn recv_item(&mut self, timeout: Duration) -> Result<ItemDesc> {
        Shared::wait(
            self,
            H_CONSUMER_WAITING,
            timeout,
            "item",
            |c| &mut c.s,
            |c| c.try_recv_item(),
        )
    }
}

impl ConsumerReleases {
    /// The tag the next release's socket fence will carry.
    pub fn next_fence_tag(&self) -> u64 {
        self.rel_fence_out + 1
    }

    /// Gives back the item `seq` held in `slot`; `socket_fence` says
    /// whether its release fence travels over the socket (then the
    /// returned descriptor carries its tag). Wakes the producer only if it
    /// sleeps.
    pub fn send_release(
        &mut self,
        slot: usize,
        seq: u64,
        socket_fence: bool,
    ) -> Result<ReleaseDesc> {
        self.s.check()?;
        if self.taken.held(slot) != seq || seq == 0 {
            return Err(Error::invalid(
                "ring send release",
                self.s.name.clone(),
                format!("item {seq} in slot {slot} is not held"),
            ));
        }
        // The producer's tail is read only when the ring may be full.
        if self.rel_head.count - self.rel_tail_seen >= self.s.cap as u64 {
            let t = self.s.peer_tail(
                W_REL_TAIL,
                "release",
                self.rel_tail_seen,
                self.rel_head.count,
            )?;
            self.rel_tail_seen = t;
            if self.rel_head.count - t >= self.s.cap as u64 {
                let e = protocol(
                    &self.s.name,
                    format!(
                        "release ring full: the producer took none of {} releases",
                        self.rel_head.count - t
                    ),
                );
                return Err(self.s.fail(e));
            }
        }
        let fence = if socket_fence {
            self.rel_fence_out += 1;
            FenceRef::Socket(self.rel_fence_out)
        } else {
            FenceRef::Signalled
        };
        let base = W_ITEMS + self.s.cap * ITEM_WORDS + self.rel_head.at * REL_WORDS;
        self.rel_head.advance(self.s.cap);
        let fields = [
            (0, slot as u64),
            (1, seq),
            (2, fence.word()),
            (REL_TAKEN, self.taken.count.load(Ordering::Acquire)),
        ];
        // Not held from here on: the producer may fill the slot again as
        // soon as it reads the release (see `Taken::held`).
        self.taken.held[slot].store(0, Ordering::Release);
        self.s
            .publish(base, &fields, REL_MARK, W_REL_HEAD, self.rel_head.count);
        self.s.wake_peer(H_PRODUCER_WAITING)?;
        Ok(ReleaseDesc { slot, seq, fence })
    }
}

#[cfg(test)]
mod tests;

//! A streaming buffer pool between processes: one producer, one or more
//! consumers, a fixed set of shared buffers reused with back-pressure.
//!
//! # DOC: the streaming pool
//!
//! * **Shared once.** [`Producer::new`] sends each of its N buffers to every
//!   consumer (a buffer message with the slot index as id), then a ring
//!   message (that consumer's descriptor rings, [`super::ring`]), then a
//!   pool-ready message; [`Consumer::new`] receives and checks them all
//!   (see the `share` module's rules).
//! * **Per item, shared memory, not the socket.** Items and releases
//!   travel as descriptors on the consumer's rings: while both sides keep
//!   up, an item costs no socket message and no system call (each side
//!   looks again for a few microseconds before it sleeps, and wakes the
//!   other only if it sleeps). A signalled fence costs nothing; a real
//!   fence is sent over the socket as a tagged fence message, named by the
//!   descriptor. The socket carries the handshake, real fences, bye, and
//!   tells a peer's death.
//! * **Per item**, the producer [`acquire`](Producer::acquire)s a free
//!   buffer (a [`Lease`]), writes it (inside a write window, or by a
//!   device), and [`submit`](Lease::submit)s it with its length and a
//!   *ready* fence; [`Fence::Signalled`] travels as "no fence". Every live
//!   consumer gets the item; [`Consumer::next`] returns it once the ready
//!   fence has signalled, and the consumer hands the buffer back with a
//!   *release* fence ([`Item::release`], or by dropping the [`Item`], which
//!   releases it at once).
//! * **Reuse only when every consumer released it**: a buffer goes back to
//!   the free list when each consumer that got the item has sent its
//!   release, and is leased again only after those release fences have
//!   signalled. When every buffer is in flight, `acquire` waits
//!   (back-pressure), or times out with [`ErrorKind::TimedOut`].
//! * **Checked on arrival.** The consumer checks every descriptor as it
//!   takes it off the ring (see [`super::ring`]): an item must name a
//!   buffer of the pool that this consumer does not hold (received and not
//!   released yet), fit in it and carry the sequence number one past the
//!   last (a replay or a gap is refused); a fence it names must have come
//!   over the socket, at most one per buffer in flight; nothing may follow
//!   the producer's bye (no socket message, and no item past the ring's
//!   head as it was when the bye arrived). So no producer can queue more
//!   items at a consumer than the pool has buffers.
//! * **Failures.** A consumer that closes its socket or dies is found
//!   when the producer next reads the sockets: when it must wait for a
//!   buffer (at the latest once the dead consumer's items fill the pool),
//!   in [`Producer::try_acquire`] when no buffer is free, in
//!   [`Producer::finish`], or when a fence is sent to it. That call
//!   returns one [`ErrorKind::PeerGone`] error naming it; its buffers
//!   count as released, its release fences are failed in the producer's
//!   process only, and the pool carries on with the other consumers (with
//!   none left every call fails with `PeerGone`). A consumer that stops
//!   reading its socket is dropped the same way once a send to it (a real
//!   fence, a bye) has waited the send timeout
//!   ([`Producer::set_send_timeout`]), with an [`ErrorKind::TimedOut`]
//!   error naming it; the others still get the item. A producer that dies
//!   is found by the consumer while it waits for an item or for its ready
//!   fence: the fence is failed here (`ECONNRESET`) and `next` returns
//!   `PeerGone`; releasing an item after that is a `PeerGone` error too.
//!   No wait in this module ignores the peer's socket, so nothing blocks
//!   forever on a peer that is gone. A message or descriptor that breaks
//!   the protocol (an unknown buffer, a length past the buffer, a sequence
//!   number out of order, a release of a buffer not held, an item in a
//!   buffer still held, a fence named but not sent, an item or release on
//!   the socket, a message after the bye) is a [`ErrorKind::Protocol`]
//!   error; the producer then drops that consumer.
//! * **Fences are hints, waits are bounded.** A ready or release fence
//!   that fails, or whose page is corrupt or stuck (see
//!   [`UserFence`](crate::fence::UserFence)),
//!   counts as done with that error: a failed release frees the buffer, a
//!   failed ready fence is an error of `next` naming the cause. The waits
//!   watch the fences' fds but re-check at least every
//!   [`RECHECK`] and never poll a readable eventfd
//!   of a fence still active, so a peer writing eventfds makes nothing
//!   spin.
//! * **Orderly end.** [`Producer::finish`] sends a bye and waits for
//!   every buffer to come back; [`Consumer::next`] then returns
//!   `Ok(None)`. A consumer leaving early sends a bye
//!   ([`Consumer::leave`]), which the producer takes as a clean
//!   departure: it gets no more items, the buffers it still reads come
//!   back as it releases them on the ring (even after it closed its
//!   socket) and its release fences are left to signal, for at most
//!   [`LEAVE_GRACE`]; after that they are taken back (fences failed here)
//!   with an [`ErrorKind::TimedOut`] error naming it. Dropping an [`Item`]
//!   puts its release on the ring with no fence: it never waits, even for
//!   a producer that reads nothing. [`Item::release`] with a real fence
//!   sends that fence over the socket first, waiting at most the
//!   channel's send timeout.
//!
//! With the `tokio` feature, `AsyncProducer` and `AsyncConsumer` offer
//! the same operations as `async fn`s, waiting through tokio's `AsyncFd`
//! instead of `poll`.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::{Channel, Message};
use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{monotonic_ns, wake_fds, Fence, FenceStatus, RECHECK};
use transport::{ConsumerTransport, Incoming, ProducerTransport};

/// Most buffers a pool may have.
pub const MAX_POOL_BUFFERS: usize = 1024;

/// How long a consumer that said bye may keep buffers it still reads, and
/// release fences that have not signalled, before the producer takes them
/// back (and fails those fences in its own process).
pub const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// The poll deadline: `deadline`, or sooner when something must be
/// re-checked without an fd to tell (`recheck`).
fn slice(deadline: Option<Instant>, recheck: bool) -> Option<Instant> {
    if !recheck {
        return deadline;
    }
    let soon = Instant::now() + RECHECK;
    Some(deadline.map_or(soon, |d| d.min(soon)))
}

/// Whether `deadline` has passed.
fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Polls `fds` for input until `deadline`; false on timeout. Restarts on
/// EINTR.
fn poll_any(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
    op: &'static str,
    obj: &str,
) -> Result<bool> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            rustix::time::Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        match rustix::event::poll(&mut pfds, timeout.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::os(op, obj.to_string(), e)),
        }
    }
}

fn timed_out(op: &'static str, obj: String, cause: String) -> Error {
    Error::new(ErrorKind::TimedOut, op, obj, cause).with_errno(Errno::TIMEDOUT)
}

fn protocol(op: &'static str, obj: &str, cause: String) -> Error {
    Error::new(ErrorKind::Protocol, op, obj.to_string(), cause).with_errno(Errno::PROTO)
}

#[derive(Debug)]
struct Peer {
    channel: Channel,
    /// Its socket and ring are still read (live, or leaving and not
    /// closed yet).
    alive: bool,
    /// When it said bye, while its buffers and release fences are not all
    /// back yet (at most [`LEAVE_GRACE`]).
    leaving: Option<Instant>,
    /// The per-item path to this consumer (its descriptor rings).
    items: ProducerTransport,
}

impl Peer {
    /// Gets new items.
    fn live(&self) -> bool {
        self.alive && self.leaving.is_none()
    }
}

#[derive(Debug)]
struct Slot {
    buffer: Buffer,
    /// Per consumer: holds the buffer's current item.
    holders: Vec<bool>,
    /// Release fences not yet known to have signalled.
    releases: Vec<Fence>,
    /// Sequence number of the item in flight.
    seq: u64,
    /// Whether the slot is leased or in flight (not in the free list).
    busy: bool,
}

/// The producing end of a pool. See the module documentation.
#[derive(Debug)]
pub struct Producer {
    peers: Vec<Peer>,
    slots: Vec<Slot>,
    free: VecDeque<usize>,
    seq: u64,
}

/// A free buffer of a [`Producer`], leased for writing one item. Dropping
/// it without [`Lease::submit`] returns the buffer to the free list.
#[derive(Debug)]
pub struct Lease<'a> {
    producer: &'a mut Producer,
    slot: usize,
    done: bool,
}

impl Producer {
    /// Shares `buffers` with every consumer on `consumers` (one channel
    /// each) and returns the producer. Fails if any consumer cannot be
    /// reached.
    pub fn new(buffers: Vec<Buffer>, consumers: Vec<Channel>) -> Result<Producer> {
        if buffers.is_empty() || buffers.len() > MAX_POOL_BUFFERS {
            return Err(Error::invalid(
                "pool",
                "producer",
                format!(
                    "{} buffers; a pool has 1 to {MAX_POOL_BUFFERS}",
                    buffers.len()
                ),
            ));
        }
        if consumers.is_empty() {
            return Err(Error::invalid("pool", "producer", "no consumers"));
        }
        let n = consumers.len();
        let sizes: Vec<u64> = buffers.iter().map(|b| b.size()).collect();
        let mut items = Vec::with_capacity(n);
        for (i, c) in consumers.iter().enumerate() {
            for (id, b) in buffers.iter().enumerate() {
                c.send(&Message::Buffer {
                    id: id as u64,
                    buffer: b.clone(),
                })?;
            }
            let t = ProducerTransport::new(&sizes, c.peer())?;
            c.send(&t.ring_message(c.peer())?)?;
            items.push(t);
            c.send(&Message::PoolReady {
                buffers: buffers.len() as u32,
                consumer: i as u32,
            })?;
        }
        Ok(Producer {
            peers: consumers
                .into_iter()
                .zip(items)
                .map(|(channel, items)| Peer {
                    channel,
                    alive: true,
                    leaving: None,
                    items,
                })
                .collect(),
            free: (0..buffers.len()).collect(),
            slots: buffers
                .into_iter()
                .map(|buffer| Slot {
                    buffer,
                    holders: vec![false; n],
                    releases: Vec::new(),
                    seq: 0,
                    busy: false,
                })
                .collect(),
            seq: 0,
        })
    }

    /// The pool's buffers, by slot.
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer> {
        self.slots.iter().map(|s| &s.buffer)
    }

    /// How many consumers are still connected and getting items (not
    /// gone, not leaving).
    pub fn consumers(&self) -> usize {
        self.peers.iter().filter(|p| p.live()).count()
    }

    /// How long a send to a consumer may wait for it to read (see
    /// [`Channel::set_send_timeout`]); a consumer that does not read
    /// within it is dropped with an error naming it, the others carry on.
    pub fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        for p in &self.peers {
            p.channel.set_send_timeout(timeout);
        }
    }

    /// How many buffers are leased or held by consumers.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.busy).count()
    }

    fn object(&self) -> String {
        format!(
            "pool producer ({} buffers, {} consumers)",
            self.slots.len(),
            self.consumers()
        )
    }

    /// Drops consumer `i`: its buffers count as released, its release
    /// fences fail (in this process only).
    fn drop_peer(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        if !peer.alive && peer.leaving.is_none() {
            return;
        }
        peer.alive = false;
        peer.leaving = None;
        peer.channel.fail_received_fences();
        peer.channel.shutdown();
        // Fences it sent for releases not seen yet are of no use now.
        peer.items.forget_fences();
        self.take_back(i);
    }

    /// Consumer `i` can no longer release anything: its buffers come back.
    fn take_back(&mut self, i: usize) -> usize {
        let mut n = 0;
        for s in 0..self.slots.len() {
            if self.slots[s].holders[i] {
                self.slots[s].holders[i] = false;
                n += 1;
                self.maybe_free(s);
            }
        }
        n
    }

    fn holds(&self, i: usize) -> usize {
        self.slots.iter().filter(|s| s.holders[i]).count()
    }

    /// A consumer that said bye is done once its buffers and release
    /// fences are all back; one that takes longer than [`LEAVE_GRACE`]
    /// loses them, with an error naming it.
    fn settle_leaving(&mut self, i: usize) -> Result<()> {
        let Some(since) = self.peers[i].leaving else {
            return Ok(());
        };
        let held = self.holds(i);
        let fences = self.peers[i].channel.pending_fences();
        if held == 0 && fences == 0 {
            self.peers[i].leaving = None;
            if self.peers[i].alive {
                self.peers[i].alive = false;
                self.peers[i].channel.shutdown();
            }
            return Ok(());
        }
        if since.elapsed() < LEAVE_GRACE {
            return Ok(());
        }
        let peer = self.peers[i].channel.peer().to_string();
        self.drop_peer(i);
        Err(Error::new(
            ErrorKind::TimedOut,
            "pool",
            peer,
            format!(
                "the consumer said bye but {LEAVE_GRACE:?} later still held {held} buffers and {fences} unsignalled release fences; they were taken back"
            ),
        )
        .with_errno(Errno::TIMEDOUT))
    }

    fn maybe_free(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        if slot.busy && !slot.holders.iter().any(|h| *h) {
            slot.busy = false;
            self.free.push_back(s);
        }
    }

    /// Reads every waiting message from every consumer, on its socket and
    /// its ring. The first error (a consumer gone or misbehaving, which is
    /// then dropped) is returned after all were read.
    fn pump(&mut self) -> Result<()> {
        self.pump_with(true)
    }

    /// Takes the releases waiting on the rings only: no system call.
    fn pump_ring(&mut self) -> Result<()> {
        self.pump_with(false)
    }

    fn pump_with(&mut self, socket: bool) -> Result<()> {
        let mut first: Option<Error> = None;
        for i in 0..self.peers.len() {
            while socket && self.peers[i].alive {
                let msg = match self.peers[i].channel.try_recv() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e)
                        if e.kind() == ErrorKind::PeerGone && self.peers[i].leaving.is_some() =>
                    {
                        // It said bye and closed: the releases it left on
                        // the ring count, what it still held comes back
                        // now; its release fences get the grace.
                        if let Err(e) = self.drain_ring(i) {
                            first.get_or_insert(e);
                        }
                        self.peers[i].alive = false;
                        self.take_back(i);
                        break;
                    }
                    Err(e) => {
                        self.drop_peer(i);
                        first.get_or_insert(e);
                        break;
                    }
                };
                if let Err(e) = self.handle(i, msg) {
                    self.drop_peer(i);
                    first.get_or_insert(e);
                }
            }
            if let Err(e) = self.drain_ring(i) {
                first.get_or_insert(e);
            }
            if let Err(e) = self.settle_leaving(i) {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes the releases waiting on consumer `i`'s ring, with no system
    /// call unless a release names a fence that travelled over the socket.
    /// A consumer that breaks the protocol is dropped, and its error
    /// returned.
    fn drain_ring(&mut self, i: usize) -> Result<()> {
        while self.peers[i].alive {
            let mut other = Vec::new();
            let p = &mut self.peers[i];
            let got = p.items.recv_release(&p.channel, &mut other);
            let mut r = Ok(());
            for m in other {
                r = r.and_then(|_| self.handle(i, m));
            }
            let r = match (r, got) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(()), Ok(None)) => return Ok(()),
                (Ok(()), Ok(Some((d, fence)))) => self.release(i, d.slot as u64, d.seq, fence),
            };
            if let Err(e) = r {
                self.drop_peer(i);
                return Err(e);
            }
        }
        Ok(())
    }

    fn handle(&mut self, i: usize, msg: Message) -> Result<()> {
        let peer = self.peers[i].channel.peer().to_string();
        let msg = match self.peers[i].items.incoming(msg, &peer)? {
            Incoming::Kept => return Ok(()),
            Incoming::Other(m) => m,
        };
        match msg {
            Message::Bye => {
                // A clean departure: the consumer's buffers come back as
                // it releases them (it may still be reading some), within
                // LEAVE_GRACE; its release fences are left to signal.
                if self.peers[i].leaving.is_some() {
                    return Err(protocol("pool", &peer, "a second bye".to_string()));
                }
                self.peers[i].leaving = Some(Instant::now());
                Ok(())
            }
            other => Err(protocol(
                "pool",
                &peer,
                format!("unexpected {} message from a consumer", other.type_name()),
            )),
        }
    }

    /// Consumer `i` gives back `buffer` (item `seq`), to be reused once
    /// `fence` signals.
    fn release(&mut self, i: usize, buffer: u64, seq: u64, fence: Fence) -> Result<()> {
        let peer = self.peers[i].channel.peer().to_string();
        let s = usize::try_from(buffer)
            .ok()
            .filter(|s| *s < self.slots.len())
            .ok_or_else(|| {
                protocol(
                    "pool release",
                    &peer,
                    format!(
                        "release of buffer {buffer}, but the pool has {} buffers",
                        self.slots.len()
                    ),
                )
            })?;
        let slot = &mut self.slots[s];
        if !slot.holders[i] || slot.seq != seq {
            return Err(protocol(
                "pool release",
                &peer,
                format!(
                    "release of buffer {buffer} (item {seq}), which this consumer does not hold"
                ),
            ));
        }
        slot.holders[i] = false;
        if fence.status() == FenceStatus::Active {
            slot.releases.push(fence);
        }
        self.maybe_free(s);
        Ok(())
    }

    /// A free slot whose release fences have all signalled.
    fn pick(&mut self) -> Option<usize> {
        let pos = self.free.iter().position(|&s| {
            self.slots[s]
                .releases
                .iter()
                .all(|f| f.status() != FenceStatus::Active)
        })?;
        let s = self.free.remove(pos)?;
        self.slots[s].releases.clear();
        Some(s)
    }

    fn no_consumers(&self, op: &'static str) -> Error {
        Error::new(
            ErrorKind::PeerGone,
            op,
            self.object(),
            "every consumer has gone away",
        )
        .with_errno(Errno::PIPE)
    }

    /// Non-blocking: a free buffer if one is ready now.
    pub fn try_acquire(&mut self) -> Result<Option<Lease<'_>>> {
        self.pump_ring()?;
        if self.consumers() > 0 && !self.free.is_empty() {
            if let Some(slot) = self.pick() {
                return Ok(Some(self.lease(slot)));
            }
        }
        self.pump()?;
        if self.consumers() == 0 {
            return Err(self.no_consumers("pool acquire"));
        }
        Ok(self.pick().map(|slot| self.lease(slot)))
    }

    fn lease(&mut self, slot: usize) -> Lease<'_> {
        self.slots[slot].busy = true;
        Lease {
            producer: self,
            slot,
            done: false,
        }
    }

    /// The fds whose readiness may change what `try_acquire` answers:
    /// every consumer socket and ring wake-up still read, and the pending
    /// release fences of free slots; and whether to re-check on a timer as
    /// well (user fences, consumers leaving, items not taken off a ring).
    fn wait_fds(&self) -> (Vec<BorrowedFd<'_>>, bool) {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut recheck = false;
        for p in self.peers.iter().filter(|p| p.alive) {
            fds.push(p.channel.fd());
            fds.extend(p.items.wait_fd());
            recheck |= p.leaving.is_some() || p.items.stalled();
        }
        for &s in &self.free {
            for f in &self.slots[s].releases {
                recheck |= wake_fds(f, &mut fds);
            }
        }
        (fds, recheck)
    }

    /// While no buffer is free: drops every live consumer that has left
    /// items untaken on its ring, taking none, for longer than its send
    /// timeout (it does not read; the others must not wait for it). The
    /// first such consumer's error is returned.
    fn drop_stalled(&mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        for i in 0..self.peers.len() {
            if !self.peers[i].live() {
                continue;
            }
            let Some(limit) = self.peers[i].channel.send_timeout() else {
                continue;
            };
            match self.peers[i].items.stalled_for() {
                Ok(Some((for_, waiting))) if for_ >= limit => {
                    let peer = self.peers[i].channel.peer().to_string();
                    self.drop_peer(i);
                    first.get_or_insert(
                        Error::new(
                            ErrorKind::TimedOut,
                            "pool submit",
                            peer,
                            format!(
                                "the consumer has not read its messages for {limit:?}: {waiting} items wait on its ring, untaken; it was dropped"
                            ),
                        )
                        .with_errno(Errno::TIMEDOUT),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    self.drop_peer(i);
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Raises every live consumer's ring waiting word before a sleep;
    /// true if a release arrived meanwhile (then do not sleep, and call
    /// [`Producer::disarm`] all the same). A consumer whose ring breaks the
    /// protocol is dropped, and its error returned.
    fn arm(&mut self) -> Result<bool> {
        let mut ready = false;
        for i in 0..self.peers.len() {
            if self.peers[i].alive {
                match self.peers[i].items.begin_wait() {
                    Ok(r) => ready |= r,
                    Err(e) => {
                        self.disarm();
                        self.drop_peer(i);
                        return Err(e);
                    }
                }
            }
        }
        Ok(ready)
    }

    fn disarm(&mut self) {
        for p in &mut self.peers {
            p.items.end_wait();
        }
    }

    /// A free buffer, waiting at most `timeout` (`None`: as long as it
    /// takes) while every buffer is in flight (back-pressure).
    pub fn acquire(&mut self, timeout: Option<Duration>) -> Result<Lease<'_>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // While consumers keep up, releases are on the rings: no
            // system call. A busy consumer gives one back soon, so look
            // again for a few microseconds before going to the sockets.
            let spin_until = Instant::now() + super::ring::DEFAULT_SPIN;
            let mut free = None;
            while free.is_none() && self.consumers() > 0 {
                self.pump_ring()?;
                free = self.pick();
                if Instant::now() >= spin_until {
                    break;
                }
                std::hint::spin_loop();
            }
            if let Some(slot) = free {
                return Ok(self.lease(slot));
            }
            self.pump()?;
            if self.consumers() == 0 {
                return Err(self.no_consumers("pool acquire"));
            }
            if let Some(slot) = self.pick() {
                return Ok(self.lease(slot));
            }
            self.drop_stalled()?;
            if self.arm()? {
                self.disarm();
                continue;
            }
            let obj = self.object();
            let woke = {
                let (fds, recheck) = self.wait_fds();
                poll_any(&fds, slice(deadline, recheck), "pool acquire", &obj)
            };
            self.disarm();
            if !woke? && past(deadline) {
                return Err(timed_out(
                    "pool acquire",
                    obj,
                    format!(
                        "all {} buffers still in flight after {:?}",
                        self.slots.len(),
                        timeout.unwrap_or_default()
                    ),
                ));
            }
        }
    }

    fn submit_slot(&mut self, slot: usize, len: u64, ready: Fence) -> Result<u64> {
        let size = self.slots[slot].buffer.size();
        if len > size {
            self.slots[slot].busy = false;
            self.free.push_front(slot);
            return Err(Error::invalid(
                "pool submit",
                self.slots[slot].buffer.describe(),
                format!("item length {len} exceeds the buffer size {size}"),
            ));
        }
        self.seq += 1;
        let seq = self.seq;
        self.slots[slot].seq = seq;
        let sent_ns = monotonic_ns();
        let mut first: Option<Error> = None;
        for i in 0..self.peers.len() {
            if !self.peers[i].live() {
                continue;
            }
            let p = &mut self.peers[i];
            match p.items.send_item(&p.channel, slot, len, sent_ns, &ready) {
                Ok(_) => self.slots[slot].holders[i] = true,
                Err(e) => {
                    self.drop_peer(i);
                    first.get_or_insert(e);
                }
            }
        }
        // Nobody got it: the buffer is free again.
        self.maybe_free(slot);
        match first {
            Some(e) => Err(e),
            None if self.consumers() == 0 => Err(self.no_consumers("pool submit")),
            None => Ok(seq),
        }
    }

    /// Sends a bye to every consumer and waits at most `timeout` for every
    /// buffer to come back. Consumers that go away meanwhile are not an
    /// error here: the stream is over.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        for i in 0..self.peers.len() {
            if self.peers[i].live() && self.peers[i].channel.send(&Message::Bye).is_err() {
                self.drop_peer(i);
            }
        }
        loop {
            let _ = self.pump();
            let pending = self.slots.iter().any(|s| s.holders.iter().any(|h| *h));
            if !pending || !self.peers.iter().any(|p| p.alive) {
                return Ok(());
            }
            match self.arm() {
                Ok(true) | Err(_) => {
                    self.disarm();
                    continue;
                }
                Ok(false) => {}
            }
            let obj = self.object();
            let woke = {
                let (fds, recheck) = self.wait_fds();
                poll_any(&fds, slice(deadline, recheck), "pool finish", &obj)
            };
            self.disarm();
            if !woke? && past(deadline) {
                return Err(timed_out(
                    "pool finish",
                    obj,
                    format!(
                        "buffers still held by consumers after {:?}",
                        timeout.unwrap_or_default()
                    ),
                ));
            }
        }
    }
}

impl Lease<'_> {
    /// The buffer to write.
    pub fn buffer(&self) -> &Buffer {
        &self.producer.slots[self.slot].buffer
    }

    /// The buffer's slot in the pool (its id on the wire).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Sends the item (`len` bytes from the start of the buffer, readable
    /// once `ready` signals) to every consumer; returns its sequence
    /// number. A consumer found gone is dropped and reported once as
    /// [`ErrorKind::PeerGone`]; the others still got the item.
    pub fn submit(mut self, len: u64, ready: Fence) -> Result<u64> {
        self.done = true;
        let slot = self.slot;
        self.producer.submit_slot(slot, len, ready)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.producer.slots[self.slot].busy = false;
            self.producer.free.push_front(self.slot);
        }
    }
}

/// The consuming end of a pool. See the module documentation.
#[derive(Debug)]
pub struct Consumer {
    channel: Arc<Channel>,
    /// The per-item path from the producer (shared with the items, which
    /// release through it).
    items: Arc<Mutex<ConsumerTransport>>,
    buffers: Vec<Buffer>,
    index: u32,
    /// An item whose ready fence had not signalled when a wait ran out
    /// of time (or an async wait was cancelled): the next call resumes it.
    waiting: Option<Item>,
    last_seq: u64,
    /// The producer said bye: the stream ends once the ring is empty.
    bye: bool,
    ended: bool,
}

/// The consumer's side of the pool handshake, one message at a time.
#[derive(Debug, Default)]
struct Handshake {
    buffers: Vec<Buffer>,
    ring: Option<(u32, Arc<Vec<std::os::fd::OwnedFd>>)>,
}

impl Handshake {
    /// Takes one message; the consumer index once the pool is complete.
    fn step(&mut self, msg: Message, obj: &str) -> Result<Option<u32>> {
        match msg {
            Message::Buffer { id, buffer } => {
                if id != self.buffers.len() as u64 || self.buffers.len() >= MAX_POOL_BUFFERS {
                    return Err(protocol(
                        "pool handshake",
                        obj,
                        format!(
                            "buffer id {id} out of order (expected {}, at most {MAX_POOL_BUFFERS})",
                            self.buffers.len()
                        ),
                    ));
                }
                self.buffers.push(buffer);
                Ok(None)
            }
            Message::Ring { capacity, fds } if self.ring.is_none() => {
                self.ring = Some((capacity, fds));
                Ok(None)
            }
            Message::PoolReady { buffers, consumer } => {
                if buffers as usize != self.buffers.len() || buffers == 0 {
                    return Err(protocol(
                        "pool handshake",
                        obj,
                        format!(
                            "pool-ready announces {buffers} buffers but {} arrived",
                            self.buffers.len()
                        ),
                    ));
                }
                if self.ring.is_none() {
                    return Err(protocol(
                        "pool handshake",
                        obj,
                        "pool-ready before the ring message".into(),
                    ));
                }
                Ok(Some(consumer))
            }
            other => Err(protocol(
                "pool handshake",
                obj,
                format!(
                    "unexpected {} message before the pool was shared",
                    other.type_name()
                ),
            )),
        }
    }
}

/// An item received from a pool: a buffer with bytes ready to read.
///
/// Hand it back with [`Item::release`]; dropping it releases it at once
/// (with no fence).
#[derive(Debug)]
pub struct Item {
    channel: Arc<Channel>,
    items: Arc<Mutex<ConsumerTransport>>,
    buffer: Buffer,
    slot: u64,
    seq: u64,
    len: u64,
    sent_ns: u64,
    ready_ns: u64,
    ready: Fence,
    released: bool,
}

impl Consumer {
    /// Receives the pool's buffers on `channel` (waiting at most `timeout`
    /// for each message), checking each.
    pub fn new(channel: Channel, timeout: Option<Duration>) -> Result<Consumer> {
        let obj = channel.peer().to_string();
        let mut hs = Handshake::default();
        loop {
            let m = channel.recv(timeout)?;
            if let Some(index) = hs.step(m, &obj)? {
                return Consumer::from_handshake(channel, hs, index);
            }
        }
    }

    fn from_handshake(channel: Channel, hs: Handshake, index: u32) -> Result<Consumer> {
        let obj = channel.peer().to_string();
        let (capacity, fds) = hs
            .ring
            .ok_or_else(|| protocol("pool handshake", &obj, "no ring message".into()))?;
        let sizes: Vec<u64> = hs.buffers.iter().map(|b| b.size()).collect();
        let items = ConsumerTransport::open(capacity, &fds, &sizes, &obj)?;
        Ok(Consumer {
            channel: Arc::new(channel),
            items: Arc::new(Mutex::new(items)),
            buffers: hs.buffers,
            index,
            waiting: None,
            last_seq: 0,
            bye: false,
            ended: false,
        })
    }

    fn transport(&self) -> std::sync::MutexGuard<'_, ConsumerTransport> {
        // Every update under the lock is one ring operation, which leaves
        // the ring consistent even if a panic interrupted the holder.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's buffers, by slot.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// This consumer's index among the pool's consumers.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The channel to the producer.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Reads and checks every waiting message.
    fn pump(&mut self) -> Result<()> {
        while let Some(m) = self.channel.try_recv()? {
            self.take_message(m)?;
        }
        Ok(())
    }

    /// Takes a socket message as it arrives: fences are kept for their
    /// items (at most one per buffer), a bye ends the stream once the ring
    /// is empty (and closes the ring at its current head); items travel
    /// only on the ring; nothing may follow the bye.
    fn take_message(&mut self, msg: Message) -> Result<()> {
        let obj = self.channel.peer().to_string();
        if self.bye {
            return Err(protocol(
                "pool next",
                &obj,
                format!("{} message after the producer's bye", msg.type_name()),
            ));
        }
        let msg = match self.transport().incoming(msg, &obj)? {
            Incoming::Kept => return Ok(()),
            Incoming::Other(m) => m,
        };
        match msg {
            Message::Bye => {
                self.bye = true;
                self.transport().close()
            }
            other => Err(protocol(
                "pool next",
                &obj,
                format!("unexpected {} message from the producer", other.type_name()),
            )),
        }
    }

    /// The next item on the ring, if one is there (no system call unless
    /// its ready fence travelled over the socket).
    fn take_item(&mut self) -> Result<Option<Item>> {
        let mut other = Vec::new();
        let got = {
            let mut t = self.items.lock().unwrap_or_else(|e| e.into_inner());
            t.recv_item(&self.channel, &mut other)
        };
        for m in other {
            self.take_message(m)?;
        }
        let Some((d, ready)) = got? else {
            return Ok(None);
        };
        // The ring checked slot, length and sequence (one more than the
        // last); the rest of the item comes from this side's own state.
        self.last_seq = d.seq;
        Ok(Some(Item {
            channel: self.channel.clone(),
            items: self.items.clone(),
            buffer: self.buffers[d.slot].clone(),
            slot: d.slot as u64,
            seq: d.seq,
            len: d.len,
            sent_ns: d.sent_ns,
            ready_ns: 0,
            ready,
            released: false,
        }))
    }

    /// One step of `next` that needs no waiting: `Ok(true)` if it made
    /// progress (call again), `Ok(false)` if the caller must sleep.
    fn step(&mut self) -> Result<bool> {
        if let Some(item) = self.take_item()? {
            self.waiting = Some(item);
            return Ok(true);
        }
        if self.bye {
            // The bye was sent after the last item was published.
            self.ended = true;
            return Ok(true);
        }
        // A busy producer publishes soon: look at the ring again for a few
        // microseconds before going to the socket.
        let spin_until = Instant::now() + super::ring::DEFAULT_SPIN;
        while Instant::now() < spin_until {
            std::hint::spin_loop();
            if let Some(item) = self.take_item()? {
                self.waiting = Some(item);
                return Ok(true);
            }
        }
        if let Some(m) = self.channel.try_recv()? {
            self.take_message(m)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The next item once its ready fence has signalled, waiting at most
    /// `timeout`; `Ok(None)` once the producer has finished the stream.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Item>> {
        let r = self.next_inner(timeout);
        self.note_gone(&r);
        r
    }

    /// Remembers a peer-gone error, so that releases fail from now on.
    fn note_gone<T>(&self, r: &Result<T>) {
        if matches!(r, Err(e) if e.kind() == ErrorKind::PeerGone) {
            self.transport().gone = true;
        }
    }

    fn next_inner(&mut self, timeout: Option<Duration>) -> Result<Option<Item>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let op = "pool next";
        loop {
            if let Some(mut item) = self.waiting.take() {
                if let Err(e) = self.wait_ready(&item, deadline, timeout) {
                    if e.kind() == ErrorKind::TimedOut {
                        self.waiting = Some(item);
                    }
                    return Err(e);
                }
                item.ready_ns = monotonic_ns();
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            if self.step()? {
                continue;
            }
            if self.transport().begin_wait()? {
                self.transport().end_wait();
                continue;
            }
            let obj = self.channel.peer().to_string();
            let woke = {
                let t = self.transport();
                let mut fds = vec![self.channel.fd()];
                fds.extend(t.wait_fd());
                poll_any(&fds, deadline, op, &obj)
            };
            self.transport().end_wait();
            if !woke? {
                return Err(timed_out(
                    op,
                    obj,
                    format!("no item within {:?}", timeout.unwrap_or_default()),
                ));
            }
        }
    }

    /// Waits for `item`'s ready fence, watching the socket so that a
    /// producer that dies is noticed.
    fn wait_ready(
        &mut self,
        item: &Item,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let op = "pool next";
        loop {
            if item.ready.status() != FenceStatus::Active {
                return self.check_ready(item);
            }
            self.pump()?;
            let mut fds = vec![self.channel.fd()];
            let recheck = wake_fds(&item.ready, &mut fds);
            let obj = self.channel.peer().to_string();
            if !poll_any(&fds, slice(deadline, recheck), op, &obj)? && past(deadline) {
                return Err(timed_out(
                    op,
                    obj,
                    format!(
                        "ready fence of item {} did not signal within {:?}",
                        item.seq,
                        timeout.unwrap_or_default()
                    ),
                ));
            }
        }
    }

    /// `Ok` if `item`'s ready fence signalled without error; a peer-gone
    /// error if it was failed because the producer went away.
    fn check_ready(&self, item: &Item) -> Result<()> {
        let op = "pool next";
        match item.ready.status() {
            FenceStatus::Error(e) if e == super::PEER_GONE_ERRNO => Err(Error::new(
                ErrorKind::PeerGone,
                op,
                self.channel.peer().to_string(),
                format!("the producer went away before item {} was ready", item.seq),
            )
            .with_errno(e)),
            FenceStatus::Error(e) => {
                // The fence's own words (a corrupt page, a signaller that
                // died half-way…) when it has them.
                let why = match item.ready.wait(Some(Duration::ZERO)) {
                    Err(f) => f.cause().to_string(),
                    Ok(()) => format!("signalled with error {}", crate::error::errno_name(e)),
                };
                Err(Error::new(
                    if e == Errno::CANCELED {
                        ErrorKind::Cancelled
                    } else {
                        ErrorKind::FenceFailed
                    },
                    op,
                    self.channel.peer().to_string(),
                    format!(
                        "ready fence of item {} in buffer {}: {why}",
                        item.seq, item.slot
                    ),
                )
                .with_errno(e))
            }
            _ => Ok(()),
        }
    }

    /// Tells the producer this consumer leaves (a clean departure).
    pub fn leave(self) -> Result<()> {
        self.channel.send(&Message::Bye)
    }
}

impl Item {
    /// The buffer holding the item.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The buffer's slot in the pool.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// The item's sequence number (1, 2, …).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Length of the item in bytes, from the start of the buffer.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the item is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the producer sent it (CLOCK_MONOTONIC ns).
    pub fn sent_ns(&self) -> u64 {
        self.sent_ns
    }

    /// When it became ready here (CLOCK_MONOTONIC ns).
    pub fn ready_ns(&self) -> u64 {
        self.ready_ns
    }

    /// Time from the producer's submit to the item being ready here (the
    /// handoff latency).
    pub fn handoff(&self) -> Duration {
        Duration::from_nanos(self.ready_ns.saturating_sub(self.sent_ns))
    }

    /// The item's ready fence (signalled by the time `next` returned it).
    pub fn ready(&self) -> &Fence {
        &self.ready
    }

    /// Hands the buffer back: the producer may reuse it once `fence`
    /// signals (pass [`Fence::Signalled`] when every access is over).
    pub fn release(mut self, fence: Fence) -> Result<()> {
        self.released = true;
        self.send_release(&fence)
    }

    fn send_release(&self, fence: &Fence) -> Result<()> {
        let mut t = self.items.lock().unwrap_or_else(|e| e.into_inner());
        t.send_release(&self.channel, self.slot as usize, self.seq, fence)
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.send_release(&Fence::Signalled);
        }
    }
}

mod transport;

#[cfg(feature = "tokio")]
mod asynch;
#[cfg(feature = "tokio")]
pub use asynch::{AsyncConsumer, AsyncProducer};

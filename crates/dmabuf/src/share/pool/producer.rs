//! The producing end: [`Producer`] shares the buffers, leases free ones
//! ([`Lease`]), sends items to every live consumer and takes releases back.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::transport::{Incoming, ProducerTransport};
use super::{
    past, poll_any, protocol, slice, timed_out, LEAVE_GRACE, MAX_POOL_BUFFERS, RELEASE_BATCH,
};
use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{monotonic_ns, wake_fds_all, Fence, FenceStatus, Wakeup};
use crate::frame::Frame;
use crate::share::ring::FenceRef;
use crate::share::{Channel, Message};

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) channel: Channel,
    /// Its socket and ring are still read (live, or leaving and not
    /// closed yet).
    pub(super) alive: bool,
    /// When it said bye, while its buffers and release fences are not all
    /// back yet (at most [`LEAVE_GRACE`]).
    pub(super) leaving: Option<Instant>,
    /// The per-item path to this consumer (its descriptor rings).
    pub(super) items: ProducerTransport,
    /// It has sent its pool-ready: it asks for items.
    pub(super) ready: bool,
}

impl Peer {
    /// Gets new items.
    pub(super) fn live(&self) -> bool {
        self.alive && self.leaving.is_none()
    }
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) buffer: Buffer,
    /// Per consumer: holds the buffer's current item.
    pub(super) holders: Vec<bool>,
    /// Release fences not yet known to have signalled.
    pub(super) releases: Vec<Fence>,
    /// Sequence number of the item in flight.
    pub(super) seq: u64,
    /// Whether the slot is leased or in flight (not in the free list).
    pub(super) busy: bool,
    /// In a pool of frames: the slot's frame (`buffer` is its first
    /// buffer).
    pub(super) frame: Option<Frame>,
    /// The most bytes an item of this slot may have (see
    /// [`Slot::size`]), kept in the slot so that a submit reads no other
    /// object for it.
    pub(super) size: u64,
}

impl Slot {
    /// The most bytes an item of this slot may have: the buffer's size,
    /// or for a frame the sum of its buffers' sizes.
    pub(super) fn size(&self) -> u64 {
        self.size
    }
}

/// The producing end of a pool. See the module documentation.
#[derive(Debug)]
pub struct Producer {
    pub(super) peers: Vec<Peer>,
    pub(super) slots: Vec<Slot>,
    pub(super) free: VecDeque<usize>,
    pub(super) seq: u64,
}

/// A free buffer of a [`Producer`], leased for writing one item. Dropping
/// it without [`Lease::submit`] returns the buffer to the free list.
#[derive(Debug)]
pub struct Lease<'a> {
    pub(super) producer: &'a mut Producer,
    pub(super) slot: usize,
    pub(super) done: bool,
}

impl Producer {
    /// Shares `buffers` with every consumer on `consumers` (one channel
    /// each) and returns the producer. Fails if any consumer cannot be
    /// reached.
    pub fn new(buffers: Vec<Buffer>, consumers: Vec<Channel>) -> Result<Producer> {
        Producer::share(buffers.into_iter().map(|b| (b, None)).collect(), consumers)
    }

    /// Shares `frames` with every consumer on `consumers`: a pool whose
    /// slots are frames (see the module documentation). Each frame travels
    /// once, at setup, as a frame message (its layout and each of its
    /// buffers once); items name the slot as in any pool. At most
    /// [`MAX_POOL_BUFFERS`] buffers in all frames together.
    pub fn new_frames(frames: Vec<Frame>, consumers: Vec<Channel>) -> Result<Producer> {
        let held: usize = frames.iter().map(|f| f.buffers().len()).sum();
        if held > MAX_POOL_BUFFERS {
            return Err(Error::invalid(
                "pool",
                "producer",
                format!(
                    "{} frames in {held} buffers; a pool holds at most {MAX_POOL_BUFFERS} buffers",
                    frames.len()
                ),
            ));
        }
        Producer::share(
            frames
                .into_iter()
                .map(|f| (f.buffers()[0].clone(), Some(f)))
                .collect(),
            consumers,
        )
    }

    fn share(buffers: Vec<(Buffer, Option<Frame>)>, consumers: Vec<Channel>) -> Result<Producer> {
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
        let sizes: Vec<u64> = buffers
            .iter()
            .map(|(b, f)| f.as_ref().map_or(b.size(), super::frame_bytes))
            .collect();
        let mut items = Vec::with_capacity(n);
        for (i, c) in consumers.iter().enumerate() {
            for (id, (b, f)) in buffers.iter().enumerate() {
                let id = id as u64;
                c.send(&match f {
                    Some(frame) => Message::Frame {
                        id,
                        frame: frame.clone(),
                    },
                    None => Message::Buffer {
                        id,
                        buffer: b.clone(),
                    },
                })?;
            }
            let t = ProducerTransport::new(&sizes, c.peer())?;
            c.send(&t.ring_message(c.peer())?)?;
            c.send(&Message::PoolReady {
                buffers: buffers.len() as u32,
                consumer: i as u32,
            })?;
            // From here on the ring carries the count of messages sent.
            t.publish_sent(c.messages_sent())?;
            items.push(t);
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
                    ready: false,
                })
                .collect(),
            free: (0..buffers.len()).collect(),
            slots: buffers
                .into_iter()
                .zip(sizes)
                .map(|((buffer, frame), size)| Slot {
                    buffer,
                    holders: vec![false; n],
                    releases: Vec::new(),
                    seq: 0,
                    busy: false,
                    frame,
                    size,
                })
                .collect(),
            seq: 0,
        })
    }

    /// The pool's buffers, by slot (in a pool of frames, each frame's
    /// first buffer).
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer> {
        self.slots.iter().map(|s| &s.buffer)
    }

    /// In a pool of frames ([`Producer::new_frames`]), the frames by slot;
    /// empty otherwise.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.slots.iter().filter_map(|s| s.frame.as_ref())
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

    /// How many buffers are leased or held by consumers, as far as this
    /// producer has read their releases (see [`RELEASE_BATCH`]).
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.busy).count()
    }

    /// Consumers still getting items that have not yet asked for one
    /// (their indices).
    pub(super) fn not_ready(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| self.peers[i].live() && !self.peers[i].ready)
            .collect()
    }

    /// Waits at most `timeout` (`None`: as long as it takes) until every
    /// consumer still getting items has asked for its first one (see the
    /// module documentation, "Ready"), reading their sockets and rings
    /// meanwhile. A consumer that says bye meanwhile is not waited for;
    /// one that goes away or breaks the protocol is dropped and the call
    /// returns its error, as [`Producer::acquire`] would, and may be
    /// called again for the others. Calling it before
    /// the first [`acquire`](Producer::acquire) keeps the consumers'
    /// setup out of what the producer then measures or fills.
    pub fn wait_ready(&mut self, timeout: Option<Duration>) -> Result<()> {
        let op = "pool wait ready";
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.pump()?;
            if self.consumers() == 0 {
                return Err(self.no_consumers(op));
            }
            let waiting = self.not_ready();
            if waiting.is_empty() {
                return Ok(());
            }
            let obj = self.object();
            let woke = {
                let fds: Vec<BorrowedFd<'_>> = waiting
                    .iter()
                    .map(|&i| self.peers[i].channel.fd())
                    .collect();
                poll_any(&fds, slice(deadline, false), op, &obj)
            };
            if !woke? && past(deadline) {
                let names: Vec<String> = waiting
                    .iter()
                    .map(|&i| self.peers[i].channel.peer().to_string())
                    .collect();
                return Err(timed_out(
                    op,
                    obj,
                    format!(
                        "{} of {} consumers had not asked for an item after {:?}: {}",
                        waiting.len(),
                        self.consumers(),
                        timeout.unwrap_or_default(),
                        names.join(", ")
                    ),
                ));
            }
        }
    }

    pub(super) fn object(&self) -> String {
        format!(
            "pool producer ({} buffers, {} consumers)",
            self.slots.len(),
            self.consumers()
        )
    }

    /// Drops consumer `i`: its buffers count as released, its release
    /// fences fail (in this process only).
    pub(super) fn drop_peer(&mut self, i: usize) {
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
    pub(super) fn take_back(&mut self, i: usize) -> usize {
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

    pub(super) fn holds(&self, i: usize) -> usize {
        self.slots.iter().filter(|s| s.holders[i]).count()
    }

    /// Where the buffers in flight are, in words, for the message of a
    /// wait that ran out: per live consumer, how many it holds and how
    /// many of those it has not taken off its ring yet; and how many came
    /// back with a release fence still pending.
    pub(super) fn in_flight_note(&mut self) -> String {
        let mut parts = Vec::new();
        for i in 0..self.peers.len() {
            if !self.peers[i].live() {
                continue;
            }
            let held = self.holds(i);
            let untaken = match self.peers[i].items.untaken() {
                Ok((_, n)) => n.to_string(),
                Err(e) => format!("? ({e})"),
            };
            parts.push(format!(
                "{} holds {held}, {untaken} untaken",
                self.peers[i].channel.peer()
            ));
        }
        let fenced = self
            .free
            .iter()
            .filter(|&&s| {
                self.slots[s]
                    .releases
                    .iter()
                    .any(|f| f.status() == FenceStatus::Active)
            })
            .count();
        format!(
            "{}; {fenced} back with a release fence pending",
            parts.join("; ")
        )
    }

    /// A consumer that said bye is done once its buffers and release
    /// fences are all back; one that takes longer than [`LEAVE_GRACE`]
    /// loses them, with an error naming it.
    pub(super) fn settle_leaving(&mut self, i: usize) -> Result<()> {
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

    pub(super) fn maybe_free(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        if slot.busy && !slot.holders.iter().any(|h| *h) {
            slot.busy = false;
            self.free.push_back(s);
        }
    }

    /// Reads every waiting message from every consumer, on its socket and
    /// its ring. The first error (a consumer gone or misbehaving, which is
    /// then dropped) is returned after all were read.
    pub(super) fn pump(&mut self) -> Result<()> {
        self.pump_with(true)
    }

    /// Takes the releases waiting on the rings only: no system call.
    pub(super) fn pump_ring(&mut self) -> Result<()> {
        self.pump_with(false)
    }

    pub(super) fn pump_with(&mut self, socket: bool) -> Result<()> {
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
    pub(super) fn drain_ring(&mut self, i: usize) -> Result<()> {
        let mut other = Vec::new();
        while self.peers[i].alive {
            let p = &mut self.peers[i];
            let d = match p.items.next_release() {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.drop_peer(i);
                    return Err(e);
                }
            };
            let r = match d.fence {
                // The common case, with nothing to look up.
                FenceRef::Signalled => self.release(i, d.slot as u64, d.seq, Fence::Signalled),
                FenceRef::Socket(_) => {
                    let fence = p.items.release_fence(&d, &p.channel, &mut other);
                    // Messages met while looking for the fence (rare).
                    let mut r = Ok(());
                    for m in other.drain(..) {
                        r = r.and_then(|_| self.handle(i, m));
                    }
                    r.and(fence)
                        .and_then(|f| self.release(i, d.slot as u64, d.seq, f))
                }
            };
            if let Err(e) = r {
                self.drop_peer(i);
                return Err(e);
            }
        }
        Ok(())
    }

    pub(super) fn handle(&mut self, i: usize, msg: Message) -> Result<()> {
        let peer = self.peers[i].channel.peer().to_string();
        let msg = match self.peers[i].items.incoming(msg, &peer)? {
            Incoming::Kept => return Ok(()),
            Incoming::Other(m) => m,
        };
        match msg {
            Message::PoolReady { buffers, consumer } => {
                // The consumer asks for items (see the module
                // documentation): once, echoing what it was told.
                if self.peers[i].ready {
                    return Err(protocol("pool", &peer, "a second pool-ready".to_string()));
                }
                if buffers as usize != self.slots.len() || consumer as usize != i {
                    return Err(protocol(
                        "pool",
                        &peer,
                        format!(
                            "pool-ready names {buffers} buffers and consumer {consumer}; the pool has {} buffers and this is consumer {i}",
                            self.slots.len()
                        ),
                    ));
                }
                self.peers[i].ready = true;
                Ok(())
            }
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
    pub(super) fn release(&mut self, i: usize, buffer: u64, seq: u64, fence: Fence) -> Result<()> {
        // The peer is named only in an error: nothing formatted per release.
        let peer = |this: &Self| this.peers[i].channel.peer().to_string();
        let s = usize::try_from(buffer)
            .ok()
            .filter(|s| *s < self.slots.len())
            .ok_or_else(|| {
                protocol(
                    "pool release",
                    &peer(self),
                    format!(
                        "release of buffer {buffer}, but the pool has {} buffers",
                        self.slots.len()
                    ),
                )
            })?;
        if !self.slots[s].holders[i] || self.slots[s].seq != seq {
            return Err(protocol(
                "pool release",
                &peer(self),
                format!(
                    "release of buffer {buffer} (item {seq}), which this consumer does not hold"
                ),
            ));
        }
        let slot = &mut self.slots[s];
        slot.holders[i] = false;
        if fence.status() == FenceStatus::Active {
            slot.releases.push(fence);
        }
        self.maybe_free(s);
        Ok(())
    }

    /// A free slot whose release fences have all signalled.
    pub(super) fn pick(&mut self) -> Option<usize> {
        // The common case first: the oldest free slot came back with no
        // fence to wait for.
        let &first = self.free.front()?;
        if self.slots[first].releases.is_empty() {
            self.free.pop_front();
            return Some(first);
        }
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

    pub(super) fn no_consumers(&self, op: &'static str) -> Error {
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

    pub(super) fn lease(&mut self, slot: usize) -> Lease<'_> {
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
    pub(super) fn wait_fds(&self, taking: bool) -> (Vec<BorrowedFd<'_>>, Wakeup) {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        for p in self.peers.iter().filter(|p| p.alive) {
            fds.push(p.channel.fd());
            fds.extend(p.items.wait_fd());
        }
        let wake = self.release_wakeup(taking, &mut fds);
        (fds, wake)
    }

    /// The pending release fences' fds of free slots, pushed on `out`, and
    /// what a waiter does next: re-check on a timer too while a user fence
    /// is pending, a consumer is leaving or items wait untaken on a ring.
    /// A free buffer whose release fences have all completed since the
    /// caller looked is one to take now, not to sleep on, for a caller
    /// that takes one (`taking`); it is no reason to look again for one
    /// that waits for something else (that would spin). Shared by the
    /// blocking and the async producer.
    pub(super) fn release_wakeup<'a>(
        &'a self,
        taking: bool,
        out: &mut Vec<BorrowedFd<'a>>,
    ) -> Wakeup {
        let mut wake = Wakeup::Fds;
        if self
            .peers
            .iter()
            .any(|p| p.alive && (p.leaving.is_some() || p.items.stalled()))
        {
            wake = Wakeup::Recheck;
        }
        for &s in &self.free {
            let w = wake_fds_all(&self.slots[s].releases, out);
            wake = wake.max(match w {
                Wakeup::Now if !taking => Wakeup::Fds,
                w => w,
            });
        }
        wake
    }

    /// Sleeps, armed, on what [`wait_fds`](Self::wait_fds) finds (for a
    /// caller `taking` a buffer or not) until something is readable or
    /// `deadline`; `Ok(true)` at once if a fence completed since the caller
    /// looked. Whether something woke it.
    fn sleep_armed(
        &self,
        taking: bool,
        deadline: Option<Instant>,
        op: &'static str,
        obj: &str,
    ) -> Result<bool> {
        match self.wait_fds(taking) {
            (_, Wakeup::Now) => Ok(true),
            (fds, w) => poll_any(&fds, slice(deadline, w == Wakeup::Recheck), op, obj),
        }
    }

    /// While no buffer is free: drops every live consumer that has left
    /// items untaken on its ring, taking none, for longer than its send
    /// timeout (it does not read; the others must not wait for it). The
    /// first such consumer's error is returned.
    pub(super) fn drop_stalled(&mut self) -> Result<()> {
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
    pub(super) fn arm(&mut self) -> Result<bool> {
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

    pub(super) fn disarm(&mut self) {
        for p in &mut self.peers {
            p.items.end_wait();
        }
    }

    /// A free buffer, waiting at most `timeout` (`None`: as long as it
    /// takes) while every buffer is in flight (back-pressure). Releases
    /// waiting on the consumers' rings are taken once at most one buffer
    /// in [`RELEASE_BATCH`] is free, or none can be leased.
    pub fn acquire(&mut self, timeout: Option<Duration>) -> Result<Lease<'_>> {
        // The clock is read (for the spin and the deadline) only once no
        // buffer is free at once.
        let mut start = super::LazyStart::default();
        loop {
            // While consumers keep up, releases are on the rings: no
            // system call. A busy consumer gives one back soon, so look
            // again for a few microseconds before going to the sockets.
            let mut free = None;
            if self.consumers() > 0 {
                // Releases are taken off the rings in batches, once few
                // buffers are free: a steady stream then reads each
                // consumer's release head about once per batch, not
                // twice per item.
                if self.free.len() <= self.slots.len() / RELEASE_BATCH {
                    self.pump_ring()?;
                }
                free = self.pick();
                if free.is_none() {
                    self.pump_ring()?;
                    free = self.pick();
                }
                if free.is_none() {
                    let now = Instant::now();
                    start.begin_at(now);
                    let spin_until = now + crate::share::ring::DEFAULT_SPIN;
                    while free.is_none() && Instant::now() < spin_until {
                        std::hint::spin_loop();
                        self.pump_ring()?;
                        free = self.pick();
                    }
                }
            }
            if let Some(slot) = free {
                return Ok(self.lease(slot));
            }
            let deadline = start.deadline(timeout);
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
            let woke = self.sleep_armed(true, deadline, "pool acquire", &obj);
            self.disarm();
            if !woke? && past(deadline) {
                return Err(timed_out(
                    "pool acquire",
                    obj,
                    format!(
                        "all {} buffers still in flight after {:?} ({})",
                        self.slots.len(),
                        timeout.unwrap_or_default(),
                        self.in_flight_note()
                    ),
                ));
            }
        }
    }

    pub(super) fn submit_slot(&mut self, slot: usize, len: u64, ready: Fence) -> Result<u64> {
        let size = self.slots[slot].size();
        if len > size {
            self.slots[slot].busy = false;
            self.free.push_front(slot);
            let (obj, what) = match &self.slots[slot].frame {
                Some(f) => (format!("frame {f}"), "the frame's bytes"),
                None => (self.slots[slot].buffer.describe(), "the buffer size"),
            };
            return Err(Error::invalid(
                "pool submit",
                obj,
                format!("item length {len} exceeds {what} {size}"),
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

    /// Sends a bye to every live consumer (one whose socket refuses it is
    /// dropped). A consumer asleep on its ring's word does not watch the
    /// socket: the count of messages sent, then a wake-up, make it look
    /// now.
    pub(super) fn say_bye(&mut self) {
        for i in 0..self.peers.len() {
            if !self.peers[i].live() {
                continue;
            }
            let p = &self.peers[i];
            if p.channel.send(&Message::Bye).is_err() {
                self.drop_peer(i);
            } else {
                let _ = p.items.publish_sent(p.channel.messages_sent());
            }
        }
    }

    /// Sends a bye to every consumer and waits at most `timeout` for every
    /// buffer to come back. Consumers that go away meanwhile are not an
    /// error here: the stream is over.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.say_bye();
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
            let woke = self.sleep_armed(false, deadline, "pool finish", &obj);
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
    /// The buffer to write (in a pool of frames, the frame's first
    /// buffer).
    pub fn buffer(&self) -> &Buffer {
        &self.producer.slots[self.slot].buffer
    }

    /// In a pool of frames, the frame to write.
    pub fn frame(&self) -> Option<&Frame> {
        self.producer.slots[self.slot].frame.as_ref()
    }

    /// The buffer's slot in the pool (its id on the wire).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Sends the item (`len` bytes from the start of the buffer, readable
    /// once `ready` signals; in a pool of frames, `len` counts the frame's
    /// bytes, at most [`frame_bytes`](super::frame_bytes)) to every
    /// consumer; returns its sequence number. A consumer found gone is dropped and reported once as
    /// [`ErrorKind::PeerGone`]; the others still got the item.
    pub fn submit(mut self, len: u64, ready: Fence) -> Result<u64> {
        self.done = true;
        let slot = self.slot;
        self.producer.submit_slot(slot, len, ready)
    }

    /// Sends the whole slot as the item: in a pool of frames, the frame
    /// (its length is [`frame_bytes`](super::frame_bytes)); otherwise the
    /// whole buffer. As [`Lease::submit`] otherwise.
    pub fn submit_all(self, ready: Fence) -> Result<u64> {
        let len = self.producer.slots[self.slot].size();
        self.submit(len, ready)
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

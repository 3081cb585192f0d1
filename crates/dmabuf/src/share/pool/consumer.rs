//! The consuming end: [`Consumer`] checks the handshake, takes items off
//! its ring ([`Item`]) once their ready fences signal, and releases them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::transport::{ConsumerTransport, Incoming, ReleaseTransport};
use super::{
    past, poll_any, protocol, slice, timed_out, CALM_SLICE, MAX_POOL_BUFFERS, SPIN_GAP, WORD_SLEEP,
};
use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{monotonic_ns, wake_fds, Fence, FenceStatus, Wakeup};
use crate::frame::Frame;
use crate::share::ring::{ConsumerSleep, ItemDesc};
use crate::share::{Channel, Message};

/// The consuming end of a pool. See the module documentation.
#[derive(Debug)]
pub struct Consumer {
    /// The channel, the ring's releasing half and the pool, shared with
    /// the items (one reference count per item).
    pub(super) shared: Arc<ConsumerShared>,
    /// The ring's half that takes items: this consumer's alone, so taking
    /// an item takes no lock (releases, from any thread, go through
    /// the other half in `shared`).
    pub(super) items: ConsumerTransport,
    /// The ring's waiting word and wake-up fd, apart from the ring (a
    /// sleep borrows neither half).
    pub(super) sleeper: ConsumerSleep,
    pub(super) index: u32,
    /// An item whose ready fence had not signalled when a wait ran out
    /// of time (or an async wait was cancelled): the next call resumes it.
    pub(super) waiting: Option<Item>,
    pub(super) last_seq: u64,
    /// The producer said bye: the stream ends once the ring is empty.
    pub(super) bye: bool,
    pub(super) ended: bool,
    /// How long a blocking `next` sleeps on the ring's word first.
    pub(super) word_sleep: Duration,
    /// When the last item was ready here (CLOCK_MONOTONIC ns, this
    /// process's clock; 0: none yet).
    pub(super) last_ready_ns: u64,
    /// The last two items were ready less than [`SPIN_GAP`] apart: look
    /// at the ring again for a while before sleeping.
    pub(super) busy: bool,
    /// When the current call to `next` found no item to take and began
    /// to wait (CLOCK_MONOTONIC ns; 0: it has not waited).
    pub(super) asked_ns: u64,
    /// The producer's count of messages sent, on the ring, is believed:
    /// before a sleep on the word the socket is looked at only when the
    /// count is past the messages received. Cleared for good the first
    /// time the count says a message waits and the socket has none.
    pub(super) trust_sent: bool,
    /// Its pool-ready has gone to the producer (the first `next`).
    pub(super) said_ready: bool,
}

/// What a consumer shares with its items.
#[derive(Debug)]
pub(super) struct ConsumerShared {
    pub(super) channel: Channel,
    /// The half of the per-item path that gives items back (items
    /// release through it, from any thread).
    pub(super) releases: Mutex<ReleaseTransport>,
    pub(super) buffers: Vec<Buffer>,
    /// In a pool of frames, the frames by slot (`buffers` holds each
    /// one's first buffer); empty otherwise.
    pub(super) frames: Vec<Frame>,
}

impl ConsumerShared {
    pub(super) fn releases(&self) -> std::sync::MutexGuard<'_, ReleaseTransport> {
        // Every update under the lock is one ring operation, which leaves
        // the ring consistent even if a panic interrupted the holder.
        self.releases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The consumer's side of the pool handshake, one message at a time.
#[derive(Debug, Default)]
pub(super) struct Handshake {
    pub(super) buffers: Vec<Buffer>,
    /// A pool of frames: the frames so far (`buffers` holds each one's
    /// first buffer).
    pub(super) frames: Vec<Frame>,
    /// Buffers held in all frames so far.
    pub(super) held: usize,
    pub(super) ring: Option<(u32, Arc<Vec<std::os::fd::OwnedFd>>)>,
}

impl Handshake {
    /// Takes one message; the consumer index once the pool is complete.
    pub(super) fn step(&mut self, msg: Message, obj: &str) -> Result<Option<u32>> {
        match msg {
            Message::Buffer { .. } | Message::Frame { .. }
                if !self.buffers.is_empty()
                    && self.frames.is_empty() != matches!(msg, Message::Buffer { .. }) =>
            {
                Err(protocol(
                    "pool handshake",
                    obj,
                    format!(
                        "a {} message in a pool of {}s: a pool's slots are all buffers or all frames",
                        msg.type_name(),
                        if self.frames.is_empty() { "buffer" } else { "frame" }
                    ),
                ))
            }
            Message::Frame { id, frame } => {
                let held = self.held + frame.buffers().len();
                if id != self.frames.len() as u64 || held > MAX_POOL_BUFFERS {
                    return Err(protocol(
                        "pool handshake",
                        obj,
                        format!(
                            "frame id {id} out of order or over the bound (expected {}; at most {MAX_POOL_BUFFERS} buffers in all frames, this one would make {held})",
                            self.frames.len()
                        ),
                    ));
                }
                self.held = held;
                self.buffers.push(frame.buffers()[0].clone());
                self.frames.push(frame);
                Ok(None)
            }
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
    pub(super) shared: Arc<ConsumerShared>,
    pub(super) slot: u64,
    pub(super) seq: u64,
    pub(super) len: u64,
    pub(super) sent_ns: u64,
    pub(super) asked_ns: u64,
    pub(super) ready_ns: u64,
    pub(super) ready: Fence,
    pub(super) released: bool,
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

    pub(super) fn from_handshake(channel: Channel, hs: Handshake, index: u32) -> Result<Consumer> {
        let obj = channel.peer().to_string();
        let (capacity, fds) = hs
            .ring
            .ok_or_else(|| protocol("pool handshake", &obj, "no ring message".into()))?;
        let sizes: Vec<u64> = if hs.frames.is_empty() {
            hs.buffers.iter().map(|b| b.size()).collect()
        } else {
            hs.frames.iter().map(super::frame_bytes).collect()
        };
        let (items, releases) = ConsumerTransport::open(capacity, &fds, &sizes, &obj)?;
        Ok(Consumer {
            sleeper: items.sleeper(),
            items,
            shared: Arc::new(ConsumerShared {
                channel,
                releases: Mutex::new(releases),
                buffers: hs.buffers,
                frames: hs.frames,
            }),
            index,
            waiting: None,
            last_seq: 0,
            bye: false,
            ended: false,
            word_sleep: WORD_SLEEP,
            last_ready_ns: 0,
            busy: false,
            asked_ns: 0,
            trust_sent: true,
            said_ready: false,
        })
    }

    /// The pool's buffers, by slot (in a pool of frames, each frame's
    /// first buffer).
    pub fn buffers(&self) -> &[Buffer] {
        &self.shared.buffers
    }

    /// In a pool of frames, the frames by slot; empty otherwise.
    pub fn frames(&self) -> &[Frame] {
        &self.shared.frames
    }

    /// This consumer's index among the pool's consumers.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The channel to the producer.
    pub fn channel(&self) -> &Channel {
        &self.shared.channel
    }

    /// Reads and checks every waiting message.
    pub(super) fn pump(&mut self) -> Result<()> {
        while let Some(m) = self.shared.channel.try_recv()? {
            self.take_message(m)?;
        }
        Ok(())
    }

    /// Takes a socket message as it arrives: fences are kept for their
    /// items (at most one per buffer), a bye ends the stream once the ring
    /// is empty (and closes the ring at its current head); items travel
    /// only on the ring; nothing may follow the bye.
    pub(super) fn take_message(&mut self, msg: Message) -> Result<()> {
        let obj = self.shared.channel.peer().to_string();
        if self.bye {
            return Err(protocol(
                "pool next",
                &obj,
                format!("{} message after the producer's bye", msg.type_name()),
            ));
        }
        let msg = match self.items.incoming(msg, &obj)? {
            Incoming::Kept => return Ok(()),
            Incoming::Other(m) => m,
        };
        match msg {
            Message::Bye => {
                self.bye = true;
                self.items.close()
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
    pub(super) fn take_item(&mut self) -> Result<Option<Item>> {
        Ok(self.take_desc()?.map(|(d, ready)| self.item(d, ready, 0)))
    }

    /// The next item's descriptor and ready fence, if one is there.
    #[inline]
    fn take_desc(&mut self) -> Result<Option<(ItemDesc, Fence)>> {
        let mut other = Vec::new();
        let got = self.items.recv_item(&self.shared.channel, &mut other);
        for m in other {
            self.take_message(m)?;
        }
        let Some((d, ready)) = got? else {
            return Ok(None);
        };
        // The ring checked slot, length and sequence (one more than the
        // last); the rest of the item comes from this side's own state.
        self.last_seq = d.seq;
        Ok(Some((d, ready)))
    }

    /// The item `d` describes, with its ready fence, stamped asked and
    /// ready at `ready_ns` (0: not yet; see [`mark_ready`](Self::mark_ready)).
    #[inline]
    fn item(&self, d: ItemDesc, ready: Fence, ready_ns: u64) -> Item {
        Item {
            shared: self.shared.clone(),
            slot: d.slot as u64,
            seq: d.seq,
            len: d.len,
            sent_ns: d.sent_ns,
            asked_ns: ready_ns,
            ready_ns,
            ready,
            released: false,
        }
    }

    /// Notes that this call to `next` found nothing to take and waits
    /// from now on (the first time in the call only: see
    /// [`Item::asked_ns`]).
    pub(super) fn note_waiting(&mut self) {
        if self.asked_ns == 0 {
            self.asked_ns = monotonic_ns();
        }
    }

    /// Stamps `item` ready now (and asked: when this call began to wait
    /// for it, or now if it did not wait), and notes whether items come
    /// close together (see [`spin`](Self::spin)).
    pub(super) fn mark_ready(&mut self, item: &mut Item) {
        let asked = self.asked_ns;
        let now = self.stamp_ready();
        item.ready_ns = now;
        item.asked_ns = match asked {
            0 => now,
            asked => asked.min(now),
        };
    }

    /// Reads the clock for an item ready now (and lowers the asked stamp:
    /// an item stamped with it is one that did not wait), noting whether
    /// items come close together.
    #[inline]
    fn stamp_ready(&mut self) -> u64 {
        let now = monotonic_ns();
        self.asked_ns = 0;
        self.busy = now.saturating_sub(self.last_ready_ns) < SPIN_GAP.as_nanos() as u64;
        self.last_ready_ns = now;
        now
    }

    /// How long an empty ring is looked at again before sleeping: a few
    /// microseconds while items come less than [`SPIN_GAP`] apart, else
    /// not at all.
    pub(super) fn spin(&self) -> Duration {
        if self.busy {
            crate::share::ring::DEFAULT_SPIN
        } else {
            Duration::ZERO
        }
    }

    /// Whether the producer's count of messages sent, on the ring, says
    /// a message waits on the socket (believed or not).
    pub(super) fn count_says_message(&self) -> bool {
        self.sleeper.messages_sent() > self.shared.channel.messages_received()
    }

    /// One step of `next` that needs no waiting: `Ok(true)` if it made
    /// progress (call again), `Ok(false)` if the caller must sleep. Looks
    /// at the socket too (see [`step_before_word_sleep`](Self::step_before_word_sleep)).
    pub(super) fn step(&mut self) -> Result<bool> {
        self.step_with(true)
    }

    /// [`step`](Self::step) before a sleep on the ring's word, which
    /// looks at the producer's count of messages sent after raising the
    /// word: the socket is looked at (a system call) only if that count
    /// says a message waits, or once it is no longer believed.
    pub(super) fn step_before_word_sleep(&mut self) -> Result<bool> {
        self.step_with(false)
    }

    fn step_with(&mut self, socket: bool) -> Result<bool> {
        if let Some(item) = self.take_item()? {
            self.waiting = Some(item);
            return Ok(true);
        }
        if self.bye {
            // The bye was sent after the last item was published.
            self.ended = true;
            return Ok(true);
        }
        // A busy producer publishes soon: while items come close together,
        // look at the ring again for a few microseconds before going to
        // the socket (see `SPIN_GAP` for why not on a sparse stream).
        self.note_waiting();
        let spin = self.spin();
        if !spin.is_zero() {
            let spin_until = Instant::now() + spin;
            while Instant::now() < spin_until {
                std::hint::spin_loop();
                if let Some(item) = self.take_item()? {
                    self.waiting = Some(item);
                    return Ok(true);
                }
            }
        }
        let says = self.count_says_message();
        if socket || !self.trust_sent || says {
            if let Some(m) = self.shared.channel.try_recv()? {
                self.take_message(m)?;
                return Ok(true);
            }
            // The producer writes its count only after the send: a count
            // past the messages received with none waiting is a lie.
            if says {
                self.trust_sent = false;
            }
        }
        Ok(false)
    }

    /// Sets how long a blocking [`next`](Self::next) sleeps on the ring's
    /// waiting word before it sleeps on its wake-up pipe and socket together
    /// (default [`WORD_SLEEP`]; zero: never on the word). Longer saves
    /// wake-up latency for items further apart, and lets a producer's
    /// death or socket message wait that long to be seen.
    pub fn set_word_sleep(&mut self, d: Duration) {
        self.word_sleep = d;
    }

    /// The next item once its ready fence has signalled, waiting at most
    /// `timeout`; `Ok(None)` once the producer has finished the stream.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Item>> {
        self.asked_ns = 0;
        self.say_ready()?;
        // The common case first: nothing left from an earlier call, and an
        // item on the ring whose ready fence has signalled.
        if self.waiting.is_none() && !self.ended {
            match self.take_desc() {
                Ok(Some((d, Fence::Signalled))) => {
                    // Taken at once: asked when ready. The item is built
                    // here, in the frame it is returned from, not copied
                    // out of another call.
                    let now = self.stamp_ready();
                    return Ok(Some(self.item(d, Fence::Signalled, now)));
                }
                Ok(Some((d, ready))) => self.waiting = Some(self.item(d, ready, 0)),
                Ok(None) => {}
                Err(e) => {
                    let r = Err(e);
                    self.note_gone(&r);
                    return r;
                }
            }
        }
        let r = self.next_inner(timeout);
        self.note_gone(&r);
        r
    }

    /// On the first call for an item, tells the producer so (a pool-ready
    /// message back, echoing the pool's buffer count and this consumer's
    /// index; see the module documentation, "Ready"). A producer already
    /// gone is not an error here: items it left on the ring are still
    /// taken, and its absence is found as before.
    pub(super) fn say_ready(&mut self) -> Result<()> {
        if self.said_ready {
            return Ok(());
        }
        self.said_ready = true;
        let ready = Message::PoolReady {
            buffers: self.shared.buffers.len() as u32,
            consumer: self.index,
        };
        match self.shared.channel.send(&ready) {
            Err(e) if e.kind() != ErrorKind::PeerGone => Err(e),
            _ => Ok(()),
        }
    }

    /// Remembers a peer-gone error, so that releases fail from now on.
    pub(super) fn note_gone<T>(&self, r: &Result<T>) {
        if matches!(r, Err(e) if e.kind() == ErrorKind::PeerGone) {
            self.shared.releases().gone = true;
        }
    }

    pub(super) fn next_inner(&mut self, timeout: Option<Duration>) -> Result<Option<Item>> {
        // The clock is read for the deadline only once this call must wait.
        let mut start = super::LazyStart::default();
        let op = "pool next";
        // First sleep on the ring's word (the cheapest wake-up), for at
        // most WORD_SLEEP in all; then on the wake-up pipe and the socket. Once
        // a wake-up brought nothing to do (an empty ring, no message: a
        // peer waking this side for nothing), sleep on the socket alone in
        // CALM_SLICE slices for the rest of the call, so that such a peer
        // costs a look at the ring per slice, not a spinning loop.
        let mut woken = false;
        let mut calm = false;
        // The peer's name is formatted only on the sleeping paths.
        let no_item = |obj: String| {
            timed_out(
                op,
                obj,
                format!("no item within {:?}", timeout.unwrap_or_default()),
            )
        };
        loop {
            if let Some(mut item) = self.waiting.take() {
                let deadline = match item.ready.status() {
                    FenceStatus::Active => start.deadline(timeout),
                    _ => None,
                };
                if let Err(e) = self.wait_ready(&item, deadline, timeout) {
                    if e.kind() == ErrorKind::TimedOut {
                        self.waiting = Some(item);
                    }
                    return Err(e);
                }
                self.mark_ready(&mut item);
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            // Coming from a sleep that ended for nothing, or one on the
            // socket, look at it; before a sleep on the word, the count
            // on the ring says whether to.
            let progress = if woken || calm {
                self.step()?
            } else {
                self.step_before_word_sleep()?
            };
            if progress {
                woken = false;
                continue;
            }
            calm |= woken;
            woken = false;
            let deadline = start.deadline(timeout);
            let word_until = start.get() + self.word_sleep;
            let now = Instant::now();
            if calm {
                let obj = self.shared.channel.peer().to_string();
                let end = now + CALM_SLICE;
                let end = deadline.map_or(end, |d| d.min(end));
                if !poll_any(&[self.shared.channel.fd()], Some(end), op, &obj)? && past(deadline) {
                    return Err(no_item(obj));
                }
                continue;
            }
            if now < word_until && !past(deadline) {
                let end = deadline.map_or(word_until, |d| d.min(word_until));
                // The word is raised, slept on through the sleeper, and
                // lowered again.
                if self.items.begin_word_sleep()? {
                    continue;
                }
                // The word is raised: a message sent from here on comes
                // with a wake-up, one sent before shows in the count.
                if self.trust_sent && self.count_says_message() {
                    self.items.end_word_sleep()?;
                    woken = true;
                    continue;
                }
                let slept = self.sleeper.sleep_on_word(end - now);
                let got = self.items.end_word_sleep();
                slept?;
                // Ended before its bound with nothing to take: a wake-up
                // for nothing (or a peer that lowered the word).
                woken = !got? && Instant::now() < end;
                continue;
            }
            if self.items.begin_wait()? {
                self.items.end_wait();
                continue;
            }
            let obj = self.shared.channel.peer().to_string();
            let woke = {
                let mut fds = vec![self.shared.channel.fd()];
                fds.extend(self.sleeper.wait_fd());
                poll_any(&fds, deadline, op, &obj)
            };
            self.items.end_wait();
            if !woke? {
                return Err(no_item(obj));
            }
            woken = true;
        }
    }

    /// Waits for `item`'s ready fence, watching the socket so that a
    /// producer that dies is noticed. `deadline` is the call's: at its
    /// end the error says how much of the call went to this fence (the
    /// rest went to waiting for the item).
    pub(super) fn wait_ready(
        &mut self,
        item: &Item,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let op = "pool next";
        let began = Instant::now();
        loop {
            if item.ready.status() != FenceStatus::Active {
                return self.check_ready(item);
            }
            self.pump()?;
            let mut fds = vec![self.shared.channel.fd()];
            let recheck = match wake_fds(&item.ready, &mut fds) {
                // It completed since the look above: look again, now.
                Wakeup::Now => continue,
                w => w == Wakeup::Recheck,
            };
            let obj = self.shared.channel.peer().to_string();
            if !poll_any(&fds, slice(deadline, recheck), op, &obj)? && past(deadline) {
                return Err(timed_out(
                    op,
                    obj,
                    format!(
                        "ready fence of item {} did not signal within {:?} (the last {:?} \
                         of them waiting for this fence, the rest for the item; {})",
                        item.seq,
                        timeout.unwrap_or_default(),
                        began.elapsed(),
                        item.ready.describe_pending()
                    ),
                ));
            }
        }
    }

    /// `Ok` if `item`'s ready fence signalled without error; a peer-gone
    /// error if it was failed because the producer went away.
    pub(super) fn check_ready(&self, item: &Item) -> Result<()> {
        let op = "pool next";
        match item.ready.status() {
            FenceStatus::Error(e) if e == crate::share::PEER_GONE_ERRNO => Err(Error::new(
                ErrorKind::PeerGone,
                op,
                self.shared.channel.peer().to_string(),
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
                    self.shared.channel.peer().to_string(),
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
        self.shared.channel.send(&Message::Bye)
    }
}

impl Item {
    /// The buffer holding the item (in a pool of frames, the frame's
    /// first buffer).
    pub fn buffer(&self) -> &Buffer {
        // The ring checked the slot against the pool when it took the item.
        &self.shared.buffers[self.slot as usize]
    }

    /// In a pool of frames, the item's frame (its planes hold the item).
    pub fn frame(&self) -> Option<&Frame> {
        self.shared.frames.get(self.slot as usize)
    }

    /// The buffer's slot in the pool.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// The item's sequence number (1, 2, …).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Length of the item in bytes, from the start of the buffer; in a
    /// pool of frames, bytes of the frame as
    /// [`frame_bytes`](super::frame_bytes) counts them (its buffers one
    /// after the other), which may be more than [`Item::buffer`] holds.
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

    /// When this consumer asked for it (CLOCK_MONOTONIC ns): the moment
    /// the call to `next` that returned it found nothing to take and began
    /// to wait; if the item was on the ring already, its
    /// [`ready_ns`](Self::ready_ns) (the call did not wait). From
    /// [`sent_ns`](Self::sent_ns) to the later of `sent_ns` and this, the
    /// item waited behind earlier items (queueing); the rest of the
    /// handoff is delivery (wake-up and transport). Never past `ready_ns`.
    pub fn asked_ns(&self) -> u64 {
        self.asked_ns
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

    pub(super) fn send_release(&self, fence: &Fence) -> Result<()> {
        let mut t = self.shared.releases();
        t.send_release(&self.shared.channel, self.slot as usize, self.seq, fence)
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.send_release(&Fence::Signalled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{portable::Portable, Allocate};
    use crate::share::pool::Producer;

    const T: Option<Duration> = Some(Duration::from_secs(10));

    /// A producer and its one consumer over 4 portable buffers of 4 KiB.
    fn pool(tag: &str) -> (Producer, Consumer) {
        let (p, c) = Channel::pair().unwrap();
        let bufs = (0..4)
            .map(|i| Portable.allocate(4096, &format!("{tag}{i}")).unwrap())
            .collect();
        let producer = Producer::new(bufs, vec![p]).unwrap();
        (producer, Consumer::new(c, T).unwrap())
    }

    #[test]
    fn the_consumer_looks_again_before_sleeping_only_while_items_come_close_together() {
        let (mut producer, mut consumer) = pool("spin");
        let mut one = |consumer: &mut Consumer| {
            let lease = producer.acquire(T).unwrap();
            lease.submit(4096, Fence::Signalled).unwrap();
            consumer
                .next(T)
                .unwrap()
                .unwrap()
                .release(Fence::Signalled)
                .unwrap();
        };
        // The first item has no predecessor: no look.
        one(&mut consumer);
        assert_eq!(consumer.spin(), Duration::ZERO);
        // Two items well apart: a sparse stream, no look.
        std::thread::sleep(SPIN_GAP * 4);
        one(&mut consumer);
        assert_eq!(consumer.spin(), Duration::ZERO);
        // Back to back (retried: a preempted test thread may be slow).
        let close = (0..100).any(|_| {
            one(&mut consumer);
            consumer.spin() == crate::share::ring::DEFAULT_SPIN
        });
        assert!(
            close,
            "items taken back to back never counted as close together"
        );
        // And apart again.
        std::thread::sleep(SPIN_GAP * 4);
        one(&mut consumer);
        assert_eq!(consumer.spin(), Duration::ZERO);
    }

    #[test]
    fn an_item_is_asked_for_when_next_began_to_wait_or_when_it_was_taken_at_once() {
        let (mut producer, mut consumer) = pool("asked");
        // On the ring before the call: asked when it was taken.
        producer
            .acquire(T)
            .unwrap()
            .submit(16, Fence::Signalled)
            .unwrap();
        let item = consumer.next(T).unwrap().unwrap();
        assert_eq!(item.asked_ns(), item.ready_ns());
        assert!(item.sent_ns() <= item.asked_ns());
        drop(item);
        // Submitted while the call waits: asked when it began to wait,
        // well before the item came.
        let before = monotonic_ns();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            producer
                .acquire(T)
                .unwrap()
                .submit(16, Fence::Signalled)
                .unwrap();
            producer
        });
        let item = consumer.next(T).unwrap().unwrap();
        let _producer = t.join().unwrap();
        assert!(item.asked_ns() >= before, "asked before the call");
        assert!(
            item.sent_ns() >= item.asked_ns() + 20_000_000,
            "asked {} sent {}: the wait began when the call did",
            item.asked_ns(),
            item.sent_ns()
        );
        assert!(item.asked_ns() <= item.ready_ns());
    }

    #[test]
    fn a_consumer_sleeping_between_items_looks_at_its_socket_only_when_a_message_waits() {
        use std::sync::atomic::Ordering;
        let (mut producer, mut consumer) = pool("look");
        let calls = |c: &Consumer| c.shared.channel.recv_calls.load(Ordering::Relaxed);
        let items = 20;
        let t = std::thread::spawn(move || {
            for _ in 0..items {
                // The consumer is asleep on its ring's word by then.
                std::thread::sleep(Duration::from_millis(5));
                let lease = producer.acquire(T).unwrap();
                lease.submit(16, Fence::Signalled).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
            producer.finish(T).unwrap();
        });
        let before = calls(&consumer);
        let mut got = 0;
        while let Some(item) = consumer.next(T).unwrap() {
            got += 1;
            drop(item);
        }
        t.join().unwrap();
        assert_eq!(got, items);
        // The bye was seen through the count; nothing else needed a look
        // (before, every sleep between items cost one `recvmsg`).
        let looks = calls(&consumer) - before;
        assert!(looks <= 3, "{looks} socket looks for {items} items");
        assert!(consumer.trust_sent, "the count was never found lying");
    }

    #[test]
    fn a_count_of_messages_that_lies_once_is_not_believed_again() {
        let (mut producer, mut consumer) = pool("lie");
        // Many messages, says the count; the socket has none.
        producer.peers[0].items.publish_sent(1_000_000).unwrap();
        let e = consumer.next(Some(Duration::from_millis(50))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(!consumer.trust_sent, "the lie was noticed");
        // The stream goes on as without the count: items and the bye.
        producer
            .acquire(T)
            .unwrap()
            .submit(16, Fence::Signalled)
            .unwrap();
        assert_eq!(consumer.next(T).unwrap().unwrap().seq(), 1);
        producer.finish(T).unwrap();
        assert!(consumer.next(T).unwrap().is_none());
        assert!(!consumer.trust_sent);
    }
}

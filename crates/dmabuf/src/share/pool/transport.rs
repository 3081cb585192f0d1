//! The pool's per-item transport: one pair of descriptor rings per
//! consumer ([`crate::share::ring`]), with the socket carrying only the
//! fences that must travel as fds.
//!
//! A fence that has signalled costs nothing (fence reference 0). A real
//! fence is sent over the socket as a fence message tagged with the ring's
//! next fence tag *before* its descriptor is published, so the receiver,
//! seeing the tag on the ring, finds the fence on the socket (reading it
//! again once if it arrived meanwhile). Fence messages that arrive are kept
//! by tag, at most one per buffer in flight; more is a protocol error. A
//! search for a named fence reads at most [`MAX_OTHERS`] other messages
//! (a peer flooding the socket cannot hold it), then the fence counts as
//! not sent.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{Fence, FenceStatus};
use crate::share::ring::{
    ConsumerReleases, ConsumerRing, ConsumerSleep, FenceRef, ItemDesc, ProducerRing, ReleaseDesc,
    Wake,
};
use crate::share::{Channel, Message};

fn protocol(op: &'static str, obj: &str, cause: String) -> Error {
    super::protocol(op, obj, cause)
}

/// Fences received over the socket, by tag, waiting for their descriptor.
#[derive(Debug, Default)]
struct FenceStash {
    fences: Vec<(u64, Fence)>,
}

impl FenceStash {
    /// Keeps a fence message for the descriptor that will name it; any
    /// other message is handed back.
    fn sort(&mut self, msg: Message, cap: usize, obj: &str) -> Result<Incoming> {
        match msg {
            Message::Fence { tag, fence } => {
                self.put(tag, fence, cap, obj)?;
                Ok(Incoming::Kept)
            }
            m => Ok(Incoming::Other(m)),
        }
    }

    fn put(&mut self, tag: u64, fence: Fence, cap: usize, obj: &str) -> Result<()> {
        if self.fences.len() >= cap {
            return Err(protocol(
                "pool",
                obj,
                format!("fence {tag}: more fences announced than the {cap} buffers in flight"),
            ));
        }
        if self.fences.iter().any(|(t, _)| *t == tag) {
            return Err(protocol("pool", obj, format!("fence tag {tag} sent twice")));
        }
        self.fences.push((tag, fence));
        Ok(())
    }

    fn take(&mut self, tag: u64) -> Option<Fence> {
        let i = self.fences.iter().position(|(t, _)| *t == tag)?;
        Some(self.fences.swap_remove(i).1)
    }
}

/// What a socket message means to the per-item path.
pub(super) enum Incoming {
    /// A fence, kept for its descriptor.
    Kept,
    /// Any other message, for the caller.
    Other(Message),
}

/// Most messages other than fences that one search for a fence reads
/// off the socket: in the pool's protocol only a bye can come between a
/// fence and the descriptor that names it, and anything after a bye is a
/// protocol error anyway.
const MAX_OTHERS: usize = 2;

/// Resolves a descriptor's fence reference, reading the socket once more
/// if the fence is not there yet.
fn resolve(
    r: FenceRef,
    stash: &mut FenceStash,
    channel: &Channel,
    cap: usize,
    what: impl FnOnce() -> String,
    other: &mut Vec<Message>,
) -> Result<Fence> {
    let tag = match r {
        FenceRef::Signalled => return Ok(Fence::Signalled),
        FenceRef::Socket(t) => t,
    };
    if let Some(f) = stash.take(tag) {
        return Ok(f);
    }
    // Sent before the descriptor was published, so it is readable now.
    // Fences met on the way are bounded by the stash, other messages by
    // MAX_OTHERS: a peer flooding the socket cannot keep this loop going.
    let mut others = 0;
    while others < MAX_OTHERS {
        let Some(m) = channel.try_recv()? else { break };
        match m {
            Message::Fence { tag: t, fence } => stash.put(t, fence, cap, channel.peer())?,
            m => {
                others += 1;
                other.push(m);
            }
        }
        if let Some(f) = stash.take(tag) {
            return Ok(f);
        }
    }
    Err(protocol(
        "pool",
        channel.peer(),
        format!("{} names fence {tag}, which was not sent before it ({others} other messages came instead)", what()),
    ))
}

/// The producer's per-item transport to one consumer.
#[derive(Debug)]
pub(super) struct ProducerTransport {
    ring: ProducerRing,
    stash: FenceStash,
    /// While items wait untaken on the ring: the consumer's item tail and
    /// since when it has not moved.
    stall: Option<(u64, Instant)>,
}

impl ProducerTransport {
    /// A new ring for a pool of buffers of `sizes`.
    pub(super) fn new(sizes: &[u64], name: &str) -> Result<ProducerTransport> {
        Ok(ProducerTransport {
            ring: ProducerRing::create(sizes, Wake::Pipe, name)?,
            stash: FenceStash::default(),
            stall: None,
        })
    }

    /// The handshake message that hands the ring to the consumer.
    pub(super) fn ring_message(&self, obj: &str) -> Result<Message> {
        let fds = self
            .ring
            .shared_fds()
            .into_iter()
            .map(|f| {
                f.try_clone_to_owned().map_err(|e| {
                    Error::os(
                        "dup",
                        obj.to_string(),
                        Errno::from_io_error(&e).unwrap_or(Errno::IO),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Message::Ring {
            capacity: self.ring.capacity() as u32,
            fds: Arc::new(fds),
        })
    }

    /// Publishes an item; a real ready fence goes over `channel` first.
    pub(super) fn send_item(
        &mut self,
        channel: &Channel,
        slot: usize,
        len: u64,
        sent_ns: u64,
        ready: &Fence,
    ) -> Result<ItemDesc> {
        let real = ready.status() == FenceStatus::Active;
        if real {
            channel.send(&Message::Fence {
                tag: self.ring.next_fence_tag(),
                fence: ready.clone(),
            })?;
        }
        self.ring.send_item(slot, len, sent_ns, real)
    }

    /// Sorts a socket message: fences are kept for their descriptors.
    pub(super) fn incoming(&mut self, msg: Message, obj: &str) -> Result<Incoming> {
        self.stash.sort(msg, self.ring.capacity(), obj)
    }

    /// The next release, if one is there (no system call).
    pub(super) fn next_release(&mut self) -> Result<Option<ReleaseDesc>> {
        self.ring.try_recv_release()
    }

    /// The fence release `d` names: the signalled one, or one that came
    /// over `channel` before it; socket messages read meanwhile that are
    /// not fences go to `other`.
    pub(super) fn release_fence(
        &mut self,
        d: &ReleaseDesc,
        channel: &Channel,
        other: &mut Vec<Message>,
    ) -> Result<Fence> {
        // Named only in an error: no formatting per release.
        let what = || format!("release of buffer {} (item {})", d.slot, d.seq);
        let cap = self.ring.capacity();
        resolve(d.fence, &mut self.stash, channel, cap, what, other)
    }

    /// Drops the fences kept for releases not seen yet (the consumer is
    /// gone: they close their fds now).
    pub(super) fn forget_fences(&mut self) {
        self.stash.fences.clear();
    }

    /// How long the consumer has taken no item off the ring while some
    /// wait there, and how many wait (`None` when none wait). Reads the
    /// consumer's tail (validated: a breach is a protocol error).
    pub(super) fn stalled_for(&mut self) -> Result<Option<(Duration, u64)>> {
        let (tail, waiting) = self.ring.untaken()?;
        if waiting == 0 {
            self.stall = None;
            return Ok(None);
        }
        match self.stall {
            Some((t, since)) if t == tail => Ok(Some((since.elapsed(), waiting))),
            _ => {
                self.stall = Some((tail, Instant::now()));
                Ok(Some((Duration::ZERO, waiting)))
            }
        }
    }

    /// The consumer's item tail and how many items wait untaken on the
    /// ring (see [`ProducerRing::untaken`]).
    pub(super) fn untaken(&mut self) -> Result<(u64, u64)> {
        self.ring.untaken()
    }

    /// Whether items were last seen waiting untaken (see
    /// [`stalled_for`](Self::stalled_for)): a waiter re-checks on a timer.
    pub(super) fn stalled(&self) -> bool {
        self.stall.is_some()
    }

    /// See [`ProducerRing::begin_wait`].
    pub(super) fn begin_wait(&mut self) -> Result<bool> {
        self.ring.begin_wait()
    }

    /// See [`ProducerRing::end_wait`].
    pub(super) fn end_wait(&mut self) {
        self.ring.end_wait()
    }

    /// See [`ProducerRing::publish_sent`].
    pub(super) fn publish_sent(&self, sent: u64) -> Result<()> {
        self.ring.publish_sent(sent)
    }

    /// The fd that becomes readable when the consumer wakes this side.
    pub(super) fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.ring.wait_fd()
    }
}

/// The consumer's per-item transport from the producer: the half that
/// takes items, kept by the consumer itself (no lock).
#[derive(Debug)]
pub(super) struct ConsumerTransport {
    ring: ConsumerRing,
    stash: FenceStash,
}

/// The consumer's half of the transport that gives items back, shared
/// with the items (behind a lock: they are released from any thread).
#[derive(Debug)]
pub(super) struct ReleaseTransport {
    ring: ConsumerReleases,
    /// Set once the producer was found gone: releases then fail (found
    /// without a system call).
    pub(super) gone: bool,
}

impl ConsumerTransport {
    /// Opens the ring of a ring message, for buffers of `sizes`: the half
    /// that takes items and the half that gives them back.
    pub(super) fn open(
        capacity: u32,
        fds: &[std::os::fd::OwnedFd],
        sizes: &[u64],
        obj: &str,
    ) -> Result<(ConsumerTransport, ReleaseTransport)> {
        if capacity as usize != sizes.len() {
            return Err(protocol(
                "pool handshake",
                obj,
                format!(
                    "ring of capacity {capacity} for a pool of {} buffers",
                    sizes.len()
                ),
            ));
        }
        let fds = fds
            .iter()
            .map(|f| {
                f.as_fd().try_clone_to_owned().map_err(|e| {
                    Error::os(
                        "dup",
                        obj.to_string(),
                        Errno::from_io_error(&e).unwrap_or(Errno::IO),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (ring, releases) = ConsumerRing::open(fds, sizes, obj)?;
        let items = ConsumerTransport {
            ring,
            stash: FenceStash::default(),
        };
        let releases = ReleaseTransport {
            ring: releases,
            gone: false,
        };
        Ok((items, releases))
    }

    /// Sorts a socket message: fences are kept for their descriptors.
    pub(super) fn incoming(&mut self, msg: Message, obj: &str) -> Result<Incoming> {
        self.stash.sort(msg, self.ring.capacity(), obj)
    }

    /// The next item and its ready fence, if one is there.
    pub(super) fn recv_item(
        &mut self,
        channel: &Channel,
        other: &mut Vec<Message>,
    ) -> Result<Option<(ItemDesc, Fence)>> {
        let Some(d) = self.ring.try_recv_item()? else {
            return Ok(None);
        };
        // Named only in an error: no formatting per item.
        let what = || format!("item {} in buffer {}", d.seq, d.slot);
        let cap = self.ring.capacity();
        let f = resolve(d.fence, &mut self.stash, channel, cap, what, other)?;
        Ok(Some((d, f)))
    }

    /// See [`ConsumerRing::close`].
    pub(super) fn close(&mut self) -> Result<()> {
        self.ring.close()
    }

    /// See [`ConsumerRing::begin_wait`].
    pub(super) fn begin_wait(&mut self) -> Result<bool> {
        self.ring.begin_wait()
    }

    /// See [`ConsumerRing::end_wait`].
    pub(super) fn end_wait(&mut self) {
        self.ring.end_wait()
    }

    /// See [`ConsumerRing::begin_word_sleep`].
    pub(super) fn begin_word_sleep(&mut self) -> Result<bool> {
        self.ring.begin_word_sleep()
    }

    /// See [`ConsumerRing::end_word_sleep`].
    pub(super) fn end_word_sleep(&mut self) -> Result<bool> {
        self.ring.end_word_sleep()
    }

    /// The means to sleep apart from this transport (its wait fd and
    /// waiting word).
    pub(super) fn sleeper(&self) -> ConsumerSleep {
        self.ring.sleeper()
    }
}

impl ReleaseTransport {
    /// Gives item `seq` in `slot` back; a real release fence goes over
    /// `channel` first.
    pub(super) fn send_release(
        &mut self,
        channel: &Channel,
        slot: usize,
        seq: u64,
        fence: &Fence,
    ) -> Result<()> {
        if self.gone {
            return Err(Error::new(
                ErrorKind::PeerGone,
                "pool release",
                channel.peer().to_string(),
                format!("the producer went away; item {seq} in buffer {slot} cannot be given back"),
            )
            .with_errno(crate::share::PEER_GONE_ERRNO));
        }
        let real = fence.status() == FenceStatus::Active;
        if real {
            channel.send(&Message::Fence {
                tag: self.ring.next_fence_tag(),
                fence: fence.clone(),
            })?;
        }
        self.ring.send_release(slot, seq, real).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_named_but_not_sent_is_a_protocol_error() {
        let (a, b) = Channel::pair().unwrap();
        let mut stash = FenceStash::default();
        let mut other = Vec::new();
        let e = resolve(
            FenceRef::Socket(1),
            &mut stash,
            &b,
            4,
            || "item 1".into(),
            &mut other,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(
            e.to_string()
                .contains("item 1 names fence 1, which was not sent"),
            "{e}"
        );
        // Sent, but read only now: found; other messages are passed on.
        a.send(&Message::Bye).unwrap();
        a.send(&Message::Fence {
            tag: 2,
            fence: Fence::Signalled,
        })
        .unwrap();
        let f = resolve(
            FenceRef::Socket(2),
            &mut stash,
            &b,
            4,
            || "item 2".into(),
            &mut other,
        )
        .unwrap();
        assert!(matches!(f, Fence::Signalled));
        assert!(matches!(other.as_slice(), [Message::Bye]));
        assert!(matches!(
            resolve(
                FenceRef::Signalled,
                &mut stash,
                &b,
                4,
                || "x".into(),
                &mut other
            ),
            Ok(Fence::Signalled)
        ));
    }

    #[test]
    fn fences_kept_are_bounded_and_unique() {
        let mut stash = FenceStash::default();
        stash.put(1, Fence::Signalled, 2, "p").unwrap();
        let e = stash.put(1, Fence::Signalled, 2, "p").unwrap_err();
        assert!(e.to_string().contains("fence tag 1 sent twice"), "{e}");
        stash.put(2, Fence::Signalled, 2, "p").unwrap();
        let e = stash.put(3, Fence::Signalled, 2, "p").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(
            e.to_string()
                .contains("more fences announced than the 2 buffers"),
            "{e}"
        );
        assert!(stash.take(2).is_some() && stash.take(2).is_none());
    }

    #[test]
    fn looking_for_a_fence_reads_a_bounded_number_of_messages() {
        // A peer that floods the socket with messages other than the
        // fence a descriptor names: the search stops after a few, however
        // many are queued (or keep coming), and says why.
        let (a, b) = Channel::pair().unwrap();
        for _ in 0..64 {
            a.send(&Message::Bye).unwrap();
        }
        let mut stash = FenceStash::default();
        let mut other = Vec::new();
        let e = resolve(
            FenceRef::Socket(1),
            &mut stash,
            &b,
            4,
            || "item 1".to_string(),
            &mut other,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(
            e.to_string()
                .contains("item 1 names fence 1, which was not sent"),
            "{e}"
        );
        assert!(other.len() <= MAX_OTHERS, "{} messages read", other.len());
        // The rest is still on the socket, unread.
        assert!(matches!(b.try_recv(), Ok(Some(Message::Bye))));
    }
}

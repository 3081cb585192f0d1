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
//! * **Ready.** A consumer's first call for an item ([`Consumer::next`],
//!   or the async one) sends the pool-ready message back, once, with the
//!   same two numbers (the pool's buffer count and its own index): it has
//!   every buffer and now takes items, its own setup done.
//!   [`Producer::wait_ready`] waits for that from every consumer still
//!   getting items, within a timeout. A producer that starts a clock, or
//!   does not want to fill the pool before anyone reads, calls it before
//!   its first `acquire`; one that does not loses nothing (the message is
//!   read with the others). A second pool-ready, or one with other
//!   numbers, is an [`ErrorKind::Protocol`] error and drops the consumer.
//! * **Frames.** A pool's slots may be frames instead of buffers
//!   ([`Producer::new_frames`]): each frame travels once, at setup, as a
//!   frame message (its layout and each of its buffers once, checked on
//!   receipt as the `share` module's rules say: fd kinds and sizes,
//!   every plane inside its buffer, the frame module's layout checks);
//!   per item nothing changes, the descriptor names the slot. A
//!   consumer's handshake is all buffers or all frames (a mix is a
//!   [`ErrorKind::Protocol`] error), holds at most [`MAX_POOL_BUFFERS`]
//!   buffers in all, and [`Item::frame`] gives the item's frame. An
//!   item's length counts the frame's bytes, at most [`frame_bytes`]
//!   (the sum of its buffers' sizes; [`Lease::submit_all`] sends that).
//! * **Per item, shared memory, not the socket.** Items and releases
//!   travel as descriptors on the consumer's rings: while both sides keep
//!   up, an item costs no socket message and no system call (each side
//!   looks again for a few microseconds before it sleeps — the consumer
//!   only while its items come less than [`SPIN_GAP`] apart — and wakes
//!   the other only if it sleeps), and the producer takes releases off
//!   the rings in batches ([`RELEASE_BATCH`]). A signalled fence costs
//!   nothing; a real
//!   fence is sent over the socket as a tagged fence message, named by the
//!   descriptor. The socket carries the handshake, real fences, bye, and
//!   tells a peer's death.
//! * **Per item**, the producer [`acquire`](Producer::acquire)s a free
//!   buffer (a [`Lease`]), writes it (inside a write window, or by a
//!   device), and [`submit`](Lease::submit)s it with its length and a
//!   *ready* fence; [`Fence::Signalled`](crate::fence::Fence::Signalled) travels as "no fence". Every live
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
//!   No wait in this module ignores the peer's socket for long, so
//!   nothing blocks forever on a peer that is gone: a blocking
//!   [`Consumer::next`] first sleeps on its ring's waiting word (the
//!   cheapest wake-up, which cannot watch the socket) for at most
//!   [`WORD_SLEEP`] in all, then on its wake-up pipe and socket together.
//!   Before a sleep on the word it looks at its socket (a system call)
//!   only when the producer's count of messages sent, which the producer
//!   writes on the ring after the handshake and after its bye (then wakes
//!   the word), is past the messages the consumer has received; a count
//!   found past them with no message waiting is not believed again, and
//!   the socket is then looked at before every such sleep. A
//!   wake-up that brings nothing to do (no item, no socket message) ends
//!   the word and pipe sleeps of that call: it then sleeps on the
//!   socket alone in [`CALM_SLICE`] slices, looking at the ring between
//!   them, so a peer that keeps waking it or lowering its word cannot make
//!   it spin. A message or descriptor that breaks
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
//!   [`RECHECK`] and never poll a readable wake-up pipe
//!   of a fence still active, so a peer writing (or hanging up) the pipes
//!   makes nothing spin. No wake-up a side writes or drains can be made
//!   to wait by its peer (see [`ring`](crate::share::ring)).
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
//! instead of `poll`. They do not sleep on the ring's word (a futex
//! cannot be registered with tokio). `AsyncConsumer::next` follows the
//! [`CALM_SLICE`] rule by deregistering its ring's wake-up pipe from tokio
//! for the rest of the call after a wake-up for nothing (a registered
//! pipe wakes tokio's reactor at every write, whether or not a task
//! awaits it), and waits on its socket alone in slices.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::RECHECK;

/// Most buffers a pool may have.
pub const MAX_POOL_BUFFERS: usize = 1024;

/// [`Producer::acquire`] takes the consumers' releases off their rings
/// only once at most one buffer in `RELEASE_BATCH` is free (or none can
/// be leased): a steady stream reads each consumer's release head once
/// per batch of releases instead of twice per item. Until then a
/// released buffer still counts in [`Producer::in_flight`].
pub const RELEASE_BATCH: usize = 4;

/// How long a consumer that said bye may keep buffers it still reads, and
/// release fences that have not signalled, before the producer takes them
/// back (and fails those fences in its own process).
pub const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// The bytes of a frame as a pool counts them: the sum of its buffers'
/// sizes (each buffer once), the most an item of a frame slot may have.
pub fn frame_bytes(frame: &crate::frame::Frame) -> u64 {
    frame
        .buffers()
        .iter()
        .fold(0u64, |n, b| n.saturating_add(b.size()))
}

/// How long, at most, a blocking [`Consumer::next`] sleeps on its ring's
/// waiting word (`FUTEX_WAIT`, the cheapest wake-up) before it sleeps on
/// its wake-up pipe and its socket together; a producer that dies or sends a
/// socket message meanwhile is seen at most this late (a producer's bye
/// also wakes the word).
pub const WORD_SLEEP: Duration = Duration::from_millis(20);

/// How long a [`Consumer::next`] (blocking or async) that was woken for
/// nothing (an empty ring and no socket message) sleeps on its socket
/// alone before it looks at the ring again, for the rest of that call:
/// what a peer that keeps waking it can cost (a look per slice), and the
/// latency an item then has at worst.
pub const CALM_SLICE: Duration = Duration::from_millis(1);

/// A consumer that finds its ring empty looks again for a few
/// microseconds before it sleeps only while items come close together:
/// when its last two items were taken less than this far apart (by its
/// own clock). On a sparse stream the look would find nothing, and the
/// CPU time it burns just before each sleep makes the scheduler wake the
/// consumer later (measured on a 2-core VM: a 5 µs look before every sleep
/// took the handoff p50 from about 10 µs to about 15 µs).
pub const SPIN_GAP: Duration = Duration::from_micros(50);

/// When a wait began, read from the clock only when first needed: a call
/// that finds its item or buffer at once reads no clock for its deadline.
#[derive(Debug, Default)]
struct LazyStart(Option<Instant>);

impl LazyStart {
    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }

    /// The wait began at `now`, unless it had begun before.
    fn begin_at(&mut self, now: Instant) {
        self.0.get_or_insert(now);
    }

    /// `timeout` from the start (`None`: no deadline).
    fn deadline(&mut self, timeout: Option<Duration>) -> Option<Instant> {
        timeout.map(|t| self.get() + t)
    }
}

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

mod consumer;
mod producer;
mod transport;

pub use consumer::{Consumer, Item};
pub use producer::{Lease, Producer};

#[cfg(feature = "tokio")]
mod asynch;
#[cfg(feature = "tokio")]
pub use asynch::{AsyncConsumer, AsyncProducer};

//! The pool's `async` face (feature `tokio`): the same state machine as
//! the blocking [`Producer`] and [`Consumer`], waiting through tokio's
//! `AsyncFd` on the peer sockets and the fences' fds instead of `poll`.
//! Sends stay the channels' `sendmsg` calls, bounded by their send
//! timeout (a consumer that does not read is dropped, as in the blocking
//! producer). Fences' wake-up pipes are hints here too: one that is readable
//! while its fence is still active is not awaited (it would wake the task
//! at once, again and again); a one-shot timer re-checks every
//! [`RECHECK`](crate::fence::RECHECK) instead.
//!
//! The consumer follows the blocking one's calm rule with the ring's
//! wake-up pipe: a wake-up that brings nothing to do (an empty ring, no socket
//! message) deregisters the pipe from tokio for the rest of that
//! `next`, which then waits on its socket alone in
//! [`CALM_SLICE`](super::CALM_SLICE) slices, looking at the ring between
//! them; the next call registers the pipe again. A peer that keeps
//! writing the pipe then wakes nothing: a registered pipe wakes
//! tokio's reactor at every write, whether or not a task awaits it.

use std::future::poll_fn;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;

use super::{Consumer, Item, Lease, Producer, CALM_SLICE};
use crate::buffer::Buffer;
use crate::error::{Errno, Error, Result};
use crate::fence::{wake_fds, FenceStatus, Wakeup, RECHECK};
use crate::share::Channel;

fn io_error(op: &'static str, obj: &str, e: std::io::Error) -> Error {
    Error::os(
        op,
        obj.to_string(),
        Errno::from_io_error(&e).unwrap_or(Errno::IO),
    )
}

fn register(fd: BorrowedFd<'_>, op: &'static str, obj: &str) -> Result<AsyncFd<OwnedFd>> {
    let fd = fd.try_clone_to_owned().map_err(|e| io_error(op, obj, e))?;
    crate::sys::readiness::register_readable(fd).map_err(|e| io_error(op, obj, e))
}

/// Waits until any of `fixed` or `extra` polls readable, or [`RECHECK`]
/// has passed if `recheck`.
async fn any_readable(
    fixed: &[&AsyncFd<OwnedFd>],
    extra: &[BorrowedFd<'_>],
    recheck: bool,
    op: &'static str,
    obj: &str,
) -> Result<()> {
    any_readable_for(fixed, extra, recheck.then_some(RECHECK), op, obj).await
}

/// Waits until any of `fixed` or `extra` polls readable, or `limit` has
/// passed if given.
async fn any_readable_for(
    fixed: &[&AsyncFd<OwnedFd>],
    extra: &[BorrowedFd<'_>],
    limit: Option<std::time::Duration>,
    op: &'static str,
    obj: &str,
) -> Result<()> {
    let mut extra = extra
        .iter()
        .map(|fd| register(*fd, op, obj))
        .collect::<Result<Vec<_>>>()?;
    if let Some(t) = limit {
        extra.push(crate::sys::readiness::timer(t).map_err(|e| io_error(op, obj, e))?);
    }
    poll_fn(|cx| {
        for a in fixed.iter().copied().chain(extra.iter()) {
            match a.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    // The caller re-reads everything without blocking next,
                    // so the readiness can be forgotten now.
                    guard.clear_ready();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
    .map_err(|e| io_error(op, obj, e))
}

/// [`Producer`] with `async` waits. See the module documentation.
#[derive(Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncProducer {
    inner: Producer,
    sockets: Vec<AsyncFd<OwnedFd>>,
    /// Per consumer, the fd its ring wakes this side on.
    rings: Vec<AsyncFd<OwnedFd>>,
}

impl AsyncProducer {
    /// Shares `buffers` with every consumer (as [`Producer::new`]); must
    /// be called inside a tokio runtime.
    pub fn new(buffers: Vec<Buffer>, consumers: Vec<Channel>) -> Result<AsyncProducer> {
        AsyncProducer::wrap(Producer::new(buffers, consumers)?)
    }

    /// Shares `frames` with every consumer (as [`Producer::new_frames`]);
    /// must be called inside a tokio runtime.
    pub fn new_frames(
        frames: Vec<crate::frame::Frame>,
        consumers: Vec<Channel>,
    ) -> Result<AsyncProducer> {
        AsyncProducer::wrap(Producer::new_frames(frames, consumers)?)
    }

    fn wrap(inner: Producer) -> Result<AsyncProducer> {
        let obj = inner.object();
        let sockets = inner
            .peers
            .iter()
            .map(|p| register(p.channel.fd(), "pool", &obj))
            .collect::<Result<Vec<_>>>()?;
        let rings = inner
            .peers
            .iter()
            .map(|p| match p.items.wait_fd() {
                Some(fd) => register(fd, "pool", &obj),
                None => Err(Error::invalid(
                    "pool",
                    obj.clone(),
                    "ring without a wake-up fd",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AsyncProducer {
            inner,
            sockets,
            rings,
        })
    }

    /// The blocking producer underneath (for its non-waiting calls).
    pub fn get_mut(&mut self) -> &mut Producer {
        &mut self.inner
    }

    /// Awaits every consumer still getting items having asked for its
    /// first one (as [`Producer::wait_ready`], with no limit of its own:
    /// bound it with `tokio::time::timeout`, which loses nothing).
    pub async fn wait_ready(&mut self) -> Result<()> {
        loop {
            self.inner.pump()?;
            if self.inner.consumers() == 0 {
                return Err(self.inner.no_consumers("pool wait ready"));
            }
            if self.inner.not_ready().is_empty() {
                return Ok(());
            }
            self.wait("pool wait ready", false).await?;
        }
    }

    /// A free buffer, awaiting one while every buffer is in flight.
    pub async fn acquire(&mut self) -> Result<Lease<'_>> {
        loop {
            self.inner.pump()?;
            if self.inner.consumers() == 0 {
                return Err(self.inner.no_consumers("pool acquire"));
            }
            if let Some(slot) = self.inner.pick() {
                return Ok(self.inner.lease(slot));
            }
            self.inner.drop_stalled()?;
            self.wait("pool acquire", true).await?;
        }
    }

    /// Waits, armed, for a wake-up; `taking`: the caller takes a buffer
    /// next (a free one whose release fences completed is then a reason
    /// to return at once).
    async fn wait(&mut self, op: &'static str, taking: bool) -> Result<()> {
        if self.inner.arm()? {
            self.inner.disarm();
            return Ok(());
        }
        let r = self.wait_armed(op, taking).await;
        self.inner.disarm();
        r
    }

    async fn wait_armed(&self, op: &'static str, taking: bool) -> Result<()> {
        let obj = self.inner.object();
        let fixed: Vec<&AsyncFd<OwnedFd>> = self
            .inner
            .peers
            .iter()
            .zip(self.sockets.iter().zip(&self.rings))
            .filter(|(p, _)| p.alive)
            .flat_map(|(_, (s, r))| [s, r])
            .collect();
        let mut extra = Vec::new();
        match self.inner.release_wakeup(taking, &mut extra) {
            Wakeup::Now => Ok(()),
            w => any_readable(&fixed, &extra, w == Wakeup::Recheck, op, &obj).await,
        }
    }

    /// Sends a bye and awaits every buffer's return (as
    /// [`Producer::finish`]).
    pub async fn finish(mut self) -> Result<()> {
        self.inner.say_bye();
        loop {
            let _ = self.inner.pump();
            let pending = self
                .inner
                .slots
                .iter()
                .any(|s| s.holders.iter().any(|h| *h));
            if !pending || !self.inner.peers.iter().any(|p| p.alive) {
                return Ok(());
            }
            match self.wait("pool finish", false).await {
                // A consumer whose ring broke the protocol was dropped:
                // as in `Producer::finish`, not an error at the end.
                Err(e) if e.kind() == crate::error::ErrorKind::Protocol => {}
                r => r?,
            }
        }
    }
}

/// [`Consumer`] with `async` waits. See the module documentation.
#[derive(Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncConsumer {
    inner: Consumer,
    socket: AsyncFd<OwnedFd>,
    /// The fd the producer's ring wakes this side on; `None` after a
    /// wake-up for nothing (deregistered, see the module documentation)
    /// until the next call needs it.
    ring: Option<AsyncFd<OwnedFd>>,
}

impl AsyncConsumer {
    /// Receives the pool's buffers on `channel`, awaiting each message.
    pub async fn new(channel: Channel) -> Result<AsyncConsumer> {
        let obj = channel.peer().to_string();
        let socket = register(channel.fd(), "pool handshake", &obj)?;
        let inner = Consumer::new_async_ready(channel, &socket, &obj).await?;
        let ring = match inner.sleeper.wait_fd() {
            Some(fd) => Some(register(fd, "pool handshake", &obj)?),
            None => {
                return Err(Error::invalid(
                    "pool handshake",
                    obj,
                    "ring without a wake-up fd",
                ))
            }
        };
        Ok(AsyncConsumer {
            inner,
            socket,
            ring,
        })
    }

    /// The blocking consumer underneath.
    pub fn get_mut(&mut self) -> &mut Consumer {
        &mut self.inner
    }

    /// The next item once its ready fence has signalled; `Ok(None)` at the
    /// end of the stream.
    pub async fn next(&mut self) -> Result<Option<Item>> {
        self.inner.asked_ns = 0;
        self.inner.say_ready()?;
        let r = self.next_inner().await;
        self.inner.note_gone(&r);
        r
    }

    async fn next_inner(&mut self) -> Result<Option<Item>> {
        let op = "pool next";
        // As in the blocking `next`: once a wake-up brought nothing to do,
        // wait on the socket alone in CALM_SLICE slices for the rest of
        // this call, with the ring's wake-up pipe deregistered.
        let mut woken = false;
        let mut calm = false;
        loop {
            // The item waits in `self.inner` across awaits, so a cancelled
            // `next` loses nothing.
            let pending = |i: &Item| i.ready.status() == FenceStatus::Active;
            if self.inner.waiting.as_ref().is_some_and(pending) {
                self.inner.pump()?;
                let item = self.inner.waiting.as_ref().expect("checked above");
                let mut extra = Vec::new();
                let recheck = match wake_fds(&item.ready, &mut extra) {
                    // It completed since the look above: look again, now.
                    Wakeup::Now => continue,
                    w => w == Wakeup::Recheck,
                };
                let obj = self.inner.shared.channel.peer().to_string();
                any_readable(&[&self.socket], &extra, recheck, op, &obj).await?;
                continue;
            }
            if let Some(mut item) = self.inner.waiting.take() {
                self.inner.check_ready(&item)?;
                self.inner.mark_ready(&mut item);
                return Ok(Some(item));
            }
            if self.inner.ended {
                return Ok(None);
            }
            if self.inner.step()? {
                woken = false;
                continue;
            }
            calm |= woken;
            woken = false;
            let obj = self.inner.shared.channel.peer().to_string();
            if calm {
                self.ring = None;
                any_readable_for(&[&self.socket], &[], Some(CALM_SLICE), op, &obj).await?;
                continue;
            }
            let ring = match self.ring.take() {
                Some(r) => r,
                None => match self.inner.sleeper.wait_fd() {
                    Some(fd) => register(fd, op, &obj)?,
                    None => return Err(Error::invalid(op, obj, "ring without a wake-up fd")),
                },
            };
            let ring = self.ring.insert(ring);
            if self.inner.items.begin_wait()? {
                self.inner.items.end_wait();
                continue;
            }
            let r = any_readable(&[&self.socket, ring], &[], false, op, &obj).await;
            // (A cancelled wait leaves the word raised: it costs the
            // producer one wake-up, and the next call lowers it.)
            self.inner.items.end_wait();
            r?;
            woken = true;
        }
    }

    /// Tells the producer this consumer leaves.
    pub fn leave(self) -> Result<()> {
        self.inner.leave()
    }
}

impl Consumer {
    /// The handshake with awaits between messages.
    async fn new_async_ready(
        channel: Channel,
        socket: &AsyncFd<OwnedFd>,
        obj: &str,
    ) -> Result<Consumer> {
        let mut hs = super::consumer::Handshake::default();
        loop {
            match channel.try_recv()? {
                Some(m) => {
                    if let Some(done) = hs.step(m, obj)? {
                        return Consumer::from_handshake(channel, hs, done);
                    }
                }
                None => any_readable(&[socket], &[], false, "pool handshake", obj).await?,
            }
        }
    }
}

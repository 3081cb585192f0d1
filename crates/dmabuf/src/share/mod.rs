//! Passing buffers and fences between processes over a Unix socket.
//!
//! # DOC: sharing
//!
//! A [`Channel`] is one end of a connected `AF_UNIX` `SOCK_SEQPACKET`
//! socket (so every message arrives whole, with its fds, or not at all).
//! Buffers ([`Buffer`], any kind) and fences ([`Fence`]: kernel sync files
//! and user fences) travel as fds with `SCM_RIGHTS`, described by a small
//! versioned binary message. [`Listener`] and [`Channel::connect`] make
//! connections by path; [`Channel::pair`] makes a connected pair for a
//! child process. The [`pool`] module builds a streaming buffer pool on top.
//!
//! ## Rules
//!
//! * **The receiver trusts nothing.** Every message is decoded with every
//!   length, count, kind and reserved field checked; an empty datagram is
//!   refused (it is not taken for the peer's departure); the number of fds
//!   received must equal the number the message implies. Every fd's kind
//!   is checked before any ioctl is issued on it (a sync file must be what
//!   the kernel names `anon_inode:sync_file`, a wake-up fd the read or
//!   write end of a pipe, as the message needs). A buffer announced as a dma-buf must be one
//!   (filesystem magic) from the announced exporter; a buffer announced as
//!   portable must be a memfd sealed with `F_SEAL_SHRINK` and
//!   `F_SEAL_GROW` (else the sender could truncate it and the receiver
//!   would die of `SIGBUS` on its mapping), not opened write-only; the
//!   announced size must be the fd's size; a user fence must be a sealed
//!   fence memfd plus the read end of a pipe, and what its page says later is handled
//!   as [`UserFence`] documents (never a panic, never a spin). The 3 fds
//!   of a ring message are checked by the pool consumer that opens the
//!   ring (a memfd sealed against shrinking and growing, of the size its
//!   capacity implies, then the read end and the write end of two pipes;
//!   see [`ring::ConsumerRing::open`]),
//!   and what the ring's memory says is validated on every read (see
//!   [`ring`]). Anything
//!   else is an error of kind [`ErrorKind::Protocol`] naming what was
//!   wrong, and the channel stays usable for the next message.
//! * **A frame is checked like its buffers, then as a frame.** A frame
//!   message ([`Message::Frame`], [`Channel::send_frame`],
//!   [`Channel::recv_frame`]) carries the frame's layout in the
//!   [`frame::wire`](crate::frame::wire) encoding (decoded as hostile
//!   input: magic, version, reserved bytes, 1 to 4 planes, 1 to 4 buffers,
//!   every plane naming a buffer the message carries, every buffer holding
//!   a plane) and each distinct buffer once — one fd per buffer, planes
//!   that share a buffer name it by index, so a frame message carries at
//!   most 4 fds and exactly as many as its layout has buffers. Each fd is
//!   checked as a buffer message's fd is (kind, exporter, seals, announced
//!   size), then the frame as [`Frame::from_layout`] checks any frame
//!   (every plane fits its buffer, strides cover the width, offsets and
//!   strides aligned, planes in one buffer do not overlap, two fds of one
//!   file refused as one buffer named twice). A refusal is an
//!   [`ErrorKind::Protocol`] error naming the frame, the buffer or the
//!   plane and the cause (the errno of the check that failed is kept), and
//!   every fd of the message is closed.
//! * **What a peer can make us hold is bounded.** At most
//!   [`MAX_PENDING_FENCES`] unsignalled user fences received on one
//!   channel may be held here at once (one more is a protocol error naming
//!   the bound); the channel only keeps weak handles, so fences the
//!   program drops close their fds at once. The pool bounds its queues
//!   (see [`pool`]).
//! * **No fd leaks.** Received fds are `OwnedFd` the moment they leave the
//!   kernel (`MSG_CMSG_CLOEXEC`, so they are close-on-exec too); fds of a
//!   refused message, fds beyond what the message implies and fds of a
//!   truncated control message are closed. A process out of file
//!   descriptors gets an `EMFILE` error saying so, not a blame on the
//!   message.
//! * **A peer that goes away is an error, not a hang.** End of file, `EPIPE`
//!   and `ECONNRESET` give an error of kind [`ErrorKind::PeerGone`]; user
//!   fences received from that peer that have not signalled are failed
//!   with `ECONNRESET` *in this process only*
//!   ([`UserFence::fail_received`]): every waiter here wakes, while the
//!   shared fence page — and so the fence's owner and every other process
//!   holding it — is untouched. A peer that said bye before leaving left
//!   in order: its fences are left to signal.
//! * **Sends never block for ever.** Sends use `MSG_NOSIGNAL` (no
//!   `SIGPIPE`) and wait at most the channel's send timeout
//!   ([`DEFAULT_SEND_TIMEOUT`], [`Channel::set_send_timeout`]) for a peer
//!   that does not read: then an error of kind [`ErrorKind::TimedOut`]
//!   naming the peer.
//!
//! ## Message format (version 4, little-endian)
//!
//! Every message is one seqpacket datagram: a 16-byte header, then the
//! body, with the header's fd count of fds attached.
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! | 0      | 4    | magic `"DMBS"`                                     |
//! | 4      | 2    | version (3)                                        |
//! | 6      | 2    | type (below)                                       |
//! | 8      | 4    | body length in bytes (at most 1024)                |
//! | 12     | 2    | number of fds attached                             |
//! | 14     | 2    | flags, must be 0                                   |
//!
//! | type | name        | body                                                                                                   | fds                 |
//! |-----:|-------------|--------------------------------------------------------------------------------------------------------|---------------------|
//! | 1    | buffer      | id u64, size u64, kind u8 (1 portable, 2 udmabuf, 3 heap, 4 other dma-buf), detail length u8, name length u8, 0 u8, detail (heap or exporter name), name (≤ 31 bytes) | 1: the buffer       |
//! | 2    | fence       | tag u64, fence list                                                                                    | per fence list      |
//! | 3    | pool ready  | buffer count u32, consumer index u32 (producer to consumer: the handshake is over; back, once: the consumer asks for items) | 0 |
//! | 4    | item        | buffer id u64, sequence u64, length u64, sent at u64 (CLOCK_MONOTONIC ns), fence list (ready fence)    | per fence list      |
//! | 5    | release     | buffer id u64, sequence u64, fence list (release fence)                                                | per fence list      |
//! | 6    | bye         | empty: orderly end of the stream                                                                       | 0                   |
//! | 7    | ring        | capacity u32 (descriptors per direction = pool size)                                                    | 3: ring memfd, read end of the consumer's wake-up pipe, write end of the producer's |
//! | 8    | frame       | id u64, layout length u8, 3 zero bytes, layout (the [`frame::wire`](crate::frame::wire) encoding, at most 124 bytes), then per buffer of the layout: size u64, kind u8, detail length u8, name length u8, 0 u8, detail, name (as in a buffer message) | 1 per buffer (1 to 4), in buffer order |
//!
//! A *fence list* is a count u8 (at most 8) followed by one kind u8 per
//! fence: 1 a kernel sync file (1 fd), 2 a user fence (2 fds: its state
//! memfd, then the read end of its wake-up pipe). An empty list is a signalled fence. Fds are
//! attached in the order of the list.
//!
//! Version 2 differs from version 1 only in that a pool's consumer sends
//! the pool-ready message back when it first asks for an item; a side of
//! version 1 would take that for a protocol error mid-stream, so the two
//! refuse each other at the first message instead. Version 3 differs from
//! version 2 only in the layout of the pool's descriptor rings
//! (`"DMBRING3"`: descriptors carry marks, releases the consumer's count
//! of items taken; see [`ring`]), which a side of version 2 would refuse
//! when it opens the ring. Version 4 differs from version 3 only in the
//! kind of the wake-up fds: a user fence and a ring carry pipes where they
//! carried eventfds, so that no peer can make this side's wake-ups block
//! (see [`ring`] and [`UserFence`]); a side of version 3 would refuse
//! them.

mod inherit;
pub mod pool;
pub mod ring;
mod stats;
mod wire;

pub use stats::LatencyStats;

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::buffer::{Buffer, BufferKind};
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{poll_events, Fence, FenceStatus, SyncFile, UserFence, WeakUserFence};
use crate::frame::Frame;

pub use inherit::CHANNEL_FD_ENV;
use wire::{Packet, WireBuffer, WireFence, WireKind};
pub use wire::{HEADER_LEN, MAGIC, MAX_BODY, MAX_FDS, MAX_FENCES, VERSION};

/// The errno with which fences received from a peer that went away are
/// failed (in this process only).
pub const PEER_GONE_ERRNO: Errno = Errno::CONNRESET;

/// Most unsignalled user fences received on one channel that this process
/// may hold at once (each is 2 fds and a mapping): one more is a
/// [`ErrorKind::Protocol`] error naming the bound.
pub const MAX_PENDING_FENCES: usize = 256;

/// How long [`Channel::send`] waits, by default, for room in the socket
/// buffer (a peer that does not read) before giving up with
/// [`ErrorKind::TimedOut`] ([`Channel::set_send_timeout`] changes it).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A message, with its buffers and fences already checked and rebuilt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Message {
    /// A buffer, with the sender's id for it.
    Buffer {
        /// The sender's id of the buffer (a pool slot, for pools).
        id: u64,
        /// The buffer (received: a new handle on the same memory).
        buffer: Buffer,
    },
    /// A fence, with a tag of the sender's choosing.
    Fence {
        /// Sender-chosen tag.
        tag: u64,
        /// The fence ([`Fence::Signalled`] travels as no fd at all).
        fence: Fence,
    },
    /// Pool handshake: every buffer has been sent (producer to consumer).
    /// Sent back once by a consumer, the same two numbers: it asks for its
    /// first item.
    PoolReady {
        /// How many buffer messages preceded this one (the pool's slots).
        buffers: u32,
        /// The consumer's index among the pool's consumers.
        consumer: u32,
    },
    /// Pool: buffer `buffer` holds an item of `len` bytes, readable once
    /// `ready` signals.
    Item {
        /// The buffer's id (its pool slot).
        buffer: u64,
        /// The item's sequence number (increasing).
        seq: u64,
        /// Bytes of the item, from the start of the buffer.
        len: u64,
        /// When the producer sent it (CLOCK_MONOTONIC ns).
        sent_ns: u64,
        /// When the bytes may be read.
        ready: Fence,
    },
    /// Pool: the consumer is done with buffer `buffer` once `fence`
    /// signals.
    Release {
        /// The buffer's id.
        buffer: u64,
        /// The sequence number of the item it held.
        seq: u64,
        /// When the consumer's last access is over.
        fence: Fence,
    },
    /// Orderly end: the sender will send nothing more.
    Bye,
    /// Pool handshake: the per-item descriptor rings
    /// ([`ring`]) of this consumer.
    Ring {
        /// Descriptors per direction (the pool size).
        capacity: u32,
        /// The ring memfd, the read end of the consumer's wake-up pipe,
        /// the write end of the producer's (checked by
        /// [`ring::ConsumerRing::open`]).
        fds: std::sync::Arc<Vec<OwnedFd>>,
    },
    /// A frame: its layout and each of its buffers once (checked on
    /// receipt: see the module documentation).
    Frame {
        /// The sender's id of the frame (a pool slot, for pools).
        id: u64,
        /// The frame (received: new handles on the same memory).
        frame: Frame,
    },
}

impl Message {
    /// A short name of the message type, for errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Buffer { .. } => "buffer",
            Message::Fence { .. } => "fence",
            Message::PoolReady { .. } => "pool-ready",
            Message::Item { .. } => "item",
            Message::Release { .. } => "release",
            Message::Bye => "bye",
            Message::Ring { .. } => "ring",
            Message::Frame { .. } => "frame",
        }
    }
}

/// One end of a connected Unix seqpacket socket that carries [`Message`]s.
/// See the module documentation for the rules.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    peer: String,
    /// User fences received that had not signalled yet and that this
    /// process still holds (weak: dropping them closes their fds), failed
    /// here if the peer goes away.
    received: Mutex<Vec<WeakUserFence>>,
    send_timeout: Mutex<Option<Duration>>,
    /// The peer said bye: its going away later is orderly.
    said_bye: std::sync::atomic::AtomicBool,
    /// Messages sent whole, and datagrams received, on this channel since
    /// it was made (the pool's ring carries the producer's count, so
    /// that a consumer looks at its socket only when a message waits).
    sent: AtomicU64,
    taken: AtomicU64,
    /// Calls of `try_recv` (tests count the system calls they cost).
    #[cfg(test)]
    pub(crate) recv_calls: AtomicU64,
}

impl Channel {
    /// A connected pair (`socketpair`, close-on-exec), e.g. to hand one end
    /// to a child process.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::os("socketpair", "unix seqpacket", e))?;
        Ok((Channel::wrap(a), Channel::wrap(b)))
    }

    /// Connects to a [`Listener`] at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Channel> {
        let path = path.as_ref();
        let obj = format!("socket {}", path.display());
        let addr = SocketAddrUnix::new(path).map_err(|e| Error::os("connect", obj.clone(), e))?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::os("socket", obj.clone(), e))?;
        loop {
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::os("connect", obj, e)),
            }
        }
        Ok(Channel::wrap(fd))
    }

    /// Takes a connected socket fd (e.g. inherited from a parent), after
    /// checking it is a Unix seqpacket socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Channel> {
        let obj = format!("fd {}", fd.as_raw_fd());
        let ty = rustix::net::sockopt::socket_type(&fd)
            .map_err(|e| Error::kernel("channel", obj.clone(), e, "not a socket"))?;
        let domain = rustix::net::sockopt::socket_domain(&fd)
            .map_err(|e| Error::os("channel", obj.clone(), e))?;
        if ty != SocketType::SEQPACKET || domain != AddressFamily::UNIX {
            return Err(Error::invalid(
                "channel",
                obj,
                "not a Unix seqpacket socket (AF_UNIX, SOCK_SEQPACKET)",
            ));
        }
        Ok(Channel::wrap(fd))
    }

    fn wrap(fd: OwnedFd) -> Channel {
        let peer = match rustix::net::sockopt::socket_peercred(&fd) {
            Ok(c) => format!(
                "peer pid {} (socket fd {})",
                c.pid.as_raw_nonzero(),
                fd.as_raw_fd()
            ),
            Err(_) => format!("peer on socket fd {}", fd.as_raw_fd()),
        };
        Channel {
            fd,
            peer,
            received: Mutex::new(Vec::new()),
            send_timeout: Mutex::new(Some(DEFAULT_SEND_TIMEOUT)),
            said_bye: std::sync::atomic::AtomicBool::new(false),
            sent: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            #[cfg(test)]
            recv_calls: AtomicU64::new(0),
        }
    }

    /// Messages sent whole on this channel since it was made.
    pub(crate) fn messages_sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Datagrams received on this channel since it was made (whatever
    /// they held: a hostile one counts too).
    pub(crate) fn messages_received(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// How long a send may wait for room in the socket buffer (`None`:
    /// forever). [`DEFAULT_SEND_TIMEOUT`] until changed.
    pub fn set_send_timeout(&self, timeout: Option<Duration>) {
        *self.send_timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    /// The current send timeout.
    pub fn send_timeout(&self) -> Option<Duration> {
        *self.send_timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many unsignalled user fences received on this channel this
    /// process still holds.
    pub fn pending_fences(&self) -> usize {
        let mut v = self.received.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut v);
        v.len()
    }

    /// Who is at the other end (`SO_PEERCRED`: as the peer was when it
    /// connected), if the kernel says.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        rustix::net::sockopt::socket_peercred(&self.fd)
            .ok()
            .map(|c| PeerCredentials {
                pid: c.pid.as_raw_nonzero().get() as u32,
                uid: c.uid.as_raw(),
                gid: c.gid.as_raw(),
            })
    }

    /// "peer pid N (socket fd M)", for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The socket fd (for event loops: readable when a message or the
    /// peer's hang-up is waiting).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn gone(&self, op: &'static str, errno: Errno) -> Error {
        // After a bye the peer left in order: the fences it sent are left
        // to signal (their owner cancels them if it drops them unsignalled).
        if !self.said_bye.load(std::sync::atomic::Ordering::Relaxed) {
            self.fail_received_fences();
        }
        Error::new(
            ErrorKind::PeerGone,
            op,
            self.peer.clone(),
            "the peer closed the connection or died",
        )
        .with_errno(errno)
    }

    /// Fails, in this process only, every user fence received on this
    /// channel that has not signalled and is still held here, with
    /// [`PEER_GONE_ERRNO`] ([`UserFence::fail_received`]: the shared pages
    /// are untouched, so the fences' owner and other receivers see no
    /// change). Done automatically when the peer is found gone; call it
    /// when giving up on a peer otherwise.
    pub fn fail_received_fences(&self) {
        let mut v = self.received.lock().unwrap_or_else(|e| e.into_inner());
        for f in v.drain(..) {
            if let Some(f) = f.upgrade() {
                f.fail_received(PEER_GONE_ERRNO);
            }
        }
    }

    /// Sends `msg`, waiting at most the send timeout for room in the
    /// socket buffer.
    pub fn send(&self, msg: &Message) -> Result<()> {
        self.send_with(self.send_timeout(), msg)
    }

    fn send_with(&self, timeout: Option<Duration>, msg: &Message) -> Result<()> {
        let op = "send message";
        let mut fences = Vec::new();
        let packet = match msg {
            Message::Buffer { id, buffer } => {
                let WireBuffer { size, kind, name } = wire_buffer(buffer, op)?;
                Packet::Buffer {
                    id: *id,
                    size,
                    kind,
                    name,
                }
            }
            Message::Frame { id, frame } => Packet::Frame {
                id: *id,
                layout: frame.layout().clone(),
                buffers: frame
                    .buffers()
                    .iter()
                    .map(|b| wire_buffer(b, op))
                    .collect::<Result<Vec<_>>>()?,
            },
            Message::Fence { tag, fence } => Packet::Fence {
                tag: *tag,
                fences: flatten_for_send(fence, &mut fences, op)?,
            },
            Message::PoolReady { buffers, consumer } => Packet::PoolReady {
                buffers: *buffers,
                consumer: *consumer,
            },
            Message::Item {
                buffer,
                seq,
                len,
                sent_ns,
                ready,
            } => Packet::Item {
                buffer: *buffer,
                seq: *seq,
                len: *len,
                sent_ns: *sent_ns,
                fences: flatten_for_send(ready, &mut fences, op)?,
            },
            Message::Release { buffer, seq, fence } => Packet::Release {
                buffer: *buffer,
                seq: *seq,
                fences: flatten_for_send(fence, &mut fences, op)?,
            },
            Message::Bye => Packet::Bye,
            Message::Ring { capacity, fds } => {
                if fds.len() != 3 {
                    return Err(Error::invalid(
                        op,
                        self.peer.clone(),
                        format!("a ring message carries 3 fds, not {}", fds.len()),
                    ));
                }
                Packet::Ring {
                    capacity: *capacity,
                }
            }
        };
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if let Message::Buffer { buffer, .. } = msg {
            fds.push(buffer.fd());
        }
        if let Message::Ring { fds: ring, .. } = msg {
            fds.extend(ring.iter().map(|f| f.as_fd()));
        }
        if let Message::Frame { frame, .. } = msg {
            fds.extend(frame.buffers().iter().map(Buffer::fd));
        }
        for f in &fences {
            match f {
                Fence::Kernel(s) => fds.push(s.as_fd()),
                Fence::User(u) => {
                    fds.push(u.state_fd());
                    fds.push(u.wake_fd());
                }
                _ => {}
            }
        }
        debug_assert_eq!(fds.len(), packet.fd_count());
        let bytes = wire::encode(&packet);
        if bytes.len() > HEADER_LEN + MAX_BODY {
            return Err(Error::invalid(
                op,
                self.peer.clone(),
                format!(
                    "the {} message would be {} bytes, more than the {} any message may have (shorter buffer names or exporter names?)",
                    msg.type_name(),
                    bytes.len(),
                    HEADER_LEN + MAX_BODY
                ),
            ));
        }
        self.send_bytes(timeout, &bytes, &fds)?;
        self.sent.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Sends `frame` with the sender's `id` for it: its layout and each of
    /// its buffers' fds once ([`Message::Frame`]).
    pub fn send_frame(&self, id: u64, frame: &Frame) -> Result<()> {
        self.send(&Message::Frame {
            id,
            frame: frame.clone(),
        })
    }

    /// Receives the next message, waiting at most `timeout`, which must be
    /// a frame ([`Message::Frame`]): its id and the frame, checked (see the
    /// module documentation). Any other message is a
    /// [`ErrorKind::Protocol`] error naming it (and is dropped).
    pub fn recv_frame(&self, timeout: Option<Duration>) -> Result<(u64, Frame)> {
        match self.recv(timeout)? {
            Message::Frame { id, frame } => Ok((id, frame)),
            m => Err(self.hostile(format!(
                "a {} message came where a frame message was expected",
                m.type_name()
            ))),
        }
    }

    /// Sends raw bytes and fds as one message (tests use it to play a
    /// hostile peer; programs use [`Channel::send`]).
    #[doc(hidden)]
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        self.send_bytes(self.send_timeout(), bytes, fds)
    }

    fn send_bytes(
        &self,
        timeout: Option<Duration>,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let op = "send message";
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 4))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::invalid(
                op,
                self.peer.clone(),
                format!("{} fds do not fit in one message", fds.len()),
            ));
        }
        let iov = [IoSlice::new(bytes)];
        loop {
            match rustix::net::sendmsg(
                &self.fd,
                &iov,
                &mut cmsg,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {
                    let got = poll_events(self.fd.as_fd(), PollFlags::OUT, deadline)
                        .map_err(|e| Error::os(op, self.peer.clone(), e))?;
                    if got.is_empty() {
                        return Err(Error::new(
                            ErrorKind::TimedOut,
                            op,
                            self.peer.clone(),
                            format!(
                                "the peer has not read its messages for {:?}: its socket buffer stays full",
                                timeout.unwrap_or_default()
                            ),
                        )
                        .with_errno(Errno::TIMEDOUT));
                    }
                }
                Err(e @ (Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN)) => {
                    return Err(self.gone(op, e))
                }
                Err(e) => return Err(Error::os(op, self.peer.clone(), e)),
            }
        }
    }

    /// Receives the next message, waiting at most `timeout` (`None`:
    /// until one arrives or the peer goes away).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Message> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            let got = poll_events(self.fd.as_fd(), PollFlags::IN, deadline)
                .map_err(|e| Error::os("receive message", self.peer.clone(), e))?;
            if got.is_empty() {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "receive message",
                    self.peer.clone(),
                    format!("nothing arrived within {:?}", timeout.unwrap_or_default()),
                )
                .with_errno(Errno::TIMEDOUT));
            }
        }
    }

    /// Receives a message if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<Option<Message>> {
        let op = "receive message";
        #[cfg(test)]
        self.recv_calls.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; HEADER_LEN + MAX_BODY + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        // A peer that closes with messages of ours unread makes the kernel
        // report ECONNRESET once, before the messages it sent last (a bye,
        // say); those are still read, and the loss is reported after them.
        let mut reset: Option<Errno> = None;
        let res = loop {
            let mut iov = [IoSliceMut::new(&mut bytes)];
            match rustix::net::recvmsg(
                &self.fd,
                &mut iov,
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            ) {
                Ok(r) => break r,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => match reset {
                    Some(e) => return Err(self.gone(op, e)),
                    None => return Ok(None),
                },
                Err(e @ (Errno::CONNRESET | Errno::PIPE | Errno::NOTCONN)) => {
                    if reset.is_some() {
                        return Err(self.gone(op, e));
                    }
                    reset = Some(e);
                }
                Err(e) => return Err(Error::os(op, self.peer.clone(), e)),
            }
        };
        if res.bytes > 0 {
            self.taken.fetch_add(1, Ordering::AcqRel);
        }
        // Own every fd first, whatever happens next.
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        if res.bytes == 0 && fds.is_empty() {
            // End of file and an empty datagram both read as 0 bytes; only
            // a peer that has hung up is gone.
            let hup = poll_events(
                self.fd.as_fd(),
                PollFlags::IN | PollFlags::RDHUP,
                Some(Instant::now()),
            )
            .unwrap_or(PollFlags::HUP);
            if reset.is_some() || hup.intersects(PollFlags::HUP | PollFlags::RDHUP) {
                return Err(self.gone(op, reset.unwrap_or(Errno::CONNRESET)));
            }
            return Err(self.hostile("empty message (0 bytes): every message has a 16-byte header"));
        }
        if res.flags.contains(ReturnFlags::CTRUNC) && fds_exhausted(self.fd.as_fd()) {
            return Err(Error::new(
                ErrorKind::Os,
                op,
                self.peer.clone(),
                "this process is out of file descriptors (EMFILE: too many open files); the kernel dropped the fds attached to the peer's message",
            )
            .with_errno(Errno::MFILE));
        }
        if res.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS {
            return Err(self.hostile(format!(
                "more fds were attached than any message carries (at most {MAX_FDS}); the extra ones were closed"
            )));
        }
        if res.flags.contains(ReturnFlags::TRUNC) || res.bytes > HEADER_LEN + MAX_BODY {
            return Err(self.hostile(format!(
                "message longer than the {} bytes any message may have",
                HEADER_LEN + MAX_BODY
            )));
        }
        let packet = wire::decode(&bytes[..res.bytes], fds.len()).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                op,
                self.peer.clone(),
                e.cause().to_string(),
            )
            .with_errno(Errno::PROTO)
        })?;
        self.attach(packet, fds).map(Some)
    }

    fn hostile(&self, cause: impl Into<String>) -> Error {
        Error::new(
            ErrorKind::Protocol,
            "receive message",
            self.peer.clone(),
            cause,
        )
        .with_errno(Errno::PROTO)
    }

    /// A refusal of a received object, keeping the check's errno.
    fn refuse(&self, what: String, e: Error) -> Error {
        // The check's words without its errno, which the refusal carries
        // (and names once, at its end).
        let check = match e.object() {
            "" => format!("{}: {}", e.operation(), e.cause()),
            obj => format!("{}: {obj}: {}", e.operation(), e.cause()),
        };
        let mut out = self.hostile(format!("{what} refused: {check}"));
        if let Some(errno) = e.errno() {
            out = out.with_errno(errno);
        }
        out
    }

    fn attach(&self, packet: Packet, fds: Vec<OwnedFd>) -> Result<Message> {
        let mut fds: VecDeque<OwnedFd> = fds.into();
        Ok(match packet {
            Packet::Buffer {
                id,
                size,
                kind,
                name,
            } => {
                let fd = fds
                    .pop_front()
                    .ok_or_else(|| self.hostile("buffer without fd"))?;
                let what = format!("buffer {id} ('{name}', {size} bytes)");
                let buffer = self.check_buffer(fd, size, &kind, &name, &what)?;
                Message::Buffer { id, buffer }
            }
            Packet::Fence { tag, fences } => Message::Fence {
                tag,
                fence: self.take_fences(&fences, &mut fds, &format!("fence {tag}"))?,
            },
            Packet::PoolReady { buffers, consumer } => Message::PoolReady { buffers, consumer },
            Packet::Item {
                buffer,
                seq,
                len,
                sent_ns,
                fences,
            } => Message::Item {
                buffer,
                seq,
                len,
                sent_ns,
                ready: self.take_fences(
                    &fences,
                    &mut fds,
                    &format!("ready fence of item {seq}"),
                )?,
            },
            Packet::Release {
                buffer,
                seq,
                fences,
            } => Message::Release {
                buffer,
                seq,
                fence: self.take_fences(
                    &fences,
                    &mut fds,
                    &format!("release fence of buffer {buffer}"),
                )?,
            },
            Packet::Bye => {
                self.said_bye
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Message::Bye
            }
            // The decoder checked that 3 fds came with it.
            Packet::Ring { capacity } => Message::Ring {
                capacity,
                fds: std::sync::Arc::new(fds.drain(..).collect()),
            },
            Packet::Frame {
                id,
                layout,
                buffers,
            } => {
                let what = format!("frame {id} ({layout})");
                // The decoder checked that one fd came per buffer; each is
                // checked as a buffer message's is, then the whole frame.
                let mut got = Vec::with_capacity(buffers.len());
                for (i, b) in buffers.iter().enumerate() {
                    let fd = fds
                        .pop_front()
                        .ok_or_else(|| self.hostile(format!("{what}: fewer fds than buffers")))?;
                    let part = format!("{what}: buffer {i} ('{}', {} bytes)", b.name, b.size);
                    got.push(self.check_buffer(fd, b.size, &b.kind, &b.name, &part)?);
                }
                let frame = Frame::from_layout(layout, got).map_err(|e| self.refuse(what, e))?;
                Message::Frame { id, frame }
            }
        })
    }

    fn check_buffer(
        &self,
        fd: OwnedFd,
        size: u64,
        kind: &WireKind,
        name: &str,
        what: &str,
    ) -> Result<Buffer> {
        // f_type's integer type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let is_dma_buf = rustix::fs::fstatfs(&fd)
            .map(|st| st.f_type as i64 == crate::sys::dma_buf::DMA_BUF_MAGIC)
            .map_err(|e| self.refuse(what.to_string(), Error::os("fstatfs", "fd", e)))?;
        let buffer = match kind {
            WireKind::Portable => {
                if is_dma_buf {
                    return Err(self.hostile(format!(
                        "{what} refused: announced as portable (a sealed memfd) but the fd is a dma-buf"
                    )));
                }
                let mode = rustix::fs::fcntl_getfl(&fd)
                    .map_err(|e| self.refuse(what.to_string(), Error::os("fcntl", "fd", e)))?
                    & rustix::fs::OFlags::ACCMODE;
                if mode == rustix::fs::OFlags::WRONLY {
                    return Err(self.hostile(format!(
                        "{what} refused: the memfd was opened write-only (O_WRONLY), so it cannot be mapped for reading"
                    )));
                }
                Buffer::from_memfd(fd, name).map_err(|e| self.refuse(what.to_string(), e))?
            }
            _ => {
                let d = DmaBuf::from_fd(fd).map_err(|e| self.refuse(what.to_string(), e))?;
                let exporter = d.exporter().unwrap_or_default();
                let (expected, kind) = match kind {
                    WireKind::Udmabuf => ("udmabuf", BufferKind::Udmabuf),
                    WireKind::Heap(h) => (h.as_str(), BufferKind::Heap(h.clone())),
                    WireKind::Imported(e) => (e.as_str(), BufferKind::Imported(e.clone())),
                    WireKind::Portable => unreachable!("handled above"),
                };
                if exporter != expected {
                    return Err(self.hostile(format!(
                        "{what} refused: announced as {kind} but the dma-buf's exporter is '{exporter}'"
                    )));
                }
                Buffer::from_dma_buf_of_kind(d, kind)
            }
        };
        if buffer.size() != size {
            return Err(self.hostile(format!(
                "{what} refused: the message announces {size} bytes but the fd has {}",
                buffer.size()
            )));
        }
        Ok(buffer)
    }

    fn take_fences(
        &self,
        kinds: &[WireFence],
        fds: &mut VecDeque<OwnedFd>,
        what: &str,
    ) -> Result<Fence> {
        let mut out = Vec::with_capacity(kinds.len());
        for k in kinds {
            let missing = || self.hostile(format!("{what}: fewer fds than fences"));
            match k {
                WireFence::SyncFile => {
                    let fd = fds.pop_front().ok_or_else(missing)?;
                    let s = SyncFile::from_fd(fd).map_err(|e| self.refuse(what.to_string(), e))?;
                    out.push(Fence::from(s));
                }
                WireFence::User => {
                    let state = fds.pop_front().ok_or_else(missing)?;
                    let event = fds.pop_front().ok_or_else(missing)?;
                    let u = UserFence::from_fds(state, event)
                        .map_err(|e| self.refuse(what.to_string(), e))?;
                    if u.status() == FenceStatus::Active {
                        let mut v = self.received.lock().unwrap_or_else(|e| e.into_inner());
                        prune(&mut v);
                        if v.len() >= MAX_PENDING_FENCES {
                            return Err(self.hostile(format!(
                                "{what}: the peer already has {} unsignalled user fences held here, the most one channel may (MAX_PENDING_FENCES); this one was closed",
                                v.len()
                            )));
                        }
                        v.push(u.downgrade());
                    }
                    out.push(Fence::User(u));
                }
            }
        }
        Ok(match out.len() {
            0 => Fence::Signalled,
            1 => out.pop().expect("one fence"),
            _ => Fence::All(out.into()),
        })
    }

    /// Half-closes the sending side: the peer sees end of file.
    pub fn shutdown(&self) {
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
    }
}

/// How `buffer` is announced on the wire.
fn wire_buffer(buffer: &Buffer, op: &'static str) -> Result<WireBuffer> {
    let kind = match buffer.kind() {
        BufferKind::Portable => WireKind::Portable,
        BufferKind::Udmabuf => WireKind::Udmabuf,
        BufferKind::Heap(h) => WireKind::Heap(h.clone()),
        BufferKind::Imported(e) => WireKind::Imported(e.clone()),
    };
    let detail_len = match &kind {
        WireKind::Heap(s) | WireKind::Imported(s) => s.len(),
        _ => 0,
    };
    if detail_len > 255 {
        return Err(Error::invalid(
            op,
            buffer.describe(),
            "its heap or exporter name is longer than 255 bytes",
        ));
    }
    Ok(WireBuffer {
        size: buffer.size(),
        kind,
        name: buffer.name(),
    })
}

/// Forgets received fences that were dropped or have signalled.
fn prune(v: &mut Vec<WeakUserFence>) {
    v.retain(|w| {
        w.upgrade()
            .is_some_and(|f| f.status() == FenceStatus::Active)
    });
}

/// Whether this process is out of file descriptors (a dup fails with
/// EMFILE or ENFILE), which is why the kernel truncates the fds of a
/// message it receives.
fn fds_exhausted(probe: BorrowedFd<'_>) -> bool {
    matches!(
        rustix::io::fcntl_dupfd_cloexec(probe, 0),
        Err(Errno::MFILE | Errno::NFILE)
    )
}

/// The unsignalled parts of `fence`, at most [`MAX_FENCES`], with their
/// wire kinds.
fn flatten_for_send(
    fence: &Fence,
    out: &mut Vec<Fence>,
    op: &'static str,
) -> Result<Vec<WireFence>> {
    fn walk(f: &Fence, out: &mut Vec<Fence>) {
        match f {
            Fence::Signalled => {}
            Fence::All(v) => v.iter().for_each(|f| walk(f, out)),
            f => {
                if f.status() != FenceStatus::Signalled {
                    out.push(f.clone())
                }
            }
        }
    }
    let mut parts = Vec::new();
    walk(fence, &mut parts);
    if parts.len() > MAX_FENCES {
        let merged = Fence::merge(parts)?;
        parts = Vec::new();
        walk(&merged, &mut parts);
    }
    if parts.len() > MAX_FENCES {
        return Err(Error::invalid(
            op,
            fence.describe(),
            format!(
                "{} fences after merging; at most {MAX_FENCES} travel in one message",
                parts.len()
            ),
        ));
    }
    let kinds = parts
        .iter()
        .map(|f| match f {
            Fence::Kernel(_) => WireFence::SyncFile,
            _ => WireFence::User,
        })
        .collect();
    out.extend(parts);
    Ok(kinds)
}

/// The process at the other end of a [`Channel`] (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its pid (in this process's PID namespace; 0 if it has none there).
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// A listening Unix seqpacket socket at a path; removes the path when
/// dropped.
///
/// The socket file is made `0600` right after `bind` (only this user, and
/// root, may connect), and [`Listener::accept`] refuses a peer running as
/// another user: the path may sit in a shared directory such as `/tmp`.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Binds and listens at `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> Result<Listener> {
        let path = path.as_ref().to_path_buf();
        let obj = format!("socket {}", path.display());
        let addr = SocketAddrUnix::new(&path).map_err(|e| Error::os("bind", obj.clone(), e))?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::os("socket", obj.clone(), e))?;
        rustix::net::bind(&fd, &addr).map_err(|e| Error::os("bind", obj.clone(), e))?;
        let listener = Listener { fd, path };
        rustix::fs::chmod(&listener.path, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(|e| Error::os("chmod", obj.clone(), e))?;
        rustix::net::listen(&listener.fd, 64).map_err(|e| Error::os("listen", obj, e))?;
        Ok(listener)
    }

    /// The path it listens at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits at most `timeout` (`None`: forever) for the next connection;
    /// a peer running as another user is refused
    /// ([`ErrorKind::PermissionDenied`], `EACCES`).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Channel> {
        let obj = || format!("socket {}", self.path.display());
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let got = poll_events(self.fd.as_fd(), PollFlags::IN, deadline)
                .map_err(|e| Error::os("accept", obj(), e))?;
            if got.is_empty() {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "accept",
                    obj(),
                    format!("no peer connected within {:?}", timeout.unwrap_or_default()),
                )
                .with_errno(Errno::TIMEDOUT));
            }
            match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    let ch = Channel::wrap(fd);
                    let me = rustix::process::geteuid().as_raw();
                    return match ch.peer_credentials() {
                        Some(c) if c.uid == me => Ok(ch),
                        Some(c) => Err(Error::new(
                            ErrorKind::PermissionDenied,
                            "accept",
                            ch.peer().to_string(),
                            format!(
                                "the peer runs as uid {}, this process as uid {me}; refused",
                                c.uid
                            ),
                        )
                        .with_errno(Errno::ACCESS)),
                        None => Err(Error::new(
                            ErrorKind::PermissionDenied,
                            "accept",
                            ch.peer().to_string(),
                            "the kernel does not say who the peer is (SO_PEERCRED); refused",
                        )
                        .with_errno(Errno::ACCESS)),
                    };
                }
                Err(Errno::INTR | Errno::AGAIN) => continue,
                Err(e) => return Err(Error::os("accept", obj(), e)),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

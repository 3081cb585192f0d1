//! User-space fences: fences that a user-space producer signals, that can
//! be waited for in any process that holds their fds.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, ftruncate, memfd_create, MemfdFlags, SealFlags,
};

use crate::error::{Errno, Error, ErrorKind, Result};
use crate::sys::mem::AtomicWords;

use super::{monotonic_ns, poll_readable, FenceStatus};

/// Magic and version in word 0 of a fence's state page.
const MAGIC: u64 = 0x444d_4246_4e43_0001; // "DMBFNC", version 1
const W_MAGIC: usize = 0;
const W_STATE: usize = 1;
const W_TIMESTAMP: usize = 2;
const W_CONTEXT: usize = 3;
const W_SEQNO: usize = 4;
const WORDS: usize = 8;
/// Size of the state memfd.
const STATE_BYTES: u64 = 4096;

const PENDING: u64 = 0;
const SIGNALLING: u64 = 1;
const SIGNALLED: u64 = 2;
const FAILED: u64 = 3;

/// A fence signalled once by a user-space producer.
///
/// * [`UserFence::signal`] (or [`UserFence::fail`] with an errno) signals
///   it exactly once, records a CLOCK_MONOTONIC timestamp and wakes every
///   waiter, in this process or any other.
/// * Its state lives in a one-page sealed memfd and its wake-up in an
///   eventfd ([`UserFence::event_fd`]), which becomes readable at signal
///   time and stays so: it can be polled, put in an event loop, awaited
///   (feature `tokio`) and passed to another process with both fds.
/// * Fences made by a [`FenceContext`] carry increasing sequence numbers,
///   and signalling one signals every earlier unsignalled fence of the
///   context first, so a later fence having signalled always implies the
///   earlier ones have (the kernel's timeline rule).
/// * The fence made here is its *owner*: dropping the last owner handle of
///   an unsignalled fence fails it with `ECANCELED`, so no waiter waits
///   forever on a producer that went away. A fence received from another
///   process ([`UserFence::from_fds`]) cannot be signalled by the
///   receiver.
#[derive(Debug, Clone)]
pub struct UserFence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    words: AtomicWords,
    state_fd: OwnedFd,
    event: OwnedFd,
    owner: bool,
    context: Option<Arc<ContextInner>>,
}

static NEXT_CONTEXT: AtomicU64 = AtomicU64::new(1);

fn new_context_id() -> u64 {
    (u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) << 32)
        | NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed)
}

/// A timeline of user fences with increasing sequence numbers.
#[derive(Debug, Clone)]
pub struct FenceContext {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    id: u64,
    name: String,
    next: Mutex<u64>,
    pending: Mutex<Vec<Weak<Inner>>>,
}

impl FenceContext {
    /// A new timeline named `name` (for diagnostics).
    pub fn new(name: &str) -> FenceContext {
        FenceContext {
            inner: Arc::new(ContextInner {
                id: new_context_id(),
                name: name.to_string(),
                next: Mutex::new(1),
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The context's id (unique per process; the high half is the pid).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The context's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The next fence of this timeline.
    pub fn next_fence(&self) -> Result<UserFence> {
        let mut next = self.inner.next.lock().unwrap_or_else(|e| e.into_inner());
        let seqno = *next;
        let fence = UserFence::create(self.inner.id, seqno, Some(self.inner.clone()))?;
        *next += 1;
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|w| w.strong_count() > 0);
        pending.push(Arc::downgrade(&fence.inner));
        Ok(fence)
    }
}

impl UserFence {
    /// A new unsignalled fence on a timeline of its own.
    pub fn new() -> Result<UserFence> {
        UserFence::create(new_context_id(), 1, None)
    }

    fn create(context: u64, seqno: u64, ctx: Option<Arc<ContextInner>>) -> Result<UserFence> {
        let fail = |what: &'static str| move |e: Errno| Error::os("user fence", what, e);
        let state_fd = memfd_create(
            "dmabuf-fence",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(fail("state memfd"))?;
        ftruncate(&state_fd, STATE_BYTES).map_err(fail("state memfd"))?;
        fcntl_add_seals(
            &state_fd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(fail("state memfd"))?;
        let words = AtomicWords::map_sealed(&state_fd, WORDS).map_err(fail("state memfd"))?;
        let event =
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(fail("eventfd"))?;
        let w = |i| words.get(i).expect("state page has WORDS words");
        w(W_CONTEXT).store(context, Ordering::Relaxed);
        w(W_SEQNO).store(seqno, Ordering::Relaxed);
        w(W_STATE).store(PENDING, Ordering::Relaxed);
        w(W_MAGIC).store(MAGIC, Ordering::Release);
        Ok(UserFence {
            inner: Arc::new(Inner {
                words,
                state_fd,
                event,
                owner: true,
                context: ctx,
            }),
        })
    }

    /// Rebuilds a fence received from another process from its state memfd
    /// and eventfd, after checking both: the memfd is sealed against
    /// shrinking and growing and carries the fence magic, and the eventfd
    /// is an eventfd. The result can be waited for, not signalled.
    pub fn from_fds(state: OwnedFd, event: OwnedFd) -> Result<UserFence> {
        let obj = format!(
            "state fd {}, event fd {}",
            state.as_raw_fd(),
            event.as_raw_fd()
        );
        let seals = fcntl_get_seals(&state).map_err(|e| {
            Error::kernel(
                "user fence import",
                obj.clone(),
                e,
                "state fd is not a memfd",
            )
        })?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(Error::invalid(
                "user fence import",
                obj,
                "state memfd is not sealed against shrinking and growing",
            ));
        }
        let st = rustix::fs::fstat(&state)
            .map_err(|e| Error::os("user fence import", obj.clone(), e))?;
        if (st.st_size as u64) < STATE_BYTES {
            return Err(Error::invalid(
                "user fence import",
                obj,
                format!(
                    "state memfd is {} bytes, expected {STATE_BYTES}",
                    st.st_size
                ),
            ));
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", event.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if link != "anon_inode:[eventfd]" {
            return Err(Error::invalid(
                "user fence import",
                obj,
                format!("event fd is not an eventfd (it is '{link}')"),
            ));
        }
        let words = AtomicWords::map_sealed(&state, WORDS)
            .map_err(|e| Error::os("user fence import", obj.clone(), e))?;
        if words.get(W_MAGIC).map(|w| w.load(Ordering::Acquire)) != Some(MAGIC) {
            return Err(Error::invalid(
                "user fence import",
                obj,
                "state memfd does not hold a fence (bad magic)",
            ));
        }
        Ok(UserFence {
            inner: Arc::new(Inner {
                words,
                state_fd: state,
                event,
                owner: false,
                context: None,
            }),
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.inner.word(i)
    }

    /// The timeline id.
    pub fn context(&self) -> u64 {
        self.word(W_CONTEXT).load(Ordering::Relaxed)
    }

    /// The sequence number on its timeline.
    pub fn seqno(&self) -> u64 {
        self.word(W_SEQNO).load(Ordering::Relaxed)
    }

    /// Whether this handle may signal the fence (it was made here, not
    /// received from another process).
    pub fn is_owner(&self) -> bool {
        self.inner.owner
    }

    /// The status now.
    pub fn status(&self) -> FenceStatus {
        self.inner.status()
    }

    /// Whether the fence has signalled (with or without an error).
    pub fn is_signalled(&self) -> bool {
        self.status() != FenceStatus::Active
    }

    /// When it signalled (CLOCK_MONOTONIC ns), if it has.
    pub fn timestamp_ns(&self) -> Option<u64> {
        self.is_signalled()
            .then(|| self.word(W_TIMESTAMP).load(Ordering::Acquire))
    }

    /// Signals the fence successfully. Earlier fences of the same
    /// [`FenceContext`] that are still pending signal first.
    pub fn signal(&self) -> Result<()> {
        self.finish(None)
    }

    /// Signals the fence with an error (`errno`, e.g. `Errno::IO`).
    pub fn fail(&self, errno: Errno) -> Result<()> {
        self.finish(Some(errno))
    }

    fn describe(&self) -> String {
        format!("user fence {}#{}", self.context(), self.seqno())
    }

    fn finish(&self, error: Option<Errno>) -> Result<()> {
        if !self.inner.owner {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "signal fence",
                self.describe(),
                "this fence was received from another process; only its owner signals it",
            )
            .with_errno(Errno::PERM));
        }
        if let Some(ctx) = &self.inner.context {
            let me = self.seqno();
            let earlier: Vec<Arc<Inner>> = {
                let pending = ctx.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.iter().filter_map(Weak::upgrade).collect()
            };
            let mut earlier: Vec<_> = earlier
                .into_iter()
                .filter(|f| f.word(W_SEQNO).load(Ordering::Relaxed) < me)
                .collect();
            earlier.sort_by_key(|f| f.word(W_SEQNO).load(Ordering::Relaxed));
            for f in earlier {
                let _ = f.complete(error);
            }
        }
        if self.inner.complete(error) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                "signal fence",
                self.describe(),
                "already signalled",
            )
            .with_errno(Errno::INVAL))
        }
    }

    /// Waits until the fence signals, at most `timeout` (`None`: forever).
    /// A fence that signalled with an error gives a
    /// [`ErrorKind::FenceFailed`] error carrying that errno.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let status = self.status();
            if status != FenceStatus::Active {
                return status.into_result("fence wait", &self.describe());
            }
            let ready = poll_readable(self.inner.event.as_fd(), deadline)
                .map_err(|e| Error::os("fence wait", self.describe(), e))?;
            if !ready && self.status() == FenceStatus::Active {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "fence wait",
                    self.describe(),
                    format!(
                        "did not signal within {:?}",
                        timeout.unwrap_or(Duration::ZERO)
                    ),
                )
                .with_errno(Errno::TIMEDOUT));
            }
        }
    }

    /// Waits without blocking a thread, through tokio's `AsyncFd` on the
    /// eventfd.
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&self) -> Result<()> {
        let io = |e: std::io::Error| {
            Error::os("fence wait", self.describe(), crate::error::io_errno(&e))
        };
        let fd = self.inner.event.try_clone().map_err(io)?;
        crate::sys::readiness::until_readable_and(fd, || self.is_signalled())
            .await
            .map_err(io)?;
        self.status().into_result("fence wait", &self.describe())
    }

    /// The eventfd that becomes readable when the fence signals (for event
    /// loops). Never read from it: its readiness is the signal.
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.inner.event.as_fd()
    }

    /// The memfd holding the fence's state (sent with [`Self::event_fd`]
    /// to another process).
    pub fn state_fd(&self) -> BorrowedFd<'_> {
        self.inner.state_fd.as_fd()
    }

    /// Marks a fence received from a peer as failed with `errno` (the peer
    /// died or disconnected before signalling it). Does nothing if it has
    /// already signalled.
    pub fn fail_received(&self, errno: Errno) {
        let _ = self.inner.complete(Some(errno));
    }

    /// Whether two handles are the same fence object in this process.
    pub fn same_as(&self, other: &UserFence) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Inner {
    fn word(&self, i: usize) -> &AtomicU64 {
        self.words.get(i).expect("state page has WORDS words")
    }

    fn status(&self) -> FenceStatus {
        let s = self.word(W_STATE).load(Ordering::Acquire);
        match s & 0xffff_ffff {
            SIGNALLED => FenceStatus::Signalled,
            FAILED => FenceStatus::Error(Errno::from_raw_os_error((s >> 32) as i32)),
            _ => FenceStatus::Active,
        }
    }

    /// Moves the fence to its final state; false if it already was.
    fn complete(&self, error: Option<Errno>) -> bool {
        if self
            .word(W_STATE)
            .compare_exchange(PENDING, SIGNALLING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.word(W_TIMESTAMP)
            .store(monotonic_ns(), Ordering::Release);
        let fin = match error {
            None => SIGNALLED,
            Some(e) => FAILED | (u64::from(e.raw_os_error() as u32) << 32),
        };
        self.word(W_STATE).store(fin, Ordering::Release);
        // Wake every poller; nobody ever reads the counter, so the eventfd
        // stays readable from now on.
        let _ = rustix::io::write(&self.event, &1u64.to_ne_bytes());
        true
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.owner {
            // The owner went away without signalling: cancel, so that no
            // waiter (here or in another process) waits forever.
            self.complete(Some(Errno::CANCELED));
        }
    }
}

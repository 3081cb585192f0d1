//! User-space fences: fences that a user-space producer signals, that can
//! be waited for in any process that holds their fds.
//!
//! # The state page (version 2)
//!
//! One page of a sealed memfd, shared by every process that holds the
//! fence; all accesses are atomic.
//!
//! | word | bytes | field                                                      |
//! |-----:|------:|------------------------------------------------------------|
//! | 0    | 0     | magic `"DMBFNC"` and version 2                             |
//! | 1    | 8     | state: low half 0 pending, 1 signalling (high half: the signaller's pid), 2 signalled, 3 failed (high half: the errno, 1 to 4095) |
//! | 2    | 16    | CLOCK_MONOTONIC timestamp of the signal (ns)              |
//! | 3    | 24    | context id (for diagnostics)                              |
//! | 4    | 32    | sequence number (for diagnostics)                         |
//! | 5    | 40    | futex: a 32-bit counter bumped after the final state is stored (accessed 32 bits wide only) |
//!
//! The signaller stores "signalling" with its pid, the timestamp, the final
//! state, bumps the futex and wakes it (shared futex: waiters in every
//! process), then writes one byte to its wake-up pipe (for `poll` and
//! async waiters).
//!
//! # The wake-up pipe
//!
//! Receivers get the read end of a pipe; the owner alone keeps the write
//! end, a file description it never sends, with `O_NONBLOCK` set, and
//! writes it once, when the fence completes. No receiver can make that
//! write wait: it can neither clear the flag on the owner's write end nor
//! get hold of it (a receiver that opens the pipe again for writing, as
//! `/proc/PID/fd` allows, and fills it only makes the owner's write find
//! a full pipe, which is already readable). An eventfd, which every holder
//! shares whole, would let a receiver clear `O_NONBLOCK` and fill its
//! counter, and the owner's write would block until someone read it.
//!
//! The owner maps the page read-write, then seals the memfd with
//! `F_SEAL_FUTURE_WRITE`: from then on no process that receives the memfd
//! can write the page (a `write` or a writable mapping fails with
//! `EPERM`), and receivers map it read-only. The owner itself (a hostile
//! sender) can still write its page at any time, a fence made by other
//! software may lack the seal, and any process holding the pipe's read
//! end can read it (taking the readiness away) or open it again for
//! writing (making it readable), so a receiver treats both as hints: see
//! [`UserFence`] for what it does with them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, ftruncate, memfd_create, MemfdFlags, SealFlags,
};

use crate::error::{errno_name, Errno, Error, ErrorKind, Result};
use crate::sys::futex::{self, SharedWords};

use super::{fd_kind, monotonic_ns, FenceStatus};

/// Magic and version in word 0 of a fence's state page.
const MAGIC: u64 = 0x444d_4246_4e43_0002; // "DMBFNC", version 2
const W_MAGIC: usize = 0;
const W_STATE: usize = 1;
const W_TIMESTAMP: usize = 2;
const W_CONTEXT: usize = 3;
const W_SEQNO: usize = 4;
/// The futex: the first 32-bit half of word 5.
const H_FUTEX: usize = 10;
const WORDS: usize = 8;
/// Size of the state memfd.
const STATE_BYTES: u64 = 4096;

const PENDING: u64 = 0;
const SIGNALLING: u64 = 1;
const SIGNALLED: u64 = 2;
const FAILED: u64 = 3;

/// How long a fence may stay "signalling" (its signaller between its first
/// and last store) before a waiter decides the signaller died half-way and
/// treats the fence as failed with `EOWNERDEAD`, in its own process only.
pub const STUCK_SIGNALLING: Duration = Duration::from_secs(1);

/// The longest a blocking [`UserFence::wait`] sleeps before looking at the
/// fence again on its own (so a decision taken in this process, or a
/// signaller stuck half-way, is seen even if no wake-up comes).
pub const RECHECK: Duration = Duration::from_millis(50);

/// Bit 63 of a context id marks a fence received from another process:
/// contexts made here never have it, so no received fence can claim a
/// context of this process.
pub const RECEIVED_CONTEXT_BIT: u64 = 1 << 63;

/// A fence signalled once by a user-space producer.
///
/// * [`UserFence::signal`] (or [`UserFence::fail`] with an errno) signals
///   it exactly once, records a CLOCK_MONOTONIC timestamp and wakes every
///   waiter, in this process or any other.
/// * Its state lives in a one-page sealed memfd and its wake-up in a
///   shared futex on that page (blocking waits) and the read end of a
///   pipe ([`UserFence::wake_fd`], for `poll`, event loops and async
///   waits); both fds pass to another process. Signalling never waits on
///   what a receiver does with them (see "The wake-up pipe" in the module
///   documentation).
/// * Fences made by a [`FenceContext`] carry increasing sequence numbers
///   and complete in that order (the kernel's timeline rule): signalling
///   one signals every earlier unsignalled fence of the context first, and
///   failing one while earlier ones are pending does not end those — the
///   failure waits in line and takes effect once they have completed.
///   So a later fence having completed always implies the earlier ones
///   have, and a refused transfer never cancels the ones queued before it. Context ids are
///   random (not guessable, distinct across PID namespaces).
/// * The fence made here is its *owner*, in the process that made it:
///   dropping the last owner handle of an unsignalled fence fails it with
///   `ECANCELED`, so no waiter waits forever on a producer that went away.
///   A child's copy after `fork()` is not an owner (it neither signals nor
///   cancels), and a fence received from another process
///   ([`UserFence::from_fds`]) is never one.
///
/// # What a received fence trusts
///
/// The process that sent it can write the page, and any holder the
/// wake-up pipe, at any time. So a received fence:
///
/// * takes its context and sequence number once, at import, and marks the
///   context with [`RECEIVED_CONTEXT_BIT`]: it never takes part in the
///   "same timeline" logic of fences made here ([`Fence::merge`]
///   de-duplicates owned fences only);
/// * latches the first final state it sees: once this process has seen it
///   signalled or failed, a peer flipping the page back changes nothing;
/// * treats a page it cannot make sense of (bad magic, unknown state,
///   "failed" with errno 0 or above 4095) as failed with `EPROTO`, and one
///   stuck "signalling" for [`STUCK_SIGNALLING`] as failed with
///   `EOWNERDEAD`, naming the cause in the wait's error;
/// * takes the pipe's readiness as a hint: waits re-check the state,
///   never spin on a readable pipe of an unsignalled fence (written by
///   someone else, or hung up because every write end closed), and
///   re-check at least every [`RECHECK`] (blocking) or 100 ms (async) in
///   case the wake-up was lost (someone read the byte);
/// * can be failed in this process only ([`UserFence::fail_received`],
///   used when the peer that sent it goes away), leaving the shared page —
///   and every other process's view — untouched.
///
/// An owner trusts only itself: its own fence's status is its own
/// decision, whatever a peer writes into the page.
///
/// [`Fence::merge`]: super::Fence::merge
#[derive(Debug, Clone)]
pub struct UserFence {
    inner: Arc<Inner>,
}

/// A weak handle: does not keep the fence's fds open.
#[derive(Debug, Clone)]
pub(crate) struct WeakUserFence(Weak<Inner>);

impl WeakUserFence {
    pub(crate) fn upgrade(&self) -> Option<UserFence> {
        self.0.upgrade().map(|inner| UserFence { inner })
    }
}

#[derive(Debug)]
struct Inner {
    /// Read-write for the owner, read-only for everyone else.
    words: SharedWords,
    state_fd: OwnedFd,
    /// The read end of the wake-up pipe (sent to receivers, polled).
    wake: OwnedFd,
    /// Its write end, the owner's alone (`None`: received).
    wake_write: Option<OwnedFd>,
    /// The pid of the process that made the fence (`None`: received).
    owner_pid: Option<u32>,
    /// Identity, taken once (made here, or read once at import).
    context: u64,
    seqno: u64,
    timeline: Option<Arc<ContextInner>>,
    local: Mutex<Local>,
}

/// What this process has decided about the fence.
#[derive(Debug, Default)]
struct Local {
    /// The final state, once seen or decided: never changes again.
    fin: Option<Final>,
    /// When this process first saw the page say "signalling".
    signalling_since: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Final {
    status: FenceStatus,
    /// Why, when the status is a local decision or a corrupt page.
    note: Option<String>,
    timestamp_ns: u64,
}

fn new_context_id() -> u64 {
    let r = futex::random_u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        // std seeds RandomState from the OS's randomness too.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(monotonic_ns());
        h.finish()
    });
    // Never 0 and never marked as received.
    (r & !RECEIVED_CONTEXT_BIT).max(1)
}

fn my_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
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
    /// Fences failed while an earlier fence of the timeline was still
    /// pending: each completes with its errno once every earlier fence
    /// has completed (completion stays in sequence order).
    deferred: Mutex<Vec<(Weak<Inner>, Errno)>>,
}

impl ContextInner {
    /// The fences of this timeline, earlier than `seqno`, still pending.
    fn pending_before(&self, seqno: u64) -> Vec<Arc<Inner>> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut earlier: Vec<_> = pending
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|f| f.seqno < seqno && !f.is_final())
            .collect();
        earlier.sort_by_key(|f| f.seqno);
        earlier
    }

    /// Completes the deferred failures whose earlier fences are all done.
    fn settle_deferred(&self) {
        loop {
            let ready = {
                let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
                deferred.retain(|(w, _)| w.upgrade().is_some_and(|f| !f.is_final()));
                let i = deferred.iter().position(|(w, _)| {
                    w.upgrade()
                        .is_some_and(|f| self.pending_before(f.seqno).is_empty())
                });
                i.map(|i| deferred.remove(i))
            };
            match ready.and_then(|(w, e)| Some((w.upgrade()?, e))) {
                Some((f, e)) => {
                    f.complete(Some(e));
                }
                None => return,
            }
        }
    }
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
                deferred: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The context's id: random, never with [`RECEIVED_CONTEXT_BIT`] set.
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

    fn create(context: u64, seqno: u64, timeline: Option<Arc<ContextInner>>) -> Result<UserFence> {
        let fail = |what: &'static str| move |e: Errno| Error::os("user fence", what, e);
        let state_fd = memfd_create(
            "dmabuf-fence",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(fail("state memfd"))?;
        ftruncate(&state_fd, STATE_BYTES).map_err(fail("state memfd"))?;
        fcntl_add_seals(&state_fd, SealFlags::SHRINK | SealFlags::GROW)
            .map_err(fail("state memfd"))?;
        let words = SharedWords::map(&state_fd, WORDS, true).map_err(fail("state memfd"))?;
        // From now on only this mapping can write the page: no process that
        // receives the memfd can write it or map it writable.
        fcntl_add_seals(&state_fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
            .map_err(fail("state memfd"))?;
        let (wake, wake_write) = crate::sys::wake::pipe().map_err(fail("wake-up pipe"))?;
        let inner = Inner {
            words,
            state_fd,
            wake,
            wake_write: Some(wake_write),
            owner_pid: Some(my_pid()),
            context,
            seqno,
            timeline,
            local: Mutex::new(Local::default()),
        };
        for (i, v) in [
            (W_CONTEXT, context),
            (W_SEQNO, seqno),
            (W_STATE, PENDING),
            (W_MAGIC, MAGIC),
        ] {
            inner.words.store(i, v).map_err(fail("state page"))?;
        }
        Ok(UserFence {
            inner: Arc::new(inner),
        })
    }

    /// Rebuilds a fence received from another process from its state memfd
    /// and the read end of its wake-up pipe, after checking both: the
    /// memfd is a memfd sealed
    /// against shrinking and growing, at least a page long, carrying the
    /// fence magic, and the wake fd is the read end of a pipe. Its context (marked with
    /// [`RECEIVED_CONTEXT_BIT`]) and sequence number are read once, now.
    /// The result can be waited for, not signalled.
    pub fn from_fds(state: OwnedFd, wake: OwnedFd) -> Result<UserFence> {
        let obj = format!(
            "state fd {}, wake fd {}",
            state.as_raw_fd(),
            wake.as_raw_fd()
        );
        let op = "user fence import";
        let seals = fcntl_get_seals(&state)
            .map_err(|e| Error::kernel(op, obj.clone(), e, "state fd is not a memfd"))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(Error::invalid(
                op,
                obj,
                "state memfd is not sealed against shrinking and growing",
            ));
        }
        let st = rustix::fs::fstat(&state).map_err(|e| Error::os(op, obj.clone(), e))?;
        if (st.st_size as u64) < STATE_BYTES {
            return Err(Error::invalid(
                op,
                obj,
                format!(
                    "state memfd is {} bytes, expected {STATE_BYTES}",
                    st.st_size
                ),
            ));
        }
        if !crate::sys::wake::is_end(&wake, crate::sys::wake::End::Read).unwrap_or(false) {
            let kind = fd_kind(wake.as_fd());
            return Err(Error::invalid(
                op,
                obj,
                format!("wake fd is not the read end of a pipe (it is '{kind}')"),
            ));
        }
        let words = SharedWords::map(&state, WORDS, false).map_err(|e| {
            Error::kernel(
                op,
                obj.clone(),
                e,
                "cannot map the state memfd shared and readable",
            )
        })?;
        let w = |i| words.load(i).unwrap_or(0);
        if w(W_MAGIC) != MAGIC {
            return Err(Error::invalid(
                op,
                obj,
                "state memfd does not hold a version-2 fence (bad magic)",
            )
            .with_kind(ErrorKind::Protocol)
            .with_errno(Errno::PROTO));
        }
        let (context, seqno) = (w(W_CONTEXT) | RECEIVED_CONTEXT_BIT, w(W_SEQNO));
        Ok(UserFence {
            inner: Arc::new(Inner {
                words,
                state_fd: state,
                wake,
                wake_write: None,
                owner_pid: None,
                context,
                seqno,
                timeline: None,
                local: Mutex::new(Local::default()),
            }),
        })
    }

    /// The timeline id. For a received fence: the sender's claim, read at
    /// import, with [`RECEIVED_CONTEXT_BIT`] set.
    pub fn context(&self) -> u64 {
        self.inner.context
    }

    /// The sequence number on its timeline (for a received fence: the
    /// sender's claim, read at import).
    pub fn seqno(&self) -> u64 {
        self.inner.seqno
    }

    /// Whether this handle may signal the fence: it was made in this very
    /// process (not received, not inherited through `fork()`).
    pub fn is_owner(&self) -> bool {
        self.inner.is_owner()
    }

    /// The context id if this process owns the fence (the only case in
    /// which "same timeline" reasoning may use it).
    pub fn owned_context(&self) -> Option<u64> {
        self.is_owner().then_some(self.inner.context)
    }

    /// The status now (see the type's documentation for what a received
    /// fence believes).
    pub fn status(&self) -> FenceStatus {
        self.inner.status()
    }

    /// Whether the fence has signalled (with or without an error).
    pub fn is_signalled(&self) -> bool {
        self.status() != FenceStatus::Active
    }

    /// When it signalled (CLOCK_MONOTONIC ns), if it has: the timestamp
    /// read when this process first saw it signalled.
    pub fn timestamp_ns(&self) -> Option<u64> {
        self.inner.status();
        self.inner.lock().fin.as_ref().map(|f| f.timestamp_ns)
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

    /// What its page says now, in words (for the message of a wait that
    /// ran out): `pending`, `signalling (pid P)`, and so on.
    pub(crate) fn page_now(&self) -> String {
        match self.inner.read_page() {
            Page::Pending => "pending".into(),
            Page::Signalling(pid) => format!("signalling (pid {pid})"),
            Page::Signalled(_) => "signalled".into(),
            Page::Failed(e, _) => format!("failed ({})", errno_name(e)),
            Page::Corrupt(why) => format!("corrupt ({why})"),
        }
    }

    pub(crate) fn describe(&self) -> String {
        if self.inner.owner_pid.is_some() {
            format!("user fence {}#{}", self.context(), self.seqno())
        } else {
            format!(
                "received user fence {:#x}#{}",
                self.context() & !RECEIVED_CONTEXT_BIT,
                self.seqno()
            )
        }
    }

    fn finish(&self, error: Option<Errno>) -> Result<()> {
        if !self.inner.is_owner() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "signal fence",
                self.describe(),
                if self.inner.owner_pid.is_some() {
                    "this fence was made by the parent process before fork(); only it signals it"
                } else {
                    "this fence was received from another process; only its owner signals it"
                },
            )
            .with_errno(Errno::PERM));
        }
        if let Some(ctx) = &self.inner.timeline {
            let earlier = ctx.pending_before(self.seqno());
            match error {
                // A later fence signalled implies the earlier ones did.
                None => {
                    let deferred: Vec<(Weak<Inner>, Errno)> = ctx
                        .deferred
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    for f in earlier {
                        // A failure waiting in line keeps its errno.
                        let failed = deferred.iter().find_map(|(w, e)| {
                            w.upgrade().filter(|d| Arc::ptr_eq(d, &f)).map(|_| *e)
                        });
                        let _ = f.complete(failed);
                    }
                }
                // A failure does not end work still running before it: it
                // waits in line, and completes when the earlier ones have.
                Some(e) if !earlier.is_empty() => {
                    let mut deferred = ctx.deferred.lock().unwrap_or_else(|e| e.into_inner());
                    if self.inner.is_final()
                        || deferred
                            .iter()
                            .any(|(w, _)| w.upgrade().is_some_and(|f| Arc::ptr_eq(&f, &self.inner)))
                    {
                        return Err(already_signalled(self));
                    }
                    deferred.push((Arc::downgrade(&self.inner), e));
                    return Ok(());
                }
                Some(_) => {}
            }
        }
        let done = self.inner.complete(error);
        if let Some(ctx) = &self.inner.timeline {
            ctx.settle_deferred();
        }
        if done {
            Ok(())
        } else {
            Err(already_signalled(self))
        }
    }

    /// Waits until the fence signals, at most `timeout` (`None`: forever).
    /// A fence that signalled with an error gives a
    /// [`ErrorKind::FenceFailed`] error carrying that errno (with the
    /// cause named when the failure is a local decision or a corrupt
    /// page).
    ///
    /// Sleeps on the page's shared futex, at most [`RECHECK`] at a time;
    /// a peer waking the futex without signalling costs a re-check, and
    /// after a run of such wake-ups each costs a short sleep, so no peer
    /// can make it spin.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let words = &self.inner.words;
        let mut early_wakes = 0u32;
        loop {
            let seen = words.load_u32(H_FUTEX).unwrap_or(0);
            let status = self.status();
            if status != FenceStatus::Active {
                return self.result("fence wait");
            }
            let left = match deadline {
                None => RECHECK,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            if left.is_zero() {
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
            let slice = left.min(RECHECK);
            match words.futex_wait(H_FUTEX, seen, slice) {
                Err(Errno::TIMEDOUT) => early_wakes = 0,
                Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => {
                    // Woken, or the counter moved: normally the signal.
                    // Someone bumping it without signalling gets a re-check
                    // per bump at first, then a pause per bump.
                    early_wakes += 1;
                    if early_wakes > 16 {
                        std::thread::sleep(slice.min(Duration::from_millis(5)));
                    }
                }
                Err(_) => std::thread::sleep(slice.min(Duration::from_millis(5))),
            }
        }
    }

    /// `Ok` if signalled; the failure (with its cause) otherwise.
    fn result(&self, op: &'static str) -> Result<()> {
        let fin = self.inner.lock().fin.clone();
        match fin {
            Some(Final {
                status: FenceStatus::Error(e),
                note: Some(note),
                ..
            }) => Err(Error::new(
                if e == Errno::CANCELED {
                    ErrorKind::Cancelled
                } else {
                    ErrorKind::FenceFailed
                },
                op,
                self.describe(),
                note,
            )
            .with_errno(e)),
            Some(f) => f.status.into_result(op, &self.describe()),
            None => FenceStatus::Active.into_result(op, &self.describe()),
        }
    }

    /// The cause of a failure that this process decided, or that a corrupt
    /// page forced (`None` for a fence that signalled or failed normally).
    pub fn failure_note(&self) -> Option<String> {
        self.inner.status();
        self.inner.lock().fin.as_ref().and_then(|f| f.note.clone())
    }

    /// Waits without blocking a thread, through tokio's `AsyncFd` on the
    /// read end of the wake-up pipe, re-checking at least every 100 ms.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn wait_async(&self) -> Result<()> {
        let io = |e: std::io::Error| Error::io("fence wait", self.describe(), e);
        let fd = self.inner.wake.try_clone().map_err(io)?;
        crate::sys::readiness::until_readable_and(fd, || self.is_signalled())
            .await
            .map_err(io)?;
        self.result("fence wait")
    }

    /// The read end of the wake-up pipe, which becomes readable when the
    /// fence signals (for event loops). Never read from it: its readiness
    /// is the signal. Anyone holding it can make it readable (by opening
    /// the pipe again for writing) or hang it up (the owner's process
    /// gone), so readiness is a hint: check [`UserFence::status`], and do
    /// not poll it again while it is readable and the fence still active
    /// (that would spin).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.inner.wake.as_fd()
    }

    /// The memfd holding the fence's state (sent with [`Self::wake_fd`]
    /// to another process).
    pub fn state_fd(&self) -> BorrowedFd<'_> {
        self.inner.state_fd.as_fd()
    }

    /// Marks a received fence as failed with `errno` *in this process
    /// only* (the peer that sent it died or disconnected before it
    /// signalled). The shared page is not touched: other processes that
    /// hold the fence, its owner included, see no change. Does nothing if
    /// this process has already seen it signal, or on an owner (which
    /// uses [`UserFence::fail`]).
    pub fn fail_received(&self, errno: Errno) {
        if self.inner.owner_pid.is_some() {
            return;
        }
        if self.inner.status() != FenceStatus::Active {
            return;
        }
        let mut l = self.inner.lock();
        if l.fin.is_none() {
            l.fin = Some(Final {
                status: FenceStatus::Error(errno),
                note: Some(format!(
                    "failed in this process only ({}): the peer that sent it went away before it signalled",
                    errno_name(errno)
                )),
                timestamp_ns: monotonic_ns(),
            });
        }
    }

    /// Whether two handles are the same fence object in this process.
    pub fn same_as(&self, other: &UserFence) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn downgrade(&self) -> WeakUserFence {
        WeakUserFence(Arc::downgrade(&self.inner))
    }
}

/// What the page says.
enum Page {
    Pending,
    Signalling(u32),
    Signalled(u64),
    Failed(Errno, u64),
    Corrupt(String),
}

impl std::fmt::Display for UserFence {
    /// `user fence CONTEXT#SEQNO` (or `received user fence …`), as in
    /// messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The wake-up pipe's read end ([`UserFence::wake_fd`]): readable when the fence
/// signals, a hint to check [`UserFence::status`], as that method says.
impl AsFd for UserFence {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake_fd()
    }
}

impl Inner {
    fn word(&self, i: usize) -> u64 {
        self.words.load(i).unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_owner(&self) -> bool {
        self.owner_pid == Some(my_pid())
    }

    fn read_page(&self) -> Page {
        if self.word(W_MAGIC) != MAGIC {
            return Page::Corrupt("its magic word was overwritten".into());
        }
        let s = self.word(W_STATE);
        let (state, high) = (s & 0xffff_ffff, s >> 32);
        let ts = || self.word(W_TIMESTAMP);
        match (state, high) {
            (PENDING, 0) => Page::Pending,
            (SIGNALLING, pid) => Page::Signalling(pid as u32),
            (SIGNALLED, 0) => Page::Signalled(ts()),
            (FAILED, e @ 1..=4095) => Page::Failed(Errno::from_raw_os_error(e as i32), ts()),
            (FAILED, e) => Page::Corrupt(format!(
                "it says failed with errno {e}, which is outside 1..=4095"
            )),
            (s, h) => Page::Corrupt(format!("unknown state word {:#x}", (h << 32) | s)),
        }
    }

    /// The status, latching the first final state seen.
    fn status(&self) -> FenceStatus {
        let mut l = self.lock();
        if let Some(f) = &l.fin {
            return f.status;
        }
        if self.is_owner() {
            // An owner's fence is final only by its own decision (made in
            // `complete`), whatever a peer writes into the page. A child's
            // copy after fork() reads the page as a receiver would.
            return FenceStatus::Active;
        }
        let fin = match self.read_page() {
            Page::Pending => {
                l.signalling_since = None;
                return FenceStatus::Active;
            }
            Page::Signalling(pid) => {
                let since = *l.signalling_since.get_or_insert_with(Instant::now);
                if since.elapsed() < STUCK_SIGNALLING {
                    return FenceStatus::Active;
                }
                Final {
                    status: FenceStatus::Error(Errno::OWNERDEAD),
                    note: Some(format!(
                        "its signaller (pid {pid}) stopped half-way through signalling it more than {STUCK_SIGNALLING:?} ago; treated as failed in this process"
                    )),
                    timestamp_ns: monotonic_ns(),
                }
            }
            Page::Signalled(ts) => Final {
                status: FenceStatus::Signalled,
                note: None,
                timestamp_ns: ts,
            },
            Page::Failed(e, ts) => Final {
                status: FenceStatus::Error(e),
                note: None,
                timestamp_ns: ts,
            },
            Page::Corrupt(why) => Final {
                status: FenceStatus::Error(Errno::PROTO),
                note: Some(format!(
                    "its state page is corrupt ({why}); treated as failed with EPROTO"
                )),
                timestamp_ns: monotonic_ns(),
            },
        };
        let status = fin.status;
        l.fin = Some(fin);
        status
    }

    /// Whether this process has latched a final state for the fence.
    fn is_final(&self) -> bool {
        self.lock().fin.is_some()
    }

    /// The owner moves the fence to its final state; false if it already
    /// was. The decision is latched here first, then published.
    fn complete(&self, error: Option<Errno>) -> bool {
        let now = monotonic_ns();
        {
            let mut l = self.lock();
            if l.fin.is_some() {
                return false;
            }
            l.fin = Some(Final {
                status: error.map_or(FenceStatus::Signalled, FenceStatus::Error),
                note: None,
                timestamp_ns: now,
            });
        }
        let pid = u64::from(my_pid());
        let fin = match error {
            None => SIGNALLED,
            Some(e) => FAILED | (u64::from(e.raw_os_error() as u32) << 32),
        };
        // Only the owner (whose mapping is writable) gets here.
        let _ = self.words.store(W_STATE, SIGNALLING | (pid << 32));
        let _ = self.words.store(W_TIMESTAMP, now);
        let _ = self.words.store(W_STATE, fin);
        let _ = self.words.bump_and_wake(H_FUTEX);
        // Wake every poller; this library never reads the pipe, so it
        // stays readable from now on. The write end is this process's
        // alone, so the write never waits (a full pipe is readable
        // already).
        if let Some(w) = &self.wake_write {
            let _ = crate::sys::wake::wake(w);
        }
        true
    }
}

fn already_signalled(f: &UserFence) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "signal fence",
        f.describe(),
        "already signalled",
    )
    .with_errno(Errno::INVAL)
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.is_owner() {
            // The owner went away without signalling: cancel, so that no
            // waiter (here or in another process) waits forever. A copy
            // inherited through fork() is not the owner and does nothing.
            self.complete(Some(Errno::CANCELED));
            if let Some(ctx) = &self.timeline {
                ctx.settle_deferred();
            }
        }
    }
}

//! Fences: "this work is done" signals that CPU, devices and processes wait
//! for.
//!
//! # DOC: fences
//!
//! A fence signals exactly once, either successfully or with an error (an
//! errno), and records when. Two kinds exist and [`Fence`] covers both:
//!
//! * [`SyncFile`] — a kernel `dma_fence` as an fd, from
//!   `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, a V4L2 or FunctionFS transfer, or a
//!   GPU driver. It becomes readable (`POLLIN`) once signalled; its error
//!   is only visible through `SYNC_IOC_FILE_INFO`.
//! * [`UserFence`] — signalled by a user-space producer, with the same
//!   rules: one signal, optional error, timestamp, pollable wake-up fd,
//!   passable to another process. [`FenceContext`] hands out fences with
//!   increasing sequence numbers; signalling one signals the earlier ones.
//!
//! [`Fence::merge`] combines any mix into one fence that signals when all
//! have (kernel sync files are merged by the kernel, `SYNC_IOC_MERGE`;
//! user fences are kept side by side, only the latest per timeline among
//! those this process owns). With
//! the `tokio` feature, `Fence::wait_async` awaits either kind through
//! `AsyncFd` — no thread per wait.
//!
//! Waiting for a fence that signalled with an error returns an error of
//! kind [`ErrorKind::FenceFailed`] carrying the fence's errno; running out
//! of time returns [`ErrorKind::TimedOut`]. Every wait is bounded by its
//! timeout and none spins: a readable fd is a hint that is re-checked.
//!
//! A fence received from another process is never trusted: a sync file is
//! checked by kind before any ioctl ([`SyncFile::from_fd`]); a user fence
//! keeps the identity it had at import, latches the first final state it
//! sees, turns a corrupt or stuck page into a named failure, and takes no
//! part in the timeline logic of fences made here; "the sender went away"
//! is decided per process, never written into the shared page (see
//! [`UserFence`]). Status codes the kernel reports outside the errno
//! range count as `EPROTO`.

mod sync_file;
mod user;

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

pub use sync_file::{KernelFenceInfo, SyncFile, SyncFileInfo};
pub(crate) use user::WeakUserFence;
pub use user::{FenceContext, UserFence, RECEIVED_CONTEXT_BIT, RECHECK, STUCK_SIGNALLING};

use crate::error::{errno_name, Errno, Error, ErrorKind, Result};

/// Where a fence stands. Closed by nature (a fence is active or has
/// signalled, with or without an error), so not `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStatus {
    /// Not signalled yet.
    Active,
    /// Signalled successfully.
    Signalled,
    /// Signalled with this error.
    Error(Errno),
}

impl serde::Serialize for FenceStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            FenceStatus::Active => s.serialize_str("active"),
            FenceStatus::Signalled => s.serialize_str("signalled"),
            FenceStatus::Error(e) => s.serialize_str(&format!("error {}", errno_name(*e))),
        }
    }
}

impl std::fmt::Display for FenceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceStatus::Active => f.write_str("active"),
            FenceStatus::Signalled => f.write_str("signalled"),
            FenceStatus::Error(e) => write!(f, "error {}", errno_name(*e)),
        }
    }
}

impl FenceStatus {
    /// From the kernel's convention: 1 signalled, 0 active, < 0 error.
    pub fn from_kernel(status: i32) -> FenceStatus {
        match status {
            0 => FenceStatus::Active,
            s if s > 0 => FenceStatus::Signalled,
            // The kernel only reports errnos; anything else is not one.
            s if (-4095..0).contains(&s) => FenceStatus::Error(Errno::from_raw_os_error(-s)),
            _ => FenceStatus::Error(Errno::PROTO),
        }
    }

    /// `Ok` when signalled; a [`ErrorKind::FenceFailed`] error when
    /// signalled with an error; still active is reported as a timeout.
    pub(crate) fn into_result(self, op: &'static str, object: &str) -> Result<()> {
        match self {
            FenceStatus::Signalled => Ok(()),
            FenceStatus::Error(e) => Err(Error::new(
                if e == Errno::CANCELED {
                    ErrorKind::Cancelled
                } else {
                    ErrorKind::FenceFailed
                },
                op,
                object,
                format!("signalled with error {}", errno_name(e)),
            )
            .with_errno(e)),
            FenceStatus::Active => {
                Err(
                    Error::new(ErrorKind::TimedOut, op, object, "has not signalled")
                        .with_errno(Errno::TIMEDOUT),
                )
            }
        }
    }
}

/// CLOCK_MONOTONIC now, in ns (the kernel's fence timestamp clock).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Polls `fd` for readability until `deadline` (`None`: forever); true if
/// readable. Restarts on EINTR.
pub(crate) fn poll_readable(
    fd: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> rustix::io::Result<bool> {
    poll_events(fd, PollFlags::IN, deadline).map(|r| !r.is_empty())
}

/// Polls `fd` for `events` until `deadline`; the events that happened
/// (empty on timeout). Restarts on EINTR.
pub(crate) fn poll_events(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Option<Instant>,
) -> rustix::io::Result<PollFlags> {
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(rustix::time::Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                })
            }
        };
        let mut fds = [PollFd::from_borrowed_fd(fd, events)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return Ok(PollFlags::empty()),
            Ok(_) => return Ok(fds[0].revents()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What `fd` is, as `/proc/self/fd` names it (`"anon_inode:[eventfd]"`,
/// `"anon_inode:sync_file"`, `"/memfd:x (deleted)"`…); empty if unknown.
/// Used to check the kind of an fd from another process before issuing
/// any ioctl on it.
pub(crate) fn fd_kind(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a waiter on fences does next, as [`wake_fds`] found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Wakeup {
    /// Sleep on the fds pushed (and whatever else the caller polls).
    Fds,
    /// Sleep on them, but look again within [`user::RECHECK`] on its own:
    /// a user fence is active, and one can change without any fd becoming
    /// readable (a local decision, a signaller stuck half-way, a wake-up
    /// byte someone read).
    Recheck,
    /// A fence completed since the caller last looked: look again now,
    /// without sleeping (a sleep now could wait for a wake-up that already
    /// came and went, until the caller's deadline).
    Now,
}

/// The fds worth polling to learn that `fence` may have signalled: kernel
/// sync files, and user-fence wake-up pipes that are not readable yet (a
/// readable pipe of a fence still active was written or hung up by someone
/// else, and polling it would return at once, again and again); and what
/// the caller does next ([`Wakeup`]; the strongest of a set's parts).
pub(crate) fn wake_fds<'a>(fence: &'a Fence, out: &mut Vec<BorrowedFd<'a>>) -> Wakeup {
    match fence {
        Fence::Signalled => Wakeup::Now,
        Fence::Kernel(s) => {
            if !matches!(s.status(), Ok(FenceStatus::Active)) {
                return Wakeup::Now;
            }
            use std::os::fd::AsFd;
            out.push(s.as_fd());
            Wakeup::Fds
        }
        Fence::User(u) => {
            if u.status() != FenceStatus::Active {
                return Wakeup::Now;
            }
            if !poll_readable(u.wake_fd(), Some(Instant::now())).unwrap_or(true) {
                out.push(u.wake_fd());
            }
            Wakeup::Recheck
        }
        Fence::All(v) => wake_fds_all(v, out),
    }
}

/// [`wake_fds`] for a set of fences that must all complete: [`Wakeup::Now`]
/// only once every one has (the parts that have are no reason to look
/// again: the caller looks at the whole set); otherwise the strongest of
/// the parts still active.
pub(crate) fn wake_fds_all<'a>(fences: &'a [Fence], out: &mut Vec<BorrowedFd<'a>>) -> Wakeup {
    fences
        .iter()
        .map(|f| wake_fds(f, out))
        .filter(|w| *w != Wakeup::Now)
        .max()
        .unwrap_or(Wakeup::Now)
}

/// Any fence: kernel sync file, user fence, a set of them, or one known to
/// have signalled. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fence {
    /// Already signalled successfully (the empty fence).
    Signalled,
    /// A kernel fence.
    Kernel(Arc<SyncFile>),
    /// A user-space fence.
    User(UserFence),
    /// Signals when all of these have; fails with the first error.
    All(Arc<[Fence]>),
}

impl From<SyncFile> for Fence {
    fn from(f: SyncFile) -> Fence {
        Fence::Kernel(Arc::new(f))
    }
}

impl From<UserFence> for Fence {
    fn from(f: UserFence) -> Fence {
        Fence::User(f)
    }
}

impl std::fmt::Display for Fence {
    /// As in messages: [`Fence::describe`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Fence {
    /// A description of an unsignalled fence for the message of a wait
    /// that ran out: a user fence's says what its page says now.
    pub(crate) fn describe_pending(&self) -> String {
        match self {
            Fence::User(u) => format!("{}, its page {}", u.describe(), u.page_now()),
            Fence::All(v) => v
                .iter()
                .filter(|f| f.status() == FenceStatus::Active)
                .map(Fence::describe_pending)
                .collect::<Vec<_>>()
                .join("; "),
            f => f.describe(),
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Fence::Signalled => "signalled fence".into(),
            Fence::Kernel(s) => {
                use std::os::fd::{AsFd, AsRawFd};
                let fd = s.as_fd().as_raw_fd();
                match s.info() {
                    Ok(i) => match i.fences.first() {
                        Some(f) if i.fences.len() == 1 => {
                            format!("kernel fence '{}' of {} (fd {fd})", i.name, f.driver)
                        }
                        _ => format!(
                            "kernel fence '{}' (fd {fd}, {} fences)",
                            i.name,
                            i.fences.len()
                        ),
                    },
                    Err(_) => format!("kernel fence (fd {fd})"),
                }
            }
            Fence::User(u) => u.describe(),
            Fence::All(v) => format!("{} merged fences", v.len()),
        }
    }

    /// The status now. A kernel fence whose status cannot be read counts
    /// as failed with that errno.
    #[inline]
    pub fn status(&self) -> FenceStatus {
        match self {
            Fence::Signalled => FenceStatus::Signalled,
            other => other.status_slow(),
        }
    }

    fn status_slow(&self) -> FenceStatus {
        match self {
            Fence::Signalled => FenceStatus::Signalled,
            Fence::Kernel(s) => s
                .status()
                .unwrap_or_else(|e| FenceStatus::Error(e.errno().unwrap_or(Errno::IO))),
            Fence::User(u) => u.status(),
            Fence::All(v) => {
                let mut all = FenceStatus::Signalled;
                for f in v.iter() {
                    match f.status() {
                        FenceStatus::Error(e) => return FenceStatus::Error(e),
                        FenceStatus::Active => all = FenceStatus::Active,
                        FenceStatus::Signalled => {}
                    }
                }
                all
            }
        }
    }

    /// Whether it has signalled (with or without an error).
    pub fn is_signalled(&self) -> bool {
        self.status() != FenceStatus::Active
    }

    /// Waits until it signals, at most `timeout` (`None`: forever).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.wait_until(deadline)
    }

    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> Result<()> {
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match self {
            Fence::Signalled => Ok(()),
            Fence::Kernel(s) => s.wait(left()),
            Fence::User(u) => u.wait(left()),
            Fence::All(v) => {
                for f in v.iter() {
                    f.wait_until(deadline)?;
                }
                Ok(())
            }
        }
    }

    /// Awaits the fence without a thread per wait (tokio `AsyncFd` on the
    /// sync file or the user fence's wake-up pipe).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn wait_async(&self) -> Result<()> {
        match self {
            Fence::Signalled => Ok(()),
            Fence::Kernel(s) => wait_sync_file_async(s).await,
            Fence::User(u) => u.wait_async().await,
            Fence::All(v) => {
                for f in v.iter() {
                    Box::pin(f.wait_async()).await?;
                }
                Ok(())
            }
        }
    }

    /// One fence that signals when every one of `fences` has. Signalled
    /// fences are dropped, nested sets flattened, user fences that this
    /// process owns reduced to the latest of each timeline (received
    /// fences are never reduced: their claimed timeline is the peer's
    /// word), and kernel sync files merged by the kernel into one
    /// (`SYNC_IOC_MERGE`).
    pub fn merge(fences: impl IntoIterator<Item = Fence>) -> Result<Fence> {
        let mut flat = Vec::new();
        fn flatten(f: Fence, out: &mut Vec<Fence>) {
            match f {
                Fence::All(v) => v.iter().cloned().for_each(|f| flatten(f, out)),
                Fence::Signalled => {}
                f => out.push(f),
            }
        }
        fences.into_iter().for_each(|f| flatten(f, &mut flat));

        let mut kernel: Option<SyncFile> = None;
        let mut users: Vec<UserFence> = Vec::new();
        let mut failed: Vec<Fence> = Vec::new();
        for f in flat {
            match f {
                Fence::Kernel(s) => {
                    kernel = Some(match kernel {
                        None => s.try_clone()?,
                        Some(k) => k.merge(&s, "dmabuf-merge")?,
                    });
                }
                Fence::User(u) => {
                    if let FenceStatus::Error(_) = u.status() {
                        failed.push(Fence::User(u));
                        continue;
                    }
                    if u.is_signalled() {
                        continue;
                    }
                    // Only fences this process owns share a timeline it
                    // can reason about; a received fence is kept as is
                    // (once per object), whatever context it claims.
                    let same = |x: &UserFence| match (x.owned_context(), u.owned_context()) {
                        (Some(a), Some(b)) => a == b,
                        _ => x.same_as(&u),
                    };
                    match users.iter_mut().find(|x| same(x)) {
                        Some(x) if x.seqno() >= u.seqno() => {}
                        Some(x) => *x = u,
                        None => users.push(u),
                    }
                }
                Fence::Signalled | Fence::All(_) => unreachable!("flattened above"),
            }
        }
        let mut out: Vec<Fence> = failed;
        out.extend(kernel.map(Fence::from));
        out.extend(users.into_iter().map(Fence::User));
        Ok(match out.len() {
            0 => Fence::Signalled,
            1 => out.pop().expect("one element"),
            _ => Fence::All(out.into()),
        })
    }
}

#[cfg(feature = "tokio")]
async fn wait_sync_file_async(s: &SyncFile) -> Result<()> {
    use std::os::fd::AsFd;
    let io = |e: std::io::Error| Error::io("sync-file wait", "sync file", e);
    let fd = s.as_fd().try_clone_to_owned().map_err(io)?;
    crate::sys::readiness::until_readable_and(fd, || {
        s.status()
            .map(|st| st != FenceStatus::Active)
            .unwrap_or(true)
    })
    .await
    .map_err(io)?;
    s.status()?.into_result("sync-file wait", "sync file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(u: &UserFence) -> Fence {
        Fence::User(
            UserFence::from_fds(
                u.state_fd().try_clone_to_owned().unwrap(),
                u.wake_fd().try_clone_to_owned().unwrap(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_fence_that_completed_since_the_caller_looked_means_look_again_now() {
        // The race behind a stall until the deadline: a waiter saw the
        // fence active, the fence signalled, then the waiter asked what to
        // sleep on. "No fd and no re-check" made it sleep on its other fds
        // (a socket with nothing coming) until its deadline.
        let u = UserFence::new().unwrap();
        let f = received(&u);
        let mut fds = Vec::new();
        assert_eq!(wake_fds(&f, &mut fds), Wakeup::Recheck);
        assert_eq!(fds.len(), 1);
        u.signal().unwrap();
        let mut fds = Vec::new();
        assert_eq!(wake_fds(&f, &mut fds), Wakeup::Now);
        assert!(fds.is_empty());
        // In a set, a part done while another is active is no reason to
        // look again (that would spin); every part done is.
        let pending = UserFence::new().unwrap();
        let set = [f.clone(), received(&pending)];
        let mut fds = Vec::new();
        assert_eq!(wake_fds_all(&set, &mut fds), Wakeup::Recheck);
        assert_eq!(fds.len(), 1);
        let all = Fence::All(set.to_vec().into());
        assert_eq!(wake_fds(&all, &mut Vec::new()), Wakeup::Recheck);
        pending.signal().unwrap();
        assert_eq!(wake_fds_all(&set, &mut Vec::new()), Wakeup::Now);
        assert_eq!(wake_fds(&all, &mut Vec::new()), Wakeup::Now);
        assert_eq!(wake_fds_all(&[], &mut Vec::new()), Wakeup::Now);
        assert_eq!(wake_fds(&Fence::Signalled, &mut Vec::new()), Wakeup::Now);
    }
}

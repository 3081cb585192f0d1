//! The reservation: which fences and CPU windows a buffer's next user must
//! wait for.
//!
//! # DOC: implicit synchronisation
//!
//! Every [`Buffer`](crate::Buffer) has a reservation, like the kernel's
//! `dma_resv`: a set of *read* fences and *write* fences of work that is
//! using the buffer, plus the CPU windows open on it in this process. The
//! rules are those of the kernel (`uapi.md` §1):
//!
//! * **reading** waits for the writers: a read window, a read idle-wait
//!   (`POLLIN`) and a fence exported for reading cover the write fences;
//! * **writing** waits for everyone: a write window, a write idle-wait
//!   (`POLLOUT`) and a fence exported for writing cover read and write
//!   fences;
//! * a device transfer that **writes** the buffer waits for every open CPU
//!   window on it to close; one that only reads it waits for CPU writers;
//! * a wait covers *completion*, not success: a fence that signalled with
//!   an error no longer holds anyone up (as in the kernel); its error is
//!   reported to whoever waits on that fence itself (the transfer's
//!   caller);
//! * a later user fence of a timeline replaces the earlier ones of that
//!   timeline, which it implies (`dma_resv_add_fence` does the same).
//!
//! For kernel dma-bufs the kernel keeps its own reservation (fences added
//! by drivers and by `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`); the library keeps
//! this one for user fences and CPU windows, and every wait and export
//! combines the two. For portable buffers this reservation is all there
//! is, and it follows the same rules.
//!
//! A fence that has signalled *with an error* is done, like a successful
//! one: it is pruned, and the buffer's next user goes ahead (as the
//! kernel's `dma_resv` does). Its error belongs to whoever waits for that
//! fence itself — otherwise one failed transfer would make every later
//! CPU window on the buffer fail.
//!
//! Deadlock freedom between CPU windows and device transfers comes from
//! one order: a CPU window waits for the fences in its way *before* it is
//! registered as open, and a transfer registers its fence before it waits
//! for registered CPU windows. So a registered window never waits for a
//! fence, and a window and a transfer never wait for each other.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::buffer::Access;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::Fence;

/// How a fence uses the buffer it is added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    /// The work reads the buffer (readers may share it).
    Read,
    /// The work writes the buffer (exclusive).
    Write,
}

/// A buffer's fences and CPU windows. See the module documentation.
#[derive(Debug, Default)]
pub struct Reservation {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    fences: Vec<(Fence, Usage)>,
    cpu_readers: usize,
    cpu_writers: usize,
    /// Threads in `wait_cpu_windows` (closing a window wakes only if some).
    waiters: usize,
}

impl Reservation {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `fence` for `usage`. Fences that have signalled (successfully
    /// or not: like the kernel's implicit sync, a wait covers completion,
    /// not success) are pruned as they are found. As the kernel's
    /// `dma_resv_add_fence` does, a user fence replaces the earlier fences
    /// of its own timeline (same context, lower sequence number): a later
    /// fence of a timeline signals after the earlier ones, so waiting for
    /// it covers them.
    pub fn add(&self, fence: Fence, usage: Usage) {
        let mut st = self.lock();
        st.fences.retain(|(f, _)| !f.is_signalled());
        if let Fence::User(new) = &fence {
            st.fences.retain(|(f, _)| match f {
                Fence::User(old) => old.context() != new.context() || old.seqno() >= new.seqno(),
                _ => true,
            });
        }
        if !fence.is_signalled() {
            st.fences.push((fence, usage));
        }
    }

    /// The unsignalled fences an access must wait for: the writers for
    /// [`Access::Read`], everyone for writes.
    pub fn fences_for(&self, access: Access) -> Vec<Fence> {
        let mut st = self.lock();
        st.fences.retain(|(f, _)| !f.is_signalled());
        st.fences
            .iter()
            .filter(|(_, u)| access.writes() || *u == Usage::Write)
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Number of fences (signalled ones pruned first).
    pub fn len(&self) -> usize {
        self.fences_for(Access::ReadWrite).len()
    }

    /// Whether no unsignalled fence is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the fences `access` must wait for, until `deadline`. A
    /// fence still active at the deadline gives a [`ErrorKind::Busy`]
    /// error naming it; fences that signal with an error count as done.
    pub fn wait(&self, access: Access, deadline: Option<Instant>, object: &str) -> Result<()> {
        self.wait_excluding(access, deadline, object, &|_| false)
    }

    /// [`Reservation::wait`], skipping the fences `skip` says yes to (an
    /// endpoint skips its own, which its queue already orders).
    pub(crate) fn wait_excluding(
        &self,
        access: Access,
        deadline: Option<Instant>,
        object: &str,
        skip: &dyn Fn(&Fence) -> bool,
    ) -> Result<()> {
        for f in self.fences_for(access) {
            if skip(&f) {
                continue;
            }
            match f.wait_until(deadline) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::FenceFailed | ErrorKind::Cancelled) => {}
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        "wait for buffer",
                        object,
                        format!("{} has not signalled in time", f.describe()),
                    )
                    .with_errno(Errno::BUSY))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// CPU windows open now: (readers, writers).
    pub fn cpu_windows(&self) -> (usize, usize) {
        let st = self.lock();
        (st.cpu_readers, st.cpu_writers)
    }

    pub(crate) fn cpu_begin(&self, access: Access) {
        let mut st = self.lock();
        if access.writes() {
            st.cpu_writers += 1;
        } else {
            st.cpu_readers += 1;
        }
    }

    pub(crate) fn cpu_end(&self, access: Access) {
        let mut st = self.lock();
        if access.writes() {
            st.cpu_writers = st.cpu_writers.saturating_sub(1);
        } else {
            st.cpu_readers = st.cpu_readers.saturating_sub(1);
        }
        let waiters = st.waiters;
        drop(st);
        // A notify is a system call even with no waiter: skip it then (a
        // waiter counts itself under the lock before it sleeps).
        if waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Waits until no CPU window conflicts with a device access of kind
    /// `device` (a device write waits for all windows, a device read for
    /// CPU writers), until `deadline`. False on timeout.
    pub fn wait_cpu_windows(&self, device: Access, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        loop {
            let busy = st.cpu_writers > 0 || (device.writes() && st.cpu_readers > 0);
            if !busy {
                return true;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return false;
            }
            st.waiters += 1;
            st = match left {
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    self.changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            st.waiters -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::{FenceContext, UserFence};

    #[test]
    fn closing_a_window_wakes_a_waiter_and_only_then_notifies() {
        let res = std::sync::Arc::new(Reservation::default());
        res.cpu_begin(Access::Read);
        let r = res.clone();
        let t = std::thread::spawn(move || r.wait_cpu_windows(Access::Write, None));
        while res.lock().waiters == 0 {
            std::thread::yield_now();
        }
        res.cpu_end(Access::Read);
        assert!(t.join().unwrap());
        assert_eq!(res.lock().waiters, 0);
        // A wait that times out leaves no waiter counted.
        res.cpu_begin(Access::Write);
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(!res.wait_cpu_windows(Access::Read, Some(soon)));
        assert_eq!(res.lock().waiters, 0);
        res.cpu_end(Access::Write);
        assert!(res.wait_cpu_windows(Access::Write, Some(soon)));
    }

    #[test]
    fn a_later_fence_of_a_timeline_replaces_earlier_ones() {
        let res = Reservation::default();
        let ctx = FenceContext::new("test");
        let first = ctx.next_fence().unwrap();
        res.add(Fence::User(first.clone()), Usage::Write);
        let second = ctx.next_fence().unwrap();
        res.add(Fence::User(second.clone()), Usage::Write);
        assert_eq!(res.len(), 1);
        assert!(!first.is_signalled());
        second.signal().unwrap();
        res.wait(Access::Read, None, "buffer").unwrap();
        assert!(res.is_empty());
    }

    #[test]
    fn a_failed_fence_counts_as_done_for_waiters() {
        let res = Reservation::default();
        let f = UserFence::new().unwrap();
        res.add(Fence::User(f.clone()), Usage::Write);
        f.fail(Errno::CANCELED).unwrap();
        res.wait(Access::Read, None, "buffer").unwrap();
        assert!(res.is_empty());
    }

    #[test]
    fn fences_of_other_timelines_are_kept() {
        let res = Reservation::default();
        let a = FenceContext::new("a").next_fence().unwrap();
        let b = UserFence::new().unwrap();
        res.add(Fence::User(a.clone()), Usage::Write);
        res.add(Fence::User(b.clone()), Usage::Read);
        assert_eq!(res.len(), 2);
        assert_eq!(res.fences_for(Access::Read).len(), 1);
        a.signal().unwrap();
        b.signal().unwrap();
        assert!(res.is_empty());
    }
}

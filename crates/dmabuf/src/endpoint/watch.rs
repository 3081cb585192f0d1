//! The fence watcher of a kernel DMABUF endpoint: turns the kernel's
//! transfer fences into fences the library owns, and lets go of the
//! kernel's fences of an attachment before that attachment goes.
//!
//! # DOC: why the kernel's fence never reaches the caller
//!
//! On Linux 6.12 a FunctionFS or IIO DMABUF transfer's `dma_fence` keeps
//! its spinlock in the attachment (`dma_fence_init(..., &priv->lock,
//! ...)`), which `..._DMABUF_DETACH`, or closing any file of the endpoint,
//! frees once the attachment's transfers are done. A sync file of such a
//! fence outlives it: afterwards `SYNC_IOC_FILE_INFO` on it, or closing it
//! after it was ever polled (`sync_file_release` →
//! `dma_fence_remove_callback`), takes the freed lock and the CPU spins for
//! ever with interrupts off (docs/kernel-findings.md). So:
//!
//! * every zero-copy transfer gets a [`UserFence`] of its attachment's
//!   timeline, published in the buffer's reservation before the enqueue
//!   ioctl (as the transfer's fence, for its whole life) and returned to
//!   the caller;
//! * the kernel's fence (a sync file exported right after the ioctl) is
//!   held by the endpoint only; one watcher thread per endpoint polls
//!   those sync files together with a wake-up eventfd, and as soon as one
//!   is readable reads its status (`SYNC_IOC_FILE_INFO` without the
//!   per-fence array: only the top-level fence's lock is taken), closes it
//!   and settles the user fence with that status — all while the
//!   attachment is alive, because an attachment only goes through
//!   [`Watcher::withdraw`] first;
//! * [`Watcher::withdraw`] takes an attachment's sync files away from the
//!   watcher and waits until the watcher's current `poll` (the only place
//!   it touches them without the lock) has returned; the endpoint then
//!   reads their status and closes them *before* it detaches, and fails
//!   the user fences of transfers still pending with `ECANCELED` after.
//!
//! Nothing of the library queries or closes a kernel fence of an
//! attachment after the attachment is gone. The kernel's own reservation
//! of the dma-buf keeps the kernel's fence, so other drivers, other
//! processes, `DMA_BUF_IOCTL_SYNC` and `poll` on the dma-buf still order
//! against the device's real progress (those paths test the fence's
//! signalled bit before taking its lock, and a fence whose lock can be
//! freed has signalled: each queued transfer holds a reference on its
//! attachment until its fence has signalled).

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::event::{eventfd, EventfdFlags, PollFd, PollFlags};

use crate::error::{Errno, Error, Result};
use crate::fence::{FenceStatus, SyncFile, UserFence};

/// One transfer being watched: the attachment it belongs to, the kernel's
/// fence (only the endpoint holds it) and the fence the caller has.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) attachment: u64,
    pub(crate) kernel: Arc<SyncFile>,
    pub(crate) fence: UserFence,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Watched>,
    /// The watcher is in `poll` on a snapshot taken at `epoch`.
    polling: bool,
    epoch: u64,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    wake: OwnedFd,
    /// Set when a watched fence failed with `ESHUTDOWN` (the controller
    /// disabled the endpoint: host gone or UDC unbound).
    shutdown_seen: Arc<AtomicBool>,
}

/// The watcher thread of one endpoint. See the module documentation.
#[derive(Debug)]
pub(crate) struct Watcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the watcher of the endpoint named `name`; a fence failing
    /// with `ESHUTDOWN` sets `shutdown_seen`.
    pub(crate) fn start(name: &str, shutdown_seen: Arc<AtomicBool>) -> Result<Watcher> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::os("fence watcher", name, e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake,
            shutdown_seen,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dmabuf-fences {name}"))
            .spawn(move || s.run())
            .map_err(|e| {
                Error::os(
                    "fence watcher",
                    name,
                    Errno::from_io_error(&e).unwrap_or(Errno::AGAIN),
                )
            })?;
        Ok(Watcher {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches `kernel` for the transfer whose caller has `fence`.
    pub(crate) fn add(&self, attachment: u64, kernel: SyncFile, fence: UserFence) {
        self.shared.lock().entries.push(Watched {
            attachment,
            kernel: Arc::new(kernel),
            fence,
        });
        self.shared.wake();
    }

    /// Takes every watched transfer of `attachment` (all of them with
    /// `None`) away from the watcher, once the watcher no longer polls
    /// their sync files: the caller then holds the only handles to them.
    pub(crate) fn withdraw(&self, attachment: Option<u64>) -> Vec<Watched> {
        let mut st = self.shared.lock();
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.entries)
            .into_iter()
            .partition(|w| attachment.is_none_or(|a| w.attachment == a));
        st.entries = rest;
        if mine.is_empty() {
            return mine;
        }
        let epoch = st.epoch;
        self.shared.wake();
        // A poll started after the withdrawal (a later epoch) does not
        // hold these sync files.
        while st.polling && st.epoch == epoch {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        mine
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let left = self.withdraw(None);
        for w in left {
            settle(w, true);
        }
        self.shared.lock().shutdown = true;
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            // The thread never blocks but in `poll` with the wake-up fd.
            let _ = t.join();
        }
    }
}

/// Settles `w`'s user fence from its kernel fence's status, then closes
/// the kernel fence (the attachment must still be alive). A kernel fence
/// still active is left to the caller when `cancel` is false (returned),
/// and failed with `ECANCELED` when it is true.
pub(crate) fn settle(w: Watched, cancel: bool) -> Option<UserFence> {
    let status = w
        .kernel
        .status()
        .unwrap_or_else(|e| FenceStatus::Error(e.errno().unwrap_or(Errno::IO)));
    drop(w.kernel);
    match status {
        FenceStatus::Signalled => {
            let _ = w.fence.signal();
            None
        }
        FenceStatus::Error(e) => {
            let _ = w.fence.fail(e);
            None
        }
        FenceStatus::Active if cancel => {
            let _ = w.fence.fail(Errno::CANCELED);
            None
        }
        FenceStatus::Active => Some(w.fence),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.changed.notify_all();
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    fn run(&self) {
        loop {
            let snapshot: Vec<Arc<SyncFile>> = {
                let mut st = self.lock();
                if st.shutdown {
                    return;
                }
                st.polling = true;
                st.epoch += 1;
                st.entries.iter().map(|w| w.kernel.clone()).collect()
            };
            let ready: HashSet<i32> = {
                let mut fds = Vec::with_capacity(snapshot.len() + 1);
                fds.push(PollFd::new(&self.wake, PollFlags::IN));
                fds.extend(snapshot.iter().map(|s| PollFd::new(&**s, PollFlags::IN)));
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => fds[1..]
                        .iter()
                        .zip(&snapshot)
                        .filter(|(p, _)| !p.revents().is_empty())
                        .map(|(_, s)| s.as_fd().as_raw_fd())
                        .collect(),
                    // EINTR, or no memory for the poll table: look again.
                    Err(_) => HashSet::new(),
                }
            };
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.wake, &mut b);
            let mut st = self.lock();
            // The snapshot's handles go before `polling` is cleared: from
            // then on a withdrawn sync file has no handle here.
            drop(snapshot);
            let (mut done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.entries)
                .into_iter()
                .partition(|w| ready.contains(&w.kernel.as_fd().as_raw_fd()));
            st.entries = rest;
            // In timeline order, so that no fence signals an earlier one
            // of its attachment before that one's own status is read.
            done.sort_by_key(|w| w.fence.seqno());
            for w in done {
                let status = w.kernel.status();
                if let Ok(FenceStatus::Error(Errno::SHUTDOWN)) = status {
                    self.shutdown_seen.store(true, Ordering::SeqCst);
                }
                if let Ok(FenceStatus::Active) = status {
                    st.entries.push(w);
                    continue;
                }
                // Under the lock: a withdrawal waits for this.
                let _ = settle(w, false);
            }
            st.polling = false;
            drop(st);
            self.changed.notify_all();
        }
    }
}

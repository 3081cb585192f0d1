//! The reservation: which fences and CPU windows a buffer's next user must
//! wait for.
//!
//! # DOC: implicit synchronisation
//!
//! Every [`Buffer`](crate::Buffer) has a reservation, like the kernel's
//! `dma_resv`: a set of *read* fences and *write* fences of work that is
//! using the buffer, plus the CPU windows open on it in this process. The
//! rules are those of the kernel's `dma_resv`:
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
//! * **replacement** follows `dma_resv_add_fence`: a new fence replaces an
//!   older one only if both are of the same timeline (context), the old
//!   one is earlier on it (lower sequence number) and the old one's usage
//!   is not stronger (a read fence never replaces a write fence: readers
//!   must still wait for that write). In addition, only fences this
//!   process owns ([`UserFence::is_owner`](crate::UserFence::is_owner))
//!   replace or are replaced: a fence received from another process names
//!   a context the peer chose, and must never make a local fence
//!   disappear.
//!
//! For kernel dma-bufs the kernel keeps its own reservation (fences added
//! by drivers and by `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`); the library keeps
//! this one for user fences, CPU windows and the fences of the transfers
//! its endpoints queued (so that a CPU window of this process sees a
//! transfer in flight before the kernel does), and every wait and export
//! combines the two. For a FunctionFS or IIO zero-copy transfer this
//! reservation holds the library's own fence of the transfer, never the
//! kernel's sync file (on 6.12 that fence's lock lives in the endpoint's
//! attachment, which detach frees: see `endpoint::watch`); the kernel's
//! fence stays in the dma-buf's own reservation, where `poll`, `SYNC` and
//! other drivers find it. For portable buffers this
//! reservation is all there is, and it follows the same rules.
//!
//! A fence that has signalled *with an error* is done, like a successful
//! one: it is pruned, and the buffer's next user goes ahead (as the
//! kernel's `dma_resv` does). Its error belongs to whoever waits for that
//! fence itself — otherwise one failed transfer would make every later
//! CPU window on the buffer fail.
//!
//! # DOC: checking and publishing is one step
//!
//! The kernel holds a buffer's `dma_resv` lock across "check for
//! conflicts" and "add my fence". Here the reservation's lock does the
//! same, for both kinds of users:
//!
//! * a **device transfer** ([`Reservation::begin_device`]) takes the lock,
//!   and if a conflicting CPU window is open it waits on the
//!   reservation's condition variable (which releases the lock) until the
//!   windows close or the deadline passes; then, still under the lock, it
//!   looks for conflicting unsignalled fences (and, for a dma-buf, asks
//!   `poll` with a zero timeout whether the kernel's fences are done). If
//!   there is one, it releases the lock, waits for that fence until the
//!   deadline, and starts over. If there is none, it adds its own fence
//!   **before releasing the lock**. Kernel endpoints publish the
//!   transfer's own (library) fence there, then issue their ioctl, and
//!   settle that fence when the kernel's fence signals, so a window never
//!   sees a gap;
//! * a **CPU window** (`Mapping::window`) takes the lock, looks for
//!   conflicting unsignalled fences (device fences included); if there is
//!   one it releases the lock, waits (until its deadline) and starts
//!   over; if there is none it registers itself as open before releasing
//!   the lock.
//!
//! So between a transfer's check and its publication no window can
//! register, and between a window's check and its registration no
//! transfer can publish: one of them always sees the other.
//!
//! The open windows are counted in one atomic word with a flag that says
//! "the fence list may not be empty", raised under the lock before a
//! fence is added and lowered under it only when the list is empty.
//! While the flag is down a window registers with one compare-and-swap of
//! that word and no lock (there is no fence to check), and closes with
//! another; a transfer publishes by raising the flag with one atomic
//! operation that also returns the windows open at that moment. A window
//! that registered first is in that answer, and the transfer waits for
//! it; a window that comes after finds the flag and takes the lock, as
//! above. The rule is the same; a window costs no lock while no fence is
//! there.
//!
//! A buffer's reservation keeps that word in the bits its memory object
//! keeps for it (`sys::object`), beside the object's claims: a window on
//! the whole buffer claims its bytes and registers in one
//! compare-and-swap of the word, under the same condition (no fence
//! flag), and closes with one. A reservation made on its own
//! ([`Reservation::default`]) has a word of its own.
//!
//! **Deadlock freedom.** Nobody waits for anything while holding the
//! lock except on the condition variable, which releases it. A
//! registered window never waits for a fence of this reservation (it
//! waited before registering); after registering it only waits, bounded
//! by its deadline, for the *kernel's* fences in `START` (see `mapping`),
//! which a transfer of this process can only have created after it
//! published its fence here — and then the window would have seen that
//! fence and not registered. A transfer waits for registered windows but
//! holds no window and no published fence while it waits. So a window
//! and a transfer never wait for each other, and every wait has the
//! caller's deadline.
//!
//! # DOC: non-coherent exporters
//!
//! `DMA_BUF_IOCTL_SYNC` has no range: `START` with `READ` lets the
//! exporter invalidate the CPU caches of the *whole* buffer (and `END`
//! with `READ` may too, on some architectures), which destroys bytes that
//! a write window elsewhere in the buffer has not flushed yet. So, on a
//! dma-buf, a window that reads (read or read-write) is refused with a
//! [`ErrorKind::Busy`] error while a window that writes is open, and a
//! window that writes is refused while one that reads is open, even on
//! disjoint ranges. Disjoint write-only windows may coexist (`END|WRITE`
//! only cleans). Portable buffers have no cache maintenance: their
//! disjoint windows may coexist in any mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::access::{Access, Usage};
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::Fence;
use crate::sys::object::{MemoryObject, RESERVED};

/// A buffer's fences and CPU windows. See the module documentation.
#[derive(Debug, Default)]
pub struct Reservation {
    state: Mutex<State>,
    changed: Condvar,
    /// The open CPU windows and two flags, in one word (see [`Windows`]).
    word: Word,
}

/// Where a reservation's word lives.
#[derive(Debug)]
enum Word {
    /// Its own (a reservation made on its own).
    Own(AtomicU64),
    /// In the bits its buffer's memory object keeps for it
    /// ([`RESERVED`]): a window on the whole buffer then takes its claim
    /// of the bytes and counts itself open in one step (see `mapping`).
    Object(Arc<MemoryObject>),
}

impl Default for Word {
    fn default() -> Word {
        Word::Own(AtomicU64::new(0))
    }
}

#[derive(Debug, Default)]
struct State {
    fences: Vec<(Fence, Usage)>,
    /// Device accesses waiting for windows to close ([`Windows::WAITERS`]
    /// is raised while some do).
    waiters: usize,
}

/// The reservation's atomic word: the CPU windows open now, in three
/// counts of [`Windows::BITS`] bits (read-only windows, windows that
/// write, and of those the read-write ones) from bit [`Windows::BASE`]
/// on, and two flags:
///
/// * [`Windows::FENCES`] is raised, under the lock, before a fence is
///   added, and lowered, under the lock, only when the fence list is
///   empty: while it is down there is no fence to check, so a window
///   registers with one compare-and-swap of the word and no lock;
/// * [`Windows::WAITERS`] is raised while a device access waits for
///   windows to close: only then does closing a window take the lock to
///   wake it.
///
/// A device access publishes its fence by raising `FENCES` with one
/// atomic operation that also returns the windows open at that moment:
/// a window registered before it is seen there (and the access waits for
/// it); a window registering after it finds the flag and takes the lock,
/// which the access holds until its fence is in the list. That is the
/// "one step" of the module documentation, without a lock per window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Windows(u64);

impl Windows {
    /// Bits of each count.
    const BITS: u32 = 14;
    /// The most windows of one kind open at once.
    const MAX: u64 = (1 << Self::BITS) - 1;
    /// The counts and flags start here, in the bits a memory object keeps
    /// for its owner ([`RESERVED`]; checked below).
    const BASE: u32 = 16;
    const READERS: u32 = Self::BASE;
    const WRITERS: u32 = Self::BASE + Self::BITS;
    const READ_WRITERS: u32 = Self::BASE + 2 * Self::BITS;
    const FENCES: u64 = 1 << (Self::BASE + 3 * Self::BITS);
    const WAITERS: u64 = Self::FENCES << 1;
    /// Every bit the reservation uses.
    const ALL: u64 = (Self::WAITERS << 1) - (1 << Self::BASE);

    fn count(self, shift: u32) -> usize {
        ((self.0 >> shift) & Self::MAX) as usize
    }

    /// Open read-only windows.
    fn readers(self) -> usize {
        self.count(Self::READERS)
    }

    /// Open windows that write (write-only and read-write).
    fn writers(self) -> usize {
        self.count(Self::WRITERS)
    }

    /// Of [`writers`](Self::writers), the read-write ones (they read too).
    fn read_writers(self) -> usize {
        self.count(Self::READ_WRITERS)
    }

    fn has(self, flag: u64) -> bool {
        self.0 & flag != 0
    }

    /// Whether a CPU window blocks a device access of kind `device` (a
    /// device write waits for every window, a device read for writers).
    fn block(self, device: Access) -> bool {
        self.writers() > 0 || (device.writes() && self.readers() > 0)
    }

    /// The counts each access changes.
    fn shifts(access: Access) -> &'static [u32] {
        match access {
            Access::Read => &[Self::READERS],
            Access::Write => &[Self::WRITERS],
            Access::ReadWrite => &[Self::WRITERS, Self::READ_WRITERS],
        }
    }

    /// With one more window of `access`; `None` if a count is full.
    fn opened(self, access: Access) -> Option<Windows> {
        let mut w = self.0;
        for &s in Self::shifts(access) {
            if (w >> s) & Self::MAX == Self::MAX {
                return None;
            }
            w += 1 << s;
        }
        Some(Windows(w))
    }

    /// With one window of `access` fewer (a count at zero stays there).
    fn closed(self, access: Access) -> Windows {
        let mut w = self.0;
        for &s in Self::shifts(access) {
            if (w >> s) & Self::MAX > 0 {
                w -= 1 << s;
            }
        }
        Windows(w)
    }
}

// The reservation's bits are the memory object's reserved bits, so that
// claims and windows never change each other's.
const _: () = assert!(Windows::ALL & !RESERVED == 0);

impl State {
    fn prune(&mut self) {
        self.fences.retain(|(f, _)| !f.is_signalled());
    }

    /// The first unsignalled fence `access` must wait for that `skip`
    /// does not skip.
    fn conflicting_fence(
        &mut self,
        access: Access,
        skip: &dyn Fn(&Fence) -> bool,
    ) -> Option<Fence> {
        self.prune();
        self.fences
            .iter()
            .filter(|(_, u)| access.waits_for(*u))
            .map(|(f, _)| f)
            .find(|f| !skip(f))
            .cloned()
    }

    fn add(&mut self, fence: Fence, usage: Usage) {
        self.prune();
        if fence.is_signalled() {
            return;
        }
        if let Fence::User(new) = &fence {
            if new.is_owner() {
                // `dma_resv_add_fence`: replace an earlier fence of the
                // same timeline unless its usage is stronger. Both must be
                // ours: a peer's fence may name any context.
                self.fences.retain(|(f, old_usage)| match f {
                    Fence::User(old) if old.is_owner() && old.context() == new.context() => {
                        let earlier = old.seqno() < new.seqno();
                        !(earlier && usage.may_replace(*old_usage))
                    }
                    _ => true,
                });
                // The same fence again, for a usage not stronger than the
                // one it has: nothing to add.
                if self.fences.iter().any(|(f, u)| {
                    matches!(f, Fence::User(old) if old.same_as(new))
                        && (*u == Usage::Write || usage == Usage::Read)
                }) {
                    return;
                }
            }
        }
        self.fences.push((fence, usage));
    }
}

/// What [`Reservation::begin_device`] is about: the caller's names for
/// messages, its deadline and the fences it does not wait for.
#[derive(Clone, Copy)]
pub struct DeviceAccess<'a> {
    /// The operation, for messages (`"transfer"`).
    pub op: &'static str,
    /// The object, for messages (endpoint and buffer).
    pub object: &'a str,
    /// What the device does to the buffer: it waits for what this access
    /// waits for, and its fence is published with [`Access::usage`].
    pub access: Access,
    /// When to give up with [`ErrorKind::Busy`] (`None`: never).
    pub deadline: Option<Instant>,
    /// The dma-buf whose kernel fences must be done too, if any.
    pub dma_buf: Option<&'a DmaBuf>,
    /// Fences not to wait for (an endpoint's own timeline, which its
    /// queue already orders).
    pub skip: &'a dyn Fn(&Fence) -> bool,
}

impl std::fmt::Debug for DeviceAccess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAccess")
            .field("op", &self.op)
            .field("object", &self.object)
            .field("access", &self.access)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// A test's injection point: code to run at one place of `begin_device`.
#[cfg(test)]
type Hook = std::cell::RefCell<Option<Box<dyn FnMut()>>>;

#[cfg(test)]
thread_local! {
    /// Test-only injection point: runs in `begin_device` after a fence
    /// wait, before the lock is taken again (where a window would slip in
    /// if waiting and publishing were two steps).
    pub(crate) static AFTER_FENCE_WAIT: Hook = const { std::cell::RefCell::new(None) };
    /// Test-only injection point: runs in `begin_device` once the windows
    /// and fences were found out of the way, just before the fence is
    /// published (where a window registering without the lock lands).
    pub(crate) static BEFORE_PUBLISH: Hook = const { std::cell::RefCell::new(None) };
}

impl Reservation {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reservation that keeps its word in `memory`'s (see
    /// [`MemoryObject::word`]): the buffer layer's, one per memory object.
    pub(crate) fn on(memory: Arc<MemoryObject>) -> Reservation {
        Reservation {
            state: Mutex::default(),
            changed: Condvar::new(),
            word: Word::Object(memory),
        }
    }

    fn word(&self) -> &AtomicU64 {
        match &self.word {
            Word::Own(w) => w,
            Word::Object(o) => o.word(),
        }
    }

    /// Whether this reservation keeps its word in `memory`'s: a window on
    /// the whole of it may then claim and register in one step.
    pub(crate) fn shares_word_of(&self, memory: &MemoryObject) -> bool {
        std::ptr::eq(self.word(), memory.word())
    }

    /// For a window that registers together with its claim (one
    /// compare-and-swap of the shared word): the word with one more
    /// window of `access` open, or `None` where [`Reservation::cpu_begin`]
    /// would not register it without the lock (a fence may be listed, or
    /// the rules refuse it: it then takes the usual path, which waits or
    /// names the cause).
    pub(crate) fn window_opened(
        access: Access,
        whole_buffer_sync: bool,
    ) -> impl Fn(u64) -> Option<u64> {
        move |w| {
            let w = Windows(w);
            if w.has(Windows::FENCES) {
                return None;
            }
            open_window(w, access, whole_buffer_sync, &String::new)
                .ok()
                .map(|n| n.0)
        }
    }

    /// The word with one window of `access` fewer (the counterpart of
    /// [`Reservation::window_opened`] and of `cpu_begin`).
    pub(crate) fn window_closed(access: Access) -> impl Fn(u64) -> u64 {
        move |w| Windows(w).closed(access).0
    }

    /// Whether the word `old` (as it was before a window was counted
    /// closed) says device accesses wait for windows to close: only then
    /// has [`Reservation::window_ended`] something to do.
    pub(crate) fn waiters_in(old: u64) -> bool {
        Windows(old).has(Windows::WAITERS)
    }

    /// After a window was counted closed, `old` being the word before:
    /// wakes the device accesses waiting for windows to close, if any.
    pub(crate) fn window_ended(&self, old: u64) {
        // A waiter raises WAITERS, then looks at the windows again, then
        // sleeps on the condition variable, all under the lock: either it
        // saw this window closed, or this close sees the flag, and taking
        // the lock here waits until it sleeps. With no waiter, no lock
        // and no notify (a system call).
        if Reservation::waiters_in(old) {
            drop(self.lock());
            self.changed.notify_all();
        }
    }

    fn windows(&self) -> Windows {
        Windows(self.word().load(Ordering::Acquire))
    }

    /// Lowers [`Windows::FENCES`] if the list (locked by the caller, who
    /// just pruned it) is empty.
    fn settle(&self, st: &State) {
        if st.fences.is_empty() && self.windows().has(Windows::FENCES) {
            self.word().fetch_and(!Windows::FENCES, Ordering::AcqRel);
        }
    }

    /// Adds `fence` to the list locked by the caller, raising
    /// [`Windows::FENCES`] first.
    fn add_locked(&self, st: &mut State, fence: Fence, usage: Usage) {
        self.word().fetch_or(Windows::FENCES, Ordering::AcqRel);
        st.add(fence, usage);
        self.settle(st);
    }

    /// Adds `fence` for `usage`. Fences that have signalled (successfully
    /// or not: like the kernel's implicit sync, a wait covers completion,
    /// not success) are pruned as they are found. As the kernel's
    /// `dma_resv_add_fence` does, a fence replaces an earlier fence of its
    /// own timeline (same context, lower sequence number) whose usage is
    /// not stronger (a read fence never replaces a write fence); only
    /// fences owned by this process replace or are replaced (see the
    /// module documentation).
    pub fn add(&self, fence: Fence, usage: Usage) {
        let mut st = self.lock();
        self.add_locked(&mut st, fence, usage);
        drop(st);
        self.changed.notify_all();
    }

    /// The unsignalled fences an access must wait for: the writers for
    /// [`Access::Read`], everyone for writes.
    pub fn fences_for(&self, access: Access) -> Vec<Fence> {
        let mut st = self.lock();
        st.prune();
        self.settle(&st);
        st.fences
            .iter()
            .filter(|(_, u)| access.waits_for(*u))
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
        loop {
            let f = self.lock().conflicting_fence(access, &|_| false);
            match f {
                None => return Ok(()),
                Some(f) => wait_fence(&f, deadline, "wait for buffer", object, "")?,
            }
        }
    }

    /// CPU windows open now: (read-only windows, windows that write).
    pub fn cpu_windows(&self) -> (usize, usize) {
        let w = self.windows();
        (w.readers(), w.writers())
    }

    /// Registers a CPU window of `access` as open, in one step with the
    /// check that no unsignalled fence `access` must wait for is left
    /// (waiting for such fences, lock released, until `deadline`; a
    /// [`ErrorKind::Busy`] error naming the fence after). With
    /// `whole_buffer_sync` (dma-bufs: `SYNC` has no range) a window that
    /// reads is refused while one that writes is open and vice versa (see
    /// the module documentation). Undone by [`Reservation::cpu_end`].
    /// `object` names the buffer in errors (formatted only for one).
    pub(crate) fn cpu_begin(
        &self,
        access: Access,
        whole_buffer_sync: bool,
        deadline: Option<Instant>,
        object: &dyn Fn() -> String,
        skip: &dyn Fn(&Fence) -> bool,
    ) -> Result<()> {
        // No fence in the reservation: register with one compare-and-swap
        // (see `Windows`). A device access that publishes meanwhile makes
        // the swap fail, and the next look finds its flag.
        if self.register(access, whole_buffer_sync, object, false)? {
            return Ok(());
        }
        // Fences: look at them under the lock, which a device access
        // holds from its check until its fence is in the list.
        loop {
            let mut st = self.lock();
            if let Some(f) = st.conflicting_fence(access, skip) {
                drop(st);
                wait_fence(&f, deadline, "open CPU window", &object(), "")?;
                continue;
            }
            self.settle(&st);
            self.register(access, whole_buffer_sync, object, true)?;
            return Ok(());
        }
    }

    /// Counts a window of `access` as open in the atomic word, unless the
    /// rules refuse it (see [`open_window`]) or, without `fenced`, the
    /// fence flag is up: then `Ok(false)` and nothing changed.
    fn register(
        &self,
        access: Access,
        whole_buffer_sync: bool,
        object: &dyn Fn() -> String,
        fenced: bool,
    ) -> Result<bool> {
        let mut refused = None;
        let r = self
            .word()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let w = Windows(w);
                if !fenced && w.has(Windows::FENCES) {
                    return None;
                }
                match open_window(w, access, whole_buffer_sync, object) {
                    Ok(new) => Some(new.0),
                    Err(e) => {
                        refused = Some(e);
                        None
                    }
                }
            });
        match refused {
            Some(e) => Err(e),
            None => Ok(r.is_ok()),
        }
    }

    /// Unregisters a window registered by [`Reservation::cpu_begin`].
    pub(crate) fn cpu_end(&self, access: Access) {
        let closed = Reservation::window_closed(access);
        let old = match self
            .word()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some(closed(w)))
        {
            Ok(w) | Err(w) => w,
        };
        self.window_ended(old);
    }

    /// Waits for what a device access must wait for and publishes its
    /// `fence`, in one step under the reservation's lock (see the module
    /// documentation): conflicting CPU windows (a device write waits for
    /// every window, a device read for windows that write), unsignalled
    /// fences in the way that `access.skip` does not skip, and, for a
    /// dma-buf, the kernel's fences (`poll`). When nothing is in the way,
    /// `fence` is added with the usage of `access.access`
    /// ([`Access::usage`]) before the lock is released.
    /// At the deadline, a [`ErrorKind::Busy`] error (`EBUSY`) names what
    /// is in the way, and nothing was published.
    pub fn begin_device(&self, fence: Fence, access: DeviceAccess<'_>) -> Result<()> {
        let device = access.access;
        loop {
            let mut st = self.lock();
            #[cfg(feature = "tracing")]
            {
                let w = self.windows();
                if w.block(device) {
                    trace_event!(
                        DEBUG,
                        op = access.op,
                        object = access.object,
                        cpu_readers = w.readers(),
                        cpu_writers = w.writers(),
                        "device access waits for open CPU windows"
                    );
                }
            }
            st = self.wait_for_windows(st, &access)?;
            if let Some(f) = st.conflicting_fence(device, access.skip) {
                drop(st);
                wait_fence(
                    &f,
                    access.deadline,
                    access.op,
                    access.object,
                    " (device transfer)",
                )?;
                #[cfg(test)]
                run_hook(&AFTER_FENCE_WAIT);
                continue;
            }
            if let Some(d) = access.dma_buf {
                // Zero timeout: never blocks under the lock.
                if !d.poll_idle(device, Some(Instant::now()))? {
                    drop(st);
                    trace_event!(
                        DEBUG,
                        op = access.op,
                        object = access.object,
                        "device access waits for the dma-buf's kernel fences"
                    );
                    if !d.poll_idle(device, access.deadline)? {
                        let name = d
                            .export_sync_file(device)
                            .map(|s| Fence::from(s).describe())
                            .unwrap_or_else(|_| "a kernel fence".into());
                        return Err(Error::new(
                            ErrorKind::Busy,
                            access.op,
                            access.object,
                            format!(
                                "blocked by {name} in the dma-buf's reservation, still active \
                                 at the deadline"
                            ),
                        )
                        .with_errno(Errno::BUSY));
                    }
                    #[cfg(test)]
                    run_hook(&AFTER_FENCE_WAIT);
                    continue;
                }
            }
            // Publish: raise FENCES in the same atomic step that reads
            // the windows open now. A window that registered since the
            // wait above is seen here, and the access waits for it; one
            // that registers after finds the flag and waits for this
            // lock, then for the fence.
            #[cfg(test)]
            run_hook(&BEFORE_PUBLISH);
            let now = Windows(self.word().fetch_or(Windows::FENCES, Ordering::AcqRel));
            if now.block(device) {
                drop(st);
                continue;
            }
            self.add_locked(&mut st, fence, device.usage());
            drop(st);
            self.changed.notify_all();
            return Ok(());
        }
    }

    /// Waits, on the condition variable (which releases the lock), until
    /// no open window blocks `access`, or fails at its deadline.
    fn wait_for_windows<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        access: &DeviceAccess<'_>,
    ) -> Result<MutexGuard<'a, State>> {
        let device = access.access;
        while self.windows().block(device) {
            let left = match access.deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if left > Duration::ZERO => Some(left),
                    _ => return Err(windows_busy(self.windows(), access)),
                },
            };
            // Raised before the windows are looked at again (see
            // `cpu_end`): a window closing from here on wakes this wait.
            st.waiters += 1;
            self.word().fetch_or(Windows::WAITERS, Ordering::AcqRel);
            if self.windows().block(device) {
                st = match left {
                    None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                    Some(left) => {
                        self.changed
                            .wait_timeout(st, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
            st.waiters -= 1;
            if st.waiters == 0 {
                self.word().fetch_and(!Windows::WAITERS, Ordering::AcqRel);
            }
        }
        Ok(st)
    }
}

/// `w` with one more window of `access` open, unless the rules refuse it:
/// with `whole_buffer_sync` (a dma-buf), a window that reads while one
/// that writes is open and vice versa (see the module documentation);
/// and a window past [`Windows::MAX`] of its kind.
fn open_window(
    w: Windows,
    access: Access,
    whole_buffer_sync: bool,
    object: &dyn Fn() -> String,
) -> Result<Windows> {
    const OP: &str = "open CPU window";
    let reads = access != Access::Write;
    let readers = w.readers() + w.read_writers();
    if whole_buffer_sync && reads && w.writers() > 0 {
        return Err(Error::new(
            ErrorKind::Busy,
            OP,
            object(),
            format!(
                "a write window is open on this dma-buf ({} open); DMA_BUF_IOCTL_SYNC \
                 START|{} has no range and may invalidate the CPU caches of the whole \
                 buffer on non-coherent hardware, destroying bytes that window has not \
                 flushed yet",
                w.writers(),
                access.as_str()
            ),
        )
        .with_errno(Errno::BUSY));
    }
    if whole_buffer_sync && access.writes() && readers > 0 {
        return Err(Error::new(
            ErrorKind::Busy,
            OP,
            object(),
            format!(
                "a read window is open on this dma-buf ({readers} open); its \
                 DMA_BUF_IOCTL_SYNC END|READ has no range and may invalidate the CPU \
                 caches of the whole buffer on non-coherent hardware, destroying bytes \
                 a write window has not flushed yet"
            ),
        )
        .with_errno(Errno::BUSY));
    }
    w.opened(access).ok_or_else(|| {
        Error::new(
            ErrorKind::Busy,
            OP,
            object(),
            format!(
                "{} {access} windows are open on this buffer already, the most there may be",
                Windows::MAX
            ),
        )
        .with_errno(Errno::BUSY)
    })
}

/// Runs a test's injection `hook`, if one is set (no-op outside tests).
#[cfg(test)]
fn run_hook(hook: &'static std::thread::LocalKey<Hook>) {
    hook.with(|h| {
        if let Some(f) = h.borrow_mut().as_mut() {
            f()
        }
    });
}

/// Waits for `f` until `deadline`; a fence that signalled with an error
/// counts as done; a [`ErrorKind::Busy`] error naming it at the deadline.
fn wait_fence(
    f: &Fence,
    deadline: Option<Instant>,
    op: &'static str,
    object: &str,
    who: &str,
) -> Result<()> {
    trace_event!(
        DEBUG,
        op,
        object,
        fence = %f.describe(),
        who,
        "waiting for a fence in the reservation"
    );
    #[cfg(feature = "tracing")]
    let started = Instant::now();
    let result = f.wait_until(deadline);
    trace_event!(
        DEBUG,
        op,
        object,
        fence = %f.describe(),
        waited_us = started.elapsed().as_micros() as u64,
        outcome = ?result.as_ref().map_err(|e| e.kind()),
        "fence wait ended"
    );
    match result {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::FenceFailed | ErrorKind::Cancelled) => Ok(()),
        Err(e) if e.kind() == ErrorKind::TimedOut => Err(Error::new(
            ErrorKind::Busy,
            op,
            object,
            format!("{} has not signalled in time{who}", f.describe()),
        )
        .with_errno(Errno::BUSY)
        .with_source(e)),
        Err(e) => Err(e),
    }
}

fn windows_busy(w: Windows, access: &DeviceAccess<'_>) -> Error {
    let (readers, writers) = (w.readers(), w.writers());
    let what = if writers > 0 {
        format!("an open CPU write window ({writers} write, {readers} read windows open)")
    } else {
        format!("an open CPU read window ({readers} open)")
    };
    Error::new(
        ErrorKind::Busy,
        access.op,
        access.object,
        format!("blocked by {what} until the deadline; nothing was queued"),
    )
    .with_errno(Errno::BUSY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::{FenceContext, UserFence};
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn received(f: &UserFence) -> UserFence {
        UserFence::from_fds(
            f.state_fd().try_clone_to_owned().unwrap(),
            f.wake_fd().as_fd().try_clone_to_owned().unwrap(),
        )
        .unwrap()
    }

    fn device<'a>(access: Access, deadline: Option<Instant>) -> DeviceAccess<'a> {
        DeviceAccess {
            op: "transfer",
            object: "test",
            access,
            deadline,
            dma_buf: None,
            skip: &|_| false,
        }
    }

    #[test]
    fn closing_a_window_wakes_a_waiter_and_only_then_notifies() {
        let ctx = FenceContext::new("test");
        let res = Arc::new(Reservation::default());
        res.cpu_begin(Access::Read, false, None, &|| "test".into(), &|_| false)
            .unwrap();
        let r = res.clone();
        let f = ctx.next_fence().unwrap();
        let fence = Fence::User(f.clone());
        let t = std::thread::spawn(move || r.begin_device(fence, device(Access::Write, None)));
        while res.lock().waiters == 0 {
            std::thread::yield_now();
        }
        res.cpu_end(Access::Read);
        t.join().unwrap().unwrap();
        assert_eq!(res.lock().waiters, 0);
        f.signal().unwrap();
        // A wait that times out leaves no waiter counted.
        res.cpu_begin(Access::Write, false, None, &|| "test".into(), &|_| false)
            .unwrap();
        let soon = Instant::now() + Duration::from_millis(10);
        let g = ctx.next_fence().unwrap();
        let err = res
            .begin_device(Fence::User(g.clone()), device(Access::Read, Some(soon)))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert_eq!(res.lock().waiters, 0);
        res.cpu_end(Access::Write);
        res.begin_device(Fence::User(g.clone()), device(Access::Write, Some(soon)))
            .unwrap();
        g.signal().unwrap();
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
    fn a_later_read_fence_does_not_replace_a_pending_write_fence() {
        let res = Reservation::default();
        let ctx = FenceContext::new("test");
        let write = ctx.next_fence().unwrap();
        res.add(Fence::User(write.clone()), Usage::Write);
        let read = ctx.next_fence().unwrap();
        res.add(Fence::User(read.clone()), Usage::Read);
        assert_eq!(res.len(), 2);
        let for_readers = res.fences_for(Access::Read);
        assert_eq!(for_readers.len(), 1, "readers still wait for the write");
        assert!(matches!(&for_readers[0], Fence::User(u) if u.same_as(&write)));
        // A later write fence replaces both (its usage is not weaker).
        let write2 = ctx.next_fence().unwrap();
        res.add(Fence::User(write2.clone()), Usage::Write);
        assert_eq!(res.len(), 1);
        // A later read fence replaces an earlier read fence.
        let res = Reservation::default();
        let r1 = ctx.next_fence().unwrap();
        let r2 = ctx.next_fence().unwrap();
        res.add(Fence::User(r1), Usage::Read);
        res.add(Fence::User(r2), Usage::Read);
        assert_eq!(res.len(), 1);
    }

    #[test]
    fn a_received_fence_never_replaces_or_is_replaced_by_a_local_one() {
        let ctx = FenceContext::new("local");
        let mine = ctx.next_fence().unwrap();
        let later = ctx.next_fence().unwrap();
        // The peer's handle names our context with a higher sequence
        // number (as a forged fence would).
        let peer = received(&later);
        assert!(!peer.is_owner());
        assert_eq!(peer.owned_context(), None);
        // Received contexts are marked, so even the claim cannot collide.
        assert_eq!(
            peer.context(),
            mine.context() | crate::fence::RECEIVED_CONTEXT_BIT
        );
        let res = Reservation::default();
        res.add(Fence::User(mine.clone()), Usage::Write);
        res.add(Fence::User(peer.clone()), Usage::Write);
        assert_eq!(res.len(), 2, "the local write fence stays");
        // And a local later fence does not drop a received one.
        let res = Reservation::default();
        let early_peer = received(&mine);
        res.add(Fence::User(early_peer), Usage::Write);
        res.add(Fence::User(later.clone()), Usage::Write);
        assert_eq!(res.len(), 2);
    }

    #[test]
    fn the_same_fence_twice_is_kept_once_with_the_stronger_usage() {
        let res = Reservation::default();
        let f = UserFence::new().unwrap();
        res.add(Fence::User(f.clone()), Usage::Write);
        res.add(Fence::User(f.clone()), Usage::Read);
        assert_eq!(res.len(), 1);
        assert_eq!(res.fences_for(Access::Read).len(), 1);
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

    /// The race of issue 8: a window opens exactly between a transfer's
    /// fence wait and the publication of its fence. The hook runs at that
    /// point; the transfer must see the window and wait for it.
    #[test]
    fn a_window_opened_between_a_transfers_wait_and_publish_holds_the_transfer() {
        let res = Arc::new(Reservation::default());
        let blocker = UserFence::new().unwrap();
        res.add(Fence::User(blocker.clone()), Usage::Write);
        let opened = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let (r, o, c) = (res.clone(), opened.clone(), closed.clone());
        AFTER_FENCE_WAIT.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                if o.swap(true, Ordering::SeqCst) {
                    return;
                }
                // The blocker has signalled: the window's check passes.
                r.cpu_begin(
                    Access::Write,
                    false,
                    Some(Instant::now()),
                    &|| "w".into(),
                    &|_| false,
                )
                .unwrap();
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    c.store(true, Ordering::SeqCst);
                    r.cpu_end(Access::Write);
                });
            }));
        });
        let b = blocker.clone();
        let signaller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.signal().unwrap();
        });
        let mine = UserFence::new().unwrap();
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        res.begin_device(Fence::User(mine.clone()), device(Access::Write, deadline))
            .unwrap();
        AFTER_FENCE_WAIT.with(|h| *h.borrow_mut() = None);
        signaller.join().unwrap();
        assert!(opened.load(Ordering::SeqCst), "the hook ran");
        assert!(
            closed.load(Ordering::SeqCst),
            "the transfer published its fence while a window was open"
        );
        assert_eq!(res.fences_for(Access::Read).len(), 1);
    }

    #[test]
    fn a_window_registered_without_the_lock_just_before_a_publish_holds_the_transfer() {
        let res = Arc::new(Reservation::default());
        let closed = Arc::new(AtomicBool::new(false));
        let fast = Arc::new(AtomicBool::new(false));
        let (r, c, f) = (res.clone(), closed.clone(), fast.clone());
        let mut once = true;
        BEFORE_PUBLISH.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                if !std::mem::take(&mut once) {
                    return;
                }
                // No fence: the window takes the lock-free path (the
                // transfer holds the lock right now).
                f.store(!r.windows().has(Windows::FENCES), Ordering::SeqCst);
                r.cpu_begin(Access::Read, false, None, &|| "w".into(), &|_| false)
                    .unwrap();
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    c.store(true, Ordering::SeqCst);
                    r.cpu_end(Access::Read);
                });
            }));
        });
        let mine = UserFence::new().unwrap();
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        res.begin_device(Fence::User(mine.clone()), device(Access::Write, deadline))
            .unwrap();
        BEFORE_PUBLISH.with(|h| *h.borrow_mut() = None);
        assert!(
            fast.load(Ordering::SeqCst),
            "the window took the lock-free path"
        );
        assert!(
            closed.load(Ordering::SeqCst),
            "the transfer published its fence while a window was open"
        );
        assert_eq!(res.fences_for(Access::Read).len(), 1);
        assert_eq!(res.cpu_windows(), (0, 0));
        mine.signal().unwrap();
    }

    #[test]
    fn windows_and_transfers_never_overlap_under_contention() {
        // Two threads open and close windows as fast as they can while a
        // third publishes write transfers: no window is ever open while a
        // transfer's fence is active.
        let res = Arc::new(Reservation::default());
        let active = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let windows: Vec<_> = [Access::Read, Access::Write]
            .into_iter()
            .map(|access| {
                let (res, active, stop) = (res.clone(), active.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut opened = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        res.cpu_begin(access, false, None, &|| "w".into(), &|_| false)
                            .unwrap();
                        assert!(
                            !active.load(Ordering::SeqCst),
                            "a {access} window opened during a transfer"
                        );
                        opened += 1;
                        res.cpu_end(access);
                    }
                    opened
                })
            })
            .collect();
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        for _ in 0..300 {
            let f = UserFence::new().unwrap();
            res.begin_device(Fence::User(f.clone()), device(Access::Write, deadline))
                .unwrap();
            active.store(true, Ordering::SeqCst);
            assert_eq!(res.cpu_windows(), (0, 0), "a window open during a transfer");
            std::thread::yield_now();
            assert_eq!(
                res.cpu_windows(),
                (0, 0),
                "a window opened during a transfer"
            );
            active.store(false, Ordering::SeqCst);
            f.signal().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        for t in windows {
            assert!(t.join().unwrap() > 0, "windows were opened meanwhile");
        }
    }

    #[test]
    fn the_fence_flag_is_up_exactly_while_fences_may_be_listed() {
        let res = Reservation::default();
        assert!(!res.windows().has(Windows::FENCES));
        let f = UserFence::new().unwrap();
        res.add(Fence::User(f.clone()), Usage::Read);
        assert!(res.windows().has(Windows::FENCES), "raised with a fence");
        // A read window does not wait for a read fence: it registers
        // under the lock, and the fence stays.
        res.cpu_begin(Access::Read, false, None, &|| "w".into(), &|_| false)
            .unwrap();
        res.cpu_end(Access::Read);
        assert!(res.windows().has(Windows::FENCES));
        f.signal().unwrap();
        // The next window prunes the signalled fence and lowers the flag:
        // the one after registers without the lock.
        res.cpu_begin(Access::Write, false, None, &|| "w".into(), &|_| false)
            .unwrap();
        assert!(!res.windows().has(Windows::FENCES), "lowered once empty");
        assert_eq!(res.cpu_windows(), (0, 1));
        res.cpu_end(Access::Write);
        // A signalled fence added is pruned at once: the flag comes down.
        res.add(Fence::Signalled, Usage::Write);
        assert!(!res.windows().has(Windows::FENCES));
    }

    #[test]
    fn window_counts_stop_at_their_limit_and_never_go_below_zero() {
        let w = Windows::default();
        let rw = w.opened(Access::ReadWrite).unwrap();
        assert_eq!((rw.readers(), rw.writers(), rw.read_writers()), (0, 1, 1));
        assert_eq!(rw.closed(Access::ReadWrite), w);
        assert_eq!(w.closed(Access::Read), w, "no count below zero");
        let full = Windows(Windows::MAX << Windows::WRITERS | Windows::FENCES);
        assert_eq!(full.writers(), Windows::MAX as usize);
        assert!(full.opened(Access::Write).is_none());
        assert!(full.opened(Access::ReadWrite).is_none());
        assert_eq!(full.opened(Access::Read).unwrap().readers(), 1);
        let e = open_window(full, Access::Write, false, &|| "buf".into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("the most there may be"), "{e}");
        assert!(full.has(Windows::FENCES) && !full.has(Windows::WAITERS));
        assert!(full.block(Access::Read) && rw.block(Access::Read));
        assert!(!Windows::default()
            .opened(Access::Read)
            .unwrap()
            .block(Access::Read));
    }

    #[test]
    fn a_transfer_that_cannot_publish_in_time_publishes_nothing() {
        let res = Reservation::default();
        res.cpu_begin(Access::Read, false, None, &|| "w".into(), &|_| false)
            .unwrap();
        let mine = UserFence::new().unwrap();
        let e = res
            .begin_device(
                Fence::User(mine.clone()),
                device(
                    Access::Write,
                    Some(Instant::now() + Duration::from_millis(30)),
                ),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(e.errno(), Some(Errno::BUSY));
        assert!(e.to_string().contains("open CPU read window"), "{e}");
        assert!(res.is_empty());
        // A device read does not wait for read windows.
        res.begin_device(
            Fence::User(mine),
            device(Access::Read, Some(Instant::now())),
        )
        .unwrap();
        assert_eq!(res.len(), 1);
    }

    #[test]
    fn a_window_sees_a_published_device_fence() {
        let res = Reservation::default();
        let t = UserFence::new().unwrap();
        res.begin_device(Fence::User(t.clone()), device(Access::Read, None))
            .unwrap();
        // Readers share with a device reader…
        res.cpu_begin(
            Access::Read,
            false,
            Some(Instant::now()),
            &|| "w".into(),
            &|_| false,
        )
        .unwrap();
        res.cpu_end(Access::Read);
        // …writers wait for it.
        let e = res
            .cpu_begin(
                Access::Write,
                false,
                Some(Instant::now() + Duration::from_millis(20)),
                &|| "w".into(),
                &|_| false,
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("has not signalled in time"), "{e}");
        assert_eq!(res.cpu_windows(), (0, 0));
        t.signal().unwrap();
        res.cpu_begin(
            Access::Write,
            false,
            Some(Instant::now()),
            &|| "w".into(),
            &|_| false,
        )
        .unwrap();
        assert_eq!(res.cpu_windows(), (0, 1));
    }

    #[test]
    fn whole_buffer_sync_keeps_reading_and_writing_windows_apart() {
        let res = Reservation::default();
        let none = &|_: &Fence| false;
        res.cpu_begin(Access::Write, true, None, &|| "d".into(), none)
            .unwrap();
        // Another write-only window (disjoint, checked by the mapping) is fine.
        res.cpu_begin(Access::Write, true, None, &|| "d".into(), none)
            .unwrap();
        for a in [Access::Read, Access::ReadWrite] {
            let e = res
                .cpu_begin(a, true, None, &|| "d".into(), none)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Busy);
            assert!(e.to_string().contains("a write window is open"), "{e}");
            assert!(e.to_string().contains("non-coherent"), "{e}");
        }
        // Portable buffers: no cache maintenance, no refusal.
        res.cpu_begin(Access::Read, false, None, &|| "p".into(), none)
            .unwrap();
        res.cpu_end(Access::Read);
        res.cpu_end(Access::Write);
        res.cpu_end(Access::Write);
        res.cpu_begin(Access::Read, true, None, &|| "d".into(), none)
            .unwrap();
        let e = res
            .cpu_begin(Access::Write, true, None, &|| "d".into(), none)
            .unwrap_err();
        assert!(e.to_string().contains("a read window is open"), "{e}");
        assert_eq!(res.cpu_windows(), (1, 0));
    }
}

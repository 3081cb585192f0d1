//! The copy engine: the copy path of every endpoint.
//!
//! # DOC: the copy path
//!
//! When the device cannot read or write a buffer itself (no DMABUF
//! interface, a controller without scatter-gather, a portable buffer, a
//! plain file descriptor), an endpoint moves the bytes through a CPU
//! window with `read`/`write` on the device's fd. [`CopyEngine`] does
//! that, with the same contract as the kernel's DMABUF interfaces:
//!
//! * **One ordered queue, one worker thread per endpoint.** Transfers run
//!   one after the other in the order they were queued; each has a
//!   [`UserFence`] from the endpoint's [`FenceContext`], signalled when
//!   it completes (or failed with its errno), so fences complete in queue
//!   order and a later fence having signalled means the earlier ones have.
//! * **Waiting for conflicts happens when the transfer is queued**, in
//!   the caller's thread, like the kernel's enqueue ioctls: a transfer
//!   that reads the buffer ([`Direction::ToDevice`]) waits for writers, one
//!   that writes it ([`Direction::FromDevice`]) for everyone — the
//!   library's fences, open CPU windows ([`Reservation::wait_cpu_windows`])
//!   and, for dma-bufs, the kernel's fences (`poll`). At most
//!   [`TransferOptions::timeout`]; with [`TransferOptions::nonblocking`]
//!   not at all. Then the transfer fails with a [`ErrorKind::Busy`] error
//!   (`EBUSY`) naming what is in the way, and nothing is queued. The
//!   endpoint's own earlier transfers are not waited for: the queue
//!   already orders them.
//! * **While queued, the transfer's fence is in the buffer's reservation**
//!   (as a reader for to-device, a writer for from-device), so CPU
//!   windows and other endpoints wait for it.
//! * **The bytes are only touched inside a CPU window** opened by the
//!   worker (`read` window for to-device, `write` window for
//!   from-device), bracketed by `DMA_BUF_IOCTL_SYNC` for dma-bufs. If a
//!   CPU window was opened between queueing and running (a race the
//!   caller made), the worker waits for it, at most the transfer's
//!   timeout, and fails the fence with `EBUSY` after.
//! * **Errors go on the fence**: a failed `read`/`write` (e.g. `EPIPE`
//!   when a pipe's reader went away) fails that transfer's fence with the
//!   errno; the full message is kept and given by
//!   [`CopyEngine::failure`]. A from-device transfer that meets end of
//!   file before `len` bytes fails with `ENODATA`, unless the engine was
//!   made with [`CopyOptions::short_read_completes`] (USB: a short packet
//!   ends a transfer).
//! * **Cancelling** ([`CopyEngine::cancel`], used by detach) fails the
//!   attachment's queued transfers with `ECANCELED` — in queue order, when
//!   the worker reaches them, so the timeline rule holds — and interrupts
//!   its running transfer at the next point where the worker waits for
//!   the fd (`poll`) or between chunks. An I/O call already blocked in the
//!   kernel on an fd that does not support `poll` (a regular file, a
//!   FunctionFS endpoint) finishes first.
//! * **Dropping the engine** cancels everything and joins the worker.
//!
//! `SIGPIPE`: writing to a pipe whose reader has gone raises `SIGPIPE`;
//! Rust programs ignore it (so the fence fails with `EPIPE`), C hosts must
//! ignore it too. Sockets are written with `MSG_NOSIGNAL`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags, PollFd, PollFlags};
use rustix::fs::FileType;
use rustix::net::{RecvFlags, SendFlags};

use super::{Attachment, DataPath, Direction, TransferOptions};
use crate::buffer::{Access, Buffer};
use crate::error::{errno_name, Errno, Error, ErrorKind, Result};
use crate::fence::{Fence, FenceContext, UserFence};
use crate::mapping::{Read, VolatileBytes, VolatileBytesMut, Write};
use crate::reservation::{Reservation, Usage};

/// How many failure messages an engine keeps for [`CopyEngine::failure`].
const KEPT_FAILURES: usize = 64;
/// Largest bounce buffer between a window and the fd.
const BOUNCE: usize = 256 * 1024;

/// What kind of file the engine moves data through; decides how it
/// waits and how big its I/O calls are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdKind {
    /// A socket: `send`/`recv` with `MSG_DONTWAIT`, never blocks.
    Socket,
    /// A pipe or FIFO: `poll` then at most a page per call (a page always
    /// fits once `poll` says writable), so it practically never blocks.
    Pipe,
    /// Anything else (regular file, character device): `poll` (which may
    /// always say ready) then blocking calls.
    Other,
}

impl FdKind {
    fn of(fd: &OwnedFd) -> FdKind {
        match rustix::fs::fstat(fd).map(|st| FileType::from_raw_mode(st.st_mode)) {
            Ok(FileType::Socket) => FdKind::Socket,
            Ok(FileType::Fifo) => FdKind::Pipe,
            _ => FdKind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Other => "file",
        }
    }
}

/// Settings of a [`CopyEngine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOptions {
    /// Largest `read`/`write` call in bytes; 0 for the whole transfer in
    /// one call where the file allows (each `write` on a FunctionFS
    /// endpoint is one USB transfer). Pipes always use at most a page.
    pub chunk: usize,
    /// A `read` returning fewer bytes than asked ends a from-device
    /// transfer successfully (USB: a short packet ends the transfer);
    /// otherwise the engine reads until `len` bytes and end of file is an
    /// error (`ENODATA`).
    pub short_read_completes: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk: 64 * 1024,
            short_read_completes: false,
        }
    }
}

/// The copy path of an endpoint: an ordered transfer queue served by one
/// worker thread. See the module documentation for the rules.
#[derive(Debug)]
pub struct CopyEngine {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    context: FenceContext,
    direction: Direction,
    object: String,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Queue>,
    changed: Condvar,
    /// Written to interrupt the worker's `poll` (cancel, shutdown).
    wake: OwnedFd,
    fd: OwnedFd,
    kind: FdKind,
    direction: Direction,
    options: CopyOptions,
    context_id: u64,
    object: String,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The attachment whose transfer is running, and whether it was
    /// cancelled.
    running: Option<(u64, bool)>,
    shutdown: bool,
    failures: VecDeque<(u64, Error)>,
}

#[derive(Debug)]
struct Job {
    attachment: u64,
    buffer: Buffer,
    len: usize,
    fence: UserFence,
    timeout: Duration,
    cancelled: bool,
}

impl CopyEngine {
    /// A copy engine moving data between buffers and `fd` in `direction`,
    /// named `name` in messages and in its fence timeline. Starts the
    /// worker thread.
    pub fn new(fd: OwnedFd, direction: Direction, name: &str) -> Result<CopyEngine> {
        CopyEngine::with_options(fd, direction, name, CopyOptions::default())
    }

    /// [`CopyEngine::new`] with explicit [`CopyOptions`].
    pub fn with_options(
        fd: OwnedFd,
        direction: Direction,
        name: &str,
        options: CopyOptions,
    ) -> Result<CopyEngine> {
        let kind = FdKind::of(&fd);
        let object = format!("{name} ({} fd {})", kind.name(), fd.as_raw_fd());
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::os("copy engine", object.clone(), e))?;
        let context = FenceContext::new(name);
        let shared = Arc::new(Shared {
            state: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            wake,
            fd,
            kind,
            direction,
            options,
            context_id: context.id(),
            object: object.clone(),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("dmabuf-copy {name}"))
            .spawn(move || worker_shared.run())
            .map_err(|e| {
                Error::os(
                    "copy engine",
                    object.clone(),
                    Errno::from_io_error(&e).unwrap_or(Errno::AGAIN),
                )
            })?;
        Ok(CopyEngine {
            shared,
            worker: Some(worker),
            context,
            direction,
            object,
        })
    }

    /// Which way the engine moves data.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The fence timeline of the engine's transfers.
    pub fn fence_context(&self) -> &FenceContext {
        &self.context
    }

    /// "name (pipe fd 7)" for messages.
    pub fn describe(&self) -> &str {
        &self.object
    }

    /// Queues `len` bytes of `attachment`'s buffer: checks `len` and the
    /// options, waits for the conflicting fences and CPU windows (see the
    /// module documentation), puts the transfer's fence in the buffer's
    /// reservation and returns it. The caller (the endpoint) has checked
    /// that `attachment` is attached.
    pub fn queue(&self, attachment: &Attachment, len: u64, opts: TransferOptions) -> Result<Fence> {
        let buffer = &attachment.buffer;
        check_transfer(&self.object, buffer, len, opts)?;
        let own = self.shared.context_id;
        wait_for_conflicts(buffer, self.direction, opts, &self.object, &|f| {
            is_of_context(f, own)
        })?;
        let len = usize::try_from(len)
            .map_err(|_| Error::invalid("transfer", &self.object, "length too large"))?;
        let fence = self.context.next_fence()?;
        let usage = usage_of(self.direction);
        buffer.add_fence(fence.clone().into(), usage)?;
        let mut st = self.shared.lock();
        if st.shutdown {
            drop(st);
            let _ = fence.fail(Errno::CANCELED);
            return Err(Error::new(
                ErrorKind::Cancelled,
                "transfer",
                &self.object,
                "the endpoint is shutting down",
            )
            .with_errno(Errno::CANCELED));
        }
        st.jobs.push_back(Job {
            attachment: attachment.id,
            buffer: buffer.clone(),
            len,
            fence: fence.clone(),
            timeout: opts.timeout,
            cancelled: false,
        });
        drop(st);
        self.shared.changed.notify_all();
        Ok(Fence::User(fence))
    }

    /// Cancels every transfer of attachment `id`: queued ones fail with
    /// `ECANCELED` when the worker reaches them (in queue order), the
    /// running one at its next wait. Returns how many were cancelled.
    pub fn cancel(&self, id: u64) -> usize {
        let mut st = self.shared.lock();
        let mut n = 0;
        for job in st.jobs.iter_mut().filter(|j| j.attachment == id) {
            if !job.cancelled {
                job.cancelled = true;
                n += 1;
            }
        }
        if let Some((running, cancelled)) = st.running.as_mut() {
            if *running == id && !*cancelled {
                *cancelled = true;
                n += 1;
            }
        }
        drop(st);
        self.shared.wake_worker();
        n
    }

    /// Transfers queued or running.
    pub fn pending(&self) -> usize {
        let st = self.shared.lock();
        st.jobs.len() + usize::from(st.running.is_some())
    }

    /// The full error of a transfer whose fence failed (the fence itself
    /// only carries the errno); the last 64 failures are kept.
    pub fn failure(&self, fence: &Fence) -> Option<Error> {
        let Fence::User(u) = fence else {
            return None;
        };
        if u.context() != self.shared.context_id {
            return None;
        }
        let st = self.shared.lock();
        st.failures
            .iter()
            .find(|(seq, _)| *seq == u.seqno())
            .map(|(_, e)| e.clone())
    }
}

impl Drop for CopyEngine {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
            for job in st.jobs.iter_mut() {
                job.cancelled = true;
            }
            if let Some((_, cancelled)) = st.running.as_mut() {
                *cancelled = true;
            }
        }
        self.shared.wake_worker();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_worker(&self) {
        self.changed.notify_all();
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    fn drain_wake(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut b);
    }

    fn cancelled(&self) -> bool {
        let st = self.lock();
        st.shutdown || matches!(st.running, Some((_, true)))
    }

    /// The worker: serves the queue in order until shut down.
    fn run(&self) {
        loop {
            let job = {
                let mut st = self.lock();
                loop {
                    if let Some(job) = st.jobs.pop_front() {
                        st.running = Some((job.attachment, job.cancelled));
                        break job;
                    }
                    if st.shutdown {
                        return;
                    }
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.drain_wake();
            let result = if job.cancelled {
                Err(cancelled_error(&self.object, &job.buffer))
            } else {
                self.execute(&job)
            };
            let mut st = self.lock();
            st.running = None;
            match result {
                Ok(()) => {
                    drop(st);
                    let _ = job.fence.signal();
                }
                Err(e) => {
                    let errno = e.errno().unwrap_or(Errno::IO);
                    st.failures.push_back((job.fence.seqno(), e));
                    while st.failures.len() > KEPT_FAILURES {
                        st.failures.pop_front();
                    }
                    drop(st);
                    let _ = job.fence.fail(errno);
                }
            }
        }
    }

    /// One transfer: wait for CPU windows opened since it was queued,
    /// open the window, move the bytes.
    fn execute(&self, job: &Job) -> Result<()> {
        let deadline = Instant::now() + job.timeout;
        let access = device_access(self.direction);
        if !job
            .buffer
            .reservation()
            .wait_cpu_windows(access, Some(deadline))
        {
            return Err(cpu_window_busy(
                &self.object,
                &job.buffer,
                job.buffer.reservation(),
                job.timeout,
            ));
        }
        let own = self.context_id;
        let skip = |f: &Fence| is_of_context(f, own);
        match self.direction {
            Direction::ToDevice => {
                let map = job.buffer.map_read_only()?;
                let window = map.window_excluding::<Read>(0..job.len, Some(deadline), &skip)?;
                self.write_all(window.bytes(), &job.buffer)?;
                window.end()
            }
            Direction::FromDevice => {
                let map = job.buffer.map()?;
                let mut window =
                    map.window_excluding::<Write>(0..job.len, Some(deadline), &skip)?;
                self.read_into(window.bytes_mut(), &job.buffer)?;
                window.end()
            }
        }
    }

    /// Waits until the fd is ready for `events` or the worker is woken;
    /// an error if the running transfer was cancelled.
    fn wait_ready(&self, events: PollFlags, buffer: &Buffer) -> Result<()> {
        loop {
            if self.cancelled() {
                return Err(cancelled_error(&self.object, buffer));
            }
            let mut fds = [
                PollFd::new(&self.fd, events),
                PollFd::new(&self.wake, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::os("transfer", &self.object, e)),
            }
            if !fds[1].revents().is_empty() {
                self.drain_wake();
                continue;
            }
            // Ready, or an error/hang-up condition that the I/O call
            // itself will report with its errno.
            return Ok(());
        }
    }

    fn chunk(&self, left: usize) -> usize {
        let chunk = match (self.kind, self.options.chunk) {
            (FdKind::Pipe, _) => crate::sys::mem::page_size(),
            (_, 0) => left,
            (_, c) => c,
        };
        chunk.min(left)
    }

    /// Writes the window's bytes to the fd. The bytes may be written by
    /// other parties meanwhile, so they are never made a slice: each chunk
    /// is copied (volatile loads) into a bounce buffer, which is written.
    fn write_all(&self, bytes: VolatileBytes<'_>, buffer: &Buffer) -> Result<()> {
        let mut bounce = vec![0u8; bytes.len().min(BOUNCE)];
        let mut done = 0;
        while done < bytes.len() {
            self.wait_ready(PollFlags::OUT, buffer)?;
            let part = &mut bounce[..self.chunk(bytes.len() - done).min(BOUNCE)];
            // In range: `done + part.len() <= bytes.len()`.
            let _ = bytes.read_at(done, part);
            let part = &*part;
            let r = match self.kind {
                FdKind::Socket => {
                    rustix::net::send(&self.fd, part, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
                }
                _ => rustix::io::write(&self.fd, part),
            };
            match r {
                Ok(0) => {
                    return Err(io_error(
                        &self.object,
                        buffer,
                        Errno::IO,
                        format!("write accepted 0 bytes after {done} of {}", bytes.len()),
                    ))
                }
                Ok(n) => done += n,
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(e) => {
                    return Err(io_error(
                        &self.object,
                        buffer,
                        e,
                        format!(
                            "write failed after {done} of {} bytes: {}",
                            bytes.len(),
                            describe_errno(e)
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Reads from the fd into the window: each chunk lands in a bounce
    /// buffer and is copied in with volatile stores (no slice of the
    /// shared bytes is made).
    fn read_into(&self, mut bytes: VolatileBytesMut<'_>, buffer: &Buffer) -> Result<()> {
        let len = bytes.len();
        let mut bounce = vec![0u8; len.min(BOUNCE)];
        let mut done = 0;
        while done < len {
            self.wait_ready(PollFlags::IN, buffer)?;
            let want = self.chunk(len - done).min(BOUNCE);
            let part = &mut bounce[..want];
            let r = match self.kind {
                FdKind::Socket => {
                    rustix::net::recv(&self.fd, part, RecvFlags::DONTWAIT).map(|(n, _)| n)
                }
                _ => rustix::io::read(&self.fd, part),
            };
            match r {
                Ok(0) if self.options.short_read_completes => return Ok(()),
                Ok(0) => {
                    return Err(io_error(
                        &self.object,
                        buffer,
                        Errno::NODATA,
                        format!("end of file after {done} of {len} bytes"),
                    ))
                }
                Ok(n) => {
                    // In range: `done + n <= done + want <= len`.
                    let _ = bytes.write_at(done, &bounce[..n]);
                    done += n;
                    if n < want && self.options.short_read_completes {
                        return Ok(());
                    }
                }
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(e) => {
                    return Err(io_error(
                        &self.object,
                        buffer,
                        e,
                        format!(
                            "read failed after {done} of {len} bytes: {}",
                            describe_errno(e)
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

fn describe_errno(e: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(e.raw_os_error()).to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn io_error(object: &str, buffer: &Buffer, errno: Errno, cause: String) -> Error {
    Error::kernel(
        "transfer",
        format!("{object}, {}", buffer.describe()),
        errno,
        cause,
    )
}

fn cancelled_error(object: &str, buffer: &Buffer) -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "transfer",
        format!("{object}, {}", buffer.describe()),
        "cancelled: the buffer was detached or the endpoint closed",
    )
    .with_errno(Errno::CANCELED)
}

/// Whether `f` is a user fence of the timeline `context`.
pub(crate) fn is_of_context(f: &Fence, context: u64) -> bool {
    matches!(f, Fence::User(u) if u.context() == context)
}

/// The access a device transfer in `direction` makes to the buffer.
pub(crate) fn device_access(direction: Direction) -> Access {
    match direction {
        Direction::ToDevice => Access::Read,
        Direction::FromDevice => Access::Write,
    }
}

/// How a transfer in `direction` uses the buffer.
pub(crate) fn usage_of(direction: Direction) -> Usage {
    match direction {
        Direction::ToDevice => Usage::Read,
        Direction::FromDevice => Usage::Write,
    }
}

/// Checks a transfer's length and options on the user side, with the
/// errno the kernel's DMABUF interfaces would answer (`EINVAL`).
pub(crate) fn check_transfer(
    object: &str,
    buffer: &Buffer,
    len: u64,
    opts: TransferOptions,
) -> Result<()> {
    let obj = || format!("{object}, {}", buffer.describe());
    if opts.flags != 0 {
        return Err(Error::invalid(
            "transfer",
            obj(),
            format!(
                "unknown transfer flags {:#x} (no flags are defined)",
                opts.flags
            ),
        ));
    }
    if len == 0 {
        return Err(Error::invalid(
            "transfer",
            obj(),
            "length 0: a transfer moves at least one byte",
        ));
    }
    if len > buffer.size() {
        return Err(Error::invalid(
            "transfer",
            obj(),
            format!(
                "length {len} is past the end of the buffer ({} bytes)",
                buffer.size()
            ),
        ));
    }
    Ok(())
}

fn cpu_window_busy(object: &str, buffer: &Buffer, res: &Reservation, waited: Duration) -> Error {
    let (readers, writers) = res.cpu_windows();
    let what = if writers > 0 {
        format!("an open CPU write window ({writers} write, {readers} read windows open)")
    } else {
        format!("an open CPU read window ({readers} open)")
    };
    Error::new(
        ErrorKind::Busy,
        "transfer",
        format!("{object}, {}", buffer.describe()),
        format!("blocked by {what}; waited {waited:?}"),
    )
    .with_errno(Errno::BUSY)
}

/// Waits for what a transfer in `direction` must wait for on `buffer`,
/// until `opts.timeout` (not at all if `opts.nonblocking`): open CPU
/// windows, the library's fences not skipped by `skip`, and the kernel's
/// fences of dma-bufs. A [`ErrorKind::Busy`] error (`EBUSY`) naming what
/// is in the way after that.
pub(crate) fn wait_for_conflicts(
    buffer: &Buffer,
    direction: Direction,
    opts: TransferOptions,
    object: &str,
    skip: &dyn Fn(&Fence) -> bool,
) -> Result<()> {
    let waited = if opts.nonblocking {
        Duration::ZERO
    } else {
        opts.timeout
    };
    let deadline = Instant::now() + waited;
    let access = device_access(direction);
    let res = buffer.reservation();
    if !res.wait_cpu_windows(access, Some(deadline)) {
        return Err(cpu_window_busy(object, buffer, res, waited));
    }
    let busy = |what: String| {
        Error::new(
            ErrorKind::Busy,
            "transfer",
            format!("{object}, {}", buffer.describe()),
            format!(
                "blocked by {what}, still active after {waited:?}{}",
                if opts.nonblocking {
                    " (non-blocking transfer)"
                } else {
                    ""
                }
            ),
        )
        .with_errno(Errno::BUSY)
    };
    for f in res.fences_for(access) {
        if skip(&f) || f.is_signalled() {
            continue;
        }
        match f.wait_until(Some(deadline)) {
            Err(e) if e.kind() == ErrorKind::TimedOut => return Err(busy(f.describe())),
            // Signalled, with or without an error: done either way.
            _ => {}
        }
    }
    if let Some(d) = buffer.dma_buf() {
        if !d.poll_idle(access, Some(deadline))? {
            let name = d
                .export_sync_file(access)
                .map(|s| Fence::from(s).describe())
                .unwrap_or_else(|_| "a kernel fence".into());
            return Err(busy(format!("{name} in the dma-buf's reservation")));
        }
    }
    Ok(())
}

/// Attachment ids are unique in the process, not just per endpoint, so
/// an attachment of one endpoint is never mistaken for another's (the
/// same buffer can be attached to both).
static NEXT_ATTACHMENT: AtomicU64 = AtomicU64::new(1);

/// The buffers attached to an endpoint, by attachment id.
#[derive(Debug)]
pub(crate) struct Attachments<T> {
    map: HashMap<u64, (Buffer, T)>,
}

impl<T> Default for Attachments<T> {
    fn default() -> Self {
        Attachments {
            map: HashMap::new(),
        }
    }
}

/// The data path chosen for one attachment.
#[derive(Debug, Clone)]
pub(crate) enum AttachPath {
    /// The device imported the dma-buf.
    ZeroCopy,
    /// The copy engine moves the bytes, for this reason.
    Copy(String),
}

impl AttachPath {
    pub(crate) fn data_path(&self) -> DataPath {
        match self {
            AttachPath::ZeroCopy => DataPath::ZeroCopy,
            AttachPath::Copy(why) => DataPath::Copy(why.clone()),
        }
    }
}

impl<T> Attachments<T> {
    /// Refuses a buffer attached already; the id the next attach gets.
    pub(crate) fn check_new(&self, object: &str, buffer: &Buffer) -> Result<()> {
        if let Some((id, _)) = self.map.iter().find(|(_, (b, _))| b.same_as(buffer)) {
            return Err(Error::new(
                ErrorKind::Busy,
                "attach",
                format!("{object}, {}", buffer.describe()),
                format!("already attached (attachment #{id})"),
            )
            .with_errno(Errno::BUSY));
        }
        Ok(())
    }

    /// Records `buffer` with `extra`, returning its attachment.
    pub(crate) fn insert(&mut self, buffer: &Buffer, extra: T) -> Attachment {
        let id = NEXT_ATTACHMENT.fetch_add(1, Ordering::Relaxed);
        self.map.insert(id, (buffer.clone(), extra));
        Attachment {
            id,
            buffer: buffer.clone(),
        }
    }

    /// The record of `attachment`, or a "not attached" error (`EPERM`, as
    /// the kernel answers).
    pub(crate) fn get(
        &self,
        op: &'static str,
        object: &str,
        attachment: &Attachment,
    ) -> Result<&T> {
        match self.map.get(&attachment.id) {
            Some((b, extra)) if b.same_as(&attachment.buffer) => Ok(extra),
            _ => Err(not_attached(op, object, attachment)),
        }
    }

    /// Removes `attachment`, or a "not attached" error.
    pub(crate) fn remove(
        &mut self,
        op: &'static str,
        object: &str,
        attachment: &Attachment,
    ) -> Result<T> {
        self.get(op, object, attachment)?;
        Ok(self
            .map
            .remove(&attachment.id)
            .map(|(_, extra)| extra)
            .expect("checked above"))
    }

    /// Every attachment (for detaching all).
    pub(crate) fn all(&self) -> Vec<Attachment> {
        self.map
            .iter()
            .map(|(id, (b, _))| Attachment {
                id: *id,
                buffer: b.clone(),
            })
            .collect()
    }

    /// Number of attachments.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

fn not_attached(op: &'static str, object: &str, attachment: &Attachment) -> Error {
    Error::new(
        ErrorKind::NotFound,
        op,
        format!("{object}, {}", attachment.buffer.describe()),
        format!(
            "attachment #{} is not attached to this endpoint (never attached, or detached)",
            attachment.id
        ),
    )
    .with_errno(Errno::PERM)
}

/// `"EPERM"`-style name, re-exported for endpoint messages.
pub(crate) fn name_of(e: Errno) -> String {
    errno_name(e)
}

/// Issues a DMABUF enqueue ioctl (`call`) on `fd`, with `O_NONBLOCK` set
/// around it when `nonblocking` (the kernel then fails at once instead of
/// waiting for conflicting fences), restarting on EINTR and restoring the
/// file's flags afterwards. The outer error is a failure to toggle the
/// flag; the inner result is the ioctl's.
pub(crate) fn enqueue_ioctl(
    fd: impl AsFd,
    nonblocking: bool,
    mut call: impl FnMut() -> rustix::io::Result<()>,
) -> rustix::io::Result<rustix::io::Result<()>> {
    let old = if nonblocking {
        Some(set_nonblocking(&fd, true)?)
    } else {
        None
    };
    let r = loop {
        match call() {
            Err(Errno::INTR) => continue,
            r => break r,
        }
    };
    if let Some(old) = old {
        let _ = rustix::fs::fcntl_setfl(&fd, old);
    }
    Ok(r)
}

/// Sets or clears `O_NONBLOCK` on `fd`'s file description, returning the
/// previous flags to restore.
pub(crate) fn set_nonblocking(fd: impl AsFd, on: bool) -> rustix::io::Result<rustix::fs::OFlags> {
    let old = rustix::fs::fcntl_getfl(&fd)?;
    let mut new = old;
    new.set(rustix::fs::OFlags::NONBLOCK, on);
    if new != old {
        rustix::fs::fcntl_setfl(&fd, new)?;
    }
    Ok(old)
}

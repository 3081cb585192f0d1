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
//! * **Waiting for conflicts and publishing happen in one step when the
//!   transfer is queued**, in the caller's thread, like the kernel's
//!   enqueue ioctls (`Reservation::begin_device`, under the buffer's
//!   reservation lock): a transfer that reads the buffer
//!   ([`Direction::ToDevice`]) waits for writers, one that writes it
//!   ([`Direction::FromDevice`]) for everyone — the library's fences, open
//!   CPU windows and, for dma-bufs, the kernel's fences (`poll`). At most
//!   [`TransferOptions::timeout`]; with [`TransferOptions::nonblocking`]
//!   not at all. Then the transfer fails with a [`ErrorKind::Busy`] error
//!   (`EBUSY`) naming what is in the way, and nothing is queued or
//!   published. The endpoint's own earlier transfers are not waited for:
//!   the queue already orders them.
//! * **From the moment it is queued, the transfer's fence is in the
//!   buffer's reservation** (as a reader for to-device, a writer for
//!   from-device), so CPU windows and other endpoints wait for it; no
//!   window of this process can open between the check and the
//!   publication.
//! * **The bytes are only touched inside a CPU window** opened by the
//!   worker (`read` window for to-device, `write` window for
//!   from-device), bracketed by `DMA_BUF_IOCTL_SYNC` for dma-bufs, with
//!   the window's bounded wait for the kernel's fences before `START`.
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
//!   the fd (`poll`, together with the engine's wake-up eventfd) or
//!   between chunks. An I/O call already blocked in the kernel (a
//!   FunctionFS transfer the host never takes, a tty nobody reads: `poll`
//!   said writable, the `write` blocks) finishes first.
//! * **Dropping the engine never waits for ever**: it cancels everything
//!   and waits at most [`DROP_WAIT`] for the worker; a worker still
//!   blocked in such a call is then interrupted with a signal
//!   (`SIGURG`, see `sys::signal`: its call returns `EINTR`; a FunctionFS
//!   `write()`/`read()` dequeues its USB request and returns), every
//!   50 ms for at most [`INTERRUPT_WAIT`], and the running transfer's
//!   fence fails with `ECANCELED`; the worker ends and closes its `dup`
//!   of the fd. Only if that does not end the call (the program ignores
//!   `SIGURG`, or its own handler restarts calls) is the worker detached,
//!   with a message on stderr naming the engine (the only report a
//!   `Drop` can make); it then still holds its `dup` of the fd, a clone
//!   of the running transfer's buffer and its open CPU window until the
//!   call returns, when it closes them and settles the fence.
//!   [`CopyEngine::shutdown`] does the same with a timeout of your choice
//!   and returns that error instead.
//!
//! `SIGPIPE`: writing to a pipe whose reader has gone raises `SIGPIPE`;
//! Rust programs ignore it (so the fence fails with `EPIPE`), C hosts must
//! ignore it too. Sockets are written with `MSG_NOSIGNAL`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags, PollFd, PollFlags};
use rustix::fs::FileType;
use rustix::net::{RecvFlags, SendFlags};

use super::common::{begin_transfer, check_transfer, is_of_context};
use super::{Attachment, Direction, TransferOptions};
use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::fence::{Fence, FenceContext, UserFence};
use crate::mapping::{ReadOnly, VolatileBytes, VolatileBytesMut, WriteOnly};

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
    /// Set by the worker as it returns.
    exited: bool,
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
        let len = usize::try_from(len)
            .map_err(|_| Error::invalid("transfer", &self.object, "length too large"))?;
        let fence = self.context.next_fence()?;
        let own = self.shared.context_id;
        // Wait for what is in the way and publish the fence, one step.
        if let Err(e) = begin_transfer(
            buffer,
            self.direction,
            opts,
            &self.object,
            Fence::User(fence.clone()),
            &|f| is_of_context(f, own),
        ) {
            let _ = fence.fail(Errno::CANCELED);
            return Err(e);
        }
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

impl CopyEngine {
    /// Stops the engine: cancels everything queued and the running
    /// transfer (at its next wait), and waits at most `timeout` for the
    /// worker to stop. A worker blocked in an I/O call that the kernel
    /// only ends on completion (a FunctionFS transfer the host never
    /// takes, a tty nobody reads) is then interrupted with `SIGURG`
    /// (`EINTR`, see the module documentation) for at most
    /// [`INTERRUPT_WAIT`]; the running transfer's fence fails with
    /// `ECANCELED`. Only if the call still does not return is the worker
    /// detached instead of waited for forever: the error says so, and the
    /// thread ends, closing its fd and settling the running transfer's
    /// fence, when that call returns.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
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
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        let mut interrupting_until: Option<Instant> = None;
        while !st.exited {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A call the kernel does not end on its own: interrupt it
                // (EINTR; the worker then sees the cancellation), a signal
                // every INTERRUPT_EVERY in case one lands just before the
                // call, for at most INTERRUPT_WAIT.
                let until =
                    *interrupting_until.get_or_insert_with(|| Instant::now() + INTERRUPT_WAIT);
                if Instant::now() < until && crate::sys::signal::interrupt(&worker) {
                    left = INTERRUPT_EVERY;
                }
            }
            if left.is_zero() {
                let running = st.running.is_some();
                drop(st);
                drop(worker);
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "close copy engine",
                    &self.object,
                    format!(
                        "the worker is still blocked {} after {timeout:?} (an I/O call the \
                         kernel does not interrupt, e.g. a USB transfer the host never takes); \
                         it was detached and ends, closing its fd and settling its fence, when \
                         that call returns",
                        if running { "in a transfer" } else { "stopping" }
                    ),
                )
                .with_errno(Errno::TIMEDOUT));
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        let _ = worker.join();
        Ok(())
    }
}

/// How long dropping a [`CopyEngine`] waits for its worker to stop before
/// interrupting its call (see [`CopyEngine::shutdown`]).
pub const DROP_WAIT: Duration = Duration::from_secs(2);

/// How long [`CopyEngine::shutdown`] keeps interrupting a worker blocked
/// in an I/O call (after its timeout) before detaching it.
pub const INTERRUPT_WAIT: Duration = Duration::from_secs(1);

/// How often the blocked worker is signalled while interrupting.
const INTERRUPT_EVERY: Duration = Duration::from_millis(50);

/// The fd the engine moves data through (its worker reads or writes it).
impl AsFd for CopyEngine {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.fd.as_fd()
    }
}

impl Drop for CopyEngine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown(DROP_WAIT) {
            // Drop cannot return the error; this is its one report.
            eprintln!("dmabuf: {e}");
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

    /// The worker: serves the queue, then says it has stopped.
    fn run(&self) {
        self.serve();
        self.lock().exited = true;
        self.changed.notify_all();
    }

    /// Serves the queue in order until shut down.
    fn serve(&self) {
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

    /// One transfer: open the window, move the bytes. No CPU window of
    /// this process can have opened on the buffer since the transfer was
    /// queued (its fence was published when it was queued, and windows
    /// wait for it); the window's own checks still apply, bounded by the
    /// transfer's timeout.
    fn execute(&self, job: &Job) -> Result<()> {
        let deadline = Instant::now() + job.timeout;
        let own = self.context_id;
        let skip = |f: &Fence| is_of_context(f, own);
        match self.direction {
            Direction::ToDevice => {
                let map = job.buffer.map_read_only()?;
                let window = map.window_excluding::<ReadOnly>(0..job.len, Some(deadline), &skip)?;
                self.write_all(window.bytes(), &job.buffer)?;
                window.end()
            }
            Direction::FromDevice => {
                let map = job.buffer.map()?;
                let mut window =
                    map.window_excluding::<WriteOnly>(0..job.len, Some(deadline), &skip)?;
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

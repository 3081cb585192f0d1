//! `dmabuf stream`: a producer and consumers in separate processes, passing
//! buffers through this library's streaming pool.
//!
//! # DOC: stream
//!
//! * **Spawn mode** (no `--role`): the command is the producer and starts
//!   `--consumers` copies of itself as consumers, each connected by its
//!   own `socketpair` handed over as its standard input (`--role consumer
//!   --socket -`): no path in the file system, nothing another process
//!   can connect to.
//! * **Roles** (`--role producer|consumer --socket PATH`): each side
//!   started by hand. The producer listens at PATH and accepts only peers
//!   of its own user (`SO_PEERCRED`); a peer of another uid is refused
//!   with a message naming its pid and uid, and the producer keeps
//!   waiting for its consumers. The consumer checks the producer's uid
//!   the same way. The socket file is removed when the producer ends,
//!   also on SIGTERM, SIGINT and SIGHUP.
//! * **Peers are untrusted.** Every wait is bounded by `--timeout`
//!   (default 30 s): for consumers to connect, for them to ask for items,
//!   for a free buffer, for an item, for the end. A consumer that goes
//!   away or breaks the protocol is dropped and the stream carries on
//!   with the others; a consumer that stops reading holds its buffers,
//!   and the producer then fails with a timeout naming the wait. In spawn mode the producer then
//!   waits at most `--timeout` for each consumer process to exit, kills
//!   it past that, and reports per consumer what it checked (items,
//!   bytes) and how it ended (its own error message, its exit status or
//!   the signal); the command exits 1 if any consumer failed, after the
//!   report.
//! * **Limits.** `--size × --buffers` must fit in the memory this process
//!   can get (the library's check, refused before allocating);
//!   `--buffers` ≤ 1024, `--consumers` ≤ 64. Each consumer records
//!   handoff latencies in a fixed-size histogram; a consumer's report is
//!   read up to 1 MiB.
//!
//! The producer writes every byte of each item inside a write window; each
//! consumer reads every byte inside a read window and checks the pattern
//! (see `pattern`). The stream's time, and so its throughput, starts once
//! every consumer has mapped its buffers and asked for its first item (the
//! library's `Producer::wait_ready`, within `--timeout`; a consumer that
//! goes away meanwhile is dropped as any other): the consumers' setup,
//! which differs with the kind of buffer, is not counted. The handoff
//! latency is the time from the producer's submit to the item being ready
//! in the consumer (CLOCK_MONOTONIC, measured by the consumer), split in
//! two: **queueing**, the time the item waited on the ring while the
//! consumer was still busy with earlier items (from the submit to the consumer asking for it, 0 if it was
//! already asking; the library's `Item::asked_ns`: when the call to
//! `next` found nothing to take and began to wait, or the ready time if
//! the item had queued, so asking costs no clock read of its own), and
//! **delivery**, the rest (from the later of the two to the item ready in
//! hand: the wake-up and the transport when the consumer waited, nothing
//! when the item had queued). The
//! handoff p50 includes queueing: on a stream that runs flat out, items
//! queue behind the consumer's checks and the handoff is mostly
//! queueing; the delivery percentiles are the per-item cost.

use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmabuf::share::pool::{Consumer, Producer, MAX_POOL_BUFFERS};
use dmabuf::share::{Channel, Listener};
use dmabuf::units::{human_rate, human_size};
use dmabuf::{Allocator, ErrorKind, Fence};

use crate::latency::Histogram;
use crate::pattern;

/// Most consumer processes in spawn mode.
pub const MAX_CONSUMERS: u32 = 64;
/// Most bytes of a consumer's report (its stdout) that are read.
const MAX_REPORT_BYTES: u64 = 1 << 20;

/// Which side of the stream this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Owns the buffers, listens at `--socket`, writes items.
    Producer,
    /// Connects to `--socket`, reads and checks items.
    Consumer,
}

/// Arguments of `dmabuf stream`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bytes per item (and per buffer): 4096, 64K, 4M…
    #[arg(long, default_value = "4M", value_parser = crate::alloc::parse_size)]
    pub size: u64,
    /// Stop after this many items.
    #[arg(long, conflicts_with = "seconds", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this many seconds (the default is 3 s unless --count).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = crate::seconds::positive)]
    pub seconds: Option<Duration>,
    /// Buffers in the pool (1 to 1024).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=MAX_POOL_BUFFERS as i64))]
    pub buffers: u32,
    /// Consumer processes (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_CONSUMERS as i64))]
    pub consumers: u32,
    /// Memory to allocate from: auto, heap, heap:NAME, udmabuf or portable.
    #[arg(long, default_value = "auto", value_parser = crate::backend::parse)]
    pub backend: crate::backend::Choice,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run only one side (with --socket).
    #[arg(long, value_enum, requires = "socket")]
    pub role: Option<Role>,
    /// The socket path the producer listens at (with --role); for a
    /// consumer, `-` is a connected socket on standard input.
    #[arg(long, requires = "role")]
    pub socket: Option<PathBuf>,
    /// Longest wait for a peer: to connect, for a free buffer, for an
    /// item, for a consumer process to exit.
    #[arg(long, value_name = "SECONDS", default_value = "30", allow_hyphen_values = true, value_parser = crate::seconds::positive)]
    pub timeout: Duration,
}

/// What a consumer measured.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ConsumerReport {
    /// Items received and checked.
    pub items: u64,
    /// Bytes read and checked.
    pub bytes: u64,
    /// Handoff latencies (ns): from the producer's submit to the item
    /// ready in this consumer; `queueing` plus `delivery`.
    pub handoff: Histogram,
    /// Of each handoff, the time the item waited on the ring while this
    /// consumer was still busy with earlier ones (ns; 0 if it was already
    /// waiting when the item was submitted).
    #[serde(default)]
    pub queueing: Histogram,
    /// Of each handoff, the rest (ns): from when the item was there and
    /// the consumer waiting for it to the item ready in hand — the
    /// wake-up and the transport when the consumer had to sleep, only the
    /// taking when the item was queued.
    #[serde(default)]
    pub delivery: Histogram,
    /// CLOCK_MONOTONIC ns when the last item was checked.
    pub end_ns: u64,
    /// Why the consumer stopped early, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl ConsumerReport {
    /// Counts one checked item of `len` bytes and its handoff latency
    /// (CLOCK_MONOTONIC ns: the producer's submit `sent`, this consumer's
    /// call for it `asked`, the item ready in hand `ready`), unless it is
    /// one of the first `warmup` items.
    pub fn record(&mut self, len: u64, [sent, asked, ready]: [u64; 3], warmup: u64) {
        if self.items >= warmup {
            let there = sent.max(asked);
            self.handoff.record(ready.saturating_sub(sent));
            self.queueing.record(there - sent);
            self.delivery.record(ready.saturating_sub(there));
        }
        self.items += 1;
        self.bytes = self.bytes.saturating_add(len);
    }
}

/// What the producer measured.
#[derive(Debug, serde::Serialize)]
pub struct ProducerReport {
    /// The backend the buffers came from.
    pub backend: String,
    /// Why it was chosen.
    pub backend_reason: String,
    /// Items sent.
    pub items: u64,
    /// Bytes written.
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns of the first write.
    pub start_ns: u64,
    /// Consumers dropped on the way (the stream carried on without them).
    pub dropped: Vec<String>,
    /// Why the stream stopped before its end, if it did.
    pub error: Option<String>,
}

/// When the producer stops.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many items.
    Count(u64),
    /// After this long.
    Time(Duration),
}

/// Reads the clock for a time limit, less often while items come fast:
/// every `stride` items, the stride doubling (up to [`MAX_STRIDE`]) while
/// a stride's items take less than [`FAST`], and back to every item when
/// they take longer. A fast stream pays for a clock read every few dozen
/// items rather than every item, and overshoots its limit by less than
/// [`FAST`] while its pace holds; one that slows down all at once can
/// overshoot by up to `MAX_STRIDE - 1` of its slower items before the
/// next read sees it.
#[derive(Debug)]
struct TimeCheck {
    start: Instant,
    limit: Duration,
    next_at: u64,
    stride: u64,
    last: Duration,
}

/// Most items between two clock reads of [`TimeCheck`].
const MAX_STRIDE: u64 = 64;
/// Items that take less than this for a stride come fast.
const FAST: Duration = Duration::from_micros(100);

impl TimeCheck {
    fn new(limit: Duration) -> TimeCheck {
        TimeCheck {
            start: Instant::now(),
            limit,
            next_at: 0,
            stride: 1,
            last: Duration::ZERO,
        }
    }

    /// Whether the limit has passed, with `items` sent so far.
    fn done(&mut self, items: u64) -> bool {
        let start = self.start;
        self.done_at(items, || start.elapsed())
    }

    /// [`done`](Self::done) with the time since the start read from `now`
    /// (called only when the clock is due).
    fn done_at(&mut self, items: u64, now: impl FnOnce() -> Duration) -> bool {
        if items < self.next_at {
            return false;
        }
        let now = now();
        self.stride = if now.saturating_sub(self.last) < FAST {
            (self.stride * 2).min(MAX_STRIDE)
        } else {
            1
        };
        self.last = now;
        self.next_at = items + self.stride;
        now >= self.limit
    }
}

/// When a producer with a [`Limit`] is done: after a count of items, or
/// once its time has passed, with the clock read as [`TimeCheck`] reads it
/// (every producer of `dmabuf stream` and of `dmabuf bench` stops this
/// way, so that none pays for a clock read per item that another does
/// not).
#[derive(Debug)]
pub struct Stop(StopKind);

#[derive(Debug)]
enum StopKind {
    After(u64),
    At(TimeCheck),
}

impl Stop {
    /// Starts the clock of `limit` now (if it is a time).
    pub fn new(limit: Limit) -> Stop {
        Stop(match limit {
            Limit::Count(n) => StopKind::After(n),
            Limit::Time(d) => StopKind::At(TimeCheck::new(d)),
        })
    }

    /// Whether a producer that has sent `items` items is done.
    pub fn done(&mut self, items: u64) -> bool {
        match &mut self.0 {
            StopKind::After(n) => items >= *n,
            StopKind::At(t) => t.done(items),
        }
    }
}

/// How the producer runs.
#[derive(Debug, Clone, Copy)]
pub struct ProduceOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Pause after each item (for latency runs).
    pub gap: Option<Duration>,
    /// Longest wait for the consumers to ask for items, for a free buffer
    /// and for the end.
    pub timeout: Duration,
}

/// `size × buffers` as one allocation request, checked against the memory
/// this process can get before any buffer is made.
fn check_pool_fits(size: u64, buffers: usize) -> Result<(), dmabuf::Error> {
    let obj = format!("stream pool ({buffers} buffers of {})", human_size(size));
    let total = size.checked_mul(buffers as u64).ok_or_else(|| {
        dmabuf::Error::invalid("allocate", obj.clone(), "the total size overflows")
    })?;
    dmabuf::alloc::ensure_fits(total, &obj)
}

/// Runs the producer side with `channels`, one per consumer. Setup
/// failures are errors; a failure while streaming ends the stream and is
/// in the report's `error`, with what was sent until then.
pub fn produce(
    channels: Vec<Channel>,
    alloc: &Allocator,
    size: u64,
    buffers: usize,
    limit: Limit,
    opts: ProduceOptions,
) -> Result<ProducerReport, Box<dyn std::error::Error>> {
    check_pool_fits(size, buffers)?;
    let bufs = (0..buffers)
        .map(|i| alloc.allocate(size, &format!("stream-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let size = bufs[0].size().min(size);
    let maps = bufs
        .iter()
        .map(|b| b.map())
        .collect::<Result<Vec<_>, _>>()?;
    populate(&maps);
    let mut producer = Producer::new(bufs, channels)?;
    // The clock starts once every consumer has its buffers mapped and
    // asks for items: their setup is not the stream's throughput. One
    // that goes away meanwhile is dropped, as while streaming.
    let mut dropped = Vec::new();
    loop {
        let before = producer.consumers();
        match producer.wait_ready(Some(opts.timeout)) {
            Ok(()) => break,
            Err(e) if (1..before).contains(&producer.consumers()) => dropped.push(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    let start = Instant::now();
    let mut report = ProducerReport {
        backend: alloc.backend().to_string(),
        backend_reason: alloc.reason().to_string(),
        items: 0,
        bytes: 0,
        start_ns: dmabuf::fence::monotonic_ns(),
        dropped,
        error: None,
    };
    let mut bar = Progress::new(opts.progress, limit);
    let mut stop = Stop::new(limit);
    loop {
        if stop.done(report.items) {
            break;
        }
        let before = producer.consumers();
        let sent = match one_item(&mut producer, &maps, size, report.items + 1, opts.timeout) {
            Ok(()) => true,
            Err((sent, e)) => {
                // A call that fails while dropping a consumer (gone,
                // hostile) has still served the others: note it and carry
                // on while any is left.
                let now = producer.consumers();
                if now < before && now > 0 {
                    report.dropped.push(e.to_string());
                    sent
                } else {
                    report.error = Some(e.to_string());
                    break;
                }
            }
        };
        if !sent {
            continue;
        }
        report.items += 1;
        report.bytes += size;
        bar.update(report.items, start, report.bytes);
        if let Some(g) = opts.gap {
            std::thread::sleep(g);
        }
    }
    bar.finish();
    if report.error.is_none() {
        if let Err(e) = producer.finish(Some(opts.timeout)) {
            report.error = Some(e.to_string());
        }
    }
    Ok(report)
}

/// Maps every page of the pool's buffers into this process now
/// ([`Mapping::populate`](dmabuf::mapping::Mapping::populate)), before
/// the stream's clock starts, so that its first pass over the buffers
/// takes no page fault (4096 per 16 MiB buffer and side). A kernel that
/// cannot is a warning: the stream works, its first pass is slower.
fn populate(maps: &[dmabuf::mapping::Mapping]) {
    for m in maps {
        if let Err(e) = m.populate() {
            warnln!("{e}; the stream's first pass over its buffers will fault their pages in");
            return;
        }
    }
}

/// Acquires a buffer, writes item `seq` into it and submits it. An error
/// says whether the item was sent (to the consumers still there).
fn one_item(
    producer: &mut Producer,
    maps: &[dmabuf::mapping::Mapping],
    size: u64,
    seq: u64,
    timeout: Duration,
) -> Result<(), (bool, Box<dyn std::error::Error>)> {
    let lease = producer
        .acquire(Some(timeout))
        .map_err(|e| (false, e.into()))?;
    let write = || -> Result<(), Box<dyn std::error::Error>> {
        let mut w = maps[lease.slot()].write()?;
        pattern::fill_prefix(w.bytes_mut(), size, seq)?;
        w.end()?;
        Ok(())
    };
    write().map_err(|e| (false, e))?;
    lease
        .submit(size, Fence::Signalled)
        .map(drop)
        .map_err(|e| (true, e.into()))
}

/// Whether the peer of `channel` runs as this user; the refusal in words
/// if not.
fn check_peer(channel: &Channel, what: &str) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    match rustix::net::sockopt::socket_peercred(channel.fd()) {
        Ok(c) if c.uid.as_raw() == me => Ok(()),
        Ok(c) => Err(format!(
            "refused {what} pid {} uid {}: not this user (uid {me})",
            c.pid.as_raw_nonzero(),
            c.uid.as_raw()
        )),
        Err(e) => Err(format!(
            "refused {what}: its credentials are unreadable ({e})"
        )),
    }
}

/// Accepts `n` consumers of this user at `listener`, waiting at most
/// `timeout` in all; peers of other users are refused (said on stderr)
/// and not counted.
pub fn accept_consumers(
    listener: &Listener,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Channel>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + timeout;
    let mut channels = Vec::new();
    let mut refused = 0;
    while channels.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let c = match listener.accept(Some(left)) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                return Err(format!(
                "stream: {} of {n} consumers connected to {} within {:.1} s ({refused} refused)",
                channels.len(),
                listener.path().display(),
                timeout.as_secs_f64()
            )
                .into())
            }
            // The listener itself refuses peers of another user.
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                refused += 1;
                warnln!(
                    "stream: refused peer: {}",
                    crate::out::escape(&e.to_string())
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match check_peer(&c, "peer") {
            Ok(()) => channels.push(c),
            Err(why) => {
                refused += 1;
                warnln!("stream: {} at {}", why, listener.path().display())
            }
        }
    }
    Ok(channels)
}

/// Runs a consumer on `channel` until the producer finishes: reads and
/// checks every item. A failure stops it and is in the report's `error`,
/// with what was checked until then. The first `warmup` items' latencies
/// are not recorded.
pub fn consume(
    channel: Channel,
    timeout: Duration,
    warmup: u64,
    word_sleep: Option<Duration>,
) -> ConsumerReport {
    let mut report = ConsumerReport::default();
    if let Err(e) = consume_into(channel, timeout, warmup, word_sleep, &mut report) {
        report.error = Some(e.to_string());
    }
    report.end_ns = dmabuf::fence::monotonic_ns();
    report
}

fn consume_into(
    channel: Channel,
    timeout: Duration,
    warmup: u64,
    word_sleep: Option<Duration>,
    report: &mut ConsumerReport,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut consumer = Consumer::new(channel, Some(timeout))?;
    if let Some(d) = word_sleep {
        consumer.set_word_sleep(d);
    }
    let maps = consumer
        .buffers()
        .iter()
        .map(|b| b.map_read_only())
        .collect::<Result<Vec<_>, _>>()?;
    populate(&maps);
    loop {
        let Some(item) = consumer.next(Some(timeout))? else {
            break;
        };
        let map = usize::try_from(item.slot())
            .ok()
            .and_then(|s| maps.get(s))
            .ok_or_else(|| {
                format!(
                    "item {} names buffer {}, which the pool lacks",
                    item.seq(),
                    item.slot()
                )
            })?;
        {
            let r = map.read()?;
            pattern::check_prefix(r.bytes(), item.len(), item.seq())
                .map_err(|e| format!("{e} (buffer {})", item.slot()))?;
        }
        let times = [item.sent_ns(), item.asked_ns(), item.ready_ns()];
        report.record(item.len(), times, warmup);
        item.release(Fence::Signalled)?;
    }
    Ok(())
}

/// A consumer's channel to its producer: with `-`, the connected socket
/// on standard input (made by whoever started this process, as `dmabuf
/// stream` does for its consumers); else [`connect`]. `dash` names the
/// option in the error for `-` (`"stream: --socket -"`).
pub fn consumer_channel(
    socket: &Path,
    timeout: Duration,
    dash: &str,
) -> Result<Channel, Box<dyn std::error::Error>> {
    if socket != Path::new("-") {
        return connect(socket, timeout);
    }
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("{dash} (standard input): {e}"))?;
    Ok(Channel::from_fd(fd).map_err(|e| format!("{dash} (standard input): {e}"))?)
}

/// Connects to the producer at `socket` (waiting up to `timeout` for it
/// to appear) and checks that it runs as this user.
pub fn connect(socket: &Path, timeout: Duration) -> Result<Channel, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let channel = loop {
        match Channel::connect(socket) {
            Ok(c) => break c,
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Os)
                    && t0.elapsed() < timeout =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    };
    check_peer(&channel, "producer")
        .map_err(|why| format!("stream: {why} at {}", socket.display()))?;
    Ok(channel)
}

/// A one-line progress bar on stderr, drawn only on a terminal.
struct Progress {
    on: bool,
    limit: Limit,
    last: Option<Instant>,
}

impl Progress {
    fn new(on: bool, limit: Limit) -> Progress {
        Progress {
            on,
            limit,
            last: None,
        }
    }

    /// Redraws the bar (at most every 100 ms; the clock is not read when
    /// it is off).
    fn update(&mut self, items: u64, start: Instant, bytes: u64) {
        if !self.on
            || self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let elapsed = start.elapsed();
        let frac = match self.limit {
            Limit::Count(n) => items as f64 / n.max(1) as f64,
            Limit::Time(d) => elapsed.as_secs_f64() / d.as_secs_f64().max(1e-9),
        }
        .min(1.0);
        let w = 30;
        let full = (frac * w as f64) as usize;
        err!(
            "\r[{}{}] {:3.0}% {items} items {} ",
            "#".repeat(full),
            " ".repeat(w - full),
            frac * 100.0,
            human_rate(bytes, elapsed.as_secs_f64())
        );
    }

    fn finish(&self) {
        if self.on && self.last.is_some() {
            err!("\r{}\r", " ".repeat(70));
        }
    }
}

/// A spawned consumer process, its stdout and stderr read by threads (so
/// a consumer that stops cannot block the producer).
struct Spawned {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

fn read_capped(r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.take(MAX_REPORT_BYTES).read_to_end(&mut v);
        v
    })
}

/// Spawns one consumer process of this program with `fd` (one end of a
/// socketpair) as its stdin.
fn spawn_consumer(fd: OwnedFd, timeout: Duration) -> std::io::Result<Spawned> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "stream",
            "--role",
            "consumer",
            "--json",
            "--socket",
            "-",
            "--timeout",
        ])
        .arg(timeout.as_secs_f64().to_string())
        .stdin(Stdio::from(fd))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let err = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;
    Ok(Spawned {
        child,
        stdout: read_capped(out),
        stderr: read_capped(err),
    })
}

/// How one spawned consumer did.
#[derive(Debug, serde::Serialize)]
pub struct ConsumerOutcome {
    /// 1-based.
    pub consumer: usize,
    /// Its process id.
    pub pid: u32,
    /// Whether it checked every item sent and exited 0.
    pub ok: bool,
    /// Items it checked.
    pub items: u64,
    /// Bytes it checked.
    pub bytes: u64,
    /// How it ended, in words, when not ok.
    pub error: Option<String>,
    #[serde(skip)]
    end_ns: u64,
    #[serde(skip)]
    handoff: Histogram,
    #[serde(skip)]
    queueing: Histogram,
    #[serde(skip)]
    delivery: Histogram,
}

/// Waits at most `bound` for the consumer to exit, kills it past that,
/// and collects what it reported.
fn collect(i: usize, s: Spawned, bound: Duration, sent: u64) -> ConsumerOutcome {
    let Spawned {
        mut child,
        stdout,
        stderr,
    } = s;
    let pid = child.id();
    let deadline = Instant::now() + bound;
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                killed = true;
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(e),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let report = serde_json::from_slice::<ConsumerReport>(&out);
    let mut o = ConsumerOutcome {
        consumer: i + 1,
        pid,
        ok: false,
        items: 0,
        bytes: 0,
        error: None,
        end_ns: 0,
        handoff: Histogram::default(),
        queueing: Histogram::default(),
        delivery: Histogram::default(),
    };
    let mut why = Vec::new();
    match report {
        Ok(r) => {
            o.items = r.items;
            o.bytes = r.bytes;
            o.end_ns = r.end_ns;
            o.handoff = r.handoff;
            o.queueing = r.queueing;
            o.delivery = r.delivery;
            if let Some(e) = r.error {
                why.push(e);
            }
        }
        Err(_) if out.is_empty() => why.push("no report".to_string()),
        Err(e) => why.push(format!("unreadable report ({e})")),
    }
    let stderr_text = String::from_utf8_lossy(&err);
    let last = stderr_text.lines().rev().find(|l| !l.trim().is_empty());
    if let Some(l) = last {
        let l = l.trim().trim_start_matches("dmabuf: ").to_string();
        if !why.contains(&l) {
            why.push(l);
        }
    }
    match status {
        Ok(st) if killed => why.push(format!(
            "did not exit within {:.1} s after the stream ended: killed ({st})",
            bound.as_secs_f64()
        )),
        Ok(st) if !st.success() => why.push(format!("exited with {st}")),
        Ok(_) => {}
        Err(e) => why.push(format!("could not be waited for: {e}")),
    }
    if why.is_empty() && o.items != sent {
        why.push(format!("checked {} of the {sent} items sent", o.items));
    }
    o.ok = why.is_empty();
    if !o.ok {
        o.error = Some(why.join("; "));
    }
    o
}

/// Removes the socket file at `path` and exits on SIGTERM, SIGINT or
/// SIGHUP, once `armed` (set after the bind, so that a file this process
/// did not create is never removed).
pub(crate) fn remove_on_signal(path: PathBuf, armed: Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            if armed.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(&path);
            }
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Runs `dmabuf stream`.
pub fn run(args: Args) -> crate::CliResult {
    let limit = match (args.count, args.seconds) {
        (Some(n), _) => Limit::Count(n),
        (None, Some(d)) => Limit::Time(d),
        (None, None) => Limit::Time(Duration::from_secs(3)),
    };
    let opts = ProduceOptions {
        progress: std::io::stderr().is_terminal() && !args.json,
        gap: None,
        timeout: args.timeout,
    };
    match args.role {
        Some(Role::Consumer) => {
            let socket = args
                .socket
                .as_deref()
                .ok_or("--role consumer needs --socket")?;
            let channel = consumer_channel(socket, args.timeout, "stream: --socket -")?;
            let r = consume(channel, args.timeout, 0, None);
            if args.json {
                crate::out::json(&r, false)?;
            } else {
                let (p50, p90, p99) = r.handoff.percentiles_us();
                outln!(
                    "consumer: {} items, {} checked; handoff p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs",
                    r.items,
                    human_size(r.bytes)
                )?;
                let ((q50, _, q99), (d50, _, d99)) =
                    (r.queueing.percentiles_us(), r.delivery.percentiles_us());
                outln!(
                    "  of which queueing p50 {q50:.1} µs, p99 {q99:.1} µs; delivery p50 {d50:.1} µs, p99 {d99:.1} µs"
                )?;
            }
            match r.error {
                Some(e) => Err(e.into()),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Some(Role::Producer) => {
            let socket = args
                .socket
                .clone()
                .ok_or("--role producer needs --socket")?;
            if socket == Path::new("-") {
                return Err(
                    "stream: a producer listens at a path; --socket - is for a consumer".into(),
                );
            }
            let alloc = args.backend.allocator()?;
            check_pool_fits(args.size, args.buffers as usize)?;
            let armed = Arc::new(AtomicBool::new(false));
            remove_on_signal(socket.clone(), armed.clone())?;
            let listener = Listener::bind(&socket)?;
            armed.store(true, Ordering::SeqCst);
            let channels = accept_consumers(&listener, args.consumers as usize, args.timeout)?;
            let p = produce(
                channels,
                &alloc,
                args.size,
                args.buffers as usize,
                limit,
                opts,
            )?;
            drop(listener);
            let secs = dmabuf::fence::monotonic_ns().saturating_sub(p.start_ns) as f64 / 1e9;
            print_report(&args, &p, &[], &Default::default(), secs)?;
            finish(&p, &[])
        }
        None => {
            let alloc = args.backend.allocator()?;
            check_pool_fits(args.size, args.buffers as usize)?;
            let mut channels = Vec::new();
            let mut children = Vec::new();
            for _ in 0..args.consumers {
                let (mine, theirs) = rustix::net::socketpair(
                    rustix::net::AddressFamily::UNIX,
                    rustix::net::SocketType::SEQPACKET,
                    rustix::net::SocketFlags::CLOEXEC,
                    None,
                )?;
                channels.push(Channel::from_fd(mine)?);
                children.push(spawn_consumer(theirs, args.timeout)?);
            }
            let produced = produce(
                channels,
                &alloc,
                args.size,
                args.buffers as usize,
                limit,
                opts,
            );
            // The producer (and so every channel) is gone: a consumer
            // still running is stopped or hung.
            let sent = produced.as_ref().map_or(0, |p| p.items);
            let outcomes: Vec<ConsumerOutcome> = children
                .into_iter()
                .enumerate()
                .map(|(i, c)| collect(i, c, args.timeout, sent))
                .collect();
            let p = match produced {
                Ok(p) => p,
                Err(e) => {
                    for o in outcomes.iter().filter(|o| !o.ok) {
                        errln!(
                            "dmabuf: stream: consumer {} (pid {}): {}",
                            o.consumer,
                            o.pid,
                            o.error.as_deref().unwrap_or("failed")
                        );
                    }
                    return Err(e);
                }
            };
            let end = outcomes
                .iter()
                .map(|o| o.end_ns)
                .max()
                .unwrap_or(p.start_ns);
            let secs = end.saturating_sub(p.start_ns) as f64 / 1e9;
            let mut lat = [
                Histogram::default(),
                Histogram::default(),
                Histogram::default(),
            ];
            for o in &outcomes {
                lat[0].merge(&o.handoff);
                lat[1].merge(&o.queueing);
                lat[2].merge(&o.delivery);
            }
            print_report(&args, &p, &outcomes, &lat, secs)?;
            finish(&p, &outcomes)
        }
    }
}

/// The exit: 0 if the stream reached its end and every consumer checked
/// every item; else an error naming what failed (the report is out).
fn finish(p: &ProducerReport, outcomes: &[ConsumerOutcome]) -> crate::CliResult {
    let mut why = Vec::new();
    if let Some(e) = &p.error {
        why.push(format!("stream stopped after {} items: {e}", p.items));
    }
    for d in &p.dropped {
        why.push(format!("a consumer was dropped: {d}"));
    }
    let failed: Vec<&ConsumerOutcome> = outcomes.iter().filter(|o| !o.ok).collect();
    if !failed.is_empty() {
        why.push(format!(
            "{} of {} consumers failed: {}",
            failed.len(),
            outcomes.len(),
            failed
                .iter()
                .map(|o| format!(
                    "consumer {} (pid {}): {}",
                    o.consumer,
                    o.pid,
                    o.error.as_deref().unwrap_or("failed")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if why.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(why.join("; ").into())
    }
}

fn print_report(
    args: &Args,
    p: &ProducerReport,
    outcomes: &[ConsumerOutcome],
    lat: &[Histogram; 3],
    secs: f64,
) -> crate::CliResult<()> {
    let [lat, queueing, delivery] = lat;
    let gib_s = p.bytes as f64 / secs.max(1e-9) / (1u64 << 30) as f64;
    let items_s = p.items as f64 / secs.max(1e-9);
    let (p50, p90, p99) = lat.percentiles_us();
    let (q50, q90, q99) = queueing.percentiles_us();
    let (d50, d90, d99) = delivery.percentiles_us();
    let verified = !outcomes.is_empty() && outcomes.iter().all(|o| o.ok);
    if args.json {
        let v = serde_json::json!({
            "backend": p.backend,
            "backend_reason": p.backend_reason,
            "size": args.size,
            "buffers": args.buffers,
            "consumers": args.consumers,
            "items": p.items,
            "bytes": p.bytes,
            "seconds": secs,
            "throughput_gib_s": gib_s,
            "throughput": human_rate(p.bytes, secs),
            "items_per_s": items_s,
            "handoff_us": { "p50": p50, "p90": p90, "p99": p99 },
            "queueing_us": { "p50": q50, "p90": q90, "p99": q99 },
            "delivery_us": { "p50": d50, "p90": d90, "p99": d99 },
            "verified": verified,
            "per_consumer": outcomes,
            "dropped": p.dropped,
            "error": p.error,
        });
        crate::out::json(&v, true)?;
    } else {
        outln!("backend:    {} ({})", p.backend, p.backend_reason)?;
        outln!(
            "items:      {} × {} to {} consumer(s), {} buffers, in {secs:.2} s",
            p.items,
            human_size(args.size),
            args.consumers,
            args.buffers
        )?;
        outln!(
            "throughput: {} per consumer, {items_s:.0} items/s",
            human_rate(p.bytes, secs)
        )?;
        if !lat.is_empty() {
            outln!(
                "handoff:    p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs (submit to ready)"
            )?;
            outln!("  queueing: p50 {q50:.1} µs, p90 {q90:.1} µs, p99 {q99:.1} µs (waiting behind earlier items)")?;
            outln!("  delivery: p50 {d50:.1} µs, p90 {d90:.1} µs, p99 {d99:.1} µs (wake-up and transport)")?;
        }
        for o in outcomes {
            match &o.error {
                None => outln!(
                    "consumer {}:  pid {}, {} items, {} checked",
                    o.consumer,
                    o.pid,
                    o.items,
                    human_size(o.bytes)
                )?,
                Some(e) => outln!(
                    "consumer {}:  pid {}, {} items, {} checked, FAILED: {}",
                    o.consumer,
                    o.pid,
                    o.items,
                    human_size(o.bytes),
                    crate::out::escape(e)
                )?,
            }
        }
        if verified {
            outln!("verified:   every byte of every item, in every consumer")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_when_the_consumers_ask_and_one_gone_before_asking_is_dropped() {
        let limit = Duration::from_secs(5);
        let (p1, c1) = Channel::pair().unwrap();
        let (p2, c2) = Channel::pair().unwrap();
        let good = std::thread::spawn(move || {
            // A slow setup before its first `next`: not the stream's time.
            std::thread::sleep(Duration::from_millis(300));
            let began = dmabuf::fence::monotonic_ns();
            (began, consume(c2, limit, 0, None))
        });
        let gone = std::thread::spawn(move || {
            // Takes the whole handshake, never asks for an item, and
            // closes its socket without a bye.
            while !matches!(
                c1.recv(Some(limit)),
                Ok(dmabuf::share::Message::PoolReady { .. })
            ) {}
        });
        let opts = ProduceOptions {
            progress: false,
            gap: None,
            timeout: limit,
        };
        let alloc = Allocator::new(&dmabuf::Backend::Portable).unwrap();
        let r = produce(vec![p1, p2], &alloc, 4096, 4, Limit::Count(3), opts).unwrap();
        gone.join().unwrap();
        let (began, c) = good.join().unwrap();
        assert_eq!(r.error, None);
        assert_eq!((r.items, c.items, c.error), (3, 3, None));
        assert_eq!(r.dropped.len(), 1, "{:?}", r.dropped);
        assert!(
            r.start_ns >= began,
            "the clock started {} ns before the consumer's setup was over",
            began - r.start_ns
        );
    }

    #[test]
    fn a_time_limit_reads_the_clock_less_often_only_while_items_come_fast() {
        // On a clock the test drives (no scheduler in the way): items
        // 100 ns apart. The stride grows to its bound, the clock is read
        // about once per stride, and the limit is met within a stride.
        let limit = Duration::from_millis(20);
        let mut t = TimeCheck::new(limit);
        let (mut items, mut reads) = (0u64, 0u64);
        let at = |items: u64| Duration::from_nanos(items * 100);
        while !t.done_at(items, || {
            reads += 1;
            at(items)
        }) {
            items += 1;
        }
        assert_eq!(t.stride, MAX_STRIDE, "{items} items");
        assert!(
            reads < items / (MAX_STRIDE / 2),
            "{reads} reads for {items} items"
        );
        let over = at(items) - limit;
        assert!(
            over < Duration::from_nanos(100 * MAX_STRIDE),
            "overshot by {over:?}"
        );
        // Items slower than FAST per stride: the clock every item.
        let mut t = TimeCheck::new(Duration::from_secs(60));
        for i in 0..5 {
            let mut read = false;
            assert!(!t.done_at(i, || {
                read = true;
                FAST * 2 * (i as u32 + 1)
            }));
            assert!(read, "item {i}");
            assert_eq!(t.stride, 1, "item {i}");
        }
        // And with the real clock: the limit is met.
        let mut t = TimeCheck::new(Duration::from_millis(5));
        let mut items = 0;
        while !t.done(items) {
            items += 1;
        }
        assert!(t.start.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn a_stop_ends_after_its_count_or_its_time() {
        let mut s = Stop::new(Limit::Count(3));
        assert!(!s.done(0) && !s.done(2));
        assert!(s.done(3) && s.done(4));
        let start = Instant::now();
        let mut s = Stop::new(Limit::Time(Duration::from_millis(5)));
        let mut items = 0;
        while !s.done(items) {
            items += 1;
        }
        assert!(start.elapsed() >= Duration::from_millis(5));
        assert!(items > 0);
    }

    #[test]
    fn handoff_splits_into_queueing_and_delivery() {
        let mut r = ConsumerReport::default();
        // Warm-up items are counted, not timed.
        r.record(10, [100, 50, 200], 1);
        assert_eq!((r.items, r.bytes, r.handoff.len()), (1, 10, 0));
        // The consumer was asking before the submit: all delivery.
        r.record(10, [1_000, 500, 9_000], 1);
        // The item waited 4000 ns behind earlier ones, then 1000 ns.
        let mut q = ConsumerReport::default();
        q.record(10, [1_000, 5_000, 6_000], 0);
        assert_eq!(r.queueing.percentile(0.5), 0);
        let d = r.delivery.percentile(0.5);
        assert!((7_800..=8_200).contains(&d), "{d}");
        let (hq, qq, dq) = (
            q.handoff.percentile(0.5),
            q.queueing.percentile(0.5),
            q.delivery.percentile(0.5),
        );
        assert!((4_900..=5_100).contains(&hq), "{hq}");
        assert!((3_900..=4_100).contains(&qq), "{qq}");
        assert!((980..=1_020).contains(&dq), "{dq}");
        // A producer's stamp in the future (a hostile or skewed peer):
        // counted as zero, no panic.
        q.record(10, [u64::MAX, 5, 6], 0);
        assert_eq!(q.handoff.len(), 2);
    }
}

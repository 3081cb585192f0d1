//! The cases of `dmabuf bench`: each producer here, each consumer in a
//! worker process (this program run as `dmabuf bench --worker CASE`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use dmabuf::share::Listener;

use super::ideal::{self, Ring, WakeKind, WakeRig};
use super::BoxResult;
use crate::pattern;
use crate::stream::{self, Limit, Stop};

/// Fewest buffers of the pool and of the ideal rings (also the buffers of
/// `touch` and of the latency runs).
pub const MIN_BUFFERS: usize = 4;

/// The pipe's buffer (`F_SETPIPE_SZ`), and by default the bytes the pool
/// and the ideal rings hold in flight (see [`buffers_for`]).
pub const PIPE_BYTES: u64 = 1 << 20;

/// Buffers of the pool and of the ideal rings (the same count for all)
/// for items of `size` bytes: enough to hold `in_flight` bytes, as the
/// pipe holds [`PIPE_BYTES`] before its writer blocks, and at least
/// [`MIN_BUFFERS`] (at most the pool's bound). With `in_flight` 0,
/// [`MIN_BUFFERS`] at every size.
pub fn buffers_for(size: u64, in_flight: u64) -> usize {
    let n = (in_flight / size.max(1)).min(dmabuf::share::pool::MAX_POOL_BUFFERS as u64);
    (n as usize).max(MIN_BUFFERS)
}

/// CLOCK_MONOTONIC now, in ns.
pub fn now_ns() -> u64 {
    dmabuf::fence::monotonic_ns()
}

/// A bounded latency histogram (1 ns to 60 s, 3 significant digits).
pub struct Lat(hdrhistogram::Histogram<u64>);

/// What a latency histogram says.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct LatSummary {
    /// Samples recorded.
    pub count: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Largest, ns.
    pub max_ns: u64,
}

impl Lat {
    /// An empty histogram.
    pub fn new() -> BoxResult<Lat> {
        Ok(Lat(hdrhistogram::Histogram::new_with_bounds(
            1,
            60_000_000_000,
            3,
        )?))
    }

    /// Records one sample, clamped into the histogram's range.
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// p50, p99, max and count.
    pub fn summary(&self) -> LatSummary {
        LatSummary {
            count: self.0.len(),
            p50_ns: self.0.value_at_quantile(0.50),
            p99_ns: self.0.value_at_quantile(0.99),
            max_ns: self.0.max(),
        }
    }
}

/// What a worker reports on its stdout (one JSON line).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BenchReport {
    /// Items received and checked.
    pub items: u64,
    /// Bytes read and checked.
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns when the last item was checked.
    pub end_ns: u64,
    /// Handoff latency (sent stamp to checked), after the warm-up items.
    pub latency: Option<LatSummary>,
}

/// Items at the start of a latency run left out of its histogram (the
/// consumer's warm-up).
pub const WARM_UP: u64 = 20;

/// Writes item `seq` into `buf`: the pattern over all of it, then its
/// first [`pattern::STAMP`] bytes stamped with CLOCK_MONOTONIC now.
pub fn fill_stamped(buf: &mut [u8], seq: u64) {
    pattern::fill(buf, seq);
    buf[..pattern::STAMP].copy_from_slice(&now_ns().to_le_bytes());
}

/// Checks the pattern of item `seq` after its stamp ([`fill_stamped`]);
/// the stamp.
pub fn check_stamped(buf: &[u8], seq: u64) -> BoxResult<u64> {
    if let Some(at) = pattern::check_stamped(buf, seq) {
        return Err(format!("item {seq}: byte {at} breaks the pattern").into());
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&buf[..pattern::STAMP]);
    Ok(u64::from_le_bytes(t))
}

fn read_items(mut r: impl Read, size: u64) -> BoxResult<BenchReport> {
    let mut buf = vec![0u8; size as usize];
    let mut rep = BenchReport::default();
    let mut lat = Lat::new()?;
    loop {
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..])? {
                0 if got == 0 => {
                    rep.end_ns = now_ns();
                    rep.latency = Some(lat.summary());
                    return Ok(rep);
                }
                0 => return Err("stream ended inside an item".into()),
                n => got += n,
            }
        }
        let arrived = now_ns();
        let sent = check_stamped(&buf, rep.items + 1)?;
        if rep.items >= WARM_UP {
            lat.record(arrived.saturating_sub(sent));
        }
        rep.items += 1;
        rep.bytes += size;
    }
}

/// Longest wait for the other side of a case.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Tells the producer the worker is ready.
pub fn ready() -> BoxResult<()> {
    outln!("ready")?;
    crate::out::flush()?;
    Ok(())
}

/// Runs the consumer of `kind` (in the worker process).
pub fn worker(kind: &str, path: &str, size: u64, buffers: usize) -> BoxResult<BenchReport> {
    match kind {
        "dmabuf" | "dmabuf-poll" => {
            ready()?;
            let channel = stream::connect(Path::new(path), PEER_TIMEOUT)?;
            // The stream's consumer keeps its own bounded histogram, after
            // the same warm-up; `dmabuf-poll` never sleeps on the ring's
            // word, only on its wake-up pipe and socket.
            let word_sleep = (kind == "dmabuf-poll").then_some(Duration::ZERO);
            let r = stream::consume(channel, PEER_TIMEOUT, WARM_UP, word_sleep);
            if let Some(e) = r.error {
                return Err(e.into());
            }
            let h = &r.handoff;
            Ok(BenchReport {
                items: r.items,
                bytes: r.bytes,
                end_ns: r.end_ns,
                latency: Some(LatSummary {
                    count: h.len(),
                    p50_ns: h.percentile(0.50),
                    p99_ns: h.percentile(0.99),
                    max_ns: h.percentile(1.0),
                }),
            })
        }
        "ideal" => {
            let ring = Ring::open(path, size, buffers)?;
            ready()?;
            ideal::consume(&ring, size, buffers)
        }
        "ideal-kind" => {
            let ring = Ring::fetch(path, size, buffers)?;
            ready()?;
            ideal::consume(&ring, size, buffers)
        }
        "wake-futex" => ideal::pong(path, WakeKind::Futex, size),
        "wake-eventfd" => ideal::pong(path, WakeKind::EventFd, size),
        "pipe" => {
            let f = std::fs::File::open(path)?;
            ready()?;
            read_items(f, size)
        }
        "unix" => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            ready()?;
            read_items(s, size)
        }
        #[cfg(feature = "iceoryx2")]
        "iceoryx2" => super::iox::consume(path, size),
        k => Err(format!("unknown bench worker '{k}'").into()),
    }
}

struct Worker {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(kind: &str, path: &str, size: u64, buffers: usize) -> BoxResult<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "--worker", kind, "--path", path, "--size"])
            .arg(size.to_string())
            .arg("--buffers")
            .arg(buffers.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Worker { child, out })
    }

    fn wait_ready(&mut self) -> BoxResult<()> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(format!("bench worker did not start ('{}')", line.trim()).into());
        }
        Ok(())
    }

    fn report(mut self) -> BoxResult<BenchReport> {
        let mut s = String::new();
        self.out.read_to_string(&mut s)?;
        let st = self.child.wait()?;
        if !st.success() {
            return Err(format!("bench worker failed ({st})").into());
        }
        Ok(serde_json::from_str(s.trim())?)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A worker left behind by an error path: do not leave it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes stamped pattern items of `size` to `w` until `limit`, pausing
/// `gap` after each; the first write's time and the item count.
fn write_items(
    mut w: impl Write,
    size: u64,
    limit: Limit,
    gap: Option<Duration>,
) -> BoxResult<(u64, u64)> {
    let mut buf = vec![0u8; size as usize];
    let start_ns = now_ns();
    let mut stop = Stop::new(limit);
    let mut n = 0u64;
    while !stop.done(n) {
        n += 1;
        fill_stamped(&mut buf, n);
        w.write_all(&buf)?;
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
    }
    Ok((start_ns, n))
}

/// One run of one case.
pub struct Run {
    /// CLOCK_MONOTONIC ns of the producer's first write.
    pub start_ns: u64,
    /// Items the producer sent.
    pub items: u64,
    /// What the consumer measured.
    pub report: BenchReport,
}

/// Runs `case` once with items of `size` until `limit`, pausing `gap`
/// after each item; the stream's `buffers` (and those of `ideal-kind`) come
/// from `alloc`.
pub fn run_case(
    alloc: &dmabuf::Allocator,
    case: &str,
    size: u64,
    buffers: usize,
    limit: Limit,
    gap: Option<Duration>,
) -> BoxResult<Run> {
    // Sockets and fifos in a directory only this user can enter.
    let dir = crate::tempdir::PrivateDir::new()?;
    let scratch = |tag: &str, size: u64| dir.join(&format!("{tag}-{size}"));
    match case {
        "dmabuf" | "dmabuf-poll" => {
            let path = scratch(case, size);
            let _ = std::fs::remove_file(&path);
            let listener = Listener::bind(&path)?;
            let mut w = Worker::spawn(case, &path.to_string_lossy(), size, buffers)?;
            w.wait_ready()?;
            let channels = stream::accept_consumers(&listener, 1, PEER_TIMEOUT)?;
            let opts = stream::ProduceOptions {
                progress: false,
                gap,
                timeout: PEER_TIMEOUT,
            };
            let p = stream::produce(channels, alloc, size, buffers, limit, opts)?;
            if let Some(e) = p.error {
                return Err(e.into());
            }
            Ok(Run {
                start_ns: p.start_ns,
                items: p.items,
                report: w.report()?,
            })
        }
        "ideal" => {
            let ring = Ring::create(size, buffers)?;
            ideal::prepare(&ring);
            let w = Worker::spawn("ideal", &ring.handle(), size, buffers)?;
            produce_ideal(&ring, w, size, buffers, limit, gap)
        }
        "ideal-kind" => {
            // The backend's buffers, allocated as the stream allocates its
            // own; from here on nothing of the library is used.
            let bufs = (0..buffers)
                .map(|i| alloc.allocate(size, &format!("bench-ideal-{i}")))
                .collect::<dmabuf::Result<Vec<_>>>()?;
            let (ring, hand_over) = Ring::over(&bufs, size)?;
            ideal::prepare(&ring);
            let path = scratch("ideal-kind", size);
            let _ = std::fs::remove_file(&path);
            let l = std::os::unix::net::UnixListener::bind(&path)?;
            let w = Worker::spawn("ideal-kind", &path.to_string_lossy(), size, buffers)?;
            hand_over.send(&l, PEER_TIMEOUT)?;
            drop(hand_over);
            let _ = std::fs::remove_file(&path);
            produce_ideal(&ring, w, size, buffers, limit, gap)
        }
        "pipe" => {
            let path = scratch("fifo", size);
            let _ = std::fs::remove_file(&path);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )?;
            let mut w = Worker::spawn("pipe", &path.to_string_lossy(), size, buffers)?;
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            let _ = rustix::pipe::fcntl_setpipe_size(&f, PIPE_BYTES as usize);
            w.wait_ready()?;
            let r = write_items(&f, size, limit, gap);
            drop(f);
            let _ = std::fs::remove_file(&path);
            let (start_ns, items) = r?;
            Ok(Run {
                start_ns,
                items,
                report: w.report()?,
            })
        }
        "unix" => {
            let path = scratch("unix", size);
            let _ = std::fs::remove_file(&path);
            let l = std::os::unix::net::UnixListener::bind(&path)?;
            let mut w = Worker::spawn("unix", &path.to_string_lossy(), size, buffers)?;
            let (s, _) = l.accept()?;
            let _ = std::fs::remove_file(&path);
            w.wait_ready()?;
            let r = write_items(&s, size, limit, gap);
            drop(s);
            let (start_ns, items) = r?;
            Ok(Run {
                start_ns,
                items,
                report: w.report()?,
            })
        }
        #[cfg(feature = "iceoryx2")]
        "iceoryx2" => {
            let name = format!("dmabuf-bench-{}-{size}", std::process::id());
            let prod = super::iox::Producer::new(&name, size)?;
            let mut w = Worker::spawn("iceoryx2", &name, size, buffers)?;
            w.wait_ready()?;
            let (start_ns, items) = prod.run(size, limit, gap)?;
            Ok(Run {
                start_ns,
                items,
                report: w.report()?,
            })
        }
        #[cfg(not(feature = "iceoryx2"))]
        "iceoryx2" => Err("built without the `iceoryx2` feature".into()),
        "touch" => {
            let mut bufs: Vec<Vec<u8>> =
                (0..MIN_BUFFERS).map(|_| vec![0u8; size as usize]).collect();
            let start_ns = now_ns();
            let mut stop = Stop::new(limit);
            let mut n = 0u64;
            while !stop.done(n) {
                n += 1;
                let b = &mut bufs[(n % MIN_BUFFERS as u64) as usize];
                fill_stamped(b, n);
                check_stamped(std::hint::black_box(b), n)?;
            }
            Ok(Run {
                start_ns,
                items: n,
                report: BenchReport {
                    items: n,
                    bytes: n * size,
                    end_ns: now_ns(),
                    latency: None,
                },
            })
        }
        c => Err(format!("unknown case {c}").into()),
    }
}

/// Runs the producer of an ideal ring, once its consumer `w` is ready.
fn produce_ideal(
    ring: &Ring,
    mut w: Worker,
    size: u64,
    buffers: usize,
    limit: Limit,
    gap: Option<Duration>,
) -> BoxResult<Run> {
    w.wait_ready()?;
    let (start_ns, items) = ideal::produce(ring, size, buffers, limit, gap)?;
    Ok(Run {
        start_ns,
        items,
        report: w.report()?,
    })
}

/// Runs the raw wake-up reference: `n` ping-pongs, one every `gap`.
pub fn run_wake(kind: WakeKind, n: u64, gap: Duration) -> BoxResult<LatSummary> {
    let name = match kind {
        WakeKind::Futex => "wake-futex",
        WakeKind::EventFd => "wake-eventfd",
    };
    let dir = crate::tempdir::PrivateDir::new()?;
    let rig = WakeRig::new(dir.join(&format!("{name}-{n}")))?;
    let mut w = Worker::spawn(name, &rig.handle(), n, MIN_BUFFERS)?;
    rig.hand_over(PEER_TIMEOUT)?;
    w.wait_ready()?;
    ideal::ping(&rig, kind, n, gap)?;
    w.report()?
        .latency
        .ok_or_else(|| "the wake-up worker reported no latency".into())
}

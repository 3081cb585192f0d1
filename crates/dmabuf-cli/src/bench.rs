//! `dmabuf bench`: the stream against the other ways of moving the same
//! bytes between two processes, side by side in one run.
//!
//! For each item size every case does the same work: the producer writes
//! every byte of the item (the pattern of `pattern`, with an 8-byte
//! CLOCK_MONOTONIC stamp in front where the transport has no header of its
//! own) and the consumer, another process, reads every byte and checks
//! it. The cases:
//!
//! 1. **dmabuf** — this library's streaming pool (4 buffers, zero copy);
//! 2. **pipe** — a named pipe (1 MiB pipe buffer);
//! 3. **unix** — a Unix stream socket;
//! 4. **iceoryx2** — publish-subscribe with a loaned sample and an event
//!    notification per item (feature `iceoryx2`);
//! 5. **bound** — one process writing then reading the same bytes (4
//!    rotating buffers): what touching the bytes costs, with no transfer.
//!
//! Throughput is the bytes over the time from the producer's first write
//! to the consumer's last check; each row also gives the ratio to the
//! bound. Handoff latency is measured for a small item sent every 500 µs:
//! from the producer's send to the item being in the consumer's hands.
//! Targets are reported, never asserted.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use dmabuf::share::Listener;

use crate::pattern;
use crate::stream::{self, ConsumerReport, Limit};

/// Arguments of `dmabuf bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run (two sizes, 0.1 s per case) for tests and smoke checks.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per case and size (default 1, or 0.1 with --quick).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = crate::seconds::positive)]
    pub seconds: Option<Duration>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of the throughputs to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// (internal) run as the consumer of this case.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    /// (internal) where the worker meets the producer.
    #[arg(long, hide = true)]
    pub path: Option<String>,
    /// (internal) the item size of the worker (16 bytes to 1 GiB: the
    /// sizes the bench uses).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(16..=1 << 30))]
    pub size: Option<u64>,
}

const CASES: [&str; 5] = ["dmabuf", "pipe", "unix", "iceoryx2", "bound"];
const LATENCY_SIZE: u64 = 4096;
const LATENCY_GAP: Duration = Duration::from_micros(500);
/// The first items include the consumer's warm-up: their latencies are
/// not recorded.
const WARMUP: u64 = 50;
/// Longest wait for the other side of a case.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ns() -> u64 {
    dmabuf::fence::monotonic_ns()
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One measured cell.
#[derive(Debug, Clone, serde::Serialize)]
struct Cell {
    case: &'static str,
    size: u64,
    /// GiB/s, or None with the reason in `missing`.
    gib_s: Option<f64>,
    ratio_to_bound: Option<f64>,
    items: u64,
    missing: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Latency {
    case: &'static str,
    samples: usize,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    missing: Option<String>,
}

// ---- the consumer side (a child process) ---------------------------------

/// Stamps the first 8 bytes of an item that carries the pattern elsewhere.
fn stamp(buf: &mut [u8]) {
    buf[..8].copy_from_slice(&now_ns().to_le_bytes());
}

fn check_stamped(buf: &[u8], seq: u64) -> BoxResult<u64> {
    if let Some(at) = pattern::check(&buf[8..], seq) {
        return Err(format!("item {seq}: byte {} breaks the pattern", at + 8).into());
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&buf[..8]);
    Ok(u64::from_le_bytes(t))
}

fn read_items(mut r: impl Read, size: u64) -> BoxResult<ConsumerReport> {
    let mut buf = vec![0u8; size as usize];
    let mut rep = ConsumerReport::default();
    loop {
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..])? {
                0 if got == 0 => {
                    rep.end_ns = now_ns();
                    return Ok(rep);
                }
                0 => return Err("stream ended inside an item".into()),
                n => got += n,
            }
        }
        let arrived = now_ns();
        let sent = check_stamped(&buf, rep.items + 1)?;
        rep.record(size, arrived.saturating_sub(sent), WARMUP);
    }
}

fn ready() -> BoxResult<()> {
    outln!("ready")?;
    crate::out::flush()?;
    Ok(())
}

fn worker(kind: &str, path: &str, size: u64) -> BoxResult<ConsumerReport> {
    match kind {
        "dmabuf" => {
            ready()?;
            let channel = stream::connect(Path::new(path), PEER_TIMEOUT)?;
            let r = stream::consume(channel, PEER_TIMEOUT, WARMUP);
            match r.error {
                Some(e) => Err(e.into()),
                None => Ok(r),
            }
        }
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
        "iceoryx2" => iox::consume(path, size),
        k => Err(format!("unknown bench worker '{k}'").into()),
    }
}

// ---- the producer side ----------------------------------------------------

struct Worker {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(kind: &str, path: &str, size: u64) -> BoxResult<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "--worker", kind, "--path", path, "--size"])
            .arg(size.to_string())
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
            return Err(format!("bench worker did not start ('{}')", line.trim()).into());
        }
        Ok(())
    }

    fn report(mut self) -> BoxResult<ConsumerReport> {
        let mut s = String::new();
        self.out.read_to_string(&mut s)?;
        let st = self.child.wait()?;
        if !st.success() {
            return Err(format!("bench worker failed ({st})").into());
        }
        Ok(serde_json::from_str(s.trim())?)
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
    let start = Instant::now();
    let start_ns = now_ns();
    let mut n = 0u64;
    while !done(limit, n, start) {
        n += 1;
        pattern::fill(&mut buf[8..], n);
        stamp(&mut buf);
        w.write_all(&buf)?;
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
    }
    Ok((start_ns, n))
}

fn done(limit: Limit, n: u64, start: Instant) -> bool {
    match limit {
        Limit::Count(c) => n >= c,
        Limit::Time(d) => start.elapsed() >= d,
    }
}

struct Run {
    start_ns: u64,
    items: u64,
    report: ConsumerReport,
}

fn run_case(case: &str, size: u64, limit: Limit, gap: Option<Duration>) -> BoxResult<Run> {
    // Sockets and fifos in a directory only this user can enter.
    let dir = crate::tempdir::PrivateDir::new()?;
    let scratch = |tag: &str, size: u64| dir.join(&format!("{tag}-{size}"));
    match case {
        "dmabuf" => {
            let path = scratch("dmabuf", size);
            let _ = std::fs::remove_file(&path);
            let listener = Listener::bind(&path)?;
            let mut w = Worker::spawn("dmabuf", &path.to_string_lossy(), size)?;
            w.wait_ready()?;
            let alloc = dmabuf::Allocator::auto();
            let channels = stream::accept_consumers(&listener, 1, PEER_TIMEOUT)?;
            let opts = stream::ProduceOptions {
                progress: false,
                gap,
                timeout: PEER_TIMEOUT,
            };
            let p = stream::produce(channels, &alloc, size, 4, limit, opts)?;
            if let Some(e) = p.error {
                return Err(e.into());
            }
            Ok(Run {
                start_ns: p.start_ns,
                items: p.items,
                report: w.report()?,
            })
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
            let mut w = Worker::spawn("pipe", &path.to_string_lossy(), size)?;
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            let _ = rustix::pipe::fcntl_setpipe_size(&f, 1 << 20);
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
            let mut w = Worker::spawn("unix", &path.to_string_lossy(), size)?;
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
            let prod = iox::Producer::new(&name, size)?;
            let mut w = Worker::spawn("iceoryx2", &name, size)?;
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
        "bound" => {
            let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; size as usize]).collect();
            let start = Instant::now();
            let start_ns = now_ns();
            let mut n = 0u64;
            while !done(limit, n, start) {
                n += 1;
                let b = &mut bufs[(n % 4) as usize];
                pattern::fill(&mut b[8..], n);
                stamp(b);
                check_stamped(std::hint::black_box(b), n)?;
            }
            Ok(Run {
                start_ns,
                items: n,
                report: ConsumerReport {
                    items: n,
                    bytes: n * size,
                    handoff: Default::default(),
                    end_ns: now_ns(),
                    error: None,
                },
            })
        }
        c => Err(format!("unknown case {c}").into()),
    }
}

fn throughput(case: &'static str, size: u64, secs: Duration) -> Cell {
    let mut cell = Cell {
        case,
        size,
        gib_s: None,
        ratio_to_bound: None,
        items: 0,
        missing: None,
    };
    match run_case(case, size, Limit::Time(secs), None) {
        Ok(r) if r.report.items == r.items => {
            let t = r.report.end_ns.saturating_sub(r.start_ns) as f64 / 1e9;
            cell.gib_s = Some(r.report.bytes as f64 / t.max(1e-9) / (1u64 << 30) as f64);
            cell.items = r.items;
        }
        Ok(r) => {
            cell.missing = Some(format!(
                "the consumer checked {} of {} items",
                r.report.items, r.items
            ))
        }
        Err(e) => cell.missing = Some(e.to_string()),
    }
    cell
}

fn latency(case: &'static str, samples: u64) -> Latency {
    let mut l = Latency {
        case,
        samples: 0,
        p50_us: None,
        p99_us: None,
        missing: None,
    };
    match run_case(case, LATENCY_SIZE, Limit::Count(samples), Some(LATENCY_GAP)) {
        Ok(r) => {
            // The first WARMUP items were not recorded.
            let (p50, _, p99) = r.report.handoff.percentiles_us();
            l.samples = r.report.handoff.len() as usize;
            l.p50_us = Some(p50);
            l.p99_us = Some(p99);
        }
        Err(e) => l.missing = Some(e.to_string()),
    }
    l
}

/// Runs `dmabuf bench`.
pub fn run(args: Args) -> crate::CliResult {
    if let Some(kind) = &args.worker {
        let path = args.path.as_deref().ok_or("--worker needs --path")?;
        let size = args.size.ok_or("--worker needs --size")?;
        let rep = worker(kind, path, size)?;
        crate::out::json(&rep, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    let secs = args.seconds.unwrap_or(if args.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    });
    let sizes: Vec<u64> = if args.quick {
        vec![4 << 10, 1 << 20]
    } else {
        (0..7).map(|i| 4096u64 << (2 * i)).collect()
    };
    let samples = if args.quick { 100 } else { 1000 };
    let backend = dmabuf::Allocator::auto();
    let mut cells = Vec::new();
    for &size in &sizes {
        let mut row: Vec<Cell> = CASES.iter().map(|c| throughput(c, size, secs)).collect();
        let bound = row.iter().find(|c| c.case == "bound").and_then(|c| c.gib_s);
        for c in &mut row {
            c.ratio_to_bound = c.gib_s.zip(bound).map(|(a, b)| a / b);
        }
        if !args.json {
            err!(".");
        }
        cells.extend(row);
    }
    if !args.json {
        errln!();
    }
    let lats: Vec<Latency> = ["dmabuf", "iceoryx2", "unix"]
        .iter()
        .map(|c| latency(c, samples))
        .collect();
    let machine = machine();
    if args.json {
        let v = serde_json::json!({
            "machine": machine,
            "backend": backend.backend().to_string(),
            "seconds_per_case": secs.as_secs_f64(),
            "throughput": cells,
            "latency": lats,
            "targets": targets(&cells, &lats),
        });
        crate::out::json(&v, true)?;
    } else {
        print_table(
            &machine,
            &backend.backend().to_string(),
            &sizes,
            &cells,
            &lats,
        )?;
    }
    if let Some(p) = &args.plot {
        std::fs::write(p, svg(&sizes, &cells))?;
        if !args.json {
            outln!("plot written to {}", p.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn get<'a>(cells: &'a [Cell], case: &str, size: u64) -> Option<&'a Cell> {
    cells.iter().find(|c| c.case == case && c.size == size)
}

/// The targets, as measured (never asserted).
fn targets(cells: &[Cell], lats: &[Latency]) -> serde_json::Value {
    let big: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.case == "dmabuf" && c.size >= 1 << 20)
        .collect();
    let min_ratio = big
        .iter()
        .filter_map(|c| c.ratio_to_bound)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))));
    let min_vs_unix = big
        .iter()
        .filter_map(|c| Some(c.gib_s? / get(cells, "unix", c.size)?.gib_s?))
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))));
    let p50 = |case| lats.iter().find(|l| l.case == case).and_then(|l| l.p50_us);
    let lat_ratio = p50("dmabuf").zip(p50("iceoryx2")).map(|(a, b)| a / b);
    serde_json::json!({
        "stream_vs_bound_at_1MiB_plus_min": min_ratio,
        "stream_vs_bound_goal": 0.85,
        "stream_vs_unix_at_1MiB_plus_min": min_vs_unix,
        "stream_vs_unix_goal": 5.0,
        "handoff_p50_vs_iceoryx2": lat_ratio,
        "handoff_p50_vs_iceoryx2_goal": 2.0,
    })
}

fn print_table(
    machine: &str,
    backend: &str,
    sizes: &[u64],
    cells: &[Cell],
    lats: &[Latency],
) -> BoxResult<()> {
    outln!("machine: {machine}; dmabuf backend: {backend}")?;
    outln!("throughput, GiB/s (ratio to the one-process bound):")?;
    out!("{:>8}", "size")?;
    for c in CASES {
        out!(" {c:>17}")?;
    }
    outln!()?;
    for &s in sizes {
        out!("{:>8}", dmabuf::units::human_size(s))?;
        for c in CASES {
            match get(cells, c, s) {
                Some(Cell {
                    gib_s: Some(g),
                    ratio_to_bound: Some(r),
                    ..
                }) => out!(" {:>9.2} ({:>4.0}%)", g, r * 100.0)?,
                Some(Cell { gib_s: Some(g), .. }) => out!(" {g:>17.2}")?,
                _ => out!(" {:>17}", "missing")?,
            }
        }
        outln!()?;
    }
    let mut reasons: Vec<String> = cells
        .iter()
        .filter_map(|c| c.missing.as_ref().map(|m| format!("{}: {m}", c.case)))
        .collect();
    reasons.dedup();
    for r in reasons {
        outln!("  missing {r}")?;
    }
    outln!(
        "handoff latency of a {} item every {} µs:",
        dmabuf::units::human_size(LATENCY_SIZE),
        LATENCY_GAP.as_micros()
    )?;
    for l in lats {
        match (l.p50_us, l.p99_us) {
            (Some(a), Some(b)) => outln!(
                "  {:>9}: p50 {a:7.1} µs, p99 {b:7.1} µs ({} samples)",
                l.case,
                l.samples
            )?,
            _ => outln!(
                "  {:>9}: missing: {}",
                l.case,
                l.missing.as_deref().unwrap_or("?")
            )?,
        }
    }
    let t = targets(cells, lats);
    let f = |k: &str| t[k].as_f64().map_or("n/a".into(), |v| format!("{v:.2}"));
    outln!(
        "targets: stream/bound at ≥1 MiB {} (goal ≥ 0.85); stream/unix {} (goal ≥ 5); handoff p50 ours/iceoryx2 {} (goal ≤ 2)",
        f("stream_vs_bound_at_1MiB_plus_min"),
        f("stream_vs_unix_at_1MiB_plus_min"),
        f("handoff_p50_vs_iceoryx2")
    )?;
    Ok(())
}

/// A hand-written SVG: throughput against size (log scale), one line per
/// case.
fn svg(sizes: &[u64], cells: &[Cell]) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 150.0, 30.0, 50.0);
    let max = cells
        .iter()
        .filter_map(|c| c.gib_s)
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let n = sizes.len().max(2) as f64 - 1.0;
    let x = |i: usize| l + (w - l - r) * i as f64 / n;
    let y = |v: f64| h - b - (h - t - b) * v / max;
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{l}\" y=\"18\">throughput between two processes (GiB/s) by item size</text>\n"
    );
    s += &format!(
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - b,
        w - r,
        h - b,
        h - b
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            l - 6.0,
            y(v) + 4.0
        );
    }
    for (i, &sz) in sizes.iter().enumerate() {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(i),
            h - b + 18.0,
            dmabuf::units::human_size(sz)
        );
    }
    for (k, case) in CASES.iter().enumerate() {
        let pts: Vec<String> = sizes
            .iter()
            .enumerate()
            .filter_map(|(i, &sz)| {
                get(cells, case, sz)
                    .and_then(|c| c.gib_s)
                    .map(|g| format!("{:.1},{:.1}", x(i), y(g)))
            })
            .collect();
        if !pts.is_empty() {
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
                colors[k],
                pts.join(" ")
            );
        }
        let ly = t + 20.0 * k as f64 + 10.0;
        s += &format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{case}{}</text>\n",
            w - r + 10.0,
            w - r + 30.0,
            colors[k],
            w - r + 36.0,
            ly + 4.0,
            if pts.is_empty() { " (missing)" } else { "" }
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(feature = "iceoryx2")]
mod iox {
    //! The iceoryx2 case: publish-subscribe of `[u8]` samples loaned from
    //! iceoryx2's shared memory, with an event per sample to wake the
    //! subscriber (id 0: a sample, id 1: the end).

    use std::time::{Duration, Instant};

    use iceoryx2::port::listener::Listener;
    use iceoryx2::port::notifier::Notifier;
    use iceoryx2::port::publisher::Publisher;
    use iceoryx2::prelude::*;

    use super::{check_stamped, done, now_ns, ready, stamp, BoxResult};
    use crate::pattern;
    use crate::stream::{ConsumerReport, Limit};

    const END: usize = 1;

    type Data =
        iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>;
    type Events = iceoryx2::service::port_factory::event::PortFactory<ipc::Service>;

    fn services(name: &str, size: u64) -> BoxResult<(Node<ipc::Service>, Data, Events)> {
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new().create::<ipc::Service>()?;
        let ps = node
            .service_builder(&format!("{name}/data").as_str().try_into()?)
            .publish_subscribe::<[u8]>()
            .subscriber_max_buffer_size(4)
            .history_size(0)
            .enable_safe_overflow(false)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()?;
        let ev = node
            .service_builder(&format!("{name}/event").as_str().try_into()?)
            .event()
            .open_or_create()?;
        let _ = size;
        Ok((node, ps, ev))
    }

    pub struct Producer {
        _node: Node<ipc::Service>,
        publisher: Publisher<ipc::Service, [u8], ()>,
        notifier: Notifier<ipc::Service>,
    }

    impl Producer {
        pub fn new(name: &str, size: u64) -> BoxResult<Producer> {
            let (node, ps, ev) = services(name, size)?;
            let publisher = ps
                .publisher_builder()
                .initial_max_slice_len(size as usize)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()?;
            let notifier = ev.notifier_builder().create()?;
            Ok(Producer {
                _node: node,
                publisher,
                notifier,
            })
        }

        pub fn run(&self, size: u64, limit: Limit, gap: Option<Duration>) -> BoxResult<(u64, u64)> {
            let start = Instant::now();
            let start_ns = now_ns();
            let mut n = 0u64;
            while !done(limit, n, start) {
                n += 1;
                // `loan_slice` hands out a zeroed sample (iceoryx2 has no
                // safe way to an uninitialised one other than an element-wise
                // closure, which measured slower); then every byte is written.
                let mut sample = self.publisher.loan_slice(size as usize)?;
                pattern::fill(&mut sample.payload_mut()[8..], n);
                stamp(sample.payload_mut());
                sample.send()?;
                self.notifier.notify()?;
                if let Some(g) = gap {
                    std::thread::sleep(g);
                }
            }
            self.notifier
                .notify_with_custom_event_id(EventId::new(END))?;
            Ok((start_ns, n))
        }
    }

    pub fn consume(name: &str, size: u64) -> BoxResult<ConsumerReport> {
        let (_node, ps, ev) = services(name, size)?;
        let subscriber = ps.subscriber_builder().create()?;
        let listener: Listener<ipc::Service> = ev.listener_builder().create()?;
        ready()?;
        let mut rep = ConsumerReport::default();
        let mut end = false;
        loop {
            listener.timed_wait(
                |a| {
                    if a.id.as_value() == END {
                        end = true
                    }
                },
                Duration::from_secs(30),
            )?;
            while let Some(sample) = subscriber.receive()? {
                let arrived = now_ns();
                let p = sample.payload();
                if p.len() as u64 != size {
                    return Err(format!("sample of {} bytes, expected {size}", p.len()).into());
                }
                let sent = check_stamped(p, rep.items + 1)?;
                rep.record(size, arrived.saturating_sub(sent), WARMUP);
            }
            if end {
                rep.end_ns = now_ns();
                return Ok(rep);
            }
        }
    }
}

//! `dmabuf stream`: a producer and consumers in separate processes, passing
//! buffers through this library's streaming pool.
//!
//! Without `--role`, the command is the producer and spawns the consumers
//! itself (re-executing this program with `--role consumer --socket
//! PATH`); with `--role producer|consumer --socket PATH` each side can be
//! started by hand. The producer writes every byte of each item inside a
//! write window; each consumer reads every byte inside a read window and
//! checks the pattern (see `pattern`). The handoff latency is the time
//! from the producer's submit to the item being ready in the consumer
//! (CLOCK_MONOTONIC, measured by the consumer).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use dmabuf::share::pool::{Consumer, Producer};
use dmabuf::share::{Channel, Listener};
use dmabuf::{Allocate, Allocator, ErrorKind, Fence};

use crate::pattern;

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
    #[arg(long, conflicts_with = "seconds")]
    pub count: Option<u64>,
    /// Stop after this many seconds (the default is 3 s unless --count).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Buffers in the pool.
    #[arg(long, default_value_t = 4)]
    pub buffers: usize,
    /// Consumer processes.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Memory to allocate from: auto, heap, heap:NAME, udmabuf or portable.
    #[arg(long, default_value = "auto", value_parser = crate::backend::parse)]
    pub backend: crate::backend::Choice,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run only one side (with --socket).
    #[arg(long, value_enum, requires = "socket")]
    pub role: Option<Role>,
    /// The socket path the producer listens at.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// What a consumer measured.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ConsumerReport {
    /// Items received and checked.
    pub items: u64,
    /// Bytes read and checked.
    pub bytes: u64,
    /// Handoff latencies (ns), one per item.
    pub latencies_ns: Vec<u64>,
    /// CLOCK_MONOTONIC ns when the last item was checked.
    pub end_ns: u64,
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
}

/// When the producer stops.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many items.
    Count(u64),
    /// After this long.
    Time(Duration),
}

/// Runs the producer side on `listener` for `consumers` consumers.
pub fn produce(
    listener: &Listener,
    consumers: usize,
    alloc: &Allocator,
    size: u64,
    buffers: usize,
    limit: Limit,
    progress: bool,
) -> Result<ProducerReport, dmabuf::Error> {
    produce_paced(
        listener, consumers, alloc, size, buffers, limit, progress, None,
    )
}

/// [`produce`], pausing `gap` after each item (for latency runs).
#[allow(clippy::too_many_arguments)]
pub fn produce_paced(
    listener: &Listener,
    consumers: usize,
    alloc: &Allocator,
    size: u64,
    buffers: usize,
    limit: Limit,
    progress: bool,
    gap: Option<Duration>,
) -> Result<ProducerReport, dmabuf::Error> {
    let mut channels = Vec::new();
    for _ in 0..consumers {
        channels.push(listener.accept(Some(Duration::from_secs(30)))?);
    }
    let bufs = (0..buffers)
        .map(|i| alloc.allocate(size, &format!("stream-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let size = bufs[0].size().min(size);
    let maps = bufs
        .iter()
        .map(|b| b.map())
        .collect::<Result<Vec<_>, _>>()?;
    let mut producer = Producer::new(bufs, channels)?;
    let start = Instant::now();
    let start_ns = dmabuf::fence::monotonic_ns();
    let mut items = 0u64;
    let mut bar = Progress::new(progress, limit);
    loop {
        let done = match limit {
            Limit::Count(n) => items >= n,
            Limit::Time(d) => start.elapsed() >= d,
        };
        if done {
            break;
        }
        let lease = producer.acquire(Some(Duration::from_secs(30)))?;
        {
            let mut w = maps[lease.slot()].write()?;
            let bytes = w.bytes_mut().into_subslice(0..size as usize).map_err(|e| {
                dmabuf::Error::invalid(
                    "stream",
                    format!("pool slot {}", lease.slot()),
                    e.to_string(),
                )
            })?;
            pattern::fill_volatile(bytes, items + 1);
            w.end()?;
        }
        lease.submit(size, Fence::Signalled)?;
        items += 1;
        bar.update(items, start.elapsed(), items * size);
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
    }
    bar.finish();
    producer.finish(Some(Duration::from_secs(30)))?;
    Ok(ProducerReport {
        backend: alloc.backend().to_string(),
        backend_reason: alloc.reason().to_string(),
        items,
        bytes: items * size,
        start_ns,
    })
}

/// Runs a consumer: connects to `socket` (waiting up to 30 s for it to
/// appear), reads and checks every item until the producer finishes.
pub fn consume(socket: &Path) -> Result<ConsumerReport, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let channel = loop {
        match Channel::connect(socket) {
            Ok(c) => break c,
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Os)
                    && t0.elapsed() < Duration::from_secs(30) =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut consumer = Consumer::new(channel, Some(Duration::from_secs(30)))?;
    let maps = consumer
        .buffers()
        .iter()
        .map(|b| b.map_read_only())
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = ConsumerReport::default();
    while let Some(item) = consumer.next(Some(Duration::from_secs(60)))? {
        let len = item.len() as usize;
        {
            let r = maps[item.slot() as usize].read()?;
            if let Some(at) = pattern::check_volatile(r.bytes().subslice(0..len)?, item.seq()) {
                return Err(format!(
                    "item {} in buffer {}: byte {at} breaks the pattern",
                    item.seq(),
                    item.slot()
                )
                .into());
            }
        }
        report.latencies_ns.push(item.handoff().as_nanos() as u64);
        report.items += 1;
        report.bytes += len as u64;
        item.release(Fence::Signalled)?;
    }
    report.end_ns = dmabuf::fence::monotonic_ns();
    Ok(report)
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

    fn update(&mut self, items: u64, elapsed: Duration, bytes: u64) {
        if !self.on
            || self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let frac = match self.limit {
            Limit::Count(n) => items as f64 / n.max(1) as f64,
            Limit::Time(d) => elapsed.as_secs_f64() / d.as_secs_f64().max(1e-9),
        }
        .min(1.0);
        let w = 30;
        let full = (frac * w as f64) as usize;
        let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-9) / (1u64 << 30) as f64;
        eprint!(
            "\r[{}{}] {:3.0}% {items} items {rate:.2} GiB/s ",
            "#".repeat(full),
            " ".repeat(w - full),
            frac * 100.0
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.on && self.last.is_some() {
            eprint!("\r{}\r", " ".repeat(70));
        }
    }
}

/// A socket path in the temporary directory unique to this process.
pub fn temp_socket(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dmabuf-{tag}-{}.sock", std::process::id()))
}

/// Spawns `n` consumer processes of this program for `socket`; their
/// stdout carries their JSON report.
fn spawn_consumers(n: usize, socket: &Path) -> std::io::Result<Vec<std::process::Child>> {
    let exe = std::env::current_exe()?;
    (0..n)
        .map(|_| {
            Command::new(&exe)
                .args(["stream", "--role", "consumer", "--json", "--socket"])
                .arg(socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .collect()
}

/// Runs `dmabuf stream`.
pub fn run(args: Args) -> crate::CliResult {
    if args.buffers == 0 || args.consumers == 0 {
        return Err("--buffers and --consumers must be at least 1".into());
    }
    let limit = match (args.count, args.seconds) {
        (Some(n), _) => Limit::Count(n),
        (None, Some(s)) if s > 0.0 => Limit::Time(Duration::from_secs_f64(s)),
        (None, Some(_)) => return Err("--seconds must be positive".into()),
        (None, None) => Limit::Time(Duration::from_secs(3)),
    };
    match args.role {
        Some(Role::Consumer) => {
            let socket = args.socket.as_deref().expect("clap requires --socket");
            let mut r = consume(socket)?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let (p50, p90, p99) = pattern::percentiles_us(&mut r.latencies_ns);
                println!(
                    "consumer: {} items, {} bytes checked; handoff p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs",
                    r.items, r.bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Role::Producer) => {
            let socket = args.socket.clone().expect("clap requires --socket");
            let alloc = args.backend.allocator()?;
            let listener = Listener::bind(&socket)?;
            let progress = std::io::stderr().is_terminal();
            let p = produce(
                &listener,
                args.consumers,
                &alloc,
                args.size,
                args.buffers,
                limit,
                progress,
            )?;
            let secs = (dmabuf::fence::monotonic_ns() - p.start_ns) as f64 / 1e9;
            print_report(&args, &p, &mut [], secs)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let alloc = args.backend.allocator()?;
            let socket = temp_socket("stream");
            let _ = std::fs::remove_file(&socket);
            let listener = Listener::bind(&socket)?;
            let children = spawn_consumers(args.consumers, &socket)?;
            let progress = std::io::stderr().is_terminal() && !args.json;
            let produced = produce(
                &listener,
                args.consumers,
                &alloc,
                args.size,
                args.buffers,
                limit,
                progress,
            );
            let mut reports = Vec::new();
            let mut failures = Vec::new();
            for c in children {
                let out = c.wait_with_output()?;
                if !out.status.success() {
                    failures.push(format!("a consumer failed ({})", out.status));
                    continue;
                }
                match serde_json::from_slice::<ConsumerReport>(&out.stdout) {
                    Ok(r) => reports.push(r),
                    Err(e) => failures.push(format!("a consumer's report is unreadable: {e}")),
                }
            }
            let p = produced?;
            if !failures.is_empty() {
                return Err(failures.join("; ").into());
            }
            for r in &reports {
                if r.items != p.items {
                    return Err(format!(
                        "a consumer checked {} items of the {} sent",
                        r.items, p.items
                    )
                    .into());
                }
            }
            let end = reports.iter().map(|r| r.end_ns).max().unwrap_or(p.start_ns);
            let secs = end.saturating_sub(p.start_ns) as f64 / 1e9;
            let mut lat: Vec<u64> = reports
                .iter()
                .flat_map(|r| r.latencies_ns.iter().copied())
                .collect();
            print_report(&args, &p, &mut lat, secs)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(
    args: &Args,
    p: &ProducerReport,
    lat: &mut [u64],
    secs: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let gib_s = p.bytes as f64 / secs.max(1e-9) / (1u64 << 30) as f64;
    let items_s = p.items as f64 / secs.max(1e-9);
    let (p50, p90, p99) = pattern::percentiles_us(lat);
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
            "items_per_s": items_s,
            "handoff_us": { "p50": p50, "p90": p90, "p99": p99 },
            "verified": !lat.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("backend:    {} ({})", p.backend, p.backend_reason);
        println!(
            "items:      {} × {} to {} consumer(s), {} buffers, in {secs:.2} s",
            p.items,
            pattern::human_size(args.size),
            args.consumers,
            args.buffers
        );
        println!("throughput: {gib_s:.2} GiB/s per consumer, {items_s:.0} items/s");
        if !lat.is_empty() {
            println!("handoff:    p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs");
            println!("verified:   every byte of every item, in every consumer");
        }
    }
    Ok(())
}

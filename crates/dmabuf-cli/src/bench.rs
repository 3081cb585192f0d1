//! `dmabuf bench`: the stream against the real limit of this machine and
//! against the other ways of moving the same bytes between two processes,
//! side by side in one run.
//!
//! For each item size every case does the same work: the producer writes
//! every byte of the item (the pattern of `pattern`; where the item
//! carries its own CLOCK_MONOTONIC stamp, written over its first 8 bytes)
//! and the consumer, another process, reads every byte and checks it,
//! all with the same volatile loops. The cases:
//!
//! 1. **ideal** — the reference: a bare shared-memory ring of the same
//!    number of buffers between two processes, slot handoff by atomics
//!    and a futex wake-up only when the other side sleeps, written with
//!    `rustix` and those loops alone (see `bench::ideal`). Every
//!    throughput is reported as a ratio to it.
//! 2. **ideal-kind** — the same bare ring, with its buffers of the kind
//!    the stream uses: one buffer of the backend per slot (system heap,
//!    udmabuf or memfd), allocated as the stream allocates its own, each
//!    mapped by the bench itself and, on dma-bufs, every write and every
//!    check bracketed by `DMA_BUF_IOCTL_SYNC` START and END as the kernel's
//!    CPU-access rule asks. What the memory kind costs beyond `ideal` is
//!    the kernel's; what `dmabuf` costs beyond `ideal-kind` is the
//!    stream's own (the per-item table shows both).
//! 3. **dmabuf** — this library's streaming pool (zero copy);
//! 4. **pipe** — a named pipe (1 MiB pipe buffer);
//! 5. **unix** — a Unix stream socket;
//! 6. **iceoryx2** — publish-subscribe with a loaned sample and an event
//!    notification per item (feature `iceoryx2`);
//! 7. **touch** — one process writing then checking the same bytes (4
//!    rotating buffers): what touching the bytes costs, with no transfer.
//!
//! **Buffers.** The pool and the ideal rings get the same number of
//! buffers at each size: enough to hold as many bytes in flight as the
//! pipe's buffer (1 MiB, `--in-flight`), and at least 4 — 256 at 4 KiB,
//! 64 at 16 KiB, 16 at 64 KiB, 4 from 256 KiB up. A pipe lets its writer
//! run 1 MiB ahead of its reader; a ring of 4 small buffers would make
//! both sides hand over (and often wake each other) every few
//! microseconds, which measures the buffer count, not the transport.
//! `--in-flight 0` gives 4 buffers at every size. Touch and the latency
//! runs use 4.
//!
//! Throughput is the bytes over the time from the producer's first write
//! to the consumer's last check. With `--repeat N` every cell runs N times
//! (the repeats taken in turns, so that a noisy moment hits every case);
//! the median is reported, with the spread (max − min) over the median.
//! A ratio to a reference is the median of the rounds' ratios: in each
//! round the cases of a size run one after the other, the references
//! first, so each ratio is taken side by side, and a machine whose speed
//! drifts between rounds moves both of its terms.
//!
//! Handoff latency is measured for a small item sent every 500 µs, so
//! nothing queues and each item costs one wake-up plus the transport: from
//! the producer's stamp to the item being checked-in in the consumer. The
//! consumer keeps it in a bounded histogram (hdrhistogram) and reports
//! percentiles. The latency runs also time **dmabuf-poll**: the same
//! stream with its consumer never sleeping on the ring's futex word
//! (`Consumer::set_word_sleep(0)`), only on its wake-up pipe and socket
//! together, to show side by side what the word sleep saves. The raw
//! wake-up reference (`wake-futex`, `wake-eventfd`) runs at the same pace
//! with nothing else: the parent stamps the time into shared memory and
//! wakes the sleeping child, which stops the clock as it wakes. Every
//! latency here is one way, from a stamp taken just before the item is
//! published (after it was written) to the consumer's clock read as it
//! holds the item (before its check). At this pace each item meets a
//! consumer asleep; the ideal's consumer and the library's go to sleep at
//! once after a pause (each spins 5 µs first only while its items come
//! close together), like the raw reference's child.
//! Latencies are reported as ratios to the faster of the two (by its
//! median p50), each the median of the rounds' ratios: a round's latency
//! against the same round's wake-up. The targets' ratios of the stream to
//! `pipe` and `unix` are taken the same way, round by round.
//!
//! The project's own targets are shown only with `--targets` (and in
//! `docs/benchmarks.md`); nothing here asserts performance.

mod cases;
mod ideal;
#[cfg(feature = "iceoryx2")]
mod iox;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::stream::Limit;
use ideal::WakeKind;

/// Arguments of `dmabuf bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run (two sizes, 0.1 s per case) for tests and smoke checks.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per case and size (default 1, or 0.1 with --quick; at
    /// most 3600).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = crate::seconds::positive)]
    pub seconds: Option<Duration>,
    /// Memory for the stream's buffers:
    /// auto (the system heap, else udmabuf, else portable), heap,
    /// heap:NAME, udmabuf or portable.
    #[arg(long, default_value = "auto", value_parser = crate::backend::parse)]
    pub backend: crate::backend::Choice,
    /// Run every cell this many times; report the median and the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Also show the project's performance targets against the results.
    #[arg(long)]
    pub targets: bool,
    /// Bytes the pool and the ideal rings hold in flight: each gets
    /// max(4, BYTES / item size) buffers, the same count for all
    /// (default: the pipe's buffer, 1048576; 0: 4 buffers at every size;
    /// at most 1048576).
    #[arg(long, value_name = "BYTES", default_value_t = cases::PIPE_BYTES, value_parser = clap::value_parser!(u64).range(0..=cases::PIPE_BYTES))]
    pub in_flight: u64,
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
    /// sizes the bench uses), or the ping-pongs of a wake-up worker.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(16..=1 << 30))]
    pub size: Option<u64>,
    /// (internal) the buffers of the worker's ring.
    #[arg(long, hide = true, default_value_t = cases::MIN_BUFFERS as u32, value_parser = clap::value_parser!(u32).range(1..=dmabuf::share::pool::MAX_POOL_BUFFERS as i64))]
    pub buffers: u32,
}

/// The throughput cases, reference first.
pub const CASES: [&str; 7] = [
    "ideal",
    "ideal-kind",
    "dmabuf",
    "pipe",
    "unix",
    "iceoryx2",
    "touch",
];
const LATENCY_CASES: [&str; 5] = ["dmabuf", "dmabuf-poll", "ideal", "unix", "iceoryx2"];
const LATENCY_SIZE: u64 = 4096;
const LATENCY_GAP: Duration = Duration::from_micros(500);

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One throughput cell: a case at a size, over the repeats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    case: &'static str,
    size: u64,
    /// Buffers of the pool or ring of this cell (ideal, ideal-kind and dmabuf; 4 for
    /// touch; None for the others, which buffer on their own).
    buffers: Option<usize>,
    /// Median GiB/s, or None with the reason in `missing`.
    gib_s: Option<f64>,
    /// Smallest and largest GiB/s of the runs.
    gib_s_min: Option<f64>,
    gib_s_max: Option<f64>,
    /// (max − min) / median, in percent.
    spread_pct: Option<f64>,
    /// Runs that produced a number.
    runs: usize,
    /// Ratio to `ideal` at the same size: the median of the rounds'
    /// ratios (see the module documentation).
    ratio_to_ideal: Option<f64>,
    /// Ratio to `ideal-kind` at the same size (the ring on buffers of the
    /// stream's kind), taken the same way.
    ratio_to_ideal_kind: Option<f64>,
    /// Nanoseconds per item at the median throughput.
    ns_per_item: Option<f64>,
    /// Items moved in the median run.
    items: u64,
    missing: Option<String>,
}

/// One handoff-latency row, over the repeats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    case: &'static str,
    /// Samples in all runs.
    samples: u64,
    runs: usize,
    /// Medians over the runs of each run's p50 and p99, µs.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// Smallest and largest p50 of the runs, µs.
    p50_us_min: Option<f64>,
    p50_us_max: Option<f64>,
    /// Ratios to the raw wake-up's p50 and p99 (medians of the rounds'
    /// ratios).
    p50_to_wake: Option<f64>,
    p99_to_wake: Option<f64>,
    missing: Option<String>,
}

/// The stream's throughput against a copying peer (`pipe`, `unix`) at
/// one size: the median of the rounds' ratios, as for `ideal`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRatio {
    size: u64,
    peer: &'static str,
    ratio: Option<f64>,
}

/// The copying peers the targets compare the stream with.
const PEERS: [&str; 2] = ["pipe", "unix"];

/// Everything one `dmabuf bench` measured.
pub struct Results {
    machine: render::Machine,
    backend: String,
    seconds: f64,
    repeat: u32,
    in_flight: u64,
    sizes: Vec<u64>,
    cells: Vec<Cell>,
    /// `dmabuf` against each of [`PEERS`] at each size.
    peer_ratios: Vec<PeerRatio>,
    latency: Vec<Latency>,
    wake: Vec<Latency>,
}

fn get<'a>(cells: &'a [Cell], case: &str, size: u64) -> Option<&'a Cell> {
    cells.iter().find(|c| c.case == case && c.size == size)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One throughput run: GiB/s and items, or why not.
fn throughput_once(
    alloc: &dmabuf::Allocator,
    case: &str,
    size: u64,
    buffers: usize,
    secs: Duration,
) -> Result<(f64, u64), String> {
    let limit = Limit::Time(secs);
    let r = cases::run_case(alloc, case, size, buffers, limit, None).map_err(|e| e.to_string())?;
    if r.report.items != r.items {
        return Err(format!(
            "the consumer checked {} of {} items",
            r.report.items, r.items
        ));
    }
    let t = r.report.end_ns.saturating_sub(r.start_ns) as f64 / 1e9;
    Ok((
        r.report.bytes as f64 / t.max(1e-9) / (1u64 << 30) as f64,
        r.items,
    ))
}

fn cell(
    case: &'static str,
    size: u64,
    buffers: Option<usize>,
    runs: &[Result<(f64, u64), String>],
) -> Cell {
    let ok: Vec<(f64, u64)> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let mut g: Vec<f64> = ok.iter().map(|r| r.0).collect();
    let med = median(&mut g);
    let min = g.first().copied();
    let max = g.last().copied();
    let items = med
        .and_then(|m| ok.iter().find(|r| r.0 == m).map(|r| r.1))
        .unwrap_or_else(|| ok.first().map_or(0, |r| r.1));
    Cell {
        case,
        size,
        buffers,
        gib_s: med,
        gib_s_min: min,
        gib_s_max: max,
        spread_pct: med
            .zip(min.zip(max))
            .map(|(m, (lo, hi))| (hi - lo) / m.max(1e-12) * 100.0),
        runs: g.len(),
        ratio_to_ideal: None,
        ratio_to_ideal_kind: None,
        ns_per_item: med.map(|m| size as f64 / (m * (1u64 << 30) as f64) * 1e9),
        items,
        missing: runs
            .iter()
            .find_map(|r| r.as_ref().err().cloned())
            .filter(|_| g.is_empty()),
    }
}

/// The median over the rounds of `runs[i] / reference[i]`, the rounds
/// where both have a number (see the module documentation).
fn paired_ratio(
    runs: &[Result<(f64, u64), String>],
    reference: &[Result<(f64, u64), String>],
) -> Option<f64> {
    let mut q: Vec<f64> = runs
        .iter()
        .zip(reference)
        .filter_map(|(a, b)| match (a, b) {
            (Ok((a, _)), Ok((b, _))) if *b > 0.0 => Some(a / b),
            _ => None,
        })
        .collect();
    median(&mut q)
}

/// `dmabuf` against each of [`PEERS`] at each size, from the runs of
/// every cell (`tp`, laid out as in [`run`]: size-major, [`CASES`] order).
fn peer_ratios(sizes: &[u64], tp: &[Vec<Result<(f64, u64), String>>]) -> Vec<PeerRatio> {
    let runs = |si: usize, case: &str| {
        CASES
            .iter()
            .position(|c| *c == case)
            .and_then(|ci| tp.get(si * CASES.len() + ci))
            .map_or(&[][..], Vec::as_slice)
    };
    let mut v = Vec::new();
    for (si, &size) in sizes.iter().enumerate() {
        for peer in PEERS {
            v.push(PeerRatio {
                size,
                peer,
                ratio: paired_ratio(runs(si, "dmabuf"), runs(si, peer)),
            });
        }
    }
    v
}

/// The median over the rounds of `value(runs[i]) / value(reference[i])`,
/// the rounds where both have a number: a latency against the raw
/// wake-up, side by side in each round.
fn paired_latency_ratio(
    runs: &[Result<cases::LatSummary, String>],
    reference: &[Result<cases::LatSummary, String>],
    value: fn(&cases::LatSummary) -> u64,
) -> Option<f64> {
    let mut q: Vec<f64> = runs
        .iter()
        .zip(reference)
        .filter_map(|(a, b)| match (a, b) {
            (Ok(a), Ok(b)) if value(b) > 0 => Some(value(a) as f64 / value(b) as f64),
            _ => None,
        })
        .collect();
    median(&mut q)
}

fn latency_row(case: &'static str, runs: &[Result<cases::LatSummary, String>]) -> Latency {
    let ok: Vec<cases::LatSummary> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut p50: Vec<f64> = ok.iter().map(|s| us(s.p50_ns)).collect();
    let mut p99: Vec<f64> = ok.iter().map(|s| us(s.p99_ns)).collect();
    let m50 = median(&mut p50);
    Latency {
        case,
        samples: ok.iter().map(|s| s.count).sum(),
        runs: ok.len(),
        p50_us: m50,
        p99_us: median(&mut p99),
        p50_us_min: p50.first().copied(),
        p50_us_max: p50.last().copied(),
        p50_to_wake: None,
        p99_to_wake: None,
        missing: if ok.is_empty() {
            runs.iter().find_map(|r| r.as_ref().err().cloned())
        } else {
            None
        },
    }
}

fn latency_once(
    alloc: &dmabuf::Allocator,
    case: &str,
    samples: u64,
) -> Result<cases::LatSummary, String> {
    let limit = Limit::Count(samples);
    let buffers = cases::MIN_BUFFERS;
    let r = cases::run_case(alloc, case, LATENCY_SIZE, buffers, limit, Some(LATENCY_GAP))
        .map_err(|e| e.to_string())?;
    r.report
        .latency
        .ok_or_else(|| "the consumer reported no latency".to_string())
}

/// Buffers of `case` at `size`: the in-flight rule for the pool and the
/// ideal rings, 4 for touch; none for pipe, unix and iceoryx2, which
/// buffer on their own.
fn cell_buffers(case: &str, size: u64, in_flight: u64) -> Option<usize> {
    match case {
        "ideal" | "ideal-kind" | "dmabuf" => Some(cases::buffers_for(size, in_flight)),
        "touch" => Some(cases::MIN_BUFFERS),
        _ => None,
    }
}

/// Runs `dmabuf bench`.
pub fn run(args: Args) -> crate::CliResult {
    if let Some(kind) = &args.worker {
        let path = args.path.as_deref().ok_or("--worker needs --path")?;
        let size = args.size.ok_or("--worker needs --size")?;
        let rep = cases::worker(kind, path, size, args.buffers as usize)?;
        crate::out::json(&rep, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    let secs = args.seconds.unwrap_or(if args.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    });
    if secs > Duration::from_secs(3600) {
        return Err(format!("--seconds {}: at most 3600 per case", secs.as_secs_f64()).into());
    }
    let sizes: Vec<u64> = if args.quick {
        vec![4 << 10, 1 << 20]
    } else {
        (0..7).map(|i| 4096u64 << (2 * i)).collect()
    };
    let samples = if args.quick { 100 } else { 1000 };
    let repeat = args.repeat as usize;
    let backend = args.backend.allocator()?;

    let steps = (repeat * (sizes.len() * CASES.len() + LATENCY_CASES.len() + 2)) as u64;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(steps),
        if crate::out::quiet() {
            indicatif::ProgressDrawTarget::hidden()
        } else {
            indicatif::ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let mut tp: Vec<Vec<Result<(f64, u64), String>>> = vec![Vec::new(); sizes.len() * CASES.len()];
    let mut lat: Vec<Vec<Result<cases::LatSummary, String>>> =
        vec![Vec::new(); LATENCY_CASES.len() + 2];
    for round in 0..repeat {
        for (si, &size) in sizes.iter().enumerate() {
            for (ci, case) in CASES.iter().enumerate() {
                bar.set_message(format!(
                    "run {}/{repeat}: {case} {}",
                    round + 1,
                    dmabuf::units::human_size(size)
                ));
                let buffers =
                    cell_buffers(case, size, args.in_flight).unwrap_or(cases::MIN_BUFFERS);
                tp[si * CASES.len() + ci]
                    .push(throughput_once(&backend, case, size, buffers, secs));
                bar.inc(1);
            }
        }
        for (k, kind) in [WakeKind::Futex, WakeKind::EventFd].into_iter().enumerate() {
            bar.set_message(format!("run {}/{repeat}: wake-up {kind:?}", round + 1));
            lat[k].push(cases::run_wake(kind, samples, LATENCY_GAP).map_err(|e| e.to_string()));
            bar.inc(1);
        }
        for (k, case) in LATENCY_CASES.iter().enumerate() {
            bar.set_message(format!("run {}/{repeat}: latency {case}", round + 1));
            lat[k + 2].push(latency_once(&backend, case, samples));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let mut cells = Vec::new();
    for (si, &size) in sizes.iter().enumerate() {
        let mut row: Vec<Cell> = CASES
            .iter()
            .enumerate()
            .map(|(ci, case)| {
                let buffers = cell_buffers(case, size, args.in_flight);
                cell(case, size, buffers, &tp[si * CASES.len() + ci])
            })
            .collect();
        let runs_of = |case: &str| {
            let ci = CASES.iter().position(|c| *c == case).unwrap_or(0);
            &tp[si * CASES.len() + ci]
        };
        for (ci, c) in row.iter_mut().enumerate() {
            let own = &tp[si * CASES.len() + ci];
            c.ratio_to_ideal = paired_ratio(own, runs_of("ideal"));
            c.ratio_to_ideal_kind = paired_ratio(own, runs_of("ideal-kind"));
        }
        cells.extend(row);
    }
    let wake: Vec<Latency> = ["wake-futex", "wake-eventfd"]
        .into_iter()
        .zip(&lat)
        .map(|(c, r)| latency_row(c, r))
        .collect();
    // The reference is the faster raw wake-up (by its median p50); each
    // ratio is the median of the rounds' ratios to it.
    let reference = (0..wake.len())
        .filter(|&k| wake[k].p50_us.is_some())
        .min_by(|&a, &b| {
            wake[a]
                .p50_us
                .unwrap_or(f64::MAX)
                .total_cmp(&wake[b].p50_us.unwrap_or(f64::MAX))
        });
    let mut latency: Vec<Latency> = LATENCY_CASES
        .iter()
        .zip(&lat[2..])
        .map(|(c, r)| latency_row(c, r))
        .collect();
    if let Some(k) = reference {
        for (l, runs) in latency.iter_mut().zip(&lat[2..]) {
            l.p50_to_wake = paired_latency_ratio(runs, &lat[k], |s| s.p50_ns);
            l.p99_to_wake = paired_latency_ratio(runs, &lat[k], |s| s.p99_ns);
        }
    }
    let peer_ratios = peer_ratios(&sizes, &tp);
    let results = Results {
        machine: render::Machine::this(),
        backend: backend.backend().to_string(),
        seconds: secs.as_secs_f64(),
        repeat: args.repeat,
        in_flight: args.in_flight,
        sizes,
        cells,
        peer_ratios,
        latency,
        wake,
    };
    if args.json {
        crate::out::json(&render::json(&results, args.targets), true)?;
    } else {
        render::table(&results, args.targets)?;
    }
    if let Some(p) = &args.plot {
        std::fs::write(p, render::svg(&results.sizes, &results.cells))?;
        if !args.json {
            outln!("plot written to {}", p.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let c = cell(
            "pipe",
            4096,
            None,
            &[Ok((1.0, 10)), Err("x".into()), Ok((3.0, 30)), Ok((2.0, 20))],
        );
        assert_eq!((c.gib_s, c.items, c.runs), (Some(2.0), 20, 3));
        assert_eq!(c.spread_pct, Some(100.0));
        assert_eq!(c.missing, None);
        let c = cell("pipe", 4096, None, &[Err("gone".into())]);
        assert_eq!((c.gib_s, c.missing.as_deref()), (None, Some("gone")));
    }

    #[test]
    fn ratios_are_medians_of_the_rounds_side_by_side() {
        // The machine's speed moving between rounds: two rounds of three
        // say 0.5, the medians of each side alone (4 and 4) would say 1.
        let reference = [Ok((2.0, 1)), Ok((8.0, 1)), Ok((4.0, 1))];
        let runs = [Ok((1.0, 1)), Ok((4.0, 1)), Ok((8.0, 1))];
        assert_eq!(paired_ratio(&runs, &reference), Some(0.5));
        // Rounds where either side has no number are left out.
        let runs = [Ok((1.0, 1)), Err("x".into()), Ok((3.0, 1))];
        let reference = [Err("y".into()), Ok((1.0, 1)), Ok((2.0, 1))];
        assert_eq!(paired_ratio(&runs, &reference), Some(1.5));
        assert_eq!(paired_ratio(&runs[..1], &reference[..1]), None);
    }

    #[test]
    fn ratios_to_the_copying_peers_and_the_wake_up_are_taken_side_by_side() {
        // Two sizes; at 4 KiB the machine's speed drifts between rounds
        // and dmabuf is half of pipe in each of them (the medians alone
        // would say 1), at 1 MiB unix has no number.
        let sizes = [4096, 1 << 20];
        let mut tp: Vec<Vec<Result<(f64, u64), String>>> = vec![Vec::new(); 2 * CASES.len()];
        let at = |si: usize, case: &str| {
            si * CASES.len() + CASES.iter().position(|c| *c == case).unwrap()
        };
        tp[at(0, "dmabuf")] = vec![Ok((1.0, 1)), Ok((4.0, 1)), Ok((8.0, 1))];
        tp[at(0, "pipe")] = vec![Ok((2.0, 1)), Ok((8.0, 1)), Ok((4.0, 1))];
        tp[at(0, "unix")] = vec![Ok((0.5, 1)), Ok((2.0, 1)), Ok((4.0, 1))];
        tp[at(1, "dmabuf")] = vec![Ok((3.0, 1))];
        tp[at(1, "unix")] = vec![Err("gone".into())];
        let r = peer_ratios(&sizes, &tp);
        let get = |size, peer| {
            r.iter()
                .find(|p| p.size == size && p.peer == peer)
                .unwrap()
                .ratio
        };
        assert_eq!(get(4096, "pipe"), Some(0.5));
        assert_eq!(get(4096, "unix"), Some(2.0));
        assert_eq!(get(1 << 20, "unix"), None);
        assert_eq!(get(1 << 20, "pipe"), None);
        // Latency: the same, per round, against the wake-up's same round.
        let lat = |p50, p99| {
            Ok(cases::LatSummary {
                count: 1,
                p50_ns: p50,
                p99_ns: p99,
                max_ns: p99,
            })
        };
        let wake = [lat(10, 20), lat(40, 80), lat(20, 40)];
        let ours = [lat(15, 10), lat(60, 40), lat(30, 20)];
        assert_eq!(paired_latency_ratio(&ours, &wake, |s| s.p50_ns), Some(1.5));
        assert_eq!(paired_latency_ratio(&ours, &wake, |s| s.p99_ns), Some(0.5));
        assert_eq!(
            paired_latency_ratio(&ours[..1], &[Err("x".into())], |s| s.p50_ns),
            None
        );
    }

    #[test]
    fn the_pool_and_the_ideal_hold_the_pipes_bytes_in_flight() {
        let pipe = cases::PIPE_BYTES;
        for (size, want) in [(4096, 256), (16 << 10, 64), (64 << 10, 16), (256 << 10, 4)] {
            assert_eq!(cell_buffers("ideal", size, pipe), Some(want), "{size}");
            assert_eq!(cell_buffers("ideal-kind", size, pipe), Some(want), "{size}");
            assert_eq!(cell_buffers("dmabuf", size, pipe), Some(want), "{size}");
        }
        // At least 4, whatever the size; 4 everywhere with no in-flight rule.
        assert_eq!(cell_buffers("dmabuf", 16 << 20, pipe), Some(4));
        assert_eq!(cell_buffers("ideal", 4096, 0), Some(4));
        assert_eq!(cell_buffers("touch", 4096, pipe), Some(4));
        assert_eq!(cell_buffers("pipe", 4096, pipe), None);
    }
}

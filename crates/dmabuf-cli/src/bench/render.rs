//! How `dmabuf bench` shows its results: a table for people, JSON for
//! programs, an SVG plot, and (behind `--targets`) the project's targets.

use super::{get, BoxResult, Cell, Latency, Results, CASES, LATENCY_GAP, LATENCY_SIZE};

/// The JSON schema version of `dmabuf bench --json`.
pub const SCHEMA_VERSION: u32 = 4;

/// The columns of the throughput table (`ideal-kind` has its own, the
/// per-item table).
const TABLE_CASES: [&str; 6] = ["ideal", "dmabuf", "pipe", "unix", "iceoryx2", "touch"];

/// The machine the bench ran on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
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
        Machine { cpu, cores, kernel }
    }
}

/// A throughput in the unit that suits it: MiB/s below 1 GiB/s.
pub fn rate(gib_s: f64) -> String {
    if gib_s < 1.0 {
        format!("{:.0} MiB/s", gib_s * 1024.0)
    } else {
        format!("{gib_s:.2} GiB/s")
    }
}

fn min_of(v: impl Iterator<Item = f64>) -> Option<f64> {
    v.fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))))
}

/// The project's targets, as measured in this run.
pub fn targets(r: &Results) -> serde_json::Value {
    fn ours(r: &Results, pred: impl Fn(u64) -> bool) -> impl Iterator<Item = &Cell> {
        r.cells
            .iter()
            .filter(move |c| c.case == "dmabuf" && pred(c.size))
    }
    let vs = |size: u64, peer: &str| {
        r.peer_ratios
            .iter()
            .find(|p| p.size == size && p.peer == peer)
            .and_then(|p| p.ratio)
    };
    let lat = r.latency.iter().find(|l| l.case == "dmabuf");
    serde_json::json!({
        "ideal_ratio_from_64KiB_min": min_of(ours(r, |s| s >= 64 << 10).filter_map(|c| c.ratio_to_ideal)),
        "ideal_ratio_from_64KiB_goal": 0.9,
        "ideal_ratio_at_4KiB": ours(r, |s| s == 4 << 10).find_map(|c| c.ratio_to_ideal),
        "ideal_ratio_at_4KiB_goal": 0.8,
        "pipe_ratio_at_4KiB": vs(4 << 10, "pipe"),
        "pipe_ratio_at_4KiB_goal": 1.0,
        "unix_ratio_from_1MiB_min": min_of(ours(r, |s| s >= 1 << 20).filter_map(|c| vs(c.size, "unix"))),
        "unix_ratio_from_1MiB_goal": 2.0,
        "handoff_p50_to_wake": lat.and_then(|l| l.p50_to_wake),
        "handoff_p50_to_wake_goal": 1.5,
        "handoff_p99_to_wake": lat.and_then(|l| l.p99_to_wake),
        "handoff_p99_to_wake_goal": 2.0,
    })
}

/// The JSON document.
pub fn json(r: &Results, with_targets: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "machine": r.machine,
        "backend": r.backend,
        "seconds_per_case": r.seconds,
        "repeat": r.repeat,
        "in_flight_bytes": r.in_flight,
        "throughput": r.cells,
        "latency": r.latency,
        "wake": r.wake,
    });
    if with_targets {
        v["targets"] = targets(r);
    }
    v
}

/// The table for people.
pub fn table(r: &Results, with_targets: bool) -> BoxResult<()> {
    let m = &r.machine;
    outln!(
        "machine: {}, {} cores, Linux {}; dmabuf backend: {}",
        m.cpu,
        m.cores,
        m.kernel,
        r.backend
    )?;
    outln!(
        "throughput, median of {} run(s) of {} s (ratio to ideal: the median of the rounds' ratios;\n± the spread, (max − min) / median, in %):",
        r.repeat,
        r.seconds
    )?;
    out!("{:>8}", "size")?;
    for c in TABLE_CASES {
        out!(" {c:>24}")?;
    }
    outln!()?;
    for &s in &r.sizes {
        out!("{:>8}", dmabuf::units::human_size(s))?;
        for c in TABLE_CASES {
            match get(&r.cells, c, s) {
                Some(cell @ Cell { gib_s: Some(g), .. }) => {
                    let ratio = cell
                        .ratio_to_ideal
                        .map_or(String::new(), |x| format!("{x:.2}×"));
                    out!(
                        " {:>12} {:>5} ±{:>3.0}%",
                        rate(*g),
                        ratio,
                        cell.spread_pct.unwrap_or(0.0)
                    )?;
                }
                _ => out!(" {:>24}", "missing")?,
            }
        }
        outln!()?;
    }
    outln!("  (ideal: a bare shared-memory ring between two processes, no library;")?;
    outln!("   touch: one process writing and checking the same bytes, no transfer)")?;
    let counts: Vec<String> = r
        .sizes
        .iter()
        .filter_map(|&s| {
            get(&r.cells, "dmabuf", s)
                .and_then(|c| c.buffers)
                .map(|n| format!("{} at {}", n, dmabuf::units::human_size(s)))
        })
        .collect();
    outln!(
        "  buffers of dmabuf and the ideal rings (the same): {} ({} bytes in flight, at least 4)",
        counts.join(", "),
        r.in_flight
    )?;
    let mut reasons: Vec<String> = r
        .cells
        .iter()
        .filter_map(|c| c.missing.as_ref().map(|m| format!("{}: {m}", c.case)))
        .collect();
    reasons.dedup();
    for x in reasons {
        outln!("  missing {x}")?;
    }
    per_item_table(r)?;
    outln!(
        "handoff latency of a {} item every {} µs (from the producer's stamp to the",
        dmabuf::units::human_size(LATENCY_SIZE),
        LATENCY_GAP.as_micros()
    )?;
    outln!("consumer holding it; no queueing at this pace: a wake-up plus the transport):")?;
    for l in r.wake.iter().chain(r.latency.iter()) {
        latency_line(l)?;
    }
    if with_targets {
        let t = targets(r);
        outln!("targets (see docs/benchmarks.md):")?;
        for (k, goal, cmp) in [
            (
                "ideal_ratio_from_64KiB_min",
                "ideal_ratio_from_64KiB_goal",
                "≥",
            ),
            ("ideal_ratio_at_4KiB", "ideal_ratio_at_4KiB_goal", "≥"),
            ("pipe_ratio_at_4KiB", "pipe_ratio_at_4KiB_goal", "≥"),
            ("unix_ratio_from_1MiB_min", "unix_ratio_from_1MiB_goal", "≥"),
            ("handoff_p50_to_wake", "handoff_p50_to_wake_goal", "≤"),
            ("handoff_p99_to_wake", "handoff_p99_to_wake_goal", "≤"),
        ] {
            let v = t[k].as_f64().map_or("n/a".into(), |v| format!("{v:.2}"));
            outln!("  {k}: {v} (goal {cmp} {})", t[goal])?;
        }
    }
    Ok(())
}

/// Time per item of `ideal`, `ideal-kind` and `dmabuf` at each size: what
/// the buffers' kind costs beyond the bare ring, and what the stream adds
/// beyond that.
fn per_item_table(r: &Results) -> BoxResult<()> {
    outln!(
        "time per item ({} buffers; medians, ns): the kind's cost beyond ideal, the stream's beyond ideal-kind:",
        r.backend
    )?;
    outln!(
        "{:>8} {:>10} {:>10} {:>10} {:>11} {:>11} {:>12}",
        "size",
        "ideal",
        "ideal-kind",
        "dmabuf",
        "kind adds",
        "stream adds",
        "dmabuf/kind"
    )?;
    let ns = |case: &str, s: u64| get(&r.cells, case, s).and_then(|c| c.ns_per_item);
    let show = |v: Option<f64>| v.map_or("missing".to_string(), |v| format!("{v:.0}"));
    for &s in &r.sizes {
        let (ideal, kind, ours) = (ns("ideal", s), ns("ideal-kind", s), ns("dmabuf", s));
        let ratio = get(&r.cells, "dmabuf", s)
            .and_then(|c| c.ratio_to_ideal_kind)
            .map_or("missing".to_string(), |x| format!("{x:.2}×"));
        outln!(
            "{:>8} {:>10} {:>10} {:>10} {:>11} {:>11} {:>12}",
            dmabuf::units::human_size(s),
            show(ideal),
            show(kind),
            show(ours),
            show(kind.zip(ideal).map(|(a, b)| a - b)),
            show(ours.zip(kind).map(|(a, b)| a - b)),
            ratio
        )?;
    }
    outln!("  (ideal-kind: the bare ring on one buffer of this backend per slot, each write and")?;
    outln!(
        "   check bracketed by DMA_BUF_IOCTL_SYNC on dma-bufs; differences of medians can be < 0;"
    )?;
    outln!("   dmabuf/kind: the median of the rounds' ratios)")?;
    Ok(())
}

fn latency_line(l: &Latency) -> BoxResult<()> {
    match (l.p50_us, l.p99_us) {
        (Some(a), Some(b)) => {
            let ratio = match (l.p50_to_wake, l.p99_to_wake) {
                (Some(x), Some(y)) => format!(" = {x:.2}× / {y:.2}× the raw wake-up"),
                _ => String::new(),
            };
            outln!(
                "  {:>12}: p50 {a:7.1} µs, p99 {b:7.1} µs ({} samples){ratio}",
                l.case,
                l.samples
            )?;
        }
        _ => outln!(
            "  {:>12}: missing: {}",
            l.case,
            l.missing.as_deref().unwrap_or("?")
        )?,
    }
    Ok(())
}

/// A hand-written SVG: throughput against size (log scale), one line per
/// case.
pub fn svg(sizes: &[u64], cells: &[Cell]) -> String {
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
    let colors = [
        "#000000", "#8c564b", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f",
    ];
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
                colors[k % colors.len()],
                pts.join(" ")
            );
        }
        let ly = t + 20.0 * k as f64 + 10.0;
        s += &format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{case}{}</text>\n",
            w - r + 10.0,
            w - r + 30.0,
            colors[k % colors.len()],
            w - r + 36.0,
            ly + 4.0,
            if pts.is_empty() { " (missing)" } else { "" }
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_scale_their_unit() {
        assert_eq!(rate(0.5), "512 MiB/s");
        assert_eq!(rate(0.001), "1 MiB/s");
        assert_eq!(rate(2.5), "2.50 GiB/s");
    }
}

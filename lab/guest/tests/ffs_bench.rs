//! What zero-copy buys (issue 9, step 5): the same bytes through the
//! FunctionFS copy path (a portable buffer: the library `write()`s it to
//! the endpoint) and the DMABUF path (a udmabuf: `FUNCTIONFS_DMABUF_
//! TRANSFER`), same buffer sizes, same transfer sizes, in one run,
//! alternating, several times. Measured per run: throughput (first
//! transfer queued → last fence signalled, the host reading meanwhile) and
//! the gadget side's CPU seconds per GiB: the process's CPU time
//! (`CLOCK_PROCESS_CPUTIME_ID`, user + system of all threads, what
//! `getrusage(RUSAGE_SELF)` adds up) minus the host-reader thread's own
//! (`CLOCK_THREAD_CPUTIME_ID`). Printed as `BENCH` lines; the test checks
//! that every byte arrived and that each path is the one intended, not a
//! speed (TCG timings are not hardware timings). Test names start with
//! `bench_`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dmabuf::endpoint::functionfs::FunctionFsEndpoint;
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{Allocate, Buffer, Portable, Udmabuf};
use dmabuf_lab_guest::bytes::{self, first_difference, pattern};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::usb::{Gadget, FFS_DIR};
use rustix::time::{clock_gettime, ClockId};

const BUF_BYTES: usize = 1 << 20;
const BUFFERS: usize = 4;
const TOTAL: usize = 32 << 20;
const RUNS: usize = 3;

static GADGET: OnceLock<Gadget> = OnceLock::new();

fn cpu_s(id: ClockId) -> f64 {
    let t = clock_gettime(id);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

struct Run {
    mib_s: f64,
    cpu_s_per_gib: f64,
}

fn one_run(g: &'static Gadget, bufs: &[Buffer], expect_zero_copy: bool) -> Run {
    let mut ep = FunctionFsEndpoint::open(format!("{FFS_DIR}/ep1"), Direction::ToDevice).unwrap();
    let atts: Vec<_> = bufs.iter().map(|b| ep.attach(b).unwrap()).collect();
    for a in &atts {
        let p = ep.path_of(a).unwrap();
        assert_eq!(p == DataPath::ZeroCopy, expect_zero_copy, "{p}");
    }
    let host = std::thread::spawn(move || {
        let t0 = cpu_s(ClockId::ThreadCPUTime);
        let got = g.host_read_in(TOTAL, BUF_BYTES, Duration::from_secs(120));
        (got, cpu_s(ClockId::ThreadCPUTime) - t0)
    });
    let cpu0 = cpu_s(ClockId::ProcessCPUTime);
    let start = Instant::now();
    let mut fences = std::collections::VecDeque::new();
    for i in 0..TOTAL / BUF_BYTES {
        if fences.len() == BUFFERS {
            let f: dmabuf::Fence = fences.pop_front().unwrap();
            f.wait(Some(Duration::from_secs(60))).unwrap();
        }
        fences.push_back(
            ep.transfer(
                &atts[i % BUFFERS],
                BUF_BYTES as u64,
                TransferOptions::default(),
            )
            .unwrap(),
        );
    }
    for f in fences.drain(..) {
        f.wait(Some(Duration::from_secs(60))).unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_s(ClockId::ProcessCPUTime) - cpu0;
    let (got, host_cpu) = host.join().unwrap();
    let got = got.unwrap();
    drop(atts);
    drop(ep);
    assert_eq!(got.len(), TOTAL);
    let pats: Vec<Vec<u8>> = (0..BUFFERS)
        .map(|i| pattern(BUF_BYTES, i as u8 + 40))
        .collect();
    for (i, chunk) in got.chunks(BUF_BYTES).enumerate() {
        if chunk != &pats[i % BUFFERS][..] {
            panic!(
                "transfer {i}: first wrong byte at {:?}",
                first_difference(chunk, &pats[i % BUFFERS])
            );
        }
    }
    let gib = TOTAL as f64 / (1u64 << 30) as f64;
    Run {
        mib_s: TOTAL as f64 / (1 << 20) as f64 / elapsed,
        cpu_s_per_gib: (cpu - host_cpu).max(0.0) / gib,
    }
}

/// Prints a result line past libtest's output capture, so a plain lab run
/// shows it.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

#[test]
fn bench_functionfs_copy_path_vs_dmabuf_path() {
    require_lab();
    let g = GADGET.get_or_init(|| Gadget::setup().unwrap_or_else(|e| panic!("gadget setup: {e}")));
    let udmabuf = Udmabuf::open().unwrap();
    let zero: Vec<Buffer> = (0..BUFFERS)
        .map(|i| {
            udmabuf
                .allocate(BUF_BYTES as u64, &format!("bench-z{i}"))
                .unwrap()
        })
        .collect();
    let copy: Vec<Buffer> = (0..BUFFERS)
        .map(|i| {
            Portable
                .allocate(BUF_BYTES as u64, &format!("bench-c{i}"))
                .unwrap()
        })
        .collect();
    for (i, (z, c)) in zero.iter().zip(&copy).enumerate() {
        let data = pattern(BUF_BYTES, i as u8 + 40);
        bytes::write(z, &data).unwrap();
        bytes::write(c, &data).unwrap();
    }
    let (mut c_runs, mut z_runs) = (vec![], vec![]);
    for _ in 0..RUNS {
        c_runs.push(one_run(g, &copy, false));
        z_runs.push(one_run(g, &zero, true));
    }
    let pick = |v: &[Run], f: fn(&Run) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let (ct, ct_lo, ct_hi) = spread(&pick(&c_runs, |r| r.mib_s));
    let (zt, zt_lo, zt_hi) = spread(&pick(&z_runs, |r| r.mib_s));
    let (cc, cc_lo, cc_hi) = spread(&pick(&c_runs, |r| r.cpu_s_per_gib));
    let (zc, zc_lo, zc_hi) = spread(&pick(&z_runs, |r| r.cpu_s_per_gib));
    report(&format!(
        "BENCH ffs {RUNS} runs x {} MiB, {BUFFERS} x {} KiB buffers, 1 MiB transfers",
        TOTAL >> 20,
        BUF_BYTES >> 10
    ));
    report(&format!(
        "BENCH copy     MiB/s median {ct:.1} (min {ct_lo:.1}, max {ct_hi:.1}); \
         gadget CPU s/GiB median {cc:.2} (min {cc_lo:.2}, max {cc_hi:.2})"
    ));
    report(&format!(
        "BENCH dmabuf   MiB/s median {zt:.1} (min {zt_lo:.1}, max {zt_hi:.1}); \
         gadget CPU s/GiB median {zc:.2} (min {zc_lo:.2}, max {zc_hi:.2})"
    ));
    let ratios: Vec<(f64, f64)> = c_runs
        .iter()
        .zip(&z_runs)
        .map(|(c, z)| {
            (
                z.mib_s / c.mib_s,
                z.cpu_s_per_gib / c.cpu_s_per_gib.max(1e-9),
            )
        })
        .collect();
    for (i, (t, c)) in ratios.iter().enumerate() {
        report(&format!(
            "BENCH pair {i}: throughput x{t:.2}, CPU/GiB x{c:.3}"
        ));
    }
    report(&format!(
        "BENCH ratio    throughput x{:.2}, CPU/GiB x{:.3} (dmabuf / copy, medians)",
        zt / ct,
        zc / cc.max(1e-9)
    ));
}

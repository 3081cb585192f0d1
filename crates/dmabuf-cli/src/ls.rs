//! `dmabuf ls`: who holds which dma-buf.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dmabuf::inspect::{report, Changes, Filter, Scanner, Snapshot, SortKey};

/// Order of the buffer list.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Sort {
    /// Largest first.
    Size,
    /// Ascending inode number.
    Inode,
    /// By name, unnamed last.
    Name,
}

impl From<Sort> for SortKey {
    fn from(s: Sort) -> SortKey {
        match s {
            Sort::Size => SortKey::Size,
            Sort::Inode => SortKey::Inode,
            Sort::Name => SortKey::Name,
        }
    }
}

/// Arguments of `dmabuf ls`.
#[derive(clap::Args)]
pub struct Args {
    /// Only buffers held by this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only buffers of this exporter, such as udmabuf, system or portable
    /// (repeatable).
    #[arg(long = "exporter", value_name = "NAME")]
    pub exporters: Vec<String>,
    /// Order of the buffer list.
    #[arg(long, value_enum, default_value_t = Sort::Size)]
    pub sort: Sort,
    /// Print JSON (with --watch: one JSON object per line and round).
    #[arg(long)]
    pub json: bool,
    /// Scan again every SECONDS and show what appeared, grew or went away.
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
    pub watch: Option<Duration>,
    /// With --watch: stop after N rounds.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Where procfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where sysfs is mounted (debugfs is looked for at kernel/debug under it).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sys_root: PathBuf,
}

/// One line of `--watch --json` output.
#[derive(serde::Serialize)]
struct Round<'a> {
    round: u64,
    snapshot: &'a Snapshot,
    changes: Option<&'a Changes>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{s} seconds is not a positive interval"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs `dmabuf ls`.
pub fn run(args: Args) -> crate::CliResult {
    match run_inner(&args) {
        // `dmabuf ls | head` closes the pipe early: not a failure.
        Err(e) if is_broken_pipe(e.as_ref()) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn run_inner(args: &Args) -> crate::CliResult {
    let scanner = Scanner::new()
        .proc_root(&args.proc_root)
        .sys_root(&args.sys_root);
    let filter = Filter {
        pids: args.pids.clone(),
        exporters: args.exporters.clone(),
    };
    let scan = || -> Result<Snapshot, dmabuf::Error> {
        let mut snapshot = scanner.scan()?.filtered(&filter);
        snapshot.sort(args.sort.into());
        Ok(snapshot)
    };
    let mut out = io::stdout().lock();

    let Some(interval) = args.watch else {
        let snapshot = scan()?;
        if args.json {
            serde_json::to_writer_pretty(&mut out, &snapshot)?;
            writeln!(out)?;
        } else {
            out.write_all(report::render_snapshot(&snapshot).as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    };

    let mut previous: Option<Snapshot> = None;
    let mut round: u64 = 0;
    loop {
        round += 1;
        let snapshot = scan()?;
        let changes = previous.as_ref().map(|p| snapshot.changes_since(p));
        if args.json {
            let line = Round {
                round,
                snapshot: &snapshot,
                changes: changes.as_ref(),
            };
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else {
            if round > 1 {
                writeln!(
                    out,
                    "\n=== round {round}, {:.1} s later ===",
                    interval.as_secs_f64()
                )?;
            }
            out.write_all(report::render_snapshot(&snapshot).as_bytes())?;
            if let Some(changes) = &changes {
                writeln!(out)?;
                out.write_all(report::render_changes(changes).as_bytes())?;
            }
        }
        out.flush()?;
        if args.count.is_some_and(|n| round >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some(snapshot);
        std::thread::sleep(interval);
    }
}

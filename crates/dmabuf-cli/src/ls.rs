//! `dmabuf ls`: who holds which dma-buf.

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
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = crate::seconds::positive)]
    pub watch: Option<Duration>,
    /// With --watch: stop after N rounds.
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
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

/// Runs `dmabuf ls`.
/// `dmabuf ls | head` closes the pipe early: `main` takes the
/// [`OutputError`](crate::out::OutputError) of the next write as a quiet
/// end.
pub fn run(args: Args) -> crate::CliResult {
    run_inner(&args)
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

    let Some(interval) = args.watch else {
        let snapshot = scan()?;
        if args.json {
            crate::out::json(&snapshot, true)?;
        } else {
            out!("{}", report::render_snapshot(&snapshot))?;
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
            crate::out::json(&line, false)?;
        } else {
            if round > 1 {
                outln!(
                    "\n=== round {round}, {:.1} s later ===",
                    interval.as_secs_f64()
                )?;
            }
            out!("{}", report::render_snapshot(&snapshot))?;
            if let Some(changes) = &changes {
                outln!()?;
                out!("{}", report::render_changes(changes))?;
            }
        }
        crate::out::flush()?;
        if args.count.is_some_and(|n| round >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some(snapshot);
        std::thread::sleep(interval);
    }
}

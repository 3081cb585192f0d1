//! `dmabuf ls`: who holds which dma-buf.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use dmabuf::inspect::{report, Changes, Filter, Scanner, Snapshot, SortKey, SourceState};

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

/// Which table `--csv` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CsvTable {
    /// One row per buffer.
    Buffers,
    /// One row per process holding a buffer (RSS/PSS totals).
    Processes,
}

/// The `schema_version` of `dmabuf ls --json` (see docs/json.md). 2: the
/// per-process `total_size`/`proportional_size` became `rss`/`pss` (and
/// `rss_*`/`pss_*` in changes), with `fd_size`, `mapped_size`,
/// `mapped_bytes`, the scan's time and `missing_pids` added.
pub const SCHEMA_VERSION: u32 = 2;

/// The exit status of `dmabuf ls` when a `--pid` names no process.
pub const EXIT_NO_SUCH_PID: u8 = 3;

/// Arguments of `dmabuf ls`.
#[derive(clap::Args)]
#[command(after_help = "\
Per process: BY-FD is the size of the buffers it holds by an fd, MAPPED the bytes its \
mappings of them cover, RSS the size of all the buffers it holds (by fd or mapping, each \
once) and PSS each buffer's size divided by its number of holders, summed (as Android's \
dmabuf_dump).

Exit status: 0 listed; 1 an error (the proc root cannot be read, output failed); \
2 bad arguments; 3 listed, but a --pid names no process (a warning on stderr names it).")]
pub struct Args {
    /// Only buffers held by this process (repeatable). A PID with no
    /// process is named in a warning, and the exit status is 3.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only buffers of this exporter, such as udmabuf, system or portable
    /// (repeatable).
    #[arg(long = "exporter", value_name = "NAME")]
    pub exporters: Vec<String>,
    /// Order of the buffer list.
    #[arg(long, value_enum, default_value_t = Sort::Size)]
    pub sort: Sort,
    /// Print JSON (with --watch: one JSON object per line and round), with
    /// the time of the scan.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (RFC 4180, a header line first, sizes in bytes): the
    /// buffers, or with `--csv processes` the per-process totals.
    #[arg(
        long,
        value_name = "TABLE",
        value_enum,
        num_args = 0..=1,
        require_equals = false,
        default_missing_value = "buffers",
        conflicts_with = "watch"
    )]
    pub csv: Option<CsvTable>,
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

/// When a scan was taken: milliseconds since the Unix epoch and the same
/// instant as RFC 3339 UTC text.
#[derive(serde::Serialize)]
struct ScanTime {
    time_unix_ms: u64,
    time_utc: String,
}

impl ScanTime {
    fn now() -> ScanTime {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ScanTime {
            time_unix_ms: ms,
            time_utc: rfc3339_utc(ms),
        }
    }
}

/// `ms` since the Unix epoch as `YYYY-MM-DDThh:mm:ss.mmmZ` (proleptic
/// Gregorian calendar; H. Hinnant's days-to-civil).
fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The `--json` document of one scan.
#[derive(serde::Serialize)]
struct Listing<'a> {
    schema_version: u32,
    #[serde(flatten)]
    time: ScanTime,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    /// The `--pid` values that named no process.
    missing_pids: &'a [u32],
}

/// One line of `--watch --json` output.
#[derive(serde::Serialize)]
struct Round<'a> {
    schema_version: u32,
    round: u64,
    #[serde(flatten)]
    time: ScanTime,
    snapshot: &'a Snapshot,
    changes: Option<&'a Changes>,
    missing_pids: &'a [u32],
}

/// With `-v`: what each source gave and why each process could not be
/// read.
fn notes(snapshot: &Snapshot) {
    if !crate::out::verbose() {
        return;
    }
    let s = &snapshot.sources;
    note!(
        "ls: scanned {} as {}; sysfs stats: {}; debugfs bufinfo: {}",
        crate::out::escape(&s.proc_root),
        if s.as_root { "root" } else { "a user" },
        source_text(&s.sysfs_stats),
        source_text(&s.debugfs_bufinfo)
    );
    for u in &snapshot.unreadable {
        note!("ls: pid {}: {}", u.pid, crate::out::escape(&u.message));
    }
}

fn source_text(state: &SourceState) -> String {
    match state {
        SourceState::Read => "read".to_string(),
        SourceState::Absent => "absent".to_string(),
        SourceState::Unreadable(why) => crate::out::escape(why),
    }
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
    // A pid is checked once, before the first scan: one that exits later
    // is a change the rounds show, not a mistake in the arguments.
    let missing: Vec<u32> = args
        .pids
        .iter()
        .copied()
        .filter(|pid| !args.proc_root.join(pid.to_string()).exists())
        .collect();
    for pid in &missing {
        warnln!(
            "ls --pid {pid}: no such process (nothing at {})",
            crate::out::escape(&args.proc_root.join(pid.to_string()).display().to_string())
        );
    }
    let status = if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_SUCH_PID)
    };

    let Some(interval) = args.watch else {
        let time = ScanTime::now();
        let snapshot = scan()?;
        notes(&snapshot);
        if args.json {
            let listing = Listing {
                schema_version: SCHEMA_VERSION,
                time,
                snapshot: &snapshot,
                missing_pids: &missing,
            };
            crate::out::json(&listing, true)?;
        } else if let Some(table) = args.csv {
            out!(
                "{}",
                match table {
                    CsvTable::Buffers => report::csv_buffers(&snapshot),
                    CsvTable::Processes => report::csv_processes(&snapshot),
                }
            )?;
        } else {
            out!("{}", report::render_snapshot(&snapshot))?;
        }
        return Ok(status);
    };

    let mut previous: Option<Snapshot> = None;
    let mut round: u64 = 0;
    loop {
        round += 1;
        let time = ScanTime::now();
        let snapshot = scan()?;
        if round == 1 {
            notes(&snapshot);
        }
        let changes = previous.as_ref().map(|p| snapshot.changes_since(p));
        if args.json {
            let line = Round {
                schema_version: SCHEMA_VERSION,
                round,
                time,
                snapshot: &snapshot,
                changes: changes.as_ref(),
                missing_pids: &missing,
            };
            crate::out::json(&line, false)?;
        } else {
            if round > 1 {
                outln!(
                    "\n=== round {round}, {:.1} s later, {} ===",
                    interval.as_secs_f64(),
                    time.time_utc
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
            return Ok(status);
        }
        previous = Some(snapshot);
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    #[test]
    fn utc_times() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_704_067_199_999), "2023-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc(4_102_444_800_123), "2100-01-01T00:00:00.123Z");
    }
}

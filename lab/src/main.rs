//! `dmabuf-lab`: boots a real Linux 6.12 kernel under QEMU and runs the project's
//! kernel tests (the `dmabuf-lab-guest` crate) inside it. See `lab/README.md`.

mod cpio;
mod elf;
mod fetch;
mod fixtures;
mod guest_build;
mod modules;
mod report;
mod util;
mod vm;
#[cfg(test)]
mod workspace_checks;

use std::process::ExitCode;
use std::time::Duration;

use report::{Line, Report};
use util::{Context, Result};
use vm::{Channel, Mode};

const USAGE: &str = "\
usage: dmabuf-lab <command>

commands:
  fetch               download and unpack the lab's kernel, build its module
                      fixtures (lab/fixtures/); idempotent
  test [KERNEL] [FILTER...]
                      build the guest tests, boot the kernel, run them; FILTER and
                      other arguments go to every test binary (libtest syntax)
  run [KERNEL] -- CMD ARGS...
                      boot the kernel and run one command line in it

KERNEL (before any other argument): a kernel you already have instead of the
lab's own (Debian's 6.12.95, fetched into the cache):
  --kernel IMAGE      an x86 bzImage, such as /boot/vmlinuz-RELEASE
  --modules DIR       its lib/modules/RELEASE directory, with modules.dep
                      (default: /lib/modules/RELEASE, RELEASE read from IMAGE)

environment:
  DMABUF_LAB_CACHE    kernel cache directory (default: lab/cache)
  DMABUF_LAB_TIMEOUT  VM time limit in seconds (default: 900)
  DMABUF_LAB_SKIP=1   `test` runs nothing and exits 0 with a loud warning
  DMABUF_LAB_MIRROR   Debian mirror for `fetch` (default: the machine's own)
";

/// Default time limit for one VM run: TCG is slow, so be generous.
const DEFAULT_TIMEOUT_S: u64 = 900;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fetch") if args.len() == 1 => fetch::fetch(&fetch::cache_dir()).map(|k| {
            println!("lab: kernel ready: {}", k.vmlinuz.display());
            ExitCode::SUCCESS
        }),
        Some("test") => match kernel_options(&args[1..]) {
            Ok((kernel, rest)) => cmd_test(kernel, rest.to_vec()),
            Err(e) => {
                eprint!("lab: {e}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("run") => {
            let (kernel, rest) = match kernel_options(&args[1..]) {
                Ok(k) => k,
                Err(e) => {
                    eprint!("lab: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            let rest = match rest.first().map(String::as_str) {
                Some("--") => &rest[1..],
                _ => rest,
            };
            if rest.is_empty() {
                eprint!("{USAGE}");
                return ExitCode::from(2);
            }
            cmd_run(kernel, rest.to_vec())
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Which kernel to boot: the lab's own (`image: None`), or one the user
/// has (`--kernel IMAGE [--modules DIR]`).
#[derive(Debug, Default, PartialEq, Eq)]
struct KernelChoice {
    image: Option<std::path::PathBuf>,
    modules: Option<std::path::PathBuf>,
}

/// Takes `--kernel IMAGE` and `--modules DIR` (or `--kernel=IMAGE`) off the
/// front of `args`; returns them and the rest.
fn kernel_options(mut args: &[String]) -> std::result::Result<(KernelChoice, &[String]), String> {
    let mut k = KernelChoice::default();
    while let Some(first) = args.first() {
        let (name, inline) = match first.split_once('=') {
            Some((n, v)) if n == "--kernel" || n == "--modules" => (n, Some(v.to_string())),
            _ => (first.as_str(), None),
        };
        if name != "--kernel" && name != "--modules" {
            break;
        }
        let (value, used) = match inline {
            Some(v) => (v, 1),
            None => match args.get(1) {
                Some(v) => (v.clone(), 2),
                None => return Err(format!("{name} needs a path")),
            },
        };
        if value.is_empty() {
            return Err(format!("{name} needs a path"));
        }
        let slot = if name == "--kernel" {
            &mut k.image
        } else {
            &mut k.modules
        };
        if slot.replace(value.into()).is_some() {
            return Err(format!("{name} given twice"));
        }
        args = &args[used..];
    }
    if k.modules.is_some() && k.image.is_none() {
        return Err("--modules goes with --kernel".into());
    }
    Ok((k, args))
}

fn timeout() -> Result<Duration> {
    match std::env::var("DMABUF_LAB_TIMEOUT") {
        Ok(s) if !s.is_empty() => {
            let secs: u64 = s
                .parse()
                .with_ctx(|| format!("DMABUF_LAB_TIMEOUT={s:?} is not a number of seconds"))?;
            Ok(Duration::from_secs(secs))
        }
        _ => Ok(Duration::from_secs(DEFAULT_TIMEOUT_S)),
    }
}

/// Builds everything and boots the VM in `mode`, feeding guest lines to `report`
/// and to `show`.
fn boot(
    choice: &KernelChoice,
    mode: Mode,
    mut show: impl FnMut(Channel, &str, Line),
) -> Result<(Report, vm::VmExit)> {
    let timeout = timeout()?;
    // Fail early, before building, when a host tool is missing.
    util::require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    util::require_tool("busybox", "busybox-static")?;
    let cache = fetch::cache_dir();
    let kernel = match &choice.image {
        Some(image) => fetch::user_kernel(&cache, image, choice.modules.as_deref())?,
        // Downloads nothing when the kernel is already cached.
        None => fetch::fetch(&cache).with_ctx(|| {
            format!(
                "the lab needs the kernel package {} (`cargo run -p dmabuf-lab -- fetch`) and could not get it",
                fetch::KERNEL_PACKAGE
            )
        })?,
    };
    let repo = util::repo_root();
    let target_dir = repo.join("target/lab");
    let tests = guest_build::build_tests(&repo, &target_dir)?;
    let cli = guest_build::build_cli(&repo, &target_dir)?;
    let work = vm::work_dir(&target_dir)?;
    let initrd = vm::build_initramfs(&work, &kernel, &vm::Guest { tests, cli }, &mode)?;
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "lab: initramfs {} ({:.1} MiB); booting {} under QEMU/TCG (limit {}s)",
        initrd.display(),
        size as f64 / (1 << 20) as f64,
        kernel.version,
        timeout.as_secs()
    );
    let mut report = Report::default();
    let exit = vm::boot(&work, &kernel, &initrd, timeout, |ch, line| {
        let kind = report.feed(line);
        show(ch, line, kind);
    })?;
    if exit.timed_out {
        eprintln!(
            "lab: error: the VM ran past {}s and was killed (set DMABUF_LAB_TIMEOUT to change); \
             logs in {}",
            timeout.as_secs(),
            work.display()
        );
    }
    Ok((report, exit))
}

fn print_timing(report: &Report, exit: &vm::VmExit) {
    let up = report
        .uptime_at_init
        .map(|u| format!(", userspace up at {u:.1}s guest time"))
        .unwrap_or_default();
    eprintln!("lab: VM ran {:.1}s wall{up}", exit.elapsed.as_secs_f64());
}

fn cmd_test(kernel: KernelChoice, filters: Vec<String>) -> Result<ExitCode> {
    if std::env::var_os("DMABUF_LAB_SKIP").is_some_and(|v| v == "1") {
        eprintln!("{}", "!".repeat(78));
        eprintln!("lab: WARNING: DMABUF_LAB_SKIP=1 is set: NO kernel tests ran.");
        eprintln!("lab: WARNING: nothing was checked against a real kernel. Unset it to run them.");
        eprintln!("{}", "!".repeat(78));
        return Ok(ExitCode::SUCCESS);
    }
    // Blank lines are held back until more output follows, so the ones /init
    // prints before its markers do not pile up.
    let mut blanks = 0;
    let (report, exit) = boot(&kernel, Mode::Test(filters), |ch, line, kind| {
        match (ch, kind) {
            (Channel::Console, _) => println!("[console] {}", report::sanitize(line)),
            (Channel::Guest, Line::Marker) => {
                blanks = 0;
                let m = line.split_once(report::MARK).map_or(line, |(_, m)| m);
                if let Some(name) = m.strip_prefix("BEGIN ") {
                    println!("lab: ---- {} ----", name.trim());
                } else if let Some(up) = m.strip_prefix("UP ") {
                    println!("lab: guest userspace up: kernel {up}s");
                }
            }
            (Channel::Guest, Line::Output) if line.trim().is_empty() => blanks += 1,
            (Channel::Guest, Line::Output) => {
                for _ in 0..std::mem::take(&mut blanks) {
                    println!();
                }
                println!("{line}");
            }
        }
    })?;
    print_timing(&report, &exit);
    let (passed, failed, problems) = report.totals();
    println!();
    for b in &report.binaries {
        let c = b.counts.unwrap_or_default();
        let rc =
            b.rc.map_or("never finished".into(), |rc| format!("exit {rc}"));
        println!(
            "lab: {:<28} {} ({} passed, {} failed, {} ignored, {} filtered out; {rc})",
            b.name,
            if b.ok() { "ok" } else { "FAILED" },
            c.passed,
            c.failed,
            c.ignored,
            c.filtered
        );
    }
    for p in &problems {
        println!("lab: problem: {p}");
    }
    println!("{passed} passed, {failed} failed");
    println!("lab: {passed} passed, {failed} failed");
    Ok(if failed == 0 && !exit.timed_out {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_run(kernel: KernelChoice, command: Vec<String>) -> Result<ExitCode> {
    let mut blanks = 0;
    let (report, exit) = boot(&kernel, Mode::Run(command), |ch, line, kind| {
        match (ch, kind) {
            (Channel::Console, _) => eprintln!("[console] {}", report::sanitize(line)),
            (Channel::Guest, Line::Marker) => blanks = 0,
            (Channel::Guest, Line::Output) if line.is_empty() => blanks += 1,
            (Channel::Guest, Line::Output) => {
                for _ in 0..std::mem::take(&mut blanks) {
                    println!();
                }
                println!("{line}");
            }
        }
    })?;
    print_timing(&report, &exit);
    match report.binaries.first().and_then(|b| b.rc) {
        Some(rc) => {
            eprintln!("lab: command exited with status {rc}");
            Ok(ExitCode::from(u8::try_from(rc).unwrap_or(1)))
        }
        None => {
            eprintln!("lab: error: the command never finished (VM died or timed out)");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kernel_options_come_first() {
        let a = args(&["--kernel", "/k", "--modules=/m", "cli", "--nocapture"]);
        let (k, rest) = kernel_options(&a).unwrap();
        assert_eq!(k.image.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(k.modules.as_deref(), Some(std::path::Path::new("/m")));
        assert_eq!(rest, ["cli", "--nocapture"]);

        let a = args(&["udmabuf", "--kernel", "/k"]);
        let (k, rest) = kernel_options(&a).unwrap();
        assert_eq!(
            k,
            KernelChoice::default(),
            "after a filter it is a test argument"
        );
        assert_eq!(rest.len(), 3);

        let a = args(&["--kernel=/k", "--", "sh"]);
        let (k, rest) = kernel_options(&a).unwrap();
        assert!(k.image.is_some() && k.modules.is_none());
        assert_eq!(rest, ["--", "sh"]);

        for bad in [
            &["--kernel"][..],
            &["--kernel="],
            &["--kernel", "/a", "--kernel", "/b"],
            &["--modules", "/m"],
        ] {
            assert!(kernel_options(&args(bad)).is_err(), "{bad:?}");
        }
    }
}

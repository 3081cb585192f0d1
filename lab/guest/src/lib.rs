//! Helpers shared by the lab tests that run inside the VM.
//!
//! Every file in `lab/guest/tests/` becomes a test binary that `dmabuf-lab test`
//! builds statically, packs into the VM's initramfs and runs against the real
//! Linux 6.12 kernel. Start each test with [`require_lab`] so that running it on
//! a development machine by mistake fails with a clear message instead of a
//! confusing `ENOENT`.
//!
//! ```no_run
//! use dmabuf_lab_guest::{load_module, require_lab, wait_for_path};
//! use std::time::Duration;
//!
//! require_lab();
//! load_module("vivid", "n_devs=1 node_types=0x1").unwrap();
//! wait_for_path("/dev/video0", Duration::from_secs(10)).unwrap();
//! ```

pub mod bytes;
pub mod fences;
pub mod iio;
pub mod sys;
pub mod usb;
pub mod vgem;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Environment variable the VM's `/init` sets to `1` for everything it runs.
pub const LAB_ENV: &str = "DMABUF_LAB";
/// Environment variable naming the `dmabuf` CLI binary inside the VM.
pub const CLI_ENV: &str = "DMABUF_CLI";
/// Where the lab puts the `dmabuf` CLI inside the VM.
pub const DEFAULT_CLI: &str = "/bin/dmabuf";

/// Whether this process runs inside the lab's VM (`DMABUF_LAB=1`, set by `/init`).
pub fn in_lab() -> bool {
    std::env::var_os(LAB_ENV).is_some_and(|v| v == "1")
}

/// Panics with instructions unless running inside the lab's VM.
///
/// Call it first in every lab test.
#[track_caller]
pub fn require_lab() {
    if !in_lab() {
        panic!(
            "this test needs the lab's kernel (Linux 6.12 under QEMU); \
             run `cargo run -p dmabuf-lab -- test` instead of running it directly"
        );
    }
}

/// Path of the `dmabuf` CLI inside the VM (`$DMABUF_CLI`, else `/bin/dmabuf`).
pub fn cli() -> PathBuf {
    std::env::var_os(CLI_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CLI))
}

/// Why something the lab helpers tried did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabError {
    what: String,
    cause: String,
}

impl LabError {
    fn new(what: impl Into<String>, cause: impl Into<String>) -> Self {
        LabError {
            what: what.into(),
            cause: cause.into(),
        }
    }
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.cause)
    }
}

impl std::error::Error for LabError {}

/// Whether a kernel module is loaded (or built in), by its name with `-` or `_`.
pub fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module")
        .join(name.replace('-', "_"))
        .exists()
}

/// Loads a kernel module and its dependencies with `modprobe`.
///
/// `params` are whitespace-separated `key=value` module parameters, e.g.
/// `"n_devs=1 node_types=0x1"` for vivid. Loading an already loaded module
/// succeeds without changing its parameters (modules stay loaded for the rest
/// of the VM's life, across test binaries).
pub fn load_module(name: &str, params: &str) -> Result<(), LabError> {
    let what = format!("loading kernel module {name}");
    if module_loaded(name) {
        return Ok(());
    }
    let out = Command::new("modprobe")
        .arg(name)
        .args(params.split_whitespace())
        .output()
        .map_err(|e| LabError::new(&what, format!("cannot run modprobe: {e}")))?;
    if !out.status.success() {
        let mut cause = format!("`modprobe {name} {params}` failed ({})", out.status);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.trim().is_empty() {
            cause.push_str(": ");
            cause.push_str(stderr.trim());
        }
        cause.push_str(" (is the module in dmabuf-lab's module list?)");
        return Err(LabError::new(what, cause));
    }
    Ok(())
}

/// Waits until `path` exists (device nodes appear asynchronously after a
/// module loads), polling every 10 ms for at most `timeout`.
pub fn wait_for_path(path: impl AsRef<Path>, timeout: Duration) -> Result<(), LabError> {
    let path = path.as_ref();
    let start = Instant::now();
    loop {
        if path.exists() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(LabError::new(
                format!("waiting for {}", path.display()),
                format!("still missing after {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults_to_bin_dmabuf() {
        if std::env::var_os(CLI_ENV).is_none() {
            assert_eq!(cli(), PathBuf::from(DEFAULT_CLI));
        }
    }

    #[test]
    fn missing_path_times_out() {
        let err = wait_for_path("/nonexistent/lab", Duration::from_millis(20)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lab"));
    }
}

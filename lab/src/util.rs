//! Small helpers shared by the subcommands: an error type that carries context, and
//! running external commands with errors that say what failed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An error with a human-readable chain of context ("while doing X: because Y").
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// Creates an error from a message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error(m.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The lab's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds context to any displayable error.
pub trait Context<T> {
    /// Prefixes the error with `what` (computed lazily).
    fn with_ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn with_ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what().into())))
    }
}

/// Returns early with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::util::Error::msg(format!($($arg)*))) };
}

/// Renders a command line for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub fn run_status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_ctx(|| format!("cannot start `{}`", show(cmd)))?;
    if !st.success() {
        bail!("`{}` failed ({st})", show(cmd));
    }
    Ok(())
}

/// Runs a command capturing its output; fails (showing stderr) unless it exits 0.
pub fn run_output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_ctx(|| format!("cannot start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Finds an executable by name in `$PATH` (and the sbin directories, which a
/// non-root `$PATH` often lacks).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Like [`which`], but fails with a message naming the Debian package to install.
pub fn require_tool(name: &str, package: &str) -> Result<PathBuf> {
    which(name).ok_or_else(|| {
        Error::msg(format!(
            "`{name}` not found: the lab needs it. Install it with \
             `sudo apt-get install {package}` (see lab/README.md)"
        ))
    })
}

/// The repository root (the workspace directory holding `lab/`).
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("DMABUF_LAB_ROOT") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab crate lives inside the workspace")
        .to_path_buf()
}

/// Creates a directory and its parents, with a useful error.
pub fn mkdir_p(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).with_ctx(|| format!("cannot create directory {}", p.display()))
}

/// Removes a directory tree if it exists, with a useful error.
pub fn rm_rf(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("cannot remove {}: {e}", p.display()),
    }
}

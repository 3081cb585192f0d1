//! Checked output: everything the command prints goes through here, so
//! that a full device or a closed pipe is an error with a cause, never a
//! panic (`println!` panics when stdout cannot be written).
//!
//! # DOC: output
//!
//! * A write to stdout that fails becomes an [`OutputError`]; `main`
//!   prints `dmabuf: cannot write to standard output: CAUSE` and exits 1.
//! * A closed pipe (EPIPE, as in `dmabuf ls --json | head -1`) is the
//!   reader's choice, not a failure: `main` exits 0 without a message.
//!   Rust ignores SIGPIPE, so the write returns EPIPE instead of killing
//!   the process; the command stops at its next write. SIGPIPE is not
//!   restored to its default: that would need `unsafe` here and would
//!   also kill the process on a write to a consumer's socket that went
//!   away, which the stream reports as a named error instead.
//! * Messages to stderr ([`errln!`]) ignore write errors: there is
//!   nowhere left to report them.
//!
//! # DOC: verbosity and colour
//!
//! * `-q`/`--quiet` (global): stderr carries errors only: warnings
//!   ([`warnln!`]), progress ([`err!`], the bench's bar) and notes are
//!   dropped. Stdout still carries the result asked for.
//! * `-v`/`--verbose` (global): notes ([`note!`]) too: why `auto` chose
//!   its backend, which inspection sources were read, why a process could
//!   not be read.
//! * No colour: nothing the CLI prints carries terminal escapes (names
//!   from elsewhere are escaped, [`escape`]), so there is nothing for
//!   `NO_COLOR` or a pipe to turn off.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicI8, Ordering};

/// -1 quiet, 0 normal, 1 verbose (set once by `main`).
static VERBOSITY: AtomicI8 = AtomicI8::new(0);

/// Sets the verbosity from `-q`/`-v`: -1 quiet, 0 normal, 1 verbose.
pub fn set_verbosity(level: i8) {
    VERBOSITY.store(level.clamp(-1, 1), Ordering::Relaxed);
}

/// Whether `-q` was given: only errors go to stderr.
pub fn quiet() -> bool {
    VERBOSITY.load(Ordering::Relaxed) < 0
}

/// Whether `-v` was given: notes go to stderr too.
pub fn verbose() -> bool {
    VERBOSITY.load(Ordering::Relaxed) > 0
}

/// Standard output could not be written.
#[derive(Debug)]
pub struct OutputError(pub io::Error);

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write to standard output: {}", self.0)
    }
}

impl std::error::Error for OutputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl OutputError {
    /// Whether the reader closed the pipe (a quiet end, not a failure).
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

/// Writes `args` to stdout.
pub fn write_fmt(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    io::stdout().lock().write_fmt(args).map_err(OutputError)
}

/// Writes `bytes` to stdout.
pub fn write_all(bytes: &[u8]) -> Result<(), OutputError> {
    io::stdout().lock().write_all(bytes).map_err(OutputError)
}

/// Flushes stdout (a buffered write may fail only here).
pub fn flush() -> Result<(), OutputError> {
    io::stdout().lock().flush().map_err(OutputError)
}

/// The version of every `--json` document's layout, in its
/// `schema_version` field. It grows when a field changes meaning or goes
/// away; new fields may appear within a version.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Writes `value` as JSON (pretty or one line) and a newline. A top-level
/// object gets a `"schema_version"` field ([`JSON_SCHEMA_VERSION`]) unless
/// it carries its own.
pub fn json<T: serde::Serialize + ?Sized>(value: &T, pretty: bool) -> crate::CliResult<()> {
    let mut v = serde_json::to_value(value)?;
    if let serde_json::Value::Object(fields) = &mut v {
        if !fields.contains_key("schema_version") {
            let mut with = serde_json::Map::new();
            with.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
            with.append(fields);
            *fields = with;
        }
    }
    let s = if pretty {
        serde_json::to_string_pretty(&v)?
    } else {
        serde_json::to_string(&v)?
    };
    write_all(s.as_bytes())?;
    write_all(b"\n")?;
    Ok(())
}

/// `s` with control characters and backslashes escaped (`\\n`, `\\t`,
/// `\\\\`, `\\u{7f}`), so that a value from elsewhere (a buffer's name)
/// stays on its line of `key: value` output.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                o.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}

/// `println!` that returns an [`OutputError`] instead of panicking.
macro_rules! outln {
    () => { $crate::out::write_all(b"\n") };
    ($($arg:tt)*) => { $crate::out::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that returns an [`OutputError`] instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write_fmt(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics (a failed write to stderr is dropped).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` for progress that never panics; nothing under `-q`.
macro_rules! err {
    ($($arg:tt)*) => {{
        if !$crate::out::quiet() {
            use std::io::Write as _;
            let mut e = std::io::stderr();
            let _ = write!(e, $($arg)*);
            let _ = e.flush();
        }
    }};
}

/// A warning on stderr (`dmabuf: warning: …`); nothing under `-q`.
macro_rules! warnln {
    ($($arg:tt)*) => {{
        if !$crate::out::quiet() {
            errln!("dmabuf: warning: {}", format_args!($($arg)*));
        }
    }};
}

/// A note on stderr (`dmabuf: note: …`), only under `-v`.
macro_rules! note {
    ($($arg:tt)*) => {{
        if $crate::out::verbose() {
            errln!("dmabuf: note: {}", format_args!($($arg)*));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_values_stay_on_one_line() {
        assert_eq!(escape("cam-0"), "cam-0");
        assert_eq!(escape("café"), "café");
        assert_eq!(escape("a\nkind: forged"), "a\\nkind: forged");
        assert_eq!(
            escape("\r\t\\\u{1b}[31m\u{7f}"),
            "\\r\\t\\\\\\u{1b}[31m\\u{7f}"
        );
        assert_eq!(escape("\u{85}\u{2028}"), "\\u{85}\\u{2028}");
    }
}

//! `dmabuf alloc`: allocate, name, fill and hold a buffer, to look at with
//! `dmabuf ls` (or `/proc/PID/fdinfo`) from elsewhere.
//!
//! # DOC: alloc
//!
//! * `--size` takes bytes or a binary multiple: `4096`, `4K`, `4KiB`,
//!   `1M`, `16MiB`, `1G` (K = 1024; `KB`-style decimal units are refused
//!   rather than guessed). The buffer is rounded up to whole pages.
//! * `--fill` writes every byte with one value (`0xab`, `171`) or, with
//!   `pattern`, byte `i` gets `i % 251` (a prime, so pages differ), inside
//!   a write window.
//! * What was made is printed as `key: value` lines on stdout (kind, size,
//!   inode, exporter, name, pid, fd) and flushed before holding, so that a
//!   script can read them while the buffer is held. With `--json` the same
//!   facts are one JSON object on one line (so a script can read one line
//!   and go on while the buffer is held; see docs/json.md). A portable
//!   buffer's inode is its memfd's (the one `dmabuf ls` shows) and its
//!   exporter `portable`, as in `dmabuf ls`. Values that come from
//!   elsewhere (the name, the exporter) are escaped — control characters,
//!   line separators and backslashes as `\n`, `\u{1b}`, `\\` — so that one
//!   key stays one line and a name cannot forge another key. The library
//!   refuses names over 31 bytes or with a NUL.
//! * A size that cannot fit in the memory this process can get is
//!   refused by the library before allocating, naming both numbers.
//! * `--hold SECONDS` takes 0 up to 365 days (the `seconds` parser).
//!   `--hold-forever` holds until killed; `--hold-stdin` until a line or
//!   the end of standard input (Enter or Ctrl-D in a terminal; a script
//!   closes the pipe). Reading stdin keeps no more than one small buffer,
//!   whatever it is sent. The three are exclusive.
//! * Without one of them the buffer is freed at exit.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use crate::backend;
use crate::out::escape;
use crate::pattern::Fill;

/// Parses a size: bytes, or a number with `K`, `M`, `G` or `T` (binary
/// multiples; `Ki`/`KiB` forms too, any case).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size: expected a number of bytes, optionally followed by K, M, G (e.g. 4096, 4K, 16MiB)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is too large a size"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kib" => 10,
        "m" | "mi" | "mib" => 20,
        "g" | "gi" | "gib" => 30,
        "t" | "ti" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "'{s}': decimal units are ambiguous here; write {}{} (binary, ×1024) or the number of bytes",
                num,
                &unit[..1].to_ascii_uppercase()
            ))
        }
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (expected K, M, G or T, optionally as KiB, MiB…)"
            ))
        }
    };
    let size = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large a size"))?;
    if size == 0 {
        return Err(format!("'{s}': a buffer needs at least one byte"));
    }
    Ok(size)
}

/// Arguments of `dmabuf alloc`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
To look at the buffer while it exists, hold it and inspect it from another terminal:
  dmabuf alloc --size 16MiB --name demo --hold-stdin    # press Enter to free it
  dmabuf ls --pid PID                                   # PID as printed")]
pub struct Args {
    /// Size: bytes, or with K, M, G (binary: 4K = 4096; 16MiB), rounded up to pages.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Memory: auto (the system heap, else udmabuf, else portable), heap, heap:NAME, udmabuf or portable.
    #[arg(long, default_value = "auto", value_parser = backend::parse)]
    pub backend: backend::Choice,
    /// Name of the buffer (at most 31 bytes; shown in fdinfo and `dmabuf ls`).
    #[arg(long, default_value = "dmabuf-alloc")]
    pub name: String,
    /// Fill every byte with BYTE (171, 0xab), or `pattern` (byte i = i % 251).
    #[arg(long, value_parser = Fill::parse)]
    pub fill: Option<Fill>,
    /// Keep the buffer for SECONDS before exiting.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["hold_forever", "hold_stdin"], allow_hyphen_values = true, value_parser = crate::seconds::non_negative)]
    pub hold: Option<Duration>,
    /// Keep the buffer until killed.
    #[arg(long, conflicts_with = "hold_stdin")]
    pub hold_forever: bool,
    /// Keep the buffer until a line or the end of standard input (press
    /// Enter when done looking with `dmabuf ls` from another terminal).
    #[arg(long)]
    pub hold_stdin: bool,
    /// Print what was made as one JSON line instead of `key: value` lines.
    #[arg(long)]
    pub json: bool,
}

/// The `schema_version` of `dmabuf alloc --json` (see docs/json.md).
pub const SCHEMA_VERSION: u32 = 1;

/// What `dmabuf alloc --json` prints.
#[derive(serde::Serialize)]
struct Made {
    schema_version: u32,
    kind: String,
    size: u64,
    inode: Option<u64>,
    exporter: Option<String>,
    name: String,
    pid: u32,
    fd: i32,
    fill: Option<String>,
    /// `null` (freed at exit), seconds, `"forever"` or `"stdin"`.
    hold: serde_json::Value,
}

/// How long the buffer is kept.
enum Hold {
    No,
    For(Duration),
    Forever,
    Stdin,
}

/// Reads standard input until a newline or its end, in a fixed buffer
/// (whatever is sent, no more is kept). An error reading it ends the
/// hold too, as an end would.
fn wait_for_stdin_line() {
    let mut stdin = std::io::stdin().lock();
    let mut chunk = [0u8; 256];
    loop {
        match stdin.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) if chunk[..n].contains(&b'\n') => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs `dmabuf alloc`.
pub fn run(args: Args) -> crate::CliResult {
    let alloc = args.backend.allocator()?;
    let buf = alloc.allocate(args.size, &args.name)?;
    if let Some(fill) = args.fill {
        let map = buf.map()?;
        let mut w = map.write()?;
        fill.apply(w.bytes_mut());
        w.end()?;
    }
    let hold = match (args.hold, args.hold_forever, args.hold_stdin) {
        (Some(h), _, _) => Hold::For(h),
        (None, true, _) => Hold::Forever,
        (None, false, true) => Hold::Stdin,
        (None, false, false) => Hold::No,
    };
    // What `dmabuf ls` shows for it: the dma-buf's inode and exporter, or
    // the portable memfd's inode.
    let (inode, exporter) = match buf.dma_buf() {
        Some(d) => (Some(d.inode()), Some(d.exporter()?)),
        None => (
            rustix::fs::fstat(buf.fd()).ok().map(|st| st.st_ino),
            Some("portable".to_string()),
        ),
    };
    let fill = args.fill.map(|f| match f {
        Fill::Byte(b) => format!("{b:#04x}"),
        Fill::Pattern => "pattern".to_string(),
    });
    let pid = std::process::id();
    if args.json {
        let made = Made {
            schema_version: SCHEMA_VERSION,
            kind: buf.kind().to_string(),
            size: buf.size(),
            inode,
            exporter,
            name: buf.name(),
            pid,
            fd: buf.fd().as_raw_fd(),
            fill,
            hold: match hold {
                Hold::No => serde_json::Value::Null,
                Hold::For(h) => h.as_secs_f64().into(),
                Hold::Forever => "forever".into(),
                Hold::Stdin => "stdin".into(),
            },
        };
        crate::out::json(&made, false)?;
    } else {
        outln!("kind: {}", escape(&buf.kind().to_string()))?;
        outln!("size: {}", buf.size())?;
        outln!(
            "inode: {}",
            inode.map_or("-".to_string(), |i| i.to_string())
        )?;
        outln!("exporter: {}", escape(exporter.as_deref().unwrap_or("-")))?;
        // A name may hold any byte but NUL: escaped, it stays one line.
        outln!("name: {}", escape(&buf.name()))?;
        outln!("pid: {pid}")?;
        outln!("fd: {}", buf.fd().as_raw_fd())?;
        if let Some(what) = &fill {
            outln!("fill: {what}")?;
        }
        if !matches!(hold, Hold::No) {
            outln!("inspect: dmabuf ls --pid {pid}")?;
        }
        match hold {
            Hold::No => {}
            Hold::For(h) => outln!("holding: {} s", h.as_secs_f64())?,
            Hold::Forever => outln!("holding: until killed")?,
            Hold::Stdin => outln!("holding: until a line or the end of standard input")?,
        }
    }
    crate::out::flush()?;
    match hold {
        Hold::No => {}
        Hold::For(h) => std::thread::sleep(h),
        Hold::Forever => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Hold::Stdin => wait_for_stdin_line(),
    }
    drop(buf);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_bytes_and_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("100B"), Ok(100));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for (s, want) in [
            ("", "not a size"),
            ("K", "not a size"),
            ("-4K", "not a size"),
            ("0", "at least one byte"),
            ("0K", "at least one byte"),
            ("4MB", "decimal units are ambiguous"),
            ("4X", "unknown unit"),
            ("4.5M", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("16777216T", "too large"),
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }
}

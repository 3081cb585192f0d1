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
//!   script can read them while the buffer is held. Values that come from
//!   elsewhere (the name, the exporter) are escaped — control characters,
//!   line separators and backslashes as `\n`, `\u{1b}`, `\\` — so that one
//!   key stays one line and a name cannot forge another key. The library
//!   refuses names over 31 bytes or with a NUL.
//! * A size that cannot fit in the memory this process can get is
//!   refused by the library before allocating, naming both numbers.
//! * `--hold SECONDS` takes 0 up to 365 days (the `seconds` parser).
//! * Without `--hold`/`--hold-forever` the buffer is freed at exit.

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
    #[arg(long, value_name = "SECONDS", conflicts_with = "hold_forever", allow_hyphen_values = true, value_parser = crate::seconds::non_negative)]
    pub hold: Option<Duration>,
    /// Keep the buffer until killed.
    #[arg(long)]
    pub hold_forever: bool,
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
    outln!("kind: {}", escape(&buf.kind().to_string()))?;
    outln!("size: {}", buf.size())?;
    match buf.dma_buf() {
        Some(d) => {
            outln!("inode: {}", d.inode())?;
            outln!("exporter: {}", escape(&d.exporter()?))?;
        }
        None => {
            outln!("inode: -")?;
            outln!("exporter: -")?;
        }
    }
    // A name may hold any byte but NUL: escaped, it stays one line.
    outln!("name: {}", escape(&buf.name()))?;
    outln!("pid: {}", std::process::id())?;
    outln!("fd: {}", buf.fd().as_raw_fd())?;
    if let Some(f) = args.fill {
        let what = match f {
            Fill::Byte(b) => format!("{b:#04x}"),
            Fill::Pattern => "pattern".to_string(),
        };
        outln!("fill: {what}")?;
    }
    if let Some(h) = args.hold {
        outln!("holding: {} s", h.as_secs_f64())?;
    } else if args.hold_forever {
        outln!("holding: until killed")?;
    }
    crate::out::flush()?;
    if let Some(h) = args.hold {
        std::thread::sleep(h);
    } else if args.hold_forever {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
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

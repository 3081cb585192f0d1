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
//!   script can read them while the buffer is held.
//! * Without `--hold`/`--hold-forever` the buffer is freed at exit.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use dmabuf::Allocate;

use crate::backend;

/// How to fill the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Every byte this value.
    Byte(u8),
    /// Byte `i` is `i % 251`.
    Pattern,
}

impl Fill {
    /// Parses `pattern`, `0xNN` or a decimal byte.
    pub fn parse(s: &str) -> Result<Fill, String> {
        if s == "pattern" {
            return Ok(Fill::Pattern);
        }
        let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u8::from_str_radix(hex, 16),
            None => s.parse::<u8>(),
        };
        v.map(Fill::Byte)
            .map_err(|_| format!("'{s}' is neither a byte (0-255, or 0x00-0xff) nor 'pattern'"))
    }

    /// Writes the fill into a window's bytes (volatile stores).
    pub fn apply(self, mut bytes: dmabuf::mapping::VolatileBytesMut<'_>) {
        match self {
            Fill::Byte(b) => bytes.fill(b),
            Fill::Pattern => {
                // 16 periods of the pattern, written block by block: each
                // block starts at a multiple of 251, so the phase is kept.
                let block: Vec<u8> = (0..251 * 16).map(|i| (i % 251) as u8).collect();
                let mut off = 0;
                while off < bytes.len() {
                    let n = (bytes.len() - off).min(block.len());
                    // In range: `off + n <= len`.
                    let _ = bytes.write_at(off, &block[..n]);
                    off += n;
                }
            }
        }
    }
}

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
    #[arg(long, value_name = "SECONDS", conflicts_with = "hold_forever")]
    pub hold: Option<f64>,
    /// Keep the buffer until killed.
    #[arg(long)]
    pub hold_forever: bool,
}

/// Runs `dmabuf alloc`.
pub fn run(args: Args) -> crate::CliResult {
    if let Some(h) = args.hold {
        if !(h.is_finite() && h >= 0.0) {
            return Err(format!("--hold {h}: expected a number of seconds ≥ 0").into());
        }
    }
    let alloc = args.backend.allocator()?;
    let buf = alloc.allocate(args.size, &args.name)?;
    if let Some(fill) = args.fill {
        let map = buf.map()?;
        let mut w = map.write()?;
        fill.apply(w.bytes_mut());
        w.end()?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "kind: {}", buf.kind())?;
    writeln!(out, "size: {}", buf.size())?;
    match buf.dma_buf() {
        Some(d) => {
            writeln!(out, "inode: {}", d.inode())?;
            writeln!(out, "exporter: {}", d.exporter()?)?;
        }
        None => {
            writeln!(out, "inode: -")?;
            writeln!(out, "exporter: -")?;
        }
    }
    writeln!(out, "name: {}", buf.name())?;
    writeln!(out, "pid: {}", std::process::id())?;
    writeln!(out, "fd: {}", buf.fd().as_raw_fd())?;
    if let Some(f) = args.fill {
        let what = match f {
            Fill::Byte(b) => format!("{b:#04x}"),
            Fill::Pattern => "pattern".to_string(),
        };
        writeln!(out, "fill: {what}")?;
    }
    if let Some(h) = args.hold {
        writeln!(out, "holding: {h} s")?;
    } else if args.hold_forever {
        writeln!(out, "holding: until killed")?;
    }
    out.flush()?;
    drop(out);
    if let Some(h) = args.hold {
        std::thread::sleep(Duration::from_secs_f64(h));
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

    #[test]
    fn fills_parse() {
        assert_eq!(Fill::parse("0xab"), Ok(Fill::Byte(0xab)));
        assert_eq!(Fill::parse("171"), Ok(Fill::Byte(171)));
        assert_eq!(Fill::parse("pattern"), Ok(Fill::Pattern));
        assert!(Fill::parse("256").is_err());
        assert!(Fill::parse("0x100").is_err());
        assert!(Fill::parse("zebra").unwrap_err().contains("pattern"));
        let buf = dmabuf::Portable.allocate(8192, "fill-test").unwrap();
        let map = buf.map().unwrap();
        let mut w = map.write().unwrap();
        Fill::Pattern.apply(w.bytes_mut());
        let b = w.to_vec();
        assert_eq!((b[0], b[250], b[251], b[299]), (0, 250, 0, 48));
        assert_eq!((b[4015], b[4016], b[8191]), (250, 0, (8191 % 251) as u8));
    }
}

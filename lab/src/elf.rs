//! Just enough ELF reading to tell whether a binary can run in the VM, which
//! has no dynamic loader or libc.

use std::io::Read;
use std::path::Path;

use crate::bail;
use crate::util::{Context, Result};

const PT_INTERP: u32 = 3;

/// Whether the 64-bit little-endian ELF image `data` (its first bytes, at least
/// up to the end of the program headers) names a program interpreter.
pub fn has_interpreter(data: &[u8]) -> std::result::Result<bool, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(p) = data.get(o..o + 4) else {
            return Err("program headers beyond the data read".into());
        };
        if u32::from_le_bytes(p.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fails unless `path` is a statically linked ELF executable.
pub fn require_static(path: &Path) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut f = std::fs::File::open(path).with_ctx(|| format!("cannot open {}", path.display()))?;
    let n = f
        .read(&mut buf)
        .with_ctx(|| format!("cannot read {}", path.display()))?;
    buf.truncate(n);
    match has_interpreter(&buf) {
        Ok(false) => Ok(()),
        Ok(true) => bail!(
            "{} is dynamically linked, but the VM has no libc or loader: it must be built \
             static (RUSTFLAGS=\"-C target-feature=+crt-static\" with an explicit --target, \
             or Debian's busybox-static)",
            path.display()
        ),
        Err(e) => bail!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_binary_is_dynamic_unless_built_static() {
        // The host test binary itself: a real ELF file, good enough for parsing.
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(exe).unwrap();
        assert!(has_interpreter(&data).is_ok());
    }

    #[test]
    fn rejects_non_elf() {
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(&[0u8; 100]).is_err());
    }

    #[test]
    fn finds_pt_interp() {
        let mut d = vec![0u8; 64 + 2 * 56];
        d[..6].copy_from_slice(b"\x7fELF\x02\x01");
        d[0x20] = 64; // phoff
        d[0x36] = 56; // phentsize
        d[0x38] = 2; // phnum
        d[64] = 1; // PT_LOAD
        assert_eq!(has_interpreter(&d), Ok(false));
        d[64 + 56] = 3; // PT_INTERP
        assert_eq!(has_interpreter(&d), Ok(true));
    }
}

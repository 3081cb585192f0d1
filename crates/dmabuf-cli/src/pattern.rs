//! The test pattern every producer writes and every consumer checks: byte
//! `i` of item `seq` is `(i * 31 + seq) mod 256`, written and compared in
//! 256-byte blocks (a copy and a compare of a precomputed block, so the
//! pattern costs what touching the bytes costs).
//!
//! Every fill and check of buffer bytes in the command lives here, and
//! `dmabuf alloc --fill` ([`Fill`]).

/// The 256-byte block of item `seq`.
pub fn block(seq: u64) -> [u8; 256] {
    let mut b = [0u8; 256];
    for (i, v) in b.iter_mut().enumerate() {
        *v = (i as u64).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    b
}

/// Writes the pattern of item `seq` into every byte of `buf`.
pub fn fill(buf: &mut [u8], seq: u64) {
    let b = block(seq);
    for c in buf.chunks_mut(256) {
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// The offset of the first byte of `buf` that breaks the pattern of item
/// `seq`, if any (reads every byte).
pub fn check(buf: &[u8], seq: u64) -> Option<usize> {
    let b = block(seq);
    for (n, c) in buf.chunks(256).enumerate() {
        if c != &b[..c.len()] {
            let i = c
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Some(n * 256 + i);
        }
    }
    None
}

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

    /// Writes the fill into `bytes`.
    pub fn apply(self, bytes: &mut [u8]) {
        match self {
            Fill::Byte(b) => bytes.fill(b),
            Fill::Pattern => bytes
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 251) as u8),
        }
    }
}

/// Writes the pattern of item `seq` into the first `len` bytes of a
/// window's bytes `buf` (refused if the window is shorter).
pub fn fill_prefix(buf: &mut [u8], len: u64, seq: u64) -> Result<(), String> {
    let have = buf.len();
    let part = usize::try_from(len)
        .ok()
        .and_then(|l| buf.get_mut(..l))
        .ok_or_else(|| format!("item of {len} bytes does not fit the {have}-byte buffer"))?;
    fill(part, seq);
    Ok(())
}

/// Checks that the first `len` bytes of a window's bytes `buf` carry the
/// pattern of item `seq`; the cause in words if not (a length past the
/// window, a byte that breaks the pattern).
pub fn check_prefix(buf: &[u8], len: u64, seq: u64) -> Result<(), String> {
    let part = usize::try_from(len)
        .ok()
        .and_then(|l| buf.get(..l))
        .ok_or_else(|| {
            format!(
                "item {seq} claims {len} bytes, but its buffer has {}",
                buf.len()
            )
        })?;
    match check(part, seq) {
        None => Ok(()),
        Some(at) => Err(format!("item {seq}: byte {at} breaks the pattern")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_finds_the_first_bad_byte() {
        let mut v = vec![0u8; 1000];
        fill(&mut v, 7);
        assert_eq!(check(&v, 7), None);
        assert_eq!(check(&v, 8), Some(0));
        v[600] ^= 1;
        assert_eq!(check(&v, 7), Some(600));
    }

    #[test]
    fn prefixes_are_bounded_by_the_window() {
        let mut v = vec![0u8; 512];
        fill_prefix(&mut v, 300, 3).unwrap();
        check_prefix(&v, 300, 3).unwrap();
        assert!(fill_prefix(&mut v, 513, 3)
            .unwrap_err()
            .contains("does not fit"));
        let e = check_prefix(&v, u64::MAX, 3).unwrap_err();
        assert!(e.contains("claims 18446744073709551615 bytes"), "{e}");
        v[7] ^= 0xff;
        assert_eq!(
            check_prefix(&v, 300, 3).unwrap_err(),
            "item 3: byte 7 breaks the pattern"
        );
    }

    #[test]
    fn fills_parse() {
        assert_eq!(Fill::parse("0xab"), Ok(Fill::Byte(0xab)));
        assert_eq!(Fill::parse("171"), Ok(Fill::Byte(171)));
        assert_eq!(Fill::parse("pattern"), Ok(Fill::Pattern));
        assert!(Fill::parse("256").is_err());
        assert!(Fill::parse("0x100").is_err());
        assert!(Fill::parse("zebra").unwrap_err().contains("pattern"));
        let mut b = [0u8; 300];
        Fill::Pattern.apply(&mut b);
        assert_eq!((b[0], b[250], b[251], b[299]), (0, 250, 0, 48));
    }
}

//! The test pattern every producer writes and every consumer checks: byte
//! `i` of item `seq` is `(i * 31 + seq) mod 256`, a 256-byte block
//! repeated: written and compared as a precomputed block (in shared
//! memory through the volatile views' `write_repeated` and
//! `mismatch_repeated`, in place), so the pattern costs what touching the
//! bytes once costs.
//!
//! Every fill and check of buffer bytes in the command lives here, and
//! `dmabuf alloc --fill` ([`Fill`]).

use dmabuf::mapping::{VolatileBytes, VolatileBytesMut};

/// The block of item 0: byte `i` is `i * 31 mod 256`.
const BLOCK_0: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = (i * 31) as u8;
        i += 1;
    }
    b
};

/// The 256-byte block of item `seq`: item 0's block plus `seq`, byte by
/// byte, mod 256 (one vector add per lane, where computing
/// `i * 31 + seq` per byte was a scalar loop that cost a 4 KiB item's
/// producer and consumer about as much as their writing or checking).
pub fn block(seq: u64) -> [u8; 256] {
    let add = seq as u8;
    let mut b = BLOCK_0;
    for v in &mut b {
        *v = v.wrapping_add(add);
    }
    b
}

/// Writes the pattern of item `seq` into every byte of `buf` (the same
/// volatile loop as [`fill_volatile`]: every case of `dmabuf bench`
/// writes its items with the same code, so that they differ only in how
/// the items travel).
pub fn fill(buf: &mut [u8], seq: u64) {
    fill_volatile(buf.into(), seq);
}

/// Bytes at the start of a stamped item of `dmabuf bench` (its
/// CLOCK_MONOTONIC stamp, written over the pattern).
pub const STAMP: usize = 8;

/// The first byte after the [`STAMP`] of item `seq` that breaks its
/// pattern, if any, as an offset in `buf` (the whole item: [`fill`]ed,
/// then stamped). The item is filled whole, not after its stamp, so that
/// its stores start on the buffer's alignment, as the stream's do.
pub fn check_stamped(buf: &[u8], seq: u64) -> Option<usize> {
    let b = block(seq);
    let v = VolatileBytes::from(buf);
    // The rest of the first block in place, then the blocks after it with
    // the loop every check uses (the pattern starts over at each block, so
    // no rotated copy of it is needed).
    let first = buf.len().min(b.len());
    if let Ok(Some(at)) = v.mismatch_at(STAMP, b.get(STAMP..first)?) {
        return Some(STAMP + at);
    }
    let rest = v.subslice(first..buf.len()).ok()?;
    check_volatile(rest, seq).map(|at| first + at)
}

/// Writes the pattern of item `seq` into every byte of a window's bytes
/// (volatile stores of the repeated block: the bytes are shared memory).
pub fn fill_volatile(mut buf: VolatileBytesMut<'_>, seq: u64) {
    buf.write_repeated(&block(seq));
}

/// The offset of the first byte of a window's bytes that breaks the
/// pattern of item `seq`, if any: each byte is loaded once (volatile) and
/// compared with the repeated block, in place; nothing is copied.
pub fn check_volatile(buf: VolatileBytes<'_>, seq: u64) -> Option<usize> {
    buf.mismatch_repeated(&block(seq))
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

    /// Writes the fill into a window's bytes (volatile stores).
    pub fn apply(self, mut bytes: VolatileBytesMut<'_>) {
        match self {
            Fill::Byte(b) => bytes.fill(b),
            Fill::Pattern => {
                let period: Vec<u8> = (0..=250).collect();
                bytes.write_repeated(&period);
            }
        }
    }
}

/// Writes the pattern of item `seq` into the first `len` bytes of a
/// window's bytes `buf` (refused if the window is shorter).
pub fn fill_prefix(buf: VolatileBytesMut<'_>, len: u64, seq: u64) -> Result<(), String> {
    let have = buf.len();
    let part = usize::try_from(len)
        .ok()
        .and_then(|l| buf.into_subslice(0..l).ok())
        .ok_or_else(|| format!("item of {len} bytes does not fit the {have}-byte buffer"))?;
    fill_volatile(part, seq);
    Ok(())
}

/// Checks that the first `len` bytes of a window's bytes `buf` carry the
/// pattern of item `seq`; the cause in words if not (a length past the
/// window, a byte that breaks the pattern).
pub fn check_prefix(buf: VolatileBytes<'_>, len: u64, seq: u64) -> Result<(), String> {
    let have = buf.len();
    let part = usize::try_from(len)
        .ok()
        .and_then(|l| buf.subslice(0..l).ok())
        .ok_or_else(|| format!("item {seq} claims {len} bytes, but its buffer has {have}"))?;
    match check_volatile(part, seq) {
        None => Ok(()),
        Some(at) => Err(format!("item {seq}: byte {at} breaks the pattern")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_the_formula() {
        for seq in [0u64, 1, 7, 255, 256, 1 << 40, u64::MAX] {
            let b = block(seq);
            for (i, v) in b.iter().enumerate() {
                assert_eq!(*v, (i as u64).wrapping_mul(31).wrapping_add(seq) as u8);
            }
        }
    }

    fn check(buf: &[u8], seq: u64) -> Option<usize> {
        check_volatile(buf.into(), seq)
    }

    #[test]
    fn a_stamped_item_is_checked_after_its_stamp() {
        for len in [STAMP, 300, 4096, 70_000] {
            let mut v = vec![0u8; len];
            fill(&mut v, 9);
            v[..STAMP].copy_from_slice(&u64::MAX.to_le_bytes());
            assert_eq!(check_stamped(&v, 9), None, "{len}");
            if len > STAMP {
                assert_eq!(check_stamped(&v, 10), Some(STAMP), "{len}");
                // Either side of the end of the first block.
                for at in [255, 256].into_iter().filter(|&at| at + 1 < len) {
                    v[at] ^= 4;
                    assert_eq!(check_stamped(&v, 9), Some(at), "{len} {at}");
                    v[at] ^= 4;
                }
                v[len - 1] ^= 4;
                assert_eq!(check_stamped(&v, 9), Some(len - 1), "{len}");
            }
        }
        assert_eq!(check_stamped(&[0u8; 3], 1), None);
    }

    #[test]
    fn pattern_round_trips_and_finds_the_first_bad_byte() {
        // Short and long, with a last partial block.
        for len in [1000, 17 * 1024 + 1000] {
            let mut v = vec![0u8; len];
            fill(&mut v, 7);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, block(7)[i % 256], "byte {i} of {len}");
            }
            assert_eq!(check(&v, 7), None);
            assert_eq!(check(&v, 8), Some(0));
            for at in [600, len - 1] {
                v[at] ^= 1;
                assert_eq!(check(&v, 7), Some(at), "{len}");
                v[at] ^= 1;
            }
        }
    }

    fn portable(len: u64) -> dmabuf::Mapping {
        use dmabuf::Allocate;
        dmabuf::Portable
            .allocate(len, "pattern-test")
            .unwrap()
            .map()
            .unwrap()
    }

    #[test]
    fn prefixes_are_bounded_by_the_window() {
        let map = portable(4096);
        let mut w = map.write().unwrap();
        let v = w.bytes_mut().into_subslice(0..512).unwrap();
        fill_prefix(v, 300, 3).unwrap();
        check_prefix(w.bytes().subslice(0..512).unwrap(), 300, 3).unwrap();
        let v = w.bytes_mut().into_subslice(0..512).unwrap();
        assert!(fill_prefix(v, 513, 3).unwrap_err().contains("does not fit"));
        let e = check_prefix(w.bytes(), u64::MAX, 3).unwrap_err();
        assert!(e.contains("claims 18446744073709551615 bytes"), "{e}");
        let b = w.bytes().get(7).unwrap();
        assert!(w.bytes_mut().set(7, b ^ 0xff));
        assert_eq!(
            check_prefix(w.bytes(), 300, 3).unwrap_err(),
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
        let map = portable(8192);
        let mut w = map.write().unwrap();
        Fill::Pattern.apply(w.bytes_mut());
        let b = w.to_vec();
        assert_eq!((b[0], b[250], b[251], b[299]), (0, 250, 0, 48));
        assert_eq!((b[4015], b[4016], b[8191]), (250, 0, (8191 % 251) as u8));
    }
}

//! The test pattern every producer writes and every consumer checks: byte
//! `i` of item `seq` is `(i * 31 + seq) mod 256`, written and compared in
//! 256-byte blocks (a copy and a compare of a precomputed block, so the
//! pattern costs what touching the bytes costs).

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

/// Writes the pattern of item `seq` into every byte of a window's bytes
/// (volatile stores, block by block: the bytes are shared memory).
pub fn fill_volatile(mut buf: dmabuf::mapping::VolatileBytesMut<'_>, seq: u64) {
    let b = block(seq);
    let mut off = 0;
    while off < buf.len() {
        let n = (buf.len() - off).min(b.len());
        // In range: `off + n <= len`.
        let _ = buf.write_at(off, &b[..n]);
        off += n;
    }
}

/// [`check`] on a window's bytes: each 256-byte block is copied out
/// (volatile loads) and compared.
pub fn check_volatile(buf: dmabuf::mapping::VolatileBytes<'_>, seq: u64) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    let mut off = 0;
    while off < buf.len() {
        let n = (buf.len() - off).min(chunk.len());
        // In range: `off + n <= len`.
        let _ = buf.read_at(off, &mut chunk[..n]);
        // 4096 is a multiple of the 256-byte block: the phase is kept.
        if let Some(at) = check(&chunk[..n], seq) {
            return Some(off + at);
        }
        off += n;
    }
    None
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

/// Latency percentiles of `samples` (ns), in µs: p50, p90, p99.
pub fn percentiles_us(samples: &mut [u64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i.min(samples.len() - 1)] as f64 / 1000.0
    };
    (at(0.50), at(0.90), at(0.99))
}

/// "4 KiB", "16 MiB".
pub fn human_size(n: u64) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
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
    fn human_sizes() {
        assert_eq!(human_size(16 << 20), "16 MiB");
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let (a, b, c) = percentiles_us(&mut v);
        assert_eq!((a.round(), b.round(), c.round()), (51.0, 90.0, 99.0));
    }
}

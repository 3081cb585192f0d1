//! Moving test bytes in and out of buffers through CPU windows, in one
//! place: the window API may change (a volatile byte view instead of a
//! slice), and then only these functions change.

use std::time::Duration;

use dmabuf::mapping::{ReadOnly, WriteOnly};
use dmabuf::{Buffer, Result};

/// A deterministic byte pattern of `len` bytes for `seed`; different seeds
/// give different patterns.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> (seed % 24)) as u8 ^ seed)
        .collect()
}

/// Writes `data` at the start of `buf` through a write window (waiting
/// for whatever is in the way, without a limit).
pub fn write(buf: &Buffer, data: &[u8]) -> Result<()> {
    let map = buf.map()?;
    let mut w = map.window::<WriteOnly>(0..data.len(), None)?;
    w.copy_from_slice(data);
    w.end()
}

/// Reads `len` bytes from the start of `buf` through a read window,
/// waiting at most `timeout` for the fences the library knows (kernel
/// fences are waited for by the kernel's `DMA_BUF_IOCTL_SYNC`).
pub fn read(buf: &Buffer, len: usize, timeout: Option<Duration>) -> Result<Vec<u8>> {
    let map = buf.map()?;
    let w = map.window::<ReadOnly>(0..len, timeout)?;
    let v = w.to_vec();
    w.end()?;
    Ok(v)
}

/// Reads the whole buffer through a read window (no time limit).
pub fn read_all(buf: &Buffer) -> Result<Vec<u8>> {
    read(buf, buf.size() as usize, None)
}

/// Index of the first byte where `got` and `want` differ, or where one
/// ends before the other.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or((got.len() != want.len()).then(|| got.len().min(want.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_and_differences_are_found() {
        assert_ne!(pattern(64, 1), pattern(64, 2));
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 9, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
    }
}

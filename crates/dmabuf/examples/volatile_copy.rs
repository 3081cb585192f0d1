//! Measures the volatile window's bulk operations against plain
//! `memcpy`/`memset`/`memcmp` on the same mapping, interleaved in one run,
//! at 64 KiB and 1 MiB (in cache) and 16 MiB (out of cache):
//! `cargo run --release -p dmabuf --example volatile_copy`.
//!
//! Each round: fill the window, copy it in, compare it in place, copy it
//! out — once through the volatile view, once through a plain slice of
//! the same bytes (the `unsafe` escape hatch, sound here: nobody else has
//! the buffer). Prints the median and spread of each and the ratio.

use std::time::{Duration, Instant};

use dmabuf::{Allocate, Portable};

fn main() -> dmabuf::Result<()> {
    for (size, rounds) in [(64usize << 10, 2001), (1 << 20, 201), (16 << 20, 31)] {
        measure(size, rounds)?;
    }
    Ok(())
}

fn measure(size: usize, rounds: usize) -> dmabuf::Result<()> {
    let buf = Portable.allocate(size as u64, "volatile-bench")?;
    let map = buf.map()?;
    let src: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
    let mut dst = vec![0u8; size];
    let mut vol = Vec::with_capacity(rounds);
    let mut plain = Vec::with_capacity(rounds);
    for round in 0..rounds + 2 {
        let mut w = map.write()?;
        let t = Instant::now();
        w.fill(round as u8);
        w.copy_from_slice(&src);
        let same = w.bytes().mismatch_at(0, &src).expect("in range").is_none();
        w.copy_to_slice(&mut dst);
        let v = t.elapsed();
        std::hint::black_box(&mut dst);
        assert!(same);
        assert_eq!(dst, src);
        // SAFETY: this process alone holds the buffer, and the window is
        // open for writing: nobody else reads or writes these bytes.
        let s = unsafe { w.bytes_mut().as_mut_slice() };
        let t = Instant::now();
        s.fill(round as u8);
        s.copy_from_slice(&src);
        let same = std::hint::black_box(&*s) == &src[..];
        dst.copy_from_slice(s);
        let p = t.elapsed();
        std::hint::black_box(&mut dst);
        assert!(same);
        assert_eq!(dst, src);
        if round >= 2 {
            vol.push(v);
            plain.push(p);
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (vmin, vmed, vmax) = stats(&mut vol);
    let (pmin, pmed, pmax) = stats(&mut plain);
    let gibs = |d: Duration| 4.0 * size as f64 / d.as_secs_f64() / (1u64 << 30) as f64;
    println!(
        "{} KiB: fill + copy in + compare + copy out, {rounds} rounds, interleaved",
        size >> 10
    );
    println!(
        "  volatile: median {vmed:?} ({:.1} GiB/s), min {vmin:?}, max {vmax:?}",
        gibs(vmed)
    );
    println!(
        "  plain:    median {pmed:?} ({:.1} GiB/s), min {pmin:?}, max {pmax:?}",
        gibs(pmed)
    );
    println!(
        "  volatile / plain time: median {:.2}, best {:.2}",
        vmed.as_secs_f64() / pmed.as_secs_f64(),
        vmin.as_secs_f64() / pmin.as_secs_f64()
    );
    Ok(())
}

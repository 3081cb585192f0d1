//! A bounded record of handoff latencies: a log-linear histogram (32
//! sub-buckets per power of two, so a percentile is within about 3 % of
//! the true value), 1920 counters whatever the number of items — not a
//! vector growing by one entry per item.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed for every u64: 32 exact ones, then 32 per power of two
/// from 2^5 to 2^63.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Latencies in nanoseconds, counted by bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

/// On the wire: the non-empty buckets as `[index, count]` pairs.
#[derive(Serialize, Deserialize)]
struct Wire {
    buckets: Vec<(u32, u64)>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // ≥ SUB_BITS
    ((e - SUB_BITS + 1) as u64 * SUB + ((v >> (e - SUB_BITS)) & (SUB - 1))) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let low = (SUB + i % SUB) << (e - SUB_BITS);
    low.saturating_add((1u64 << (e - SUB_BITS)) / 2)
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.total += 1;
    }

    /// How many latencies were counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total = self.total.saturating_add(other.total);
    }

    /// The latency at fraction `p` (0..=1) of the counted ones, in ns
    /// (0 when empty).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64 * p.clamp(0.0, 1.0)).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return value(i);
            }
        }
        value(BUCKETS - 1)
    }

    /// p50, p90 and p99 in µs.
    pub fn percentiles_us(&self) -> (f64, f64, f64) {
        let us = |p| self.percentile(p) as f64 / 1000.0;
        (us(0.50), us(0.90), us(0.99))
    }
}

impl TryFrom<Wire> for Histogram {
    type Error = String;
    fn try_from(w: Wire) -> Result<Histogram, String> {
        let mut h = Histogram::default();
        for (i, c) in w.buckets {
            let slot = h
                .counts
                .get_mut(i as usize)
                .ok_or_else(|| format!("latency bucket {i} does not exist (0..{BUCKETS})"))?;
            *slot = slot.saturating_add(c);
            h.total = h.total.saturating_add(c);
        }
        Ok(h)
    }
}

impl From<Histogram> for Wire {
    fn from(h: Histogram) -> Wire {
        Wire {
            buckets: h
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        assert_eq!(index(0), 0);
        assert_eq!(index(31), 31);
        assert_eq!(index(32), 32);
        assert_eq!(index(63), 63);
        assert_eq!(index(64), 64);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let mut last = 0;
        for v in (0..20).flat_map(|s| (0..200u64).map(move |x| x << s)) {
            let i = index(v);
            if v > 0 {
                assert!(i >= last || v < 200, "{v}");
            }
            // The bucket's middle is within 1/32 of every value in it.
            let mid = value(i) as f64;
            assert!(
                (mid - v as f64).abs() <= v as f64 / 32.0 + 1.0,
                "{v}: {mid}"
            );
            last = i;
        }
    }

    #[test]
    fn percentiles_are_close_and_memory_is_fixed() {
        let mut h = Histogram::default();
        for x in 1..=100_000u64 {
            h.record(x * 1000);
        }
        assert_eq!(h.len(), 100_000);
        assert_eq!(h.counts.len(), BUCKETS);
        let (p50, p90, p99) = h.percentiles_us();
        for (got, want) in [(p50, 50_000.0), (p90, 90_000.0), (p99, 99_000.0)] {
            assert!((got - want).abs() / want < 0.035, "{got} vs {want}");
        }
        assert_eq!(Histogram::default().percentiles_us(), (0.0, 0.0, 0.0));
    }

    #[test]
    fn wire_round_trip_and_hostile_input() {
        let mut h = Histogram::default();
        h.record(5);
        h.record(5_000_000);
        let s = serde_json::to_string(&h).unwrap();
        let back: Histogram = serde_json::from_str(&s).unwrap();
        assert_eq!(back, h);
        let mut m = back.clone();
        m.merge(&h);
        assert_eq!(m.len(), 4);
        let e = serde_json::from_str::<Histogram>(r#"{"buckets":[[99999,1]]}"#).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let big: Histogram =
            serde_json::from_str(r#"{"buckets":[[1,18446744073709551615],[2,5]]}"#).unwrap();
        assert_eq!(big.len(), u64::MAX);
        assert_eq!(big.percentile(0.5), 1);
    }
}

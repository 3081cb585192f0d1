//! Streaming latency statistics of bounded size, for consumers that
//! measure every item of a long run (a vector of samples would grow by 8
//! bytes per item for the whole run).

use std::time::Duration;

/// Sub-buckets per power of two: values are kept to within 1/16 (6.25 %).
const SUB: u32 = 16;
/// Powers of two covered: 1 ns to 2^64 ns.
const BUCKETS: usize = (64 * SUB) as usize;

/// A latency histogram of fixed size (16 KiB, whatever the number of
/// samples): count, minimum, maximum and mean exactly, percentiles to
/// within 6.25 % (log-linear buckets, 16 per power of two).
#[derive(Clone)]
pub struct LatencyStats {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl std::fmt::Debug for LatencyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyStats")
            .field("count", &self.count)
            .field("min_ns", &self.min_ns)
            .field("max_ns", &self.max_ns)
            .finish_non_exhaustive()
    }
}

impl Default for LatencyStats {
    fn default() -> Self {
        LatencyStats::new()
    }
}

fn bucket(ns: u64) -> usize {
    if ns < u64::from(SUB) {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= 4
    let sub = (ns >> (exp - 4)) & u64::from(SUB - 1);
    ((exp - 3) * SUB) as usize + sub as usize
}

/// The largest value that falls in bucket `b`.
fn bucket_top(b: usize) -> u64 {
    let b = b as u64;
    let sub_n = u64::from(SUB);
    if b < sub_n {
        return b;
    }
    let exp = b / sub_n + 3;
    let sub = b % sub_n;
    let base = (sub_n + sub) << (exp - 4);
    base.saturating_add((1u64 << (exp - 4)) - 1)
}

impl LatencyStats {
    /// No samples yet.
    pub fn new() -> LatencyStats {
        LatencyStats {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Adds one sample, in ns.
    pub fn record_ns(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyStats) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest sample (ns), if any.
    pub fn min_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_ns)
    }

    /// The largest sample (ns), if any.
    pub fn max_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_ns)
    }

    /// The mean (ns), if any.
    pub fn mean_ns(&self) -> Option<u64> {
        (self.count > 0).then(|| (self.sum_ns / u128::from(self.count)) as u64)
    }

    /// The `p`-th percentile (0 to 100; NaN counts as 0) in ns, within
    /// 6.25 % above the true value and never above the maximum; `None`
    /// without samples.
    pub fn percentile_ns(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_top(b).clamp(self.min_ns, self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket(ns);
            assert!(b < BUCKETS);
            assert!(b >= last, "{ns}");
            last = b;
            assert!(bucket_top(b) >= ns, "{ns}");
            assert!(bucket_top(b) - ns <= ns / 16 + 1, "{ns} in {b}");
        }
    }

    #[test]
    fn percentiles_are_close_and_size_is_fixed() {
        let mut s = LatencyStats::new();
        assert_eq!(s.percentile_ns(50.0), None);
        for ns in 1..=1_000_000u64 {
            s.record_ns(ns * 10);
        }
        assert_eq!(s.count(), 1_000_000);
        assert_eq!(s.min_ns(), Some(10));
        assert_eq!(s.max_ns(), Some(10_000_000));
        assert_eq!(s.mean_ns(), Some(5_000_005));
        for (p, want) in [
            (50.0, 5_000_000.0),
            (99.0, 9_900_000.0),
            (100.0, 10_000_000.0),
        ] {
            let got = s.percentile_ns(p).unwrap() as f64;
            assert!(got >= want && got <= want * 1.0625, "p{p}: {got}");
        }
        assert_eq!(s.percentile_ns(f64::NAN), Some(10));
        let mut t = LatencyStats::new();
        t.merge(&s);
        assert_eq!(t.count(), s.count());
    }
}

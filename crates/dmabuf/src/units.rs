//! Sizes and rates for people: the one formatter of the workspace (the
//! library's messages, `dmabuf ls`, and every size and rate the command
//! prints).
//!
//! # DOC: units
//!
//! Binary multiples that scale with the value: `512 B`, `4.0 KiB`,
//! `1.5 MiB`, `2.0 GiB`, `3.0 TiB` (one decimal); rates the same way per
//! second with two decimals: `812.40 MiB/s`, `2.41 GiB/s`.

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// `value` scaled to the largest unit it reaches, and that unit.
fn scale(value: f64) -> (f64, &'static str) {
    let mut v = value;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    (v, UNITS[unit])
}

/// A size in bytes for people: `512 B`, `4.0 KiB`, `1.5 MiB`, `2.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let (v, unit) = scale(bytes as f64);
    format!("{v:.1} {unit}")
}

/// A rate for people: `bytes` moved in `seconds`, as `512.00 B/s`,
/// `812.40 MiB/s`, `2.41 GiB/s`. A time of zero or less (or not a number)
/// counts as one nanosecond.
pub fn human_rate(bytes: u64, seconds: f64) -> String {
    let secs = if seconds.is_finite() && seconds > 1e-9 {
        seconds
    } else {
        1e-9
    };
    let (v, unit) = scale(bytes as f64 / secs);
    format!("{v:.2} {unit}/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
        assert_eq!(human_size(1 << 40), "1.0 TiB");
        assert_eq!(human_size(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn rates_scale() {
        assert_eq!(human_rate(512, 1.0), "512.00 B/s");
        assert_eq!(human_rate(3 << 20, 2.0), "1.50 MiB/s");
        assert_eq!(human_rate(5 << 30, 2.0), "2.50 GiB/s");
        assert_eq!(human_rate(1023 << 20, 1.0), "1023.00 MiB/s");
        // No division by zero, no NaN.
        assert_eq!(human_rate(0, 0.0), "0.00 B/s");
        assert!(!human_rate(1, f64::NAN).contains("NaN"));
    }
}

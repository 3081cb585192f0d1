//! The one parser of durations given in seconds (`--seconds`, `--hold`,
//! `--timeout`, `--watch`): every value is checked before it becomes a
//! [`Duration`], so that no input reaches `Duration::from_secs_f64`'s
//! panics (`inf`, `nan`, `1e300`, negative numbers).

use std::time::Duration;

/// The longest duration any option accepts: 365 days.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn parse(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds (expected e.g. 2, 0.5 or 1e-3)"))?;
    let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
    if !v.is_finite() || !low_ok || v > MAX_SECONDS {
        let low = if zero_ok { "0 ≤" } else { "0 <" };
        return Err(format!(
            "'{s}' seconds is out of range: expected {low} seconds ≤ {MAX_SECONDS} (365 days)"
        ));
    }
    // In range and finite: from_secs_f64 cannot panic. A positive value
    // too small for a nanosecond still means "a little": 1 ns.
    let d = Duration::from_secs_f64(v);
    Ok(if d.is_zero() && v > 0.0 {
        Duration::from_nanos(1)
    } else {
        d
    })
}

/// A duration > 0 and ≤ [`MAX_SECONDS`] (clap value parser).
pub fn positive(s: &str) -> Result<Duration, String> {
    parse(s, false)
}

/// A duration ≥ 0 and ≤ [`MAX_SECONDS`] (clap value parser).
pub fn non_negative(s: &str) -> Result<Duration, String> {
    parse(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_durations() {
        assert_eq!(positive("2"), Ok(Duration::from_secs(2)));
        assert_eq!(positive("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(positive("1e-3"), Ok(Duration::from_millis(1)));
        assert_eq!(positive("1e-300"), Ok(Duration::from_nanos(1)));
        assert_eq!(non_negative("0"), Ok(Duration::ZERO));
        assert_eq!(positive("31536000"), Ok(Duration::from_secs(31_536_000)));
    }

    #[test]
    fn bad_durations_name_the_bound() {
        for s in [
            "inf", "-inf", "nan", "NaN", "1e300", "-1", "0", "31536001", "1e20",
        ] {
            let e = positive(s).unwrap_err();
            assert!(
                e.contains("out of range") && e.contains("365 days"),
                "{s}: {e}"
            );
        }
        for s in ["", "abc", "1s", "0x10", "1,5"] {
            let e = positive(s).unwrap_err();
            assert!(e.contains("not a number of seconds"), "{s}: {e}");
        }
        assert!(non_negative("-0.5").unwrap_err().contains("0 ≤"));
        assert!(positive("-0").unwrap_err().contains("0 <"));
    }

    #[test]
    fn no_float_string_panics() {
        // Every f64 bit pattern class, printed and parsed back.
        for bits in [
            0u64,
            1,
            0x7ff0_0000_0000_0000,
            0x7ff8_0000_0000_0001,
            u64::MAX,
            0x4330_0000_0000_0000,
            0x8000_0000_0000_0001,
        ] {
            let s = f64::from_bits(bits).to_string();
            let _ = positive(&s);
            let _ = non_negative(&s);
        }
    }
}

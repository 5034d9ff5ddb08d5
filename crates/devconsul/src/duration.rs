//! Go `time.Duration` syntax (`1h2m3.5s`, `500ms`, `1us`, `µs`, `-2s`): Consul parses `wait`,
//! `TTL`, `LockDelay` and check intervals with Go's `time.ParseDuration`, and prints durations the
//! way Go's `Duration.String` does in some error messages.

use thiserror::Error;

/// A string that is not a Go duration; the message mirrors Go's `time: …` errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    /// Syntax error (`time: invalid duration "x"`).
    #[error("time: invalid duration \"{0}\"")]
    Invalid(String),
    /// A number without a unit other than the bare `0` (`time: missing unit in duration "15"`).
    #[error("time: missing unit in duration \"{0}\"")]
    MissingUnit(String),
    /// An unknown unit (`time: unknown unit "x" in duration "1x"`).
    #[error("time: unknown unit \"{unit}\" in duration \"{input}\"")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        input: String,
    },
}

/// Parses a Go duration into signed nanoseconds (saturating at the `i64` range, as Go overflows).
///
/// # Errors
/// Anything `time.ParseDuration` rejects, including unit-less numbers other than `0`.
pub fn parse_go_duration(input: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(input.to_string());
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let num_len = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let num = &s[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        s = &s[num_len..];
        let unit_len = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let scale: f64 = match unit {
            "" => return Err(DurationError::MissingUnit(input.to_string())),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    input: input.to_string(),
                })
            }
        };
        total += value * scale;
    }
    let total = if negative { -total } else { total };
    // `as` saturates on overflow, which is what a dev server wants.
    Ok(total.round() as i64)
}

/// Formats nanoseconds like Go's `Duration.String` (`10s`, `24h0m0s`, `1.5s`, `500ms`, `0s`).
pub fn format_go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", frac(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", frac(n, 1_000_000));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = (n / 60_000_000_000) % 60;
    let secs = frac(n % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{secs}s")
    } else {
        format!("{sign}{secs}s")
    }
}

/// `n / unit` with the fractional digits Go prints (trailing zeros dropped).
fn frac(n: u64, unit: u64) -> String {
    let whole = n / unit;
    let rest = n % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's units, fractions, compound forms and signs parse to the right nanoseconds.
    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse_go_duration("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(parse_go_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_go_duration("1us"), Ok(1_000));
        assert_eq!(parse_go_duration("1µs"), Ok(1_000));
        assert_eq!(parse_go_duration("1μs"), Ok(1_000));
        assert_eq!(parse_go_duration("7ns"), Ok(7));
        assert_eq!(parse_go_duration("15000ms"), Ok(15_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration("-2s"), Ok(-2_000_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
    }

    /// Unit-less numbers, empty strings and unknown units are rejected like Go does.
    #[test]
    fn rejects_non_durations() {
        assert_eq!(
            parse_go_duration("15"),
            Err(DurationError::MissingUnit("15".into()))
        );
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("-").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("1..2s").is_err());
        assert!(parse_go_duration("abc").is_err());
    }

    /// Formatting matches Go's `Duration.String` for the values Consul prints.
    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(10_000_000_000), "10s");
        assert_eq!(format_go_duration(86_400_000_000_000), "24h0m0s");
        assert_eq!(format_go_duration(1_500_000_000), "1.5s");
        assert_eq!(format_go_duration(500_000_000), "500ms");
        assert_eq!(format_go_duration(0), "0s");
        assert_eq!(format_go_duration(90_000_000_000), "1m30s");
    }
}

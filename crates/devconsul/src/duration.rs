//! Go `time.Duration` syntax (`1h2m3.5s`, `500ms`, `1us`, `µs`, `-2s`): Consul parses `wait`,
//! `TTL`, `LockDelay` and check intervals with Go's `time.ParseDuration`, and prints durations the
//! way Go's `Duration.String` does in some error messages.

use thiserror::Error;

/// A string that is not a Go duration; the message is Go's `time: …` error, with the input quoted
/// the way Go's `time` package quotes it (non-ASCII and control bytes as `\xNN`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    /// Syntax error or overflow (`time: invalid duration "x"`); holds the input.
    #[error("time: invalid duration {}", go_quote(.0))]
    Invalid(String),
    /// A number without a unit other than the bare `0` (`time: missing unit in duration "15"`).
    #[error("time: missing unit in duration {}", go_quote(.0))]
    MissingUnit(String),
    /// An unknown unit (`time: unknown unit "x" in duration "1x"`).
    #[error("time: unknown unit {} in duration {}", go_quote(.unit), go_quote(.input))]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        input: String,
    },
}

/// Go's `time.quote`: double quotes around `s`, `"` and `\` escaped, and every byte of a
/// non-ASCII or control character written as `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c.is_ascii() && c >= ' ' {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out.push('"');
    out
}

/// Nanoseconds of each unit Go accepts.
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// `1 << 63`: the magnitude of `i64::MIN`, the largest Go accepts (for a negative duration).
const MAGNITUDE_LIMIT: u64 = 1 << 63;

/// Splits the leading ASCII digits off `s`: their value (`None` past `1 << 63`) and the rest.
fn leading_int(s: &str) -> (Option<u64>, &str) {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    let mut x: Option<u64> = Some(0);
    for b in s[..end].bytes() {
        x = x
            .filter(|&v| v <= MAGNITUDE_LIMIT / 10)
            .map(|v| v * 10 + u64::from(b - b'0'))
            .filter(|&v| v <= MAGNITUDE_LIMIT);
    }
    (x, &s[end..])
}

/// Splits the leading ASCII digits of a fraction off `s`: their value and `10^digits` as Go
/// accumulates them (digits past the precision of a `u64` are consumed and ignored), and the rest.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    for b in s[..end].bytes() {
        if overflow {
            continue;
        }
        if x > (MAGNITUDE_LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(b - b'0');
        if y > MAGNITUDE_LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[end..])
}

/// Parses a Go duration into signed nanoseconds, exactly as Go's `time.ParseDuration` does:
/// integer arithmetic (the fraction of each unit through `f64`, as Go does), and a value outside
/// the `i64` range is invalid, not saturated.
///
/// # Errors
/// Anything `time.ParseDuration` rejects, with its message: unit-less numbers other than `0`,
/// unknown units, syntax errors, overflow.
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
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (whole, rest) = leading_int(s);
        let mut value = whole.ok_or_else(invalid)?;
        let pre = rest.len() != before;
        s = rest;
        let (mut fraction, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let (f, sc, rest2) = leading_fraction(rest);
            post = rest2.len() != rest.len();
            (fraction, scale, s) = (f, sc, rest2);
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let Some(nanos) = unit_nanos(unit) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_string(),
                input: input.to_string(),
            });
        };
        if value > MAGNITUDE_LIMIT / nanos {
            return Err(invalid());
        }
        value *= nanos;
        if fraction > 0 {
            // As Go: f64 keeps the fraction of an hour nanosecond-exact; `as` truncates like Go's
            // conversion (the product is at most 3.6e12, well inside the range).
            value += (fraction as f64 * (nanos as f64 / scale)) as u64;
            if value > MAGNITUDE_LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|&t| t <= MAGNITUDE_LIMIT)
            .ok_or_else(invalid)?;
    }
    if negative {
        // `total` is at most 1 << 63, whose negation is exactly `i64::MIN`.
        return Ok(0i64.wrapping_sub_unsigned(total));
    }
    i64::try_from(total).map_err(|_| invalid())
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

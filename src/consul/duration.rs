//! Go-style duration strings as Consul expects them on the wire (`"10s"`, `"1500ms"`).

use std::time::Duration;

/// Formats a duration the way Go's `time.ParseDuration` reads it, exactly: whole seconds as
/// `"<n>s"`, whole milliseconds as `"<n>ms"`, otherwise nanoseconds as `"<n>ns"`.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else {
        format!("{nanos}ns")
    }
}

/// Serde helper: an optional duration as a Go duration string (`None` as `null`; pair it with
/// `skip_serializing_if = "Option::is_none"`).
pub(crate) fn serialize_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_go_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations are rendered in the largest exact unit, as Consul's parser accepts them.
    #[test]
    fn formats_in_exact_units() {
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_go_duration(Duration::from_nanos(1500)), "1500ns");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }
}

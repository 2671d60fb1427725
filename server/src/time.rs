//! RFC 3339 UTC timestamps without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to a civil (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (or without fraction if `millis` is false).
pub fn rfc3339_ms(unix_ms: u64, millis: bool) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if millis {
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            unix_ms % 1000
        )
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

/// Formats a wall-clock instant as RFC 3339 UTC with nanoseconds
/// (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`), the form of IronMQ's stats timestamps.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = rfc3339_ms(d.as_secs() * 1000, false);
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), d.subsec_nanos())
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Current time, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_406_735_103_000, false), "2014-07-30T15:45:03Z");
        assert_eq!(
            rfc3339_ms(951_782_400_123, true),
            "2000-02-29T00:00:00.123Z"
        );
        let t = UNIX_EPOCH + std::time::Duration::new(1_425_057_453, 114_776_660);
        assert_eq!(rfc3339_nanos(t), "2015-02-27T17:17:33.114776660Z");
    }
}

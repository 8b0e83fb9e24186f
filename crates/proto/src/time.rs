//! RFC 3339 timestamps in UTC, without a date library: whole seconds for
//! the records the agent reports, nanoseconds for Lima's events.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-30T07:00:00Z` (times before 1970 clamp to the epoch).
pub fn rfc3339_secs(t: SystemTime) -> String {
    let (date, _) = parts(t);
    format!("{date}Z")
}

/// `2026-11-30T07:00:00.000000005Z`, as Lima's events carry.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let (date, nanos) = parts(t);
    format!("{date}.{nanos:09}Z")
}

fn parts(t: SystemTime) -> (String, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    let date = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date, d.subsec_nanos())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// well-known algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_instants() {
        let at = |s| rfc3339_secs(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_796_022_000), "2026-11-30T07:00:00Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_764_162_000, 5);
        assert_eq!(rfc3339_nanos(t), "2025-11-26T13:00:00.000000005Z");
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }
}

//! Lima-shaped host agent events: one JSON object per line on the agent's
//! stdout (`ha.stdout.log`), the only progress channel between a detached
//! agent and the `vm start` that launched it.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "is_false")]
    pub running: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub degraded: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub exiting: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ssh_local_port: u16,
    /// Our own progress stage ("booting", "waiting for SSH", ...). Lima's
    /// readers ignore unknown fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time: String,
    pub status: Status,
}

impl Event {
    pub fn now(status: Status) -> Self {
        Event {
            time: rfc3339(SystemTime::now()),
            status,
        }
    }
}

/// Writes one event as a single line in one write, so a reader tailing the
/// file sees whole lines only.
pub fn emit(out: &mut impl Write, status: Status) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Event::now(status)).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Parses the complete lines of `buf`, returning the events and how many
/// bytes were consumed; a trailing partial line is left for the next read.
pub fn parse_lines(buf: &[u8]) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut consumed = 0;
    while let Some(nl) = buf[consumed..].iter().position(|&b| b == b'\n') {
        let line = &buf[consumed..consumed + nl];
        if let Ok(ev) = serde_json::from_slice::<Event>(line) {
            events.push(ev);
        }
        consumed += nl + 1;
    }
    (events, consumed)
}

/// RFC 3339 in UTC with nanoseconds, as Lima's events carry.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
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
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_764_162_000, 5);
        assert_eq!(rfc3339(t), "2025-11-26T13:00:00.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert!(rfc3339(t).starts_with("2000-02-29T"));
    }

    #[test]
    fn events_serialize_like_lima() {
        let ev = Event {
            time: "t".into(),
            status: Status {
                ssh_local_port: 60022,
                ..Default::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"time":"t","status":{"sshLocalPort":60022}}"#
        );
        let exiting = Status {
            exiting: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&exiting).unwrap(),
            r#"{"exiting":true}"#
        );
    }

    #[test]
    fn parse_keeps_partial_line() {
        let buf = b"{\"time\":\"a\",\"status\":{\"running\":true}}\n{\"time\":\"b\",\"sta";
        let (evs, used) = parse_lines(buf);
        assert_eq!(evs.len(), 1);
        assert!(evs[0].status.running);
        assert_eq!(&buf[used..], b"{\"time\":\"b\",\"sta");
    }
}

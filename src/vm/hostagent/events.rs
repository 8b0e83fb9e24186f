//! Lima-shaped host agent events: one JSON object per line on the agent's
//! stdout (`ha.stdout.log`), the only progress channel between a detached
//! agent and the `vm start` that launched it.

use std::io::Write;
use std::time::SystemTime;

use llima_box_proto::time::rfc3339_nanos;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status {
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
pub(crate) struct Event {
    pub time: String,
    pub status: Status,
}

impl Event {
    pub(crate) fn now(status: Status) -> Self {
        Event {
            time: rfc3339_nanos(SystemTime::now()),
            status,
        }
    }
}

/// Writes one event as a single line in one write, so a reader tailing the
/// file sees whole lines only.
pub(crate) fn emit(out: &mut impl Write, status: Status) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Event::now(status)).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Parses the complete lines of `buf`, returning the events and how many
/// bytes were consumed; a trailing partial line is left for the next read.
pub(crate) fn parse_lines(buf: &[u8]) -> (Vec<Event>, usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

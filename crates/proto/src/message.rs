//! The requests the host sends the guest agent and its replies: one
//! [`REQUEST`] frame, answered by one [`REPLY`] frame, any number of times
//! on one stream. Both are JSON, so an older or newer peer's unknown fields
//! are ignored and an unknown request gets an error reply, not a hang.

use serde::{Deserialize, Serialize};

use crate::frame::{self, Frame};

/// Frame kind of a [`Request`].
pub const REQUEST: u8 = b'Q';
/// Frame kind of a [`Reply`].
pub const REPLY: u8 = b'R';

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The agent's own sha256, to tell whether it needs an upgrade.
    Version,
    /// Every environment, with its state.
    List,
    /// Kills every process of the environment and removes its user, home
    /// and records; the project is never touched. Nothing to do for an
    /// environment that does not exist.
    Delete { name: String },
    /// Records a project's settings with its environment (used from its
    /// next start on) and applies its limits to it now if it runs.
    /// Nothing to do for an environment that does not exist.
    Configure {
        name: String,
        settings: crate::settings::Settings,
    },
    /// Connects to `port` on the loopback of the running environment
    /// `name` (its own network namespace). After a [`Reply::Connected`]
    /// the stream carries that connection's bytes both ways, no frames.
    Connect { name: String, port: u16 },
    /// The connection attempts the firewall refused to the environment
    /// `name`, logged after the kernel log record `after` (0: all that the
    /// log still holds).
    NetLog { name: String, after: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Version {
        sha256: String,
    },
    List {
        envs: Vec<EnvInfo>,
    },
    /// `existed`: false when there was nothing to delete.
    Deleted {
        existed: bool,
    },
    /// `running`: the limits changed in the running environment.
    Configured {
        existed: bool,
        running: bool,
    },
    /// From here on the stream is the connection [`Request::Connect`] asked for.
    Connected,
    /// `next`: the `after` that asks for what is logged from now on.
    NetLog {
        denials: Vec<crate::net::Denial>,
        next: u64,
    },
    /// The request failed; `message` says what and why, for a person.
    Error {
        message: String,
    },
}

/// One environment as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvInfo {
    pub name: String,
    pub project: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// RFC 3339, UTC: the last command run in it.
    pub last_used: String,
    /// The namespace holder is alive.
    pub running: bool,
    /// Some process of the environment's user runs.
    pub active: bool,
    pub processes: u32,
    pub home_bytes: u64,
    /// Refused connection attempts in the kernel's log (see [`Request::NetLog`]).
    #[serde(default)]
    pub denied: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("expected a frame of kind {want:?}, got {got:?}")]
    Kind { want: char, got: char },
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    frame::encode(REQUEST, &serde_json::to_vec(r).expect("requests serialise"))
}

pub fn encode_reply(r: &Reply) -> Vec<u8> {
    frame::encode(REPLY, &serde_json::to_vec(r).expect("replies serialise"))
}

pub fn decode_request(f: &Frame) -> Result<Request, MessageError> {
    decode(f, REQUEST)
}

pub fn decode_reply(f: &Frame) -> Result<Reply, MessageError> {
    decode(f, REPLY)
}

fn decode<T: for<'de> Deserialize<'de>>(f: &Frame, want: u8) -> Result<T, MessageError> {
    if f.kind != want {
        return Err(MessageError::Kind {
            want: want as char,
            got: f.kind as char,
        });
    }
    Ok(serde_json::from_slice(&f.payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Decoder;

    fn info() -> EnvInfo {
        EnvInfo {
            name: "app-1a2b3c4d".into(),
            project: "/home/u/a \"q\"\n$(x) ü".into(),
            created: "2026-11-30T07:00:00Z".into(),
            last_used: "2026-11-30T08:00:00Z".into(),
            running: true,
            active: false,
            processes: 0,
            home_bytes: 4096,
            denied: 3,
        }
    }

    #[test]
    fn round_trips_through_frames() {
        let replies = [
            Reply::Version {
                sha256: "ab".repeat(32),
            },
            Reply::List { envs: vec![info()] },
            Reply::Deleted { existed: true },
            Reply::Configured {
                existed: true,
                running: false,
            },
            Reply::Connected,
            Reply::NetLog {
                denials: vec![crate::net::Denial {
                    time: "2026-12-01T06:00:00Z".into(),
                    proto: "TCP".into(),
                    dest: "192.168.5.2".into(),
                    port: Some(5432),
                    name: None,
                    program: Some("curl".into()),
                }],
                next: 77,
            },
            Reply::Error {
                message: "no".into(),
            },
        ];
        for r in &replies {
            let mut d = Decoder::new();
            d.push(&encode_reply(r));
            let f = d.next_frame().unwrap().unwrap();
            assert_eq!(&decode_reply(&f).unwrap(), r);
        }
        let delete = Request::Delete {
            name: "app-1a2b3c4d".into(),
        };
        let configure = Request::Configure {
            name: "app-1a2b3c4d".into(),
            settings: crate::settings::Settings {
                tasks_max: Some(100),
                git_writes: true,
                ..Default::default()
            },
        };
        let connect = Request::Connect {
            name: "app-1a2b3c4d".into(),
            port: 8000,
        };
        let log = Request::NetLog {
            name: "app-1a2b3c4d".into(),
            after: 12,
        };
        for r in [
            Request::Version,
            Request::List,
            delete,
            configure,
            connect,
            log,
        ] {
            let mut d = Decoder::new();
            d.push(&encode_request(&r));
            assert_eq!(
                decode_request(&d.next_frame().unwrap().unwrap()).unwrap(),
                r
            );
        }
    }

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(
            serde_json::to_string(&Request::List).unwrap(),
            r#"{"op":"list"}"#
        );
        let v = serde_json::to_value(info()).unwrap();
        for key in ["lastUsed", "homeBytes", "processes", "running", "active"] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn wrong_kind_and_unknown_requests_are_errors() {
        let reply = crate::frame::Frame {
            kind: REPLY,
            payload: b"{}".to_vec(),
        };
        assert!(matches!(
            decode_request(&reply),
            Err(MessageError::Kind { .. })
        ));
        let unknown = crate::frame::Frame {
            kind: REQUEST,
            payload: br#"{"op":"fly"}"#.to_vec(),
        };
        assert!(matches!(
            decode_request(&unknown),
            Err(MessageError::Json(_))
        ));
    }
}

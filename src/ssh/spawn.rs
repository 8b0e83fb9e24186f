//! The host's side of the spawn protocol (`llima_box_proto::spawn`): a
//! command run by a server in the guest that the host reaches over a
//! `direct-streamlocal` channel, instead of by sshd in a new session. Under
//! emulation every process the guest starts costs tens of milliseconds;
//! sshd's session, login shell and sudo are several, the spawn server forks
//! once and execs the command. The server is the guest agent's
//! `env-server`.

use llima_box_proto::frame::encode as frame;
use llima_box_proto::spawn::{
    ACCEPTED, EOF, EXIT, ExitStatus, HEADER, Header, RESIZE, STDERR, STDIN, STDOUT,
};
use serde::{Deserialize, Serialize};

use super::RemoteExit;
use super::exec::PtyRequest;

/// Where the server listens in the guest and what to ask it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spawn {
    /// The server's unix socket, a guest path.
    pub socket: String,
    /// The server's own request (for an environment's: `cwd` and `argv`).
    pub request: serde_json::Value,
    /// Tried when `socket` is not there: a server that may take the
    /// request on, and says so before anything else (for an environment: a
    /// spare environment, claimed for this project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate: Option<Box<Spawn>>,
}

pub(super) fn header(
    spawn: &Spawn,
    env: &[(String, String)],
    pty: Option<&PtyRequest>,
    agent: Option<&str>,
) -> Vec<u8> {
    let json = serde_json::to_vec(&Header {
        request: &spawn.request,
        env: env.to_vec(),
        pty: pty.cloned(),
        agent: agent.map(String::from),
    })
    .expect("plain data serialises");
    frame(HEADER, &json)
}

pub(super) fn stdin(data: &[u8]) -> Vec<u8> {
    frame(STDIN, data)
}

pub(super) fn eof() -> Vec<u8> {
    frame(EOF, &[])
}

pub(super) fn resize(cols: u32, rows: u32) -> Vec<u8> {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let mut payload = clamp(rows).to_be_bytes().to_vec();
    payload.extend_from_slice(&clamp(cols).to_be_bytes());
    frame(RESIZE, &payload)
}

/// What the server sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(RemoteExit),
    /// An alternate server took the request on.
    Accepted,
}

/// The server's frames out of the channel's data, however it was split.
#[derive(Default)]
pub(super) struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds `data` and returns the frames it completed; an error names a
    /// frame that is not the protocol's.
    pub(super) fn push(&mut self, data: &[u8]) -> Result<Vec<Output>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some((kind, payload)) = self.take() {
            out.push(match kind {
                STDOUT => Output::Stdout(payload),
                STDERR => Output::Stderr(payload),
                EXIT => Output::Exit(exit(&payload)?),
                ACCEPTED => Output::Accepted,
                other => return Err(format!("unknown frame type {other}")),
            });
        }
        Ok(out)
    }

    /// Adds `data` and, once the first frame is complete, says whether it
    /// is the accepted frame (then consumed; what follows stays buffered
    /// for [`Decoder::push`]).
    pub(super) fn accepted(&mut self, data: &[u8]) -> Option<bool> {
        self.buf.extend_from_slice(data);
        let (kind, len) = self.peek()?;
        if kind != ACCEPTED {
            return Some(false);
        }
        self.buf.drain(..5 + len);
        Some(true)
    }

    /// The text of the stderr frames buffered so far (a refusal's reason).
    pub(super) fn stderr_text(&mut self) -> String {
        let mut text = Vec::new();
        while let Some((kind, payload)) = self.take() {
            if kind == STDERR {
                text.extend(payload);
            }
        }
        String::from_utf8_lossy(&text).trim().to_string()
    }

    /// The first frame's type and length, once it is complete.
    fn peek(&self) -> Option<(u8, usize)> {
        let header = self.buf.get(..5)?;
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        (self.buf.len() - 5 >= len).then_some((header[0], len))
    }

    fn take(&mut self) -> Option<(u8, Vec<u8>)> {
        let (kind, len) = self.peek()?;
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Some((kind, payload))
    }
}

fn exit(payload: &[u8]) -> Result<RemoteExit, String> {
    let body: ExitStatus = serde_json::from_slice(payload)
        .map_err(|e| format!("bad exit frame {:?}: {e}", String::from_utf8_lossy(payload)))?;
    Ok(match body {
        ExitStatus::Code { code } => RemoteExit::Code(code),
        ExitStatus::Signal { signal, core } => RemoteExit::Signal {
            name: signal,
            core_dumped: core,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_across_arbitrary_splits() {
        let mut wire = frame(STDOUT, b"hello");
        wire.extend(frame(STDERR, b""));
        wire.extend(frame(STDERR, b"oops"));
        wire.extend(frame(EXIT, br#"{"code": 7}"#));
        for split in 0..wire.len() {
            let mut d = Decoder::default();
            let mut got = d.push(&wire[..split]).unwrap();
            got.extend(d.push(&wire[split..]).unwrap());
            assert_eq!(
                got,
                vec![
                    Output::Stdout(b"hello".to_vec()),
                    Output::Stderr(vec![]),
                    Output::Stderr(b"oops".to_vec()),
                    Output::Exit(RemoteExit::Code(7)),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn signals_and_bad_frames() {
        let mut d = Decoder::default();
        let got = d
            .push(&frame(EXIT, br#"{"signal": "TERM", "core": true}"#))
            .unwrap();
        assert_eq!(
            got,
            vec![Output::Exit(RemoteExit::Signal {
                name: "TERM".into(),
                core_dumped: true
            })]
        );
        assert!(Decoder::default().push(&frame(9, b"")).is_err());
        assert!(Decoder::default().push(&frame(EXIT, b"{}")).is_err());
    }

    #[test]
    fn an_alternate_accepts_first_and_keeps_what_follows() {
        let mut wire = frame(ACCEPTED, b"");
        wire.extend(frame(STDOUT, b"hi"));
        wire.extend(frame(EXIT, br#"{"code": 0}"#));
        for split in 0..=wire.len() {
            let mut d = Decoder::default();
            let rest = match d.accepted(&wire[..split]) {
                Some(first) => {
                    assert!(first, "split at {split}");
                    &wire[split..]
                }
                None => {
                    assert_eq!(d.accepted(&wire[split..]), Some(true), "split at {split}");
                    &[]
                }
            };
            // What came with the acceptance is still there.
            assert_eq!(
                d.push(rest).unwrap(),
                vec![
                    Output::Stdout(b"hi".to_vec()),
                    Output::Exit(RemoteExit::Code(0))
                ],
                "split at {split}"
            );
        }
        let mut refusal = frame(STDERR, b"cannot claim: taken\n");
        refusal.extend(frame(EXIT, br#"{"code": 2}"#));
        let mut d = Decoder::default();
        assert_eq!(d.accepted(&refusal[..3]), None);
        assert_eq!(d.accepted(&refusal[3..]), Some(false));
        assert_eq!(d.stderr_text(), "cannot claim: taken");
    }

    #[test]
    fn the_host_side_frames_are_what_the_server_reads() {
        assert_eq!(resize(101, 33), vec![RESIZE, 0, 0, 0, 4, 0, 33, 0, 101]);
        assert_eq!(eof(), vec![EOF, 0, 0, 0, 0]);
        assert_eq!(stdin(b"ab"), vec![STDIN, 0, 0, 0, 2, b'a', b'b']);
        let spawn = Spawn {
            socket: "/s".into(),
            request: serde_json::json!({"cwd": "/p", "argv": ["a b"]}),
            alternate: None,
        };
        let env = vec![("LANG".to_string(), "C.UTF-8".to_string())];
        let h = header(&spawn, &env, None, Some("/run/a.sock"));
        assert_eq!(h[0], HEADER);
        let json: serde_json::Value = serde_json::from_slice(&h[5..]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"request": {"cwd": "/p", "argv": ["a b"]},
                               "env": [["LANG", "C.UTF-8"]], "pty": null,
                               "agent": "/run/a.sock"})
        );
    }
}

//! The warm path: the host agent holds one authenticated connection to the
//! guest and serves `mux.sock`; each `vm shell` hands it its stdin, stdout
//! and stderr (SCM_RIGHTS) with the command, and the agent runs the command
//! on a new channel, writing to and reading from those descriptors itself.
//! The client keeps only the terminal: raw mode, resizes, stop signals.
//! This saves the key exchange and authentication of every command, which
//! dominate a short command's latency, as OpenSSH's ControlMaster does.
//!
//! Messages are JSON, each behind a 4-byte big-endian length. The client
//! sends `run` (with the three descriptors attached) and then `resize`s; the
//! agent answers `started` once the command runs, then one of `exit`,
//! `signal` or `failed`. Before `started` nothing has been read from stdin,
//! so a client may still fall back to a direct connection.

mod client;
mod server;
mod wire;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::exec::Setup;

pub(crate) use client::{Outcome, run_via_mux};
pub(crate) use server::serve_shared;
pub use server::{bind, serve};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToHostAgent {
    /// Run a command on the client's stdin, stdout and stderr (attached).
    Run {
        setup: Setup,
        /// The client's `$SSH_AUTH_SOCK` when `setup.agent` is set.
        agent_socket: Option<PathBuf>,
    },
    /// The client's terminal changed size.
    Resize { cols: u32, rows: u32 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToClient {
    Started,
    Exit {
        code: u32,
    },
    Signal {
        name: String,
        core_dumped: bool,
    },
    /// The command could not be started or attached; `broken_pipe` when the
    /// reader of its output went away.
    Failed {
        message: String,
        broken_pipe: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::super::exec::PtyRequest;
    use super::*;

    /// The wire format is a contract between an agent and a CLI of
    /// possibly different builds: pin its shape.
    #[test]
    fn messages_have_a_stable_shape() {
        let run = ToHostAgent::Run {
            setup: Setup {
                command: "true".into(),
                pty: Some(PtyRequest {
                    term: "xterm".into(),
                    cols: 80,
                    rows: 24,
                    modes: vec![(3, 127)],
                }),
                env: vec![("LANG".into(), "C.UTF-8".into())],
                agent: true,
                spawn: None,
            },
            agent_socket: Some("/tmp/agent.sock".into()),
        };
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(
            json,
            r#"{"type":"run","setup":{"command":"true","pty":{"term":"xterm","cols":80,"rows":24,"modes":[[3,127]]},"env":[["LANG","C.UTF-8"]],"agent":true},"agent_socket":"/tmp/agent.sock"}"#
        );
        assert_eq!(serde_json::from_str::<ToHostAgent>(&json).unwrap(), run);
        let exit: ToClient = serde_json::from_str(r#"{"type":"exit","code":42}"#).unwrap();
        assert_eq!(exit, ToClient::Exit { code: 42 });
        assert_eq!(
            serde_json::to_string(&ToHostAgent::Resize { cols: 1, rows: 2 }).unwrap(),
            r#"{"type":"resize","cols":1,"rows":2}"#
        );
    }
}

//! The spawn protocol: one command per connection to an environment's spawn
//! server (the environment's first process, in its namespaces), which the
//! host reaches over sshd's `direct-streamlocal` channels. Frames are
//! [`crate::frame`]'s. The host sends one [`HEADER`] and then [`STDIN`],
//! [`EOF`] and [`RESIZE`] frames; the server answers with [`STDOUT`],
//! [`STDERR`] and one [`EXIT`]. A spare environment that takes a claim on
//! answers [`ACCEPTED`] before anything else; any other first frame means
//! nothing ran and the host may create the environment the slow way.

use serde::{Deserialize, Serialize};

/// Host to server: the JSON [`Header`], first and once.
pub const HEADER: u8 = 0;
/// Host to server: bytes for the command's stdin (or terminal).
pub const STDIN: u8 = 1;
/// Host to server: the command's stdin ends.
pub const EOF: u8 = 2;
/// Host to server: the terminal's new size, rows then columns (u16 BE).
pub const RESIZE: u8 = 3;

/// Server to host: the command's stdout (or terminal).
pub const STDOUT: u8 = 1;
/// Server to host: the command's stderr, and the server's own complaints.
pub const STDERR: u8 = 2;
/// Server to host: the JSON [`ExitStatus`], last.
pub const EXIT: u8 = 3;
/// Server to host: a spare took the claim on (see [`Claim`]).
pub const ACCEPTED: u8 = 4;

/// What the host sends first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header<R> {
    /// The server's own request: [`EnvRequest`] for an environment's.
    pub request: R,
    /// The client's environment; the server passes on what it allows.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// A terminal for the command; pipes when absent.
    #[serde(default)]
    pub pty: Option<Pty>,
    /// A socket in the spawn sockets' directory that sshd forwards to the
    /// host's SSH agent, for this command only.
    #[serde(default)]
    pub agent: Option<String>,
}

/// A terminal as SSH describes one: `TERM`, size and line settings as
/// RFC 4254 mode opcodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub modes: Vec<(u8, u32)>,
}

/// One command as the guest's admin user (`vm shell`), on the agent's
/// admin socket: a login shell, or a login shell running `command`, in
/// `cwd`. Without `cwd_required`, a `cwd` the guest does not have means
/// the home directory (the host's directory is there only when shared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRequest {
    pub cwd: Option<String>,
    #[serde(default)]
    pub cwd_required: bool,
    /// A shell command line; none: an interactive login shell.
    #[serde(default)]
    pub command: Option<String>,
}

/// One command in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRequest {
    /// Inside the project or the environment's home.
    pub cwd: String,
    /// Empty: a login shell.
    #[serde(default)]
    pub argv: Vec<String>,
    /// For a spare: become this environment first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

/// What a spare environment needs to become a project's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub name: String,
    /// The project's path in the guest.
    pub project: String,
    /// The host user the spare remapped the shares for.
    pub host_uid: u32,
    pub host_gid: u32,
    /// The sha256 of the guest agent the host installed; a spare made by
    /// another refuses.
    pub version: String,
    /// The git directories of the project's repositories, relative to it,
    /// as the host found them (see the host's `git_watch`), when its search
    /// was complete: their metadata is made read-only without a search of
    /// the spare's own, which takes a round trip to the host for every
    /// directory through the share. `None`: the spare searches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<String>>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExitStatus {
    Code { code: u32 },
    Signal { signal: String, core: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let exit = |s: &ExitStatus| serde_json::to_string(s).unwrap();
        assert_eq!(exit(&ExitStatus::Code { code: 7 }), r#"{"code":7}"#);
        let signal = ExitStatus::Signal {
            signal: "TERM".into(),
            core: true,
        };
        assert_eq!(exit(&signal), r#"{"signal":"TERM","core":true}"#);
        assert_eq!(
            serde_json::from_str::<ExitStatus>(r#"{"signal": "TERM", "core": true}"#).unwrap(),
            signal
        );
        assert!(serde_json::from_str::<ExitStatus>("{}").is_err());

        let header: Header<EnvRequest> =
            serde_json::from_str(r#"{"request": {"cwd": "/p"}, "pty": null}"#).unwrap();
        assert_eq!(header.request.argv, Vec::<String>::new());
        assert_eq!((header.env.len(), header.agent), (0, None));
        let v = serde_json::to_value(EnvRequest {
            cwd: "/p".into(),
            argv: vec!["a b".into()],
            claim: None,
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"cwd": "/p", "argv": ["a b"]}));
    }
}

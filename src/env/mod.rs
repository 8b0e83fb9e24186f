//! Environments: which one a project directory gets ([`naming`]) and the
//! protocol with the in-guest runtime that creates and runs them
//! ([`runtime`]). Nothing here talks to the VM: callers run the argv these
//! build over SSH and hand the output back for parsing.

pub mod naming;
pub mod runtime;

pub use naming::{canonical_project, env_name, validate_name};
pub use runtime::{EnvInfo, ExecRequest};

/// Everything that can go wrong deciding on or talking about an environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot resolve project path {path}: {source}; check that it exists and is readable")]
    Resolve {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("project path {0} is not a directory; give the project's directory")]
    NotADirectory(std::path::PathBuf),
    #[error("project path {0:?} is not valid UTF-8; rename it, environments need a UTF-8 path")]
    NotUtf8(std::path::PathBuf),
    #[error("project path {path:?} is not supported: {reason}")]
    Unsupported { path: String, reason: &'static str },
    #[error(
        "invalid environment name {0:?}: names are [a-z_][a-z0-9_-]*, at most 32 characters (see `llima-box list`)"
    )]
    InvalidName(String),
    #[error(
        "environment {name} already belongs to another project ({detail}); this is a name collision, delete that environment or rename one of the directories"
    )]
    OtherProject { name: String, detail: String },
    #[error("the environment runtime failed to {action} (exit status {code}): {detail}")]
    Runtime {
        action: &'static str,
        code: u32,
        detail: String,
    },
    #[error("unexpected line from the environment runtime's list: {line:?}: {source}")]
    BadListLine {
        line: String,
        source: serde_json::Error,
    },
}

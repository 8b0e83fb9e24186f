use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong between the host and the guest's sshd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the environment's spawn server sent something unexpected ({0}); the guest agent \
         may be from another llima-box version: `llima-box delete` the environment and retry"
    )]
    SpawnProtocol(String),

    #[error("the alternate spawn server did not take the request ({0})")]
    SpawnRefused(String),

    #[error("cannot {what} {path}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot read the SSH key {path}: it is not an unencrypted OpenSSH or PEM private key; \
         move it away to let llima-box create a new one"
    )]
    KeyDecode {
        path: PathBuf,
        #[source]
        source: russh::keys::Error,
    },

    #[error("cannot read the guest's host key {path}: expected one line `TYPE BASE64 [COMMENT]`")]
    HostKeyParse {
        path: PathBuf,
        #[source]
        source: russh::keys::Error,
    },

    /// A key or the directory holding it could have been replaced by
    /// someone else; the trust module's message says what and how to fix.
    #[error(transparent)]
    Untrusted(#[from] crate::vm::trust::TrustError),

    #[error("cannot generate an ed25519 key")]
    KeyGenerate(#[source] russh::keys::ssh_key::Error),

    #[error(
        "refusing to connect to {addr}: its host key is {got}, but the instance's pinned key is \
         {expected}; something else is listening on that port, or the instance was recreated \
         without updating ssh_host_key.pub"
    )]
    HostKeyMismatch {
        addr: SocketAddr,
        expected: String,
        got: String,
    },

    #[error(
        "the guest at {addr} rejected user {user:?} with key {fingerprint}; check that the VM was \
         created with this $LIMA_HOME/_config/user key"
    )]
    AuthRejected {
        addr: SocketAddr,
        user: String,
        fingerprint: String,
    },

    #[error(
        "could not reach sshd at {addr} within {}s (last error: {last}); is the VM running and \
         booted? See `llima-box vm status` and `llima-box vm logs`",
        .waited.as_secs()
    )]
    Deadline {
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },

    #[error("SSH handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: russh::Error,
    },

    #[error("the SSH session to the guest failed")]
    Session(#[from] russh::Error),

    #[error("the remote command ended without an exit status (the connection was lost?)")]
    NoExitStatus,

    #[error("cannot pass argument {0:?} to the remote shell: it contains a NUL byte")]
    Nul(String),

    #[error("cannot {what} the local terminal")]
    Terminal {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot copy the remote command's output to a local stream")]
    LocalIo(#[source] std::io::Error),

    #[error("the session was ended by {signal}")]
    Interrupted { signal: &'static str },

    #[error("cannot {what} the host agent's connection socket {}", path.display())]
    MuxSocket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the connection to the host agent broke during the command")]
    MuxLost(#[source] std::io::Error),

    #[error("the host agent's connection to the guest failed: {0}")]
    MuxRemote(String),
}

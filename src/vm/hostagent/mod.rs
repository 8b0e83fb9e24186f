//! The host agent: a detached `llima-box hostagent DIR` process that owns
//! QEMU for one instance, serves `ha.sock`, writes events and shuts the
//! guest down gracefully.

pub(crate) mod api;
pub(crate) mod events;
mod panic_watch;
mod plan;
pub(crate) mod ports;
mod readiness;
mod run;
pub(crate) mod ssh_config;
pub(crate) mod virtiofs;

pub(crate) use run::main;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HostAgentError {
    #[error("another host agent (pid {pid}) is already running for this instance")]
    AlreadyRunning { pid: u32 },
    #[error(transparent)]
    Untrusted(#[from] crate::vm::trust::TrustError),
    #[error(transparent)]
    PidFile(#[from] crate::vm::store::PidFileError),
    #[error(transparent)]
    Timeout(#[from] crate::timeouts::TimeoutError),
    #[error(transparent)]
    Config(#[from] crate::vm::config::ConfigError),
    #[error(transparent)]
    Cidata(#[from] crate::vm::cidata::CidataError),
    #[error(transparent)]
    Qemu(#[from] crate::vm::qemu::QemuError),
    // Boxed: russh's error types are large and this enum travels a lot.
    #[error(transparent)]
    Ssh(Box<crate::ssh::Error>),
    #[error(
        "provision mode {mode:?} is not supported by llima-box; use system, user, boot, dependency or data"
    )]
    UnsupportedProvision { mode: String },
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch for signals")]
    Signal(#[source] std::io::Error),
    #[error("internal task failed: {0}")]
    Join(String),
    #[error("the guest did not become ready within {secs} s ({waiting_for})")]
    NotReady { secs: u64, waiting_for: String },
    #[error("QEMU exited while the guest was booting ({status})")]
    GuestExited { status: String },
    #[error(
        "the guest's kernel panicked while booting, {times} times, the last one: {why}; its console is in serial.log (`llima-box vm logs --serial`). The image or its kernel options are at fault"
    )]
    GuestPanicked { why: String, times: u32 },
    #[error("interrupted while the guest was booting")]
    Interrupted,
    #[error(transparent)]
    Share(#[from] crate::vm::share::ShareError),
    #[error("virtiofsd for {} did not start: {why}", location.display())]
    Virtiofsd { location: PathBuf, why: String },
}

impl From<crate::ssh::Error> for HostAgentError {
    fn from(e: crate::ssh::Error) -> Self {
        HostAgentError::Ssh(Box::new(e))
    }
}

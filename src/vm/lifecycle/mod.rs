//! Driving an instance through its life: create, start, stop, delete.
//! Status is never stored; every step re-reads it from the store, as Lima
//! does, so crashes and concurrent commands see the truth.

mod create;
mod lock;
mod start;
mod stop;

pub(crate) use lock::InstanceLock;
pub use start::log_tail;
pub(crate) use start::{StartUi, Started, start};
pub(crate) use stop::{STOP_TIMEOUT, delete, force_stop, stop};

use std::path::PathBuf;

use crate::vm::layout;
use crate::vm::store::{PidFileError, Status, StoreError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("instance {name:?} does not exist; create and boot it with `llima-box vm start`")]
    NotFound { name: String },
    #[error("instance {name:?} is {status}, not Running{hint}")]
    NotRunning {
        name: String,
        status: Status,
        hint: &'static str,
    },
    #[error("instance {name:?} is protected; remove {} to allow deleting it", path.display())]
    Protected { name: String, path: PathBuf },
    #[error(
        "instance {name:?} is {status}; stop it first with `llima-box vm stop` or delete with --force"
    )]
    NotStopped { name: String, status: Status },
    #[error(
        "the host agent of {name:?} did not stop within {secs} s; use `llima-box vm stop --force`"
    )]
    StopTimeout { name: String, secs: u64 },
    #[error(
        "process {pid} of instance {name:?} still runs {secs} s after SIGKILL (stuck in the kernel? see `ps -o pid,stat,wchan -p {pid}`); try again once it is gone"
    )]
    Unkillable { name: String, pid: u32, secs: u64 },
    #[error(transparent)]
    Timeout(#[from] crate::timeouts::TimeoutError),
    #[error(transparent)]
    Config(#[from] crate::vm::config::ConfigError),
    #[error(transparent)]
    Image(#[from] crate::vm::image::ImageError),
    #[error(transparent)]
    Disk(#[from] crate::vm::disk::DiskError),
    #[error(transparent)]
    Cidata(#[from] crate::vm::cidata::CidataError),
    #[error(transparent)]
    Qemu(#[from] crate::vm::qemu::QemuError),
    #[error("the instance directory {} is too long for the SSH control socket (unix sockets allow {max} bytes); use a shorter $LIMA_HOME or instance name", dir.display())]
    PathTooLong { dir: PathBuf, max: usize },
    #[error("instance {name:?} has an invalid lima.yaml: {errors}")]
    InvalidConfig { name: String, errors: String },
    #[error("{errors}\nlast serial console lines:\n{serial_tail}\nlogs: {}, {}", dir.join(layout::HOST_AGENT_STDERR_LOG).display(), dir.join(layout::SERIAL_LOG).display())]
    StartFailed {
        errors: String,
        serial_tail: String,
        dir: PathBuf,
    },
    #[error("the guest did not report ready within {secs} s; last serial console lines:\n{serial_tail}\nlogs: {}, {}", dir.join(layout::HOST_AGENT_STDERR_LOG).display(), dir.join(layout::SERIAL_LOG).display())]
    StartTimeout {
        secs: u64,
        serial_tail: String,
        dir: PathBuf,
    },
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

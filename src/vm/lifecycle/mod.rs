//! Driving an instance through its life: create, start, stop, delete.
//! Status is never stored; every step re-reads it from the store, as Lima
//! does, so crashes and concurrent commands see the truth.

mod lock;
mod stop;

pub use lock::InstanceLock;
pub use stop::{STOP_TIMEOUT, delete, force_stop, stop};

use std::path::PathBuf;

use crate::vm::store::{PidFileError, Status, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
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
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

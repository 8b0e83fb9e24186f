//! How to reach a running instance's guest over SSH: the live port from
//! the host agent, the admin user from the filled config, our key, and the
//! host key pinned at create time. Shared by `vm shell`, `test-vm` and the
//! environments.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ssh::{self, ConnectOptions, HostKeyPolicy};
use crate::vm::layout;
use crate::vm::store::{self, Status};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("instance {name:?} does not exist in {}; create it with `llima-box vm start`", lima_home.display())]
    NotFound { name: String, lima_home: PathBuf },
    #[error("instance {name:?} is not running ({status}); start it with `llima-box vm start`")]
    NotRunning { name: String, status: String },
    #[error("instance {name:?} has no pinned host key ({}); it was not created by llima-box", path.display())]
    NoHostKey {
        name: String,
        path: PathBuf,
        #[source]
        source: Box<ssh::Error>,
    },
    #[error(transparent)]
    Ssh(Box<ssh::Error>),
}

impl From<ssh::Error> for AccessError {
    fn from(e: ssh::Error) -> Self {
        AccessError::Ssh(Box::new(e))
    }
}

/// Connection options for the admin user of `name`, which must be Running.
/// `agent` is the local agent socket to forward, if any.
pub fn connect_options(
    lima_home: &Path,
    name: &str,
    deadline: Duration,
    agent: Option<PathBuf>,
) -> Result<(ConnectOptions, store::Instance), AccessError> {
    let inst = match store::inspect(lima_home, name) {
        Err(store::StoreError::NotFound { .. }) => {
            return Err(AccessError::NotFound {
                name: name.to_string(),
                lima_home: lima_home.to_path_buf(),
            });
        }
        other => other?,
    };
    if inst.status != Status::Running || inst.ssh_local_port == 0 {
        let status = match inst.status {
            Status::Unknown => format!("invalid configuration: {}", inst.errors.join("; ")),
            s => s.to_string(),
        };
        return Err(AccessError::NotRunning {
            name: name.to_string(),
            status,
        });
    }
    let host_key_path = inst.dir.join(layout::HOST_KEY_PUB);
    let host_key =
        ssh::keys::load_host_public_key(&host_key_path).map_err(|e| AccessError::NoHostKey {
            name: name.to_string(),
            path: host_key_path,
            source: Box::new(e),
        })?;
    let user = inst
        .config
        .as_ref()
        .and_then(|c| c.user.as_ref())
        .and_then(|u| u.name.clone())
        .unwrap_or_else(|| "lima".to_string());
    let opts = ConnectOptions {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, inst.ssh_local_port)),
        user,
        key: ssh::keys::ensure_user_key(lima_home)?,
        host_key: HostKeyPolicy::Pinned(host_key),
        deadline,
        agent_forwarding: agent,
    };
    Ok((opts, inst))
}

//! Published ports (see `env::ports`): the host agent listens on
//! 127.0.0.1 for each row of the instance's table and carries every
//! connection to the guest agent, which connects inside the environment's
//! network namespace. `sync` makes the listeners match the table; the CLI
//! asks for it through `ha.sock` after each change.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::env::guest_agent;
use crate::env::ports::{self, Published};
use crate::ssh::{SharedSession, SocketStream};
use crate::vm::layout;
use crate::vm::store::{self, UnixHttpError};

const BUF: usize = 256 << 10;

/// Asks the instance's running host agent to make its listeners match the
/// table; `None` when no host agent runs (the VM is stopped: it listens
/// for the table when it starts).
pub(crate) fn ask_sync(instance_dir: &Path) -> Result<Option<Vec<Listening>>, UnixHttpError> {
    let sock = instance_dir.join(layout::HOST_AGENT_SOCK);
    match store::post_json(
        &sock,
        store::HOSTAGENT_HOST,
        super::api::PORTS_PATH,
        Duration::from_secs(10),
    ) {
        Ok(listening) => Ok(Some(listening)),
        Err(UnixHttpError::Connect { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What `sync` says of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Listening {
    pub host_port: u16,
    /// Why it does not listen; `None` when it does.
    pub error: Option<String>,
}

pub(super) struct Forwarder {
    dir: PathBuf,
    /// The host agent's connection to the guest, shared with `vm shell`.
    guest: Arc<SharedSession>,
    listeners: Mutex<HashMap<u16, (Published, JoinHandle<()>)>>,
}

impl Forwarder {
    pub(super) fn new(dir: PathBuf, guest: Arc<SharedSession>) -> Arc<Forwarder> {
        let me = Arc::new(Forwarder {
            dir,
            guest,
            listeners: Mutex::new(HashMap::new()),
        });
        tokio::spawn(me.clone().follow_shells());
        me
    }

    /// Stops listening for a `shell --publish` that ended without taking
    /// its rows away (it was killed), within a second: its host port must
    /// not keep reaching the environment.
    async fn follow_shells(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let ended = self
                .listeners
                .lock()
                .await
                .values()
                .any(|(row, _)| !row.live());
            if ended {
                let _ = self.sync().await;
            }
        }
    }

    /// Listens for every row of the table and stops listening for rows
    /// gone or changed.
    pub(super) async fn sync(self: &Arc<Self>) -> Result<Vec<Listening>, String> {
        // The table is read under the lock: a sync that read it earlier
        // must not bring back a row that a later one removed.
        let mut listeners = self.listeners.lock().await;
        let rows = ports::load(&self.dir).map_err(|e| e.to_string())?;
        let gone: Vec<u16> = listeners
            .iter()
            .filter(|(_, (row, _))| !rows.contains(row))
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            let (_, task) = listeners.remove(&port).expect("listed above");
            task.abort();
            // Closed once the task is dropped: when sync returns, the
            // port no longer accepts.
            let _ = task.await;
            super::run::log(&format!("stopped forwarding 127.0.0.1:{port}"));
        }
        let mut out = Vec::new();
        for row in rows {
            let error = match listeners.contains_key(&row.host_port) {
                true => None,
                false => match self.listen(&row).await {
                    Ok(task) => {
                        listeners.insert(row.host_port, (row.clone(), task));
                        None
                    }
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = &error {
                super::run::log(&format!("cannot publish port {}: {e}", row.host_port));
            }
            out.push(Listening {
                host_port: row.host_port,
                error,
            });
        }
        Ok(out)
    }

    async fn listen(self: &Arc<Self>, row: &Published) -> Result<JoinHandle<()>, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, row.host_port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        super::run::log(&format!(
            "forwarding {addr} to port {} of environment {}",
            row.env_port, row.env
        ));
        let me = self.clone();
        let row = row.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: let some finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(me.clone().carry(tcp, row.clone()));
            }
        });
        Ok(task)
    }

    /// One connection: to the environment's port through the guest agent,
    /// then bytes both ways until both sides end.
    async fn carry(self: Arc<Self>, mut tcp: TcpStream, row: Published) {
        let (mut stream, early) = match self.connect(&row).await {
            Ok(c) => c,
            Err(e) => {
                super::run::log(&format!(
                    "a connection to 127.0.0.1:{} was not forwarded: {e}",
                    row.host_port
                ));
                return;
            }
        };
        if tcp.write_all(&early).await.is_ok() {
            // Larger buffers than the default 8 KiB: each write is an SSH
            // packet, and fewer of them cost the emulated guest less.
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, BUF, BUF).await;
        }
    }

    /// A stream to the row's port through the guest agent.
    async fn connect(&self, row: &Published) -> Result<(SocketStream, Vec<u8>), String> {
        let mut fresh = false;
        loop {
            let s = self
                .guest
                .get(fresh)
                .await
                .map_err(|e| format!("cannot connect to the VM: {e}"))?;
            match guest_agent::connect_port(&s, &row.env, row.env_port).await {
                // A held connection the guest dropped (sshd restarted, a
                // reboot): once more on a new one.
                Err(_) if s.is_closed() && !fresh => fresh = true,
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }
}

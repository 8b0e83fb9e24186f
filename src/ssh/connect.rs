//! Connecting while the guest boots: retry what a booting guest does
//! (refused, reset, silent port, closed before the banner) with backoff and
//! jitter until a deadline; fail at once on what retrying cannot fix (a
//! wrong host key, a rejected user key).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::RngExt;
use russh::client::{self, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};

use super::keys::{KeyPair, PublicKey, fingerprint};
use super::{Error, agent_forward};

/// A byte stream to a unix socket in the guest (see
/// [`Session::open_socket_stream`]).
pub(crate) type SocketStream = russh::ChannelStream<Msg>;

/// How the guest's host key is verified.
#[derive(Clone, Debug)]
pub enum HostKeyPolicy {
    /// Only this key is accepted (llima-box generates the guest's host key
    /// and injects it, so there is nothing to learn on first use).
    Pinned(PublicKey),
}

/// Everything needed to open a session to the guest.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub addr: SocketAddr,
    pub user: String,
    pub key: KeyPair,
    pub host_key: HostKeyPolicy,
    /// How long to keep retrying while sshd is not up yet.
    pub deadline: Duration,
    /// The local agent socket to offer to the guest (`$SSH_AUTH_SOCK`);
    /// `None` forwards nothing.
    pub agent_forwarding: Option<PathBuf>,
}

/// An authenticated connection to the guest's sshd.
pub struct Session {
    pub(super) handle: Handle<Client>,
    /// Where the agent channels of sshd's sessions go: set once for the
    /// connection (such a channel says nothing of the session it is for),
    /// so that they only ever reach the agent of one client.
    agent_socket: AgentSocket,
    /// Where each remote forward of [`Session::agent_forward`] goes.
    forwards: Forwards,
    /// Guest sockets that a streamlocal channel reached on this connection.
    reached: Mutex<HashSet<String>>,
}

/// The local agent of a connection's sessions, shared with its handler.
type AgentSocket = Arc<OnceLock<PathBuf>>;
/// Remote forwards' guest paths and the local agents they lead to.
type Forwards = Arc<Mutex<HashMap<String, PathBuf>>>;

/// One attempt may not hang on a port that accepts but never answers.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Idle shells survive NAT/port-forwarder timeouts, and a dead guest is
/// noticed after about a minute, like `ServerAliveInterval 15`.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 4;

impl Session {
    /// Connects and authenticates, retrying transient failures until
    /// `opts.deadline` has passed.
    pub async fn connect(opts: ConnectOptions) -> Result<Session, Error> {
        let config = Arc::new(client_config(&opts.host_key));
        let start = Instant::now();
        let deadline = start + opts.deadline;
        let mut delay = FIRST_DELAY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Always one real try, even with a zero deadline.
            let limit = left.clamp(Duration::from_millis(500), ATTEMPT_TIMEOUT);
            let last = match tokio::time::timeout(limit, attempt(&opts, config.clone())).await {
                Ok(Ok(session)) => return Ok(session),
                Ok(Err(Failure::Fatal(e))) => return Err(e),
                Ok(Err(Failure::Transient(why))) => why,
                Err(_) => format!("no SSH banner within {}s", limit.as_secs_f32()),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Deadline {
                    addr: opts.addr,
                    waited: now - start,
                    last,
                });
            }
            tokio::time::sleep(jitter(delay).min(deadline - now)).await;
            delay = (delay * 2).min(MAX_DELAY);
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) -> Result<(), Error> {
        self.handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await?;
        Ok(())
    }

    pub(super) async fn open_channel(&self) -> Result<Channel<Msg>, Error> {
        Ok(self.handle.channel_open_session().await?)
    }

    /// A stream to the unix socket `path` in the guest, connected by sshd.
    pub(super) async fn open_streamlocal(&self, path: &str) -> Result<Channel<Msg>, Error> {
        let channel = self.handle.channel_open_direct_streamlocal(path).await?;
        self.reached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string());
        Ok(channel)
    }

    /// A byte stream to the unix socket `path` in the guest, connected by
    /// sshd as the login user.
    pub async fn open_socket_stream(&self, path: &str) -> Result<SocketStream, Error> {
        Ok(self.open_streamlocal(path).await?.into_stream())
    }

    /// Whether a channel to `path` opened before on this connection.
    pub(super) fn reached_before(&self, path: &str) -> bool {
        self.reached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path)
    }

    /// The agent socket that the guest's agent channels are proxied to.
    pub(super) fn agent_socket(&self) -> Option<&PathBuf> {
        self.agent_socket.get()
    }

    /// Gives a connection made without an agent the agent of its sessions;
    /// false when it has one already.
    pub(super) fn assign_agent(&self, socket: PathBuf) -> bool {
        self.agent_socket.set(socket).is_ok()
    }

    /// A unix socket in the guest directory `dir` that sshd forwards to the
    /// local agent `local` (`ssh -R`), for one command that does not run in
    /// an SSH session and so gets no session agent. End it with
    /// [`Session::end_agent_forward`] when the command has ended: sshd then
    /// stops listening, and whatever the command left behind can no longer
    /// reach the agent.
    pub(super) async fn agent_forward(&self, dir: &str, local: &Path) -> Result<String, Error> {
        let path = format!("{dir}/agent-{:016x}.sock", rand::rng().random::<u64>());
        self.routes().insert(path.clone(), local.to_path_buf());
        if let Err(e) = self.handle.streamlocal_forward(path.as_str()).await {
            self.routes().remove(&path);
            return Err(e.into());
        }
        Ok(path)
    }

    /// Ends a forward of [`Session::agent_forward`]; a connection that is
    /// gone has ended it already.
    pub(super) async fn end_agent_forward(&self, path: &str) {
        self.routes().remove(path);
        let _ = self.handle.cancel_streamlocal_forward(path).await;
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, PathBuf>> {
        self.forwards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the connection is gone (sshd restarted, guest rebooted).
    pub(crate) fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

/// Half to all of `delay`, so that many clients do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn client_config(policy: &HostKeyPolicy) -> client::Config {
    let HostKeyPolicy::Pinned(expected) = policy;
    let mut preferred = russh::Preferred::default();
    // A guest has several host keys; ask for the pinned kind first so that
    // the comparison is against the right one.
    let mut key_algos = preferred.key.to_vec();
    key_algos.sort_by_key(|a| !same_family(a, &expected.algorithm()));
    preferred.key = key_algos.into();
    // AES-GCM is much faster than ChaCha20 where the CPU has AES
    // instructions (every host llima-box targets), as Lima also prefers.
    let mut ciphers = preferred.cipher.to_vec();
    ciphers.sort_by_key(|c| *c != russh::cipher::AES_256_GCM);
    preferred.cipher = ciphers.into();
    client::Config {
        preferred,
        keepalive_interval: Some(KEEPALIVE),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        window_size: 8 << 20,
        ..Default::default()
    }
}

fn same_family(a: &russh::keys::Algorithm, b: &russh::keys::Algorithm) -> bool {
    a == b || (a.clone().is_rsa() && b.clone().is_rsa())
}

enum Failure {
    Fatal(Error),
    Transient(String),
}

async fn attempt(opts: &ConnectOptions, config: Arc<client::Config>) -> Result<Session, Failure> {
    let stream = tokio::net::TcpStream::connect(opts.addr)
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let HostKeyPolicy::Pinned(expected) = &opts.host_key;
    let agent_socket = AgentSocket::default();
    if let Some(socket) = &opts.agent_forwarding {
        let _ = agent_socket.set(socket.clone());
    }
    let forwards = Forwards::default();
    let handler = Client {
        expected: expected.clone(),
        agent_socket: agent_socket.clone(),
        forwards: forwards.clone(),
    };
    let mut handle = client::connect_stream(config, stream, handler)
        .await
        .map_err(|e| match e {
            HandlerError::HostKey { got } => Failure::Fatal(Error::HostKeyMismatch {
                addr: opts.addr,
                expected: fingerprint(expected),
                got,
            }),
            HandlerError::Ssh(e) => classify(opts.addr, e),
        })?;
    let rsa_hash = if opts.key.public_key().algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| classify(opts.addr, e))?
            .flatten()
    } else {
        None
    };
    let key = PrivateKeyWithHashAlg::new(opts.key.private.clone(), rsa_hash);
    let auth = handle
        .authenticate_publickey(opts.user.clone(), key)
        .await
        .map_err(|e| classify(opts.addr, e))?;
    if !auth.success() {
        return Err(Failure::Fatal(Error::AuthRejected {
            addr: opts.addr,
            user: opts.user.clone(),
            fingerprint: opts.key.fingerprint(),
        }));
    }
    Ok(Session {
        handle,
        agent_socket,
        forwards,
        reached: Mutex::new(HashSet::new()),
    })
}

/// Connection-level trouble is what a booting guest looks like; anything
/// else (no common algorithm, a broken key) will not get better.
fn classify(addr: SocketAddr, e: russh::Error) -> Failure {
    use russh::Error as E;
    match e {
        E::IO(_)
        | E::Disconnect
        | E::HUP
        | E::ConnectionTimeout
        | E::Version
        | E::SendError
        | E::RecvError => Failure::Transient(e.to_string()),
        e => Failure::Fatal(Error::Handshake { addr, source: e }),
    }
}

/// The russh handler: host-key pinning and agent channels.
pub(super) struct Client {
    expected: PublicKey,
    agent_socket: AgentSocket,
    forwards: Forwards,
}

#[derive(Debug)]
pub(super) enum HandlerError {
    Ssh(russh::Error),
    HostKey { got: String },
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match key {
            // Comments differ between the pinned file and the wire; compare
            // the key material only.
            PublicKeyOrCertificate::PublicKey { key, .. }
                if key.key_data() == self.expected.key_data() =>
            {
                Ok(true)
            }
            PublicKeyOrCertificate::PublicKey { key, .. } => Err(HandlerError::HostKey {
                got: fingerprint(key),
            }),
            PublicKeyOrCertificate::Certificate(_) => Err(HandlerError::HostKey {
                got: "a host certificate".into(),
            }),
        }
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        to_agent(self.agent_socket.get().cloned(), channel, reply).await;
        Ok(())
    }

    /// The only remote forwards we ask for are [`Session::agent_forward`]'s;
    /// one that has ended leads nowhere.
    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let local = self
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(socket_path)
            .cloned();
        to_agent(local, channel, reply).await;
        Ok(())
    }
}

/// Proxies the guest's agent channel to `socket`, or refuses it.
async fn to_agent(
    socket: Option<PathBuf>,
    channel: Channel<Msg>,
    reply: client::ChannelOpenHandle,
) {
    match socket {
        Some(socket) => agent_forward::proxy(channel, reply, socket),
        None => {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn transport_errors_are_retried_and_others_are_not() {
        let addr: SocketAddr = "127.0.0.1:22".parse().unwrap();
        assert!(matches!(
            classify(addr, russh::Error::HUP),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(
                addr,
                russh::Error::NoCommonAlgo {
                    kind: russh::AlgorithmKind::Kex,
                    ours: vec![],
                    theirs: vec![],
                }
            ),
            Failure::Fatal(Error::Handshake { .. })
        ));
    }
}

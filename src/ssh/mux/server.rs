//! The host agent's side: one held session, a command per connection.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, poll};
use tokio::fs::File;
use tokio::io::BufWriter;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use super::super::exec::{self, Control, Event, Setup};
use super::super::{ConnectOptions, Error, RemoteExit, Session, SharedSession};
use super::wire::Conn;
use super::{ToClient, ToHostAgent};

/// A bound `mux.sock`, ready for [`serve`].
pub struct Listener {
    inner: UnixListener,
}

/// Binds `path` (replacing a stale socket) for the current user only.
/// Call it inside a tokio runtime.
pub fn bind(path: &Path) -> Result<Listener, Error> {
    let err = |what, source| Error::MuxSocket {
        what,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err("remove", e)),
        _ => {}
    }
    let inner = UnixListener::bind(path).map_err(|e| err("listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("restrict", e))?;
    Ok(Listener { inner })
}

/// Serves clients until the task is dropped, connecting to the guest with
/// `opts` at once (a login costs seconds under emulation, which the first
/// command should not pay) and again whenever a connection is found broken.
pub async fn serve(listener: Listener, opts: ConnectOptions) {
    serve_shared(listener, Arc::new(SharedSession::new(opts))).await
}

/// [`serve`], with `plain` as the connection for commands without agent
/// forwarding (shared with other users of it in this process).
pub(crate) async fn serve_shared(listener: Listener, plain: Arc<SharedSession>) {
    let held = Arc::new(Held {
        plain,
        with_agent: Mutex::new(AgentSessions::default()),
    });
    let early = held.clone();
    // A command that comes meanwhile waits for these rather than log in
    // twice; one that fails is retried by the first command that needs it.
    tokio::spawn(async move {
        let _ = early.session(None, false).await;
        let _ = early.spare().await;
    });
    loop {
        let Ok((stream, _)) = listener.inner.accept().await else {
            // Out of descriptors, most likely: let some commands finish.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(handle(stream, held.clone()));
    }
}

/// The connections to the guest that commands share. sshd offers a
/// forwarded agent to every later session of a connection once one asked
/// for it, and its agent channel says nothing of the session it is for: so
/// sessions without agent forwarding get a connection that never asked,
/// and those with one a connection per local agent, which only ever
/// reaches that agent. Spawned commands reach their agent through a
/// forward of their own, on the plain connection.
struct Held {
    plain: Arc<SharedSession>,
    with_agent: Mutex<AgentSessions>,
}

#[derive(Default)]
struct AgentSessions {
    by_agent: HashMap<PathBuf, Arc<Session>>,
    /// Made at start, before any agent is known: the first that needs a
    /// connection takes it rather than wait for a login.
    spare: Option<Arc<Session>>,
}

impl Held {
    /// The connection for sessions with the local agent `agent`, or
    /// without one; a new one when `fresh`.
    async fn session(&self, agent: Option<&PathBuf>, fresh: bool) -> Result<Arc<Session>, Error> {
        let usable = |s: &Arc<Session>| !fresh && !s.is_closed();
        let Some(agent) = agent else {
            return self.plain.get(fresh).await;
        };
        let mut held = self.with_agent.lock().await;
        // Connections of agents that are gone (their client logged out).
        held.by_agent
            .retain(|socket, s| !s.is_closed() && socket.exists());
        if let Some(s) = held.by_agent.get(agent).filter(|s| usable(s)) {
            return Ok(s.clone());
        }
        let s = match held.spare.take().filter(|s| usable(s)) {
            Some(s) if s.assign_agent(agent.clone()) => s,
            _ => Arc::new(
                Session::connect(ConnectOptions {
                    agent_forwarding: Some(agent.clone()),
                    ..self.plain.opts().clone()
                })
                .await?,
            ),
        };
        held.by_agent.insert(agent.clone(), s.clone());
        Ok(s)
    }

    async fn spare(&self) -> Result<(), Error> {
        let mut held = self.with_agent.lock().await;
        if held.spare.is_none() {
            held.spare = Some(Arc::new(Session::connect(self.plain.opts().clone()).await?));
        }
        Ok(())
    }

    /// Starts the command, once more on a new connection if the held one
    /// turns out to be dead (the guest's sshd restarted).
    async fn start(
        &self,
        setup: &Setup,
        agent_socket: Option<PathBuf>,
    ) -> Result<(Arc<Session>, exec::Started), Error> {
        let agent = agent_socket.filter(|_| setup.agent);
        let mut fresh = false;
        loop {
            if setup.spawn.is_some() {
                let session = self.session(None, fresh).await?;
                match session.start(setup, true, agent.as_deref()).await {
                    Ok(started) => return Ok((session, started)),
                    // No server (first use, or the VM rebooted): the
                    // command line starts the environment, and with it
                    // the server, for next time.
                    Err(_) if !session.is_closed() => {}
                    Err(e) if fresh => return Err(e),
                    Err(_) => {
                        fresh = true;
                        continue;
                    }
                }
            }
            let session = self.session(agent.as_ref(), fresh).await?;
            match session.start(setup, false, None).await {
                Ok(started) => return Ok((session, started)),
                Err(e) if fresh => return Err(e),
                Err(_) => fresh = true,
            }
        }
    }
}

async fn handle(stream: UnixStream, held: Arc<Held>) {
    let mut conn = Conn::new(stream);
    if !same_user(&conn) {
        return;
    }
    let reply = match run(&mut conn, &held).await {
        Ok(RemoteExit::Code(code)) => ToClient::Exit { code },
        Ok(RemoteExit::Signal { name, core_dumped }) => ToClient::Signal { name, core_dumped },
        Err(e) => ToClient::Failed {
            broken_pipe: matches!(&e, Error::LocalIo(io) if io.kind() == io::ErrorKind::BrokenPipe),
            message: crate::errors::one_line(&e),
        },
    };
    let _ = conn.send(&reply).await;
}

/// Only our own user may run commands as the guest's admin.
fn same_user(conn: &Conn) -> bool {
    conn.stream()
        .peer_cred()
        .is_ok_and(|c| c.uid() == rustix::process::getuid().as_raw())
}

async fn run(conn: &mut Conn, held: &Held) -> Result<RemoteExit, Error> {
    let lost = |e: io::Error| Error::MuxLost(e);
    let Some(ToHostAgent::Run {
        setup,
        agent_socket,
    }) = conn.recv().await.map_err(lost)?
    else {
        return Err(lost(io::Error::other("the first message was not `run`")));
    };
    let Ok([stdin, stdout, stderr]) = <[OwnedFd; 3]>::try_from(conn.take_fds()) else {
        return Err(lost(io::Error::other(
            "expected stdin, stdout and stderr with the request",
        )));
    };
    let (session, started) = held.start(&setup, agent_socket).await?;
    let exec::Started {
        reader: rx,
        writer: tx,
        agent_forward,
    } = started;
    conn.send(&ToClient::Started).await.map_err(lost)?;
    let (stdin, cancel) = CancellableFd::new(stdin).map_err(lost)?;
    // Each write to a file goes through a blocking thread: batch the
    // channel's small packets (output is flushed whenever none is waiting).
    let mut stdout = BufWriter::with_capacity(1 << 20, File::from_std(stdout.into()));
    let mut stderr = File::from_std(stderr.into());
    let result = exec::attach(
        rx,
        tx.clone(),
        stdin,
        &mut stdout,
        &mut stderr,
        Some(&mut ClientControl(conn)),
    )
    .await;
    drop(cancel);
    if result.is_err() {
        // The command may still be running; it must not outlive its client.
        let _ = tx.close().await;
    }
    // The command has ended: what it left running loses the agent. The
    // client need not wait for that.
    if let Some(path) = agent_forward {
        tokio::spawn(async move { session.end_agent_forward(&path).await });
    }
    result
}

/// The client's messages during the command.
struct ClientControl<'a>(&'a mut Conn);

impl Control for ClientControl<'_> {
    async fn event(&mut self) -> Event {
        loop {
            match self.0.recv().await {
                Ok(Some(ToHostAgent::Resize { cols, rows })) => return Event::Resize(cols, rows),
                Ok(Some(ToHostAgent::Run { .. })) => {}
                Ok(None) | Err(_) => return Event::Stop("its client going away"),
            }
        }
    }
}

/// The client's stdin, read on a thread that stops when the canceller
/// (the other end of `cancel`) is dropped, so that no thread is left
/// reading a terminal that is no longer ours to read.
struct CancellableFd {
    fd: OwnedFd,
    cancel: StdUnixStream,
}

impl CancellableFd {
    fn new(fd: OwnedFd) -> io::Result<(CancellableFd, StdUnixStream)> {
        let (cancel, canceller) = StdUnixStream::pair()?;
        Ok((CancellableFd { fd, cancel }, canceller))
    }
}

impl Read for CancellableFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                PollFd::new(&self.cancel, PollFlags::IN),
            ];
            poll(&mut fds, None)?;
            if !fds[1].revents().is_empty() {
                return Ok(0);
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match rustix::io::read(self.fd.as_fd(), &mut *buf) {
                Err(rustix::io::Errno::AGAIN) => {}
                other => return Ok(other?),
            }
        }
    }
}

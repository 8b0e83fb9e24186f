//! The CLI's side: hand the command and our stdio to the host agent, keep
//! the terminal, wait for the exit status.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use super::super::exec::{Control, Event, Setup, Tty};
use super::super::{Error, RemoteExit, Spawn, terminal};
use super::wire::Conn;
use super::{ToClient, ToHostAgent};
use crate::vm::layout;

/// What became of a command offered to the mux.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The agent ran it (or failed after starting it: do not retry).
    Ran(Result<RemoteExit, Error>),
    /// Nothing was started and stdin is untouched: connect directly. The
    /// error says why (no agent, stale socket, the agent cannot connect).
    Unavailable(Error),
}

/// Runs `command` through the host agent of the instance in `dir`, exactly
/// as [`super::super::Session::run_interactive_or_piped`] would run it on
/// a direct connection; `agent_socket` is the agent to forward, if any.
/// With `spawn`, the agent tries that server first and runs `command`
/// only when the server is not there.
pub(crate) async fn run_via_mux(
    dir: &Path,
    command: &str,
    spawn: Option<Spawn>,
    pty: bool,
    agent_socket: Option<PathBuf>,
) -> Outcome {
    let path = dir.join(layout::MUX_SOCK);
    let unavailable = |what, source| {
        Outcome::Unavailable(Error::MuxSocket {
            what,
            path: path.clone(),
            source,
        })
    };
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => return unavailable("connect to", e),
    };
    let mut conn = Conn::new(stream);
    let request = ToHostAgent::Run {
        setup: Setup::local(command, spawn, pty, agent_socket.is_some()),
        agent_socket,
    };
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    if let Err(e) = conn.send_with_fds(&request, &fds).await {
        return unavailable("send the command to", e);
    }
    match conn.recv().await {
        Ok(Some(ToClient::Started)) => {}
        Ok(Some(ToClient::Failed { message, .. })) => {
            return Outcome::Unavailable(Error::MuxRemote(message));
        }
        Ok(_) => return unavailable("read the answer of", io::ErrorKind::UnexpectedEof.into()),
        Err(e) => return unavailable("read the answer of", e),
    }
    let mut tty = None;
    if pty && terminal::stdin_is_tty() {
        match Tty::enter() {
            Ok(t) => tty = Some(t),
            Err(e) => return Outcome::Ran(Err(e)),
        }
    }
    let result = wait(&mut conn, tty.as_mut()).await;
    drop(tty);
    Outcome::Ran(result)
}

/// Passes resizes on until the agent reports how the command ended.
async fn wait(conn: &mut Conn, mut tty: Option<&mut Tty>) -> Result<RemoteExit, Error> {
    loop {
        tokio::select! {
            msg = conn.recv() => return match msg.map_err(Error::MuxLost)? {
                Some(ToClient::Exit { code }) => Ok(RemoteExit::Code(code)),
                Some(ToClient::Signal { name, core_dumped }) => {
                    Ok(RemoteExit::Signal { name, core_dumped })
                }
                Some(ToClient::Failed { broken_pipe: true, .. }) => {
                    Err(Error::LocalIo(io::ErrorKind::BrokenPipe.into()))
                }
                Some(ToClient::Failed { message, .. }) => Err(Error::MuxRemote(message)),
                Some(ToClient::Started) | None => {
                    Err(Error::MuxLost(io::ErrorKind::UnexpectedEof.into()))
                }
            },
            event = async {
                match tty.as_mut() {
                    Some(t) => t.event().await,
                    None => std::future::pending().await,
                }
            } => match event {
                Event::Resize(cols, rows) => conn
                    .send(&ToHostAgent::Resize { cols, rows })
                    .await
                    .map_err(Error::MuxLost)?,
                Event::Stop(signal) => return Err(Error::Interrupted { signal }),
            },
        }
    }
}

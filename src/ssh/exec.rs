//! Running commands: stdout and stderr kept apart and streamed, stdin
//! forwarded byte for byte with its EOF, the remote exit status returned.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::spawn::{self, Spawn};
use super::terminal::{self, RawMode};
use super::{Error, Session, quote_argv};

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteExit {
    /// It exited with this status.
    Code(u32),
    /// A signal killed it (`TERM`, `KILL`, … without the `SIG`).
    Signal { name: String, core_dumped: bool },
}

impl RemoteExit {
    pub fn success(&self) -> bool {
        *self == RemoteExit::Code(0)
    }

    /// The status a local shell would report: the exit code, or 128+n for
    /// signal n (the guest is Linux, so Linux numbers).
    pub fn code(&self) -> u8 {
        match self {
            RemoteExit::Code(c) => (*c & 0xff) as u8,
            RemoteExit::Signal { name, .. } => linux_signal_number(name).map_or(255, |n| 128 + n),
        }
    }
}

fn linux_signal_number(name: &str) -> Option<u8> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let name = name.strip_prefix("SIG").unwrap_or(name);
    NAMES.iter().position(|n| *n == name).map(|i| i as u8 + 1)
}

fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    }
    .to_string()
}

/// A finished command's status and complete output.
#[derive(Clone, Debug)]
pub struct Captured {
    pub exit: RemoteExit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The local environment that the remote side should see, as `ssh` sends
/// it with `SendEnv`; sshd applies what its `AcceptEnv` allows.
pub(super) fn forwarded_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            matches!(k.as_str(), "TERM" | "LANG" | "COLORTERM") || k.starts_with("LC_")
        })
        .collect()
}

/// Everything a command's channel asks for before the command starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Setup {
    pub command: String,
    pub pty: Option<PtyRequest>,
    pub env: Vec<(String, String)>,
    /// Whether the guest may open agent channels for this command.
    pub agent: bool,
    /// Run through this spawn server rather than `command` through sshd
    /// (which stays the fallback when the server is not there). An agent
    /// that predates the field ignores it and runs `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn: Option<Box<Spawn>>,
}

/// A remote terminal like the local one: `TERM`, size and line settings
/// (as SSH mode opcodes); the spawn protocol's, also sent through sshd.
pub(super) use llima_box_proto::spawn::Pty as PtyRequest;

impl Setup {
    /// The setup `ssh` would send from this process's terminal and
    /// environment. Read the terminal before it is put in raw mode.
    pub(super) fn local(command: &str, spawn: Option<Spawn>, pty: bool, agent: bool) -> Setup {
        let pty = pty.then(|| {
            let (cols, rows) = terminal::window_size().unwrap_or((80, 24));
            PtyRequest {
                term: std::env::var("TERM").unwrap_or_default(),
                cols,
                rows,
                modes: terminal::pty_modes()
                    .into_iter()
                    .map(|(p, v)| (p as u8, v))
                    .collect(),
            }
        });
        Setup {
            command: command.to_string(),
            pty,
            env: forwarded_env(),
            agent,
            spawn: spawn.map(Box::new),
        }
    }
}

/// Something besides the channel that an attached command reacts to: the
/// local terminal's signals, or a mux client's messages.
pub(super) trait Control {
    fn event(&mut self) -> impl Future<Output = Event> + Send;
}

pub(super) enum Event {
    /// The terminal is now this many columns and rows.
    Resize(u32, u32),
    /// End the session (the reason, for the error message).
    Stop(&'static str),
}

/// The write side of a running command's channel.
#[derive(Clone)]
pub(super) struct Writer {
    half: Arc<ChannelWriteHalf<Msg>>,
    /// A spawn server's stream rather than an SSH session.
    framed: bool,
}

impl Writer {
    async fn data(&self, buf: Vec<u8>) -> Result<(), Error> {
        let buf = if self.framed { spawn::stdin(&buf) } else { buf };
        Ok(self.half.data_bytes(buf).await?)
    }

    async fn eof(&self) -> Result<(), Error> {
        match self.framed {
            true => Ok(self.half.data_bytes(spawn::eof()).await?),
            false => Ok(self.half.eof().await?),
        }
    }

    async fn resize(&self, cols: u32, rows: u32) -> Result<(), Error> {
        match self.framed {
            true => Ok(self.half.data_bytes(spawn::resize(cols, rows)).await?),
            false => Ok(self.half.window_change(cols, rows, 0, 0).await?),
        }
    }

    /// Ends the channel (and with it the command).
    pub(super) async fn close(&self) -> Result<(), Error> {
        Ok(self.half.close().await?)
    }
}

/// The read side of a running command's channel.
pub(super) struct Reader {
    half: ChannelReadHalf,
    frames: Option<spawn::Decoder>,
}

/// A started command's channel.
pub(super) struct Started {
    pub reader: Reader,
    pub writer: Writer,
    /// The guest socket forwarded to the local agent for this command
    /// only: see [`Session::end_agent_forward`].
    pub agent_forward: Option<String>,
}

impl Session {
    /// Runs `argv` (quoted so that the remote sees exactly these words)
    /// with empty stdin and returns its status and output.
    pub async fn exec_capture<S: AsRef<str>>(&self, argv: &[S]) -> Result<Captured, Error> {
        self.exec_with_stdin(argv, &[]).await
    }

    /// Runs `argv` like [`Session::exec_capture`], with `stdin` as its input
    /// (then end of file).
    pub async fn exec_with_stdin<S: AsRef<str>>(
        &self,
        argv: &[S],
        stdin: &[u8],
    ) -> Result<Captured, Error> {
        let setup = Setup {
            command: quote_argv(argv)?,
            pty: None,
            env: Vec::new(),
            agent: false,
            spawn: None,
        };
        let Started { reader, writer, .. } = self.start(&setup, false, None).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let input = std::io::Cursor::new(stdin.to_vec());
        let exit = attach(
            reader,
            writer,
            input,
            &mut stdout,
            &mut stderr,
            None::<&mut Tty>,
        )
        .await?;
        Ok(Captured {
            exit,
            stdout,
            stderr,
        })
    }

    /// Runs a remote shell command line (build one from an argv with
    /// [`quote_argv`]) attached to this process's stdin, stdout and stderr.
    ///
    /// With `pty`, the remote side gets a terminal of the local size and
    /// `TERM`, the local terminal is put in raw mode (so Ctrl-C and Ctrl-Z
    /// reach the remote as bytes) and resizes are passed on. Without it,
    /// the streams stay binary-safe pipes, like `ssh -T`.
    pub async fn run_interactive_or_piped(
        &self,
        command: &str,
        pty: bool,
    ) -> Result<RemoteExit, Error> {
        let setup = Setup::local(command, None, pty, self.agent_socket().is_some());
        let Started { reader, writer, .. } = self.start(&setup, false, None).await?;
        let mut tty = match pty && terminal::stdin_is_tty() {
            true => Some(Tty::enter()?),
            false => None,
        };
        let result = attach(
            reader,
            writer,
            std::io::stdin(),
            &mut tokio::io::stdout(),
            &mut tokio::io::stderr(),
            tty.as_mut(),
        )
        .await;
        drop(tty);
        result
    }

    /// Opens a channel and starts `setup.command` in it, or the spawn
    /// server's command when `spawn` (and the server, or the alternate
    /// that accepts the request, is there), which reaches the local agent
    /// `agent` when `setup` asks for one.
    pub(super) async fn start(
        &self,
        setup: &Setup,
        spawn: bool,
        agent: Option<&Path>,
    ) -> Result<Started, Error> {
        if let Some(target) = setup.spawn.as_deref().filter(|_| spawn) {
            let alternate = target.alternate.as_deref();
            let (own, early) = match alternate {
                // Probably a new environment: ask both at once rather than
                // wait for the refusal first.
                Some(alt) if !self.reached_before(&target.socket) => {
                    let (own, other) = tokio::join!(
                        self.open_streamlocal(&target.socket),
                        self.open_streamlocal(&alt.socket)
                    );
                    (own, Some(other))
                }
                _ => (self.open_streamlocal(&target.socket).await, None),
            };
            let e = match own {
                Ok(channel) => {
                    if let Some(Ok(unused)) = early {
                        let _ = unused.close().await;
                    }
                    return self.start_spawned(setup, target, channel, agent).await;
                }
                Err(e) => e,
            };
            let Some(alt) = alternate else {
                return Err(e);
            };
            let channel = match early {
                Some(opened) => opened,
                None => self.open_streamlocal(&alt.socket).await,
            }
            .map_err(|_| e)?;
            let mut started = self.start_spawned(setup, alt, channel, agent).await?;
            return match accepted(&mut started.reader).await {
                Ok(()) => Ok(started),
                Err(refused) => {
                    let _ = started.writer.close().await;
                    if let Some(path) = &started.agent_forward {
                        self.end_agent_forward(path).await;
                    }
                    Err(refused)
                }
            };
        }
        let channel = self.open_channel().await?;
        let (rx, tx) = channel.split();
        if setup.agent {
            tx.agent_forward(false).await?;
        }
        for (k, v) in &setup.env {
            tx.set_env(false, k.as_str(), v.as_str()).await?;
        }
        if let Some(p) = &setup.pty {
            let modes: Vec<(Pty, u32)> = p
                .modes
                .iter()
                .filter_map(|&(op, v)| Some((Pty::from_u8(op)?, v)))
                .collect();
            tx.request_pty(false, &p.term, p.cols, p.rows, 0, 0, &modes)
                .await?;
        }
        tx.exec(false, setup.command.as_str()).await?;
        let reader = Reader {
            half: rx,
            frames: None,
        };
        let writer = Writer {
            half: Arc::new(tx),
            framed: false,
        };
        Ok(Started {
            reader,
            writer,
            agent_forward: None,
        })
    }

    /// Sends the spawn server on `channel` the request of `target`.
    async fn start_spawned(
        &self,
        setup: &Setup,
        target: &Spawn,
        channel: Channel<Msg>,
        local_agent: Option<&Path>,
    ) -> Result<Started, Error> {
        let agent = match local_agent.filter(|_| setup.agent) {
            // Next to the server's socket: a directory only the admin
            // (and root) can reach.
            Some(local) => {
                let dir = target.socket.rsplit_once('/').map_or("/tmp", |(d, _)| d);
                Some(self.agent_forward(dir, local).await?)
            }
            None => None,
        };
        let (rx, tx) = channel.split();
        let header = spawn::header(target, &setup.env, setup.pty.as_ref(), agent.as_deref());
        if let Err(e) = tx.data_bytes(header).await {
            if let Some(path) = &agent {
                self.end_agent_forward(path).await;
            }
            return Err(e.into());
        }
        let reader = Reader {
            half: rx,
            frames: Some(spawn::Decoder::default()),
        };
        let writer = Writer {
            half: Arc::new(tx),
            framed: true,
        };
        Ok(Started {
            reader,
            writer,
            agent_forward: agent,
        })
    }
}

/// Waits for an alternate spawn server to accept the request: anything
/// else first means that it did not, and that nothing ran.
async fn accepted(rx: &mut Reader) -> Result<(), Error> {
    let decoder = rx.frames.as_mut().expect("spawn channels are framed");
    loop {
        match rx.half.wait().await {
            Some(ChannelMsg::Data { data }) => match decoder.accepted(&data) {
                Some(true) => return Ok(()),
                Some(false) => return Err(Error::SpawnRefused(decoder.stderr_text())),
                None => {}
            },
            Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                return Err(Error::SpawnRefused(decoder.stderr_text()));
            }
            Some(_) => {}
        }
    }
}

/// Connects a started command to `stdin` (read on a thread until EOF,
/// which is passed on), `stdout` and `stderr` until it ends; `control`
/// events resize the remote terminal or end the session early.
pub(super) async fn attach<I, O, E, C>(
    mut rx: Reader,
    tx: Writer,
    stdin: I,
    stdout: &mut O,
    stderr: &mut E,
    control: Option<&mut C>,
) -> Result<RemoteExit, Error>
where
    I: Read + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
    C: Control,
{
    let forward = tokio::spawn(forward_stdin(stdin, tx.clone()));
    let result = pump(&mut rx, &tx, stdout, stderr, control).await;
    forward.abort();
    result
}

/// What an interactive session watches besides the channel.
pub(super) struct Tty {
    _raw: RawMode,
    winch: Signal,
    /// SIGHUP, SIGINT, SIGTERM: end the session with the terminal restored.
    stop: [(Signal, &'static str); 3],
}

impl Tty {
    pub(super) fn enter() -> Result<Tty, Error> {
        let sig = |kind| {
            signal(kind).map_err(|source| Error::Terminal {
                what: "watch signals for",
                source,
            })
        };
        let tty = Tty {
            winch: sig(SignalKind::window_change())?,
            stop: [
                (sig(SignalKind::hangup())?, "SIGHUP"),
                (sig(SignalKind::interrupt())?, "SIGINT"),
                (sig(SignalKind::terminate())?, "SIGTERM"),
            ],
            _raw: RawMode::enable()?,
        };
        // Lets tests prove the terminal comes back after a panic.
        #[cfg(debug_assertions)]
        if std::env::var_os("LLIMA_BOX_TEST_PANIC").is_some_and(|v| v == "after-raw") {
            panic!("LLIMA_BOX_TEST_PANIC=after-raw");
        }
        Ok(tty)
    }
}

impl Control for Tty {
    async fn event(&mut self) -> Event {
        loop {
            let [(hup, a), (int, b), (term, c)] = &mut self.stop;
            tokio::select! {
                _ = self.winch.recv() => {
                    if let Some((cols, rows)) = terminal::window_size() {
                        return Event::Resize(cols, rows);
                    }
                }
                _ = hup.recv() => return Event::Stop(a),
                _ = int.recv() => return Event::Stop(b),
                _ = term.recv() => return Event::Stop(c),
            }
        }
    }
}

/// Copies `stdin` to the channel and then sends EOF. A plain thread reads
/// because a blocking read cannot be cancelled, and a tokio blocking task
/// would keep the runtime from shutting down.
async fn forward_stdin<I: Read + Send + 'static>(mut stdin: I, tx: Writer) -> Result<(), Error> {
    let (sender, mut chunks) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        loop {
            let mut buf = vec![0; 64 * 1024];
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if sender.blocking_send(buf).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    while let Some(buf) = chunks.recv().await {
        tx.data(buf).await?;
    }
    tx.eof().await?;
    Ok(())
}

/// Moves remote output to the local writers until the channel closes and
/// returns how the command ended.
async fn pump<O, E, C>(
    rx: &mut Reader,
    tx: &Writer,
    stdout: &mut O,
    stderr: &mut E,
    mut control: Option<&mut C>,
) -> Result<RemoteExit, Error>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
    C: Control,
{
    let mut exit = None;
    let mut unflushed = false;
    if let Some(decoder) = rx.frames.as_mut() {
        // Frames that came in with a spare server's acceptance.
        exit = deliver(decoder.push(&[]), stdout, stderr).await?;
        unflushed = true;
    }
    // A spawn server's exit frame is the last; sshd would keep the stream
    // open until we close our side.
    while exit.is_none() || rx.frames.is_none() {
        let msg = tokio::select! {
            // Output is flushed only when no more is waiting: interactive
            // output appears at once, and bulk output overlaps writing
            // with receiving.
            biased;
            msg = rx.half.wait() => msg,
            event = async {
                match control.as_mut() {
                    Some(c) => c.event().await,
                    None => std::future::pending().await,
                }
            } => {
                match event {
                    Event::Stop(signal) => return Err(Error::Interrupted { signal }),
                    Event::Resize(cols, rows) => {
                        tx.resize(cols, rows).await?;
                        continue;
                    }
                }
            }
            flushed = flush(stdout, stderr), if unflushed => {
                flushed?;
                unflushed = false;
                continue;
            }
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                unflushed = true;
                match rx.frames.as_mut() {
                    Some(decoder) => exit = deliver(decoder.push(&data), stdout, stderr).await?,
                    None => stdout.write_all(&data).await.map_err(Error::LocalIo)?,
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                stderr.write_all(&data).await.map_err(Error::LocalIo)?;
                unflushed = true;
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                exit = Some(RemoteExit::Code(exit_status))
            }
            Some(ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                ..
            }) => {
                exit = Some(RemoteExit::Signal {
                    name: sig_name(&signal_name),
                    core_dumped,
                })
            }
            Some(ChannelMsg::Close) | None => break,
            // A spawn server that closed its stream before the exit frame
            // went away (restarted, killed): nothing more will come, and
            // sshd keeps the channel open until we close our side.
            Some(ChannelMsg::Eof) if rx.frames.is_some() => break,
            Some(_) => {}
        }
    }
    if rx.frames.is_some() {
        let _ = tx.close().await;
    }
    flush(stdout, stderr).await?;
    exit.ok_or(Error::NoExitStatus)
}

/// Writes out decoded spawn frames; the command's exit once its frame came.
async fn deliver<O, E>(
    frames: Result<Vec<spawn::Output>, String>,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<Option<RemoteExit>, Error>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut exit = None;
    for frame in frames.map_err(Error::SpawnProtocol)? {
        match frame {
            spawn::Output::Stdout(d) => stdout.write_all(&d).await.map_err(Error::LocalIo)?,
            spawn::Output::Stderr(d) => stderr.write_all(&d).await.map_err(Error::LocalIo)?,
            spawn::Output::Exit(e) => exit = Some(e),
            spawn::Output::Accepted => {}
        }
    }
    Ok(exit)
}

async fn flush<O, E>(stdout: &mut O, stderr: &mut E) -> Result<(), Error>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    stdout.flush().await.map_err(Error::LocalIo)?;
    stderr.flush().await.map_err(Error::LocalIo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(RemoteExit::Code(42).code(), 42);
        let sig = |n: &str| RemoteExit::Signal {
            name: n.into(),
            core_dumped: false,
        };
        assert_eq!(sig("TERM").code(), 143);
        assert_eq!(sig("KILL").code(), 137);
        assert_eq!(sig("INT").code(), 130);
        assert_eq!(sig("SYS").code(), 159);
        assert_eq!(sig("USR2").code(), 140);
        assert_eq!(sig("NOPE").code(), 255);
        assert!(RemoteExit::Code(0).success());
        assert!(!sig("HUP").success());
    }
}

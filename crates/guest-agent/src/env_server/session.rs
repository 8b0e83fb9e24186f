//! One connection, one command: the header starts it (claiming the spare
//! first when it says so), then a poll loop moves stdin, output and resizes
//! between the connection and the command's terminal or pipes until the
//! command has ended and everything it wrote is sent. Each side stops being
//! read while a megabyte waits for the other, so a slow client slows the
//! command rather than filling memory.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use llima_box_proto::frame::{self, Decoder};
use llima_box_proto::paths::SOCKETS_DIR;
use llima_box_proto::spawn::{self, ExitStatus, Header, Pty};

use super::child::{Prepared, Stdio};
use super::pty;
use super::reaper::Reaper;
use crate::sys::pipe;

/// Stop reading a side while this much waits for the other.
const HIGH: usize = 1 << 20;
/// What is left of a claim runs once the session was idle this long (a
/// short command has ended, a long one waits), or after [`CLAIM_LATEST`].
const CLAIM_IDLE: Duration = Duration::from_millis(100);
const CLAIM_LATEST: Duration = Duration::from_secs(1);

/// What a session's header starts: an environment's command, or the
/// admin's.
pub trait Launcher: Sync {
    /// Reads the header and prepares its command. What it began that must
    /// be seen through whatever happens next (a claim) goes in `claimed`.
    fn launch(&'static self, payload: &[u8], claimed: &mut Claimed) -> Result<Launch, String>;
    fn reaper(&self) -> &Reaper;
    /// Whether the server ends once this session has (a spare it retired).
    fn retired(&self) -> bool {
        false
    }
    /// Runs once the command has ended, before its exit status is sent.
    fn settle(&self) {}
}

/// A header's command, ready to fork.
pub struct Launch {
    pub prepared: Prepared,
    pub pty: Option<Pty>,
    /// The forwarded agent's socket, for this command only: removed when
    /// the session ends.
    pub agent: Option<String>,
}

impl Launch {
    /// `prepared`, with the terminal and agent `header` asks for.
    pub fn of<R>(prepared: Prepared, header: Header<R>) -> Launch {
        Launch {
            prepared,
            pty: header.pty,
            agent: header.agent,
        }
    }
}

/// Checks that the header's agent socket is a forward sshd made for the
/// host (in the admin's socket directory), not some other file.
pub fn forwarded_agent(agent: &str) -> Result<(), String> {
    let is_socket = std::fs::symlink_metadata(agent).is_ok_and(|m| m.file_type().is_socket());
    if Path::new(agent).parent() != Some(Path::new(SOCKETS_DIR)) || !is_socket {
        return Err(format!("agent socket {agent:?} is not a forwarded socket"));
    }
    Ok(())
}

/// What a claim began: the host is told before anything else, and the
/// rest of the claim runs once the session is idle, or when it ends.
#[derive(Default)]
pub struct Claimed {
    pub accepted: bool,
    pub rest: Option<Box<dyn FnOnce() + Send>>,
}

pub fn serve(launcher: &'static dyn Launcher, conn: UnixStream) {
    let mut s = Session {
        conn,
        decoder: Decoder::new(),
        out: Vec::new(),
        pending: Vec::new(),
        eof: false,
        pid: None,
        status: None,
        exit: None,
        master: None,
        stdin: None,
        readers: Vec::new(),
        done: false,
        agent: None,
    };
    // A claim this session began is completed however the session ends.
    let mut claimed = Claimed::default();
    if let Err(e) = s.run(launcher, &mut claimed) {
        eprintln!("llima-box-guest-agent: session: {e}");
    }
    // The host ends the forward when the session ends; the socket file
    // sshd leaves goes too.
    if let Some(agent) = s.agent.take() {
        let _ = std::fs::remove_file(agent);
    }
    drop(s);
    if let Some(rest) = claimed.rest.take() {
        rest();
    }
    if launcher.retired() {
        std::process::exit(0);
    }
}

struct Session {
    conn: UnixStream,
    decoder: Decoder,
    /// Frames for the client.
    out: Vec<u8>,
    /// For the command's stdin.
    pending: Vec<u8>,
    eof: bool,
    pid: Option<libc::pid_t>,
    status: Option<libc::c_int>,
    /// Delivers the command's wait status (see `Reaper::fork`).
    exit: Option<OwnedFd>,
    /// A terminal: read and written.
    master: Option<OwnedFd>,
    /// Pipes: written.
    stdin: Option<OwnedFd>,
    /// Pipes: the command's stdout and stderr, with their frame kinds.
    readers: Vec<(OwnedFd, u8)>,
    done: bool,
    /// The forwarded agent's socket, for this command only.
    agent: Option<String>,
}

#[derive(Clone, Copy)]
enum Role {
    Conn,
    /// By descriptor: an earlier event of the same round may remove one.
    Reader(RawFd),
    Stdin,
    Master,
    Exit,
}

fn nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this session owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Reads what `fd` has: `Ok(None)` when it would block, an empty vector at
/// the end (EIO on a terminal whose last holder is gone counts as the end).
fn read_some(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: reads into a live buffer from a descriptor this session owns.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Vec::new()),
        };
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn write_some(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: writes from a live slice to a descriptor this session owns.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The name of a signal without `SIG`, as the host reports it.
fn signal_name(sig: libc::c_int) -> String {
    const NAMES: &[(libc::c_int, &str)] = &[
        (libc::SIGHUP, "HUP"),
        (libc::SIGINT, "INT"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGILL, "ILL"),
        (libc::SIGTRAP, "TRAP"),
        (libc::SIGABRT, "ABRT"),
        (libc::SIGBUS, "BUS"),
        (libc::SIGFPE, "FPE"),
        (libc::SIGKILL, "KILL"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGSEGV, "SEGV"),
        (libc::SIGUSR2, "USR2"),
        (libc::SIGPIPE, "PIPE"),
        (libc::SIGALRM, "ALRM"),
        (libc::SIGTERM, "TERM"),
        (libc::SIGXCPU, "XCPU"),
        (libc::SIGXFSZ, "XFSZ"),
        (libc::SIGVTALRM, "VTALRM"),
        (libc::SIGPROF, "PROF"),
        (libc::SIGSYS, "SYS"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == sig)
        .map_or_else(|| sig.to_string(), |(_, name)| (*name).to_string())
}

fn exit_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal {
            signal: signal_name(libc::WTERMSIG(status)),
            core: libc::WCOREDUMP(status),
        }
    } else {
        ExitStatus::Code {
            code: libc::WEXITSTATUS(status) as u32,
        }
    }
}

/// With a terminal, its type: the one the client's terminal request
/// names, else the client's TERM.
pub fn terminal_type(env: &[(String, String)], pty: Option<&Pty>) -> Option<String> {
    let pty = pty?;
    Some(if pty.term.is_empty() {
        env.iter()
            .find(|(k, _)| k == "TERM")
            .map_or("dumb".to_string(), |(_, v)| v.clone())
    } else {
        pty.term.clone()
    })
}

impl Session {
    fn send(&mut self, kind: u8, payload: &[u8]) {
        self.out.extend(frame::encode(kind, payload));
    }

    fn run(&mut self, launcher: &'static dyn Launcher, claimed: &mut Claimed) -> io::Result<()> {
        let header = loop {
            let mut buf = [0u8; 16 << 10];
            let n = self.conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.decoder.push(&buf[..n]);
            if let Some(f) = self.decoder.next_frame().map_err(io::Error::other)? {
                break f;
            }
        };
        let started = if header.kind == spawn::HEADER {
            self.start(launcher, &header.payload, claimed)
        } else {
            Err(format!(
                "the first frame is of kind {}, not a header",
                header.kind
            ))
        };
        if let Err(e) = started {
            let text = format!("llima-box-guest-agent: bad request: {e}\n");
            self.send(spawn::STDERR, text.as_bytes());
            self.finish(ExitStatus::Code { code: 2 });
        }
        self.conn.set_nonblocking(true)?;
        let deadline = Instant::now() + CLAIM_LATEST;
        // Frames that came with the header.
        if !self.frames() {
            self.hangup();
            return Ok(());
        }
        loop {
            self.finish_if_ended(launcher);
            if self.stdin.is_some() && self.eof && self.pending.is_empty() {
                self.stdin = None;
            }
            if self.done && self.out.is_empty() {
                break;
            }
            let (mut fds, roles) = self.poll_set();
            let timeout = if claimed.rest.is_some() {
                CLAIM_IDLE.as_millis() as libc::c_int
            } else {
                -1
            };
            // SAFETY: a valid array of pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if claimed.rest.is_some()
                && (n == 0 || Instant::now() >= deadline)
                && let Some(rest) = claimed.rest.take()
            {
                rest();
            }
            for (fd, role) in fds.iter().zip(roles) {
                if fd.revents != 0 && !self.handle(role, fd.revents) {
                    self.hangup();
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// What to wait for: only descriptors with something to wait for, so a
    /// hung-up pipe that is not to be read does not wake the loop.
    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Role>) {
        let room = self.out.len() < HIGH;
        let mut fds = Vec::new();
        let mut roles = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, role: Role| {
            if events != 0 {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                roles.push(role);
            }
        };
        let mut conn = 0;
        if !self.out.is_empty() {
            conn |= libc::POLLOUT;
        }
        if self.pending.len() < HIGH && !self.done {
            conn |= libc::POLLIN;
        }
        add(self.conn.as_raw_fd(), conn, Role::Conn);
        for (fd, _) in &self.readers {
            let fd = fd.as_raw_fd();
            add(fd, if room { libc::POLLIN } else { 0 }, Role::Reader(fd));
        }
        let want_write = if self.pending.is_empty() {
            0
        } else {
            libc::POLLOUT
        };
        if let Some(fd) = &self.stdin {
            add(fd.as_raw_fd(), want_write, Role::Stdin);
        }
        if let Some(fd) = &self.master {
            add(
                fd.as_raw_fd(),
                want_write | if room { libc::POLLIN } else { 0 },
                Role::Master,
            );
        }
        if let Some(fd) = &self.exit {
            add(fd.as_raw_fd(), libc::POLLIN, Role::Exit);
        }
        (fds, roles)
    }

    /// Handles one descriptor's events; false when the client is gone.
    fn handle(&mut self, role: Role, revents: libc::c_short) -> bool {
        let readable = revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        match role {
            Role::Conn => {
                if revents & libc::POLLOUT != 0 && !self.out.is_empty() {
                    match self.conn.write(&self.out) {
                        Ok(n) => drop(self.out.drain(..n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return false,
                    }
                }
                if readable {
                    let mut buf = vec![0u8; 64 << 10];
                    match self.conn.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(n) => {
                            self.decoder.push(&buf[..n]);
                            return self.frames();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return false,
                    }
                }
            }
            Role::Reader(fd) => {
                if readable {
                    self.read_output(fd);
                }
            }
            Role::Stdin | Role::Master => {
                if revents & libc::POLLOUT != 0 {
                    self.write_input();
                }
                if matches!(role, Role::Master) && readable && self.master.is_some() {
                    self.read_master();
                }
            }
            Role::Exit => {
                let mut status = [0u8; 4];
                if let Some(fd) = self.exit.take()
                    && std::fs::File::from(fd).read_exact(&mut status).is_ok()
                {
                    self.status = Some(libc::c_int::from_ne_bytes(status));
                }
            }
        }
        true
    }

    /// Takes the client's frames; false when they are not the protocol's.
    fn frames(&mut self) -> bool {
        loop {
            let f = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(_) => return false,
            };
            match f.kind {
                spawn::STDIN if !self.eof => self.pending.extend(f.payload),
                spawn::EOF => self.eof = true,
                spawn::RESIZE => {
                    if let (Some(m), &[r0, r1, c0, c1]) = (&self.master, f.payload.as_slice()) {
                        let rows = u16::from_be_bytes([r0, r1]);
                        let cols = u16::from_be_bytes([c0, c1]);
                        let _ = pty::resize(m.as_raw_fd(), rows.into(), cols.into());
                    }
                }
                _ => {}
            }
        }
    }

    fn read_output(&mut self, raw: RawFd) {
        let Some(i) = self.readers.iter().position(|r| r.0.as_raw_fd() == raw) else {
            return;
        };
        let (fd, kind) = &self.readers[i];
        let kind = *kind;
        match read_some(fd) {
            None => {}
            Some(data) if data.is_empty() => {
                self.readers.remove(i);
            }
            Some(data) => self.send(kind, &data),
        }
    }

    /// Moves what the terminal has into frames; false once nothing waits.
    fn read_master(&mut self) -> bool {
        let Some(fd) = &self.master else { return false };
        match read_some(fd) {
            None => false,
            Some(data) if data.is_empty() => {
                self.master = None;
                false
            }
            Some(data) => {
                self.send(spawn::STDOUT, &data);
                true
            }
        }
    }

    fn write_input(&mut self) {
        let Some(fd) = self.master.as_ref().or(self.stdin.as_ref()) else {
            return;
        };
        match write_some(fd, &self.pending) {
            Ok(n) => drop(self.pending.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The command closed its stdin.
            Err(_) => {
                self.pending.clear();
                self.eof = true;
            }
        }
    }

    fn finish(&mut self, status: ExitStatus) {
        let body = serde_json::to_vec(&status).expect("plain data serialises");
        self.send(spawn::EXIT, &body);
        self.done = true;
        self.stdin = None;
    }

    fn finish_if_ended(&mut self, launcher: &dyn Launcher) {
        let Some(status) = self.status else { return };
        if self.done {
            return;
        }
        if self.master.is_some() {
            // The shell is gone: pass on what it left, without waiting for
            // background jobs that still hold the terminal.
            while self.out.len() < 16 * HIGH && self.read_master() {}
            self.master = None;
        }
        // Pipes: until every writer closed them, as sshd does.
        if self.readers.is_empty() {
            launcher.settle();
            self.finish(exit_status(status));
        }
    }

    /// The client went away: so does the command.
    fn hangup(&mut self) {
        if let (Some(pid), None) = (self.pid, self.status) {
            // SAFETY: signals the command's own process group.
            unsafe { libc::killpg(pid, libc::SIGHUP) };
        }
    }

    /// Starts the header's command. What a claim began is left in
    /// `claimed` whatever happens after, since the spare has changed.
    fn start(
        &mut self,
        launcher: &'static dyn Launcher,
        payload: &[u8],
        claimed: &mut Claimed,
    ) -> Result<(), String> {
        let launch = launcher.launch(payload, claimed);
        if claimed.accepted {
            // Whatever else comes first tells the host that nothing ran.
            self.send(spawn::ACCEPTED, &[]);
        }
        let Launch {
            prepared,
            pty,
            agent,
        } = launch?;
        self.agent = agent;
        let failed = |what: &str, e: io::Error| format!("cannot {what}: {e}");
        let (stdio, child_ends) = match &pty {
            Some(p) => {
                let (master, slave) = pty::open(p).map_err(|e| failed("open a terminal", e))?;
                self.master = Some(master);
                (Stdio::Pty(slave.as_raw_fd()), vec![slave])
            }
            None => {
                let p = |_| failed("make pipes", io::Error::last_os_error());
                let (in_r, in_w) = pipe().map_err(p)?;
                let (out_r, out_w) = pipe().map_err(p)?;
                let (err_r, err_w) = pipe().map_err(p)?;
                self.stdin = Some(in_w);
                self.readers = vec![(out_r, spawn::STDOUT), (err_r, spawn::STDERR)];
                let fds = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
                (Stdio::Pipes(fds), vec![in_r, out_w, err_w])
            }
        };
        // SAFETY: the child only runs the prepared exec.
        let (pid, exit) = launcher
            .reaper()
            .fork(|| unsafe { prepared.exec(&stdio) })
            .map_err(|e| failed("start the command", e))?;
        prepared.supervise();
        drop(child_ends);
        self.pid = Some(pid);
        self.exit = Some(exit);
        for fd in self
            .readers
            .iter()
            .map(|r| &r.0)
            .chain(&self.stdin)
            .chain(&self.master)
        {
            nonblocking(fd.as_raw_fd());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::child;
    use super::*;
    use llima_box_proto::spawn::EnvRequest;

    #[test]
    fn passes_on_terminal_and_locale_only() {
        let header = Header {
            request: EnvRequest {
                cwd: "/p".into(),
                argv: vec![],
                claim: None,
            },
            env: [
                ("LANG", "C.UTF-8"),
                ("LC_ALL", "C"),
                ("PATH", "/evil"),
                ("TERM", "vt100"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec(),
            pty: Some(Pty {
                term: String::new(),
                cols: 80,
                rows: 24,
                modes: vec![],
            }),
            agent: None,
        };
        let term = terminal_type(&header.env, header.pty.as_ref());
        let env = child::user_env("app", 70001, &header.env, term);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some(child::PATH));
        assert_eq!(get("HOME"), Some("/home/app"));
        assert_eq!(get("XDG_RUNTIME_DIR"), Some("/run/user/70001"));
        assert_eq!((get("LANG"), get("LC_ALL")), (Some("C.UTF-8"), Some("C")));
        assert_eq!(
            get("TERM"),
            Some("vt100"),
            "the client's TERM when the pty names none"
        );
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn statuses_and_signals() {
        assert_eq!(exit_status(3 << 8), ExitStatus::Code { code: 3 });
        assert_eq!(
            exit_status(libc::SIGTERM),
            ExitStatus::Signal {
                signal: "TERM".into(),
                core: false
            }
        );
        assert_eq!(signal_name(40), "40");
    }
}

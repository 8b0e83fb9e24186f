//! Starting one command: everything the child needs is prepared before the
//! fork, because the server has threads and a forked child of a threaded
//! process may only make system calls until it execs (no allocation, no
//! locks). The child becomes the environment's user in its own session,
//! optionally with the forwarded SSH agent in a mount namespace of its own.

use std::ffi::{CString, c_char};
use std::os::fd::RawFd;

use llima_box_proto::paths::HOMES_DIR;

use llima_box_setid_filter::{Filter, Scope};

use super::supervisor::{self, Channel};

/// Where a command finds its forwarded agent: a tmpfs of its own mount
/// namespace, so no other command of the environment sees the socket.
const AGENT_DIR: &[u8] = b"/run/user/agent\0";
const AGENT_SOCKET: &[u8] = b"/run/user/agent/ssh-agent.sock\0";
pub const AGENT_SOCKET_PATH: &str = "/run/user/agent/ssh-agent.sock";

/// Where an environment's commands look for programs.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games";

/// What runs when no command is given.
pub fn login_shell() -> [String; 2] {
    ["/bin/bash".into(), "--login".into()]
}

/// A command's environment: the user's, what a client may pass on from
/// `passed` (terminal and locale), and `term` as TERM when it has a
/// terminal.
pub fn user_env(
    name: &str,
    uid: u32,
    passed: &[(String, String)],
    term: Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("HOME", format!("{HOMES_DIR}/{name}")),
        ("USER", name.to_string()),
        ("LOGNAME", name.to_string()),
        ("SHELL", "/bin/bash".into()),
        ("PATH", PATH.into()),
        ("XDG_RUNTIME_DIR", format!("/run/user/{uid}")),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    pass_on(&mut env, passed, term);
    env
}

/// Sets in `env` what a client may pass on from `passed` (terminal and
/// locale), and `term` as TERM.
pub fn pass_on(env: &mut Vec<(String, String)>, passed: &[(String, String)], term: Option<String>) {
    let mut set = |k: &str, v: String| match env.iter_mut().find(|(key, _)| key == k) {
        Some(e) => e.1 = v,
        None => env.push((k.to_string(), v)),
    };
    for (k, v) in passed {
        if matches!(k.as_str(), "TERM" | "COLORTERM" | "LANG") || k.starts_with("LC_") {
            set(k, v.clone());
        }
    }
    if let Some(term) = term {
        set("TERM", term);
    }
}

/// The descriptors that become the command's 0, 1 and 2.
pub enum Stdio {
    /// The terminal's slave side: also the controlling terminal.
    Pty(RawFd),
    /// Pipes: stdin's read end, stdout's and stderr's write ends.
    Pipes([RawFd; 3]),
    /// This process's own, and its session and controlling terminal.
    Inherited,
}

pub struct Prepared {
    argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// Owns what `envp_ptrs` points at.
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    /// What execvp would try, in order: argv[0] in each PATH directory.
    candidates: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    /// The forwarded agent's socket to bind in.
    agent: Option<CString>,
    /// The system call filter (see `llima_box_setid_filter`) and the
    /// channel to its supervisor, if any.
    filter: Option<(Filter, Channel)>,
    umask: Option<u32>,
}

// The raw pointers point into the CStrings owned alongside them.
unsafe impl Send for Prepared {}

/// A string for the kernel; NUL bytes cannot be passed and are refused.
fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn pointers(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

pub struct Command<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
    pub agent: Option<&'a str>,
    /// Under the environments' system call filter (see
    /// `llima_box_setid_filter`).
    pub sandboxed: bool,
    /// The file mode mask; the server's own when not given.
    pub umask: Option<u32>,
}

impl Prepared {
    pub fn new(cmd: &Command) -> Result<Prepared, String> {
        let argv = cmd
            .argv
            .iter()
            .map(|a| c(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = cmd
            .env
            .iter()
            .map(|(k, v)| c(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let program = cmd.argv.first().ok_or("no command")?;
        let candidates = if program.contains('/') {
            vec![c(program)?]
        } else {
            let path = cmd
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map_or("/usr/bin:/bin", |(_, v)| v.as_str());
            path.split(':')
                .map(|dir| {
                    c(&format!(
                        "{}/{program}",
                        if dir.is_empty() { "." } else { dir }
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Prepared {
            argv_ptrs: pointers(&argv),
            argv,
            envp_ptrs: pointers(&envp),
            _envp: envp,
            candidates,
            cwd: c(cmd.cwd)?,
            uid: cmd.uid,
            gid: cmd.gid,
            groups: cmd.groups.to_vec(),
            agent: cmd.agent.map(c).transpose()?,
            filter: match cmd.sandboxed {
                true => Some((
                    Filter::new(Scope::Command),
                    Channel::new().map_err(|e| {
                        format!("cannot make a channel to the system call supervisor: {e}")
                    })?,
                )),
                false => None,
            },
            umask: cmd.umask,
        })
    }

    /// In the parent, once the child is forked: starts the supervisor of
    /// its system call filter, if it has one, on a thread of its own.
    pub fn supervise(self) {
        if let Some((_, channel)) = self.filter {
            no_supervisor(channel.supervise());
        }
    }

    /// As `supervise`, on this thread until the child `child` ends: for a
    /// process that cannot start threads (it joined a PID namespace).
    pub fn supervise_until(self, child: libc::pid_t) {
        if let Some((_, channel)) = self.filter {
            no_supervisor(
                crate::sys::pidfd_open(child).map(|pidfd| channel.supervise_until(&pidfd)),
            );
        }
    }

    /// In the forked child: sets it up and execs, or says why not on its
    /// stderr and exits 125 (set-up), 126 (not executable) or 127 (not
    /// found), as a shell would.
    ///
    /// # Safety
    /// Only in a child just forked, with `stdio` open in it.
    pub unsafe fn exec(&self, stdio: &Stdio) -> ! {
        // SAFETY: system calls on descriptors and strings this child owns.
        unsafe {
            if let Some(agent) = &self.agent
                && let Err(e) = bind_agent(agent)
            {
                let _ = redirect(stdio);
                fail(&[b"llima-box: cannot pass on the SSH agent: "], e, 125);
            }
            if let Err(e) = redirect(stdio) {
                fail(
                    &[b"llima-box: cannot set up the command's terminal: "],
                    e,
                    125,
                );
            }
            // The holder's processes are shielded from the OOM killer
            // (-1000, inherited); the commands must not be, or nothing in
            // a full environment could be killed.
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj < 0 || libc::write(adj, b"0".as_ptr().cast(), 1) != 1 {
                fail(&[b"llima-box: cannot reset the OOM score: "], errno(), 125);
            }
            libc::close(adj);
            for s in [
                libc::SIGPIPE,
                libc::SIGXFSZ,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGCHLD,
            ] {
                libc::signal(s, libc::SIG_DFL);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setresgid(self.gid, self.gid, self.gid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
            {
                fail(
                    &[b"llima-box: cannot become the environment's user: "],
                    errno(),
                    125,
                );
            }
            // A session keyring of the command's own, the user's: the one
            // inherited (the holder unit's, or the admin's login session's)
            // is not the environment's to read or add to.
            let no_name: *const libc::c_char = std::ptr::null();
            if libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_JOIN_SESSION_KEYRING as libc::c_long,
                no_name,
            ) < 0
            {
                fail(
                    &[b"llima-box: cannot give the command a session keyring: "],
                    errno(),
                    125,
                );
            }
            if let Some((filter, channel)) = &self.filter {
                let listener = match filter.install() {
                    // A command's filter always has one (-1 fails the send).
                    Ok(fd) => fd.unwrap_or(-1),
                    Err(e) => fail(
                        &[b"llima-box: cannot install the system call filter: "],
                        e,
                        125,
                    ),
                };
                if let Err(e) = supervisor::send(channel.child_end(), listener) {
                    fail(
                        &[b"llima-box: cannot reach the system call supervisor: "],
                        e,
                        125,
                    );
                }
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if let Some(mask) = self.umask {
                libc::umask(mask as libc::mode_t);
            }
            // After dropping privileges, so the user's own permissions apply.
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                let e = errno();
                fail(
                    &[b"llima-box: cannot enter ", self.cwd.as_bytes(), b": "],
                    e,
                    125,
                );
            }
            let mut denied = false;
            for path in &self.candidates {
                libc::execve(
                    path.as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.envp_ptrs.as_ptr(),
                );
                match errno() {
                    libc::ENOENT | libc::ENOTDIR => {}
                    libc::EACCES => denied = true,
                    e => fail(&[b"llima-box: ", self.argv[0].as_bytes(), b": "], e, 126),
                }
            }
            let program = self.argv[0].as_bytes();
            if denied {
                fail(&[b"llima-box: ", program, b": "], libc::EACCES, 126);
            }
            write_all(&[b"llima-box: ", program, b": command not found\n"]);
            libc::_exit(127)
        }
    }
}

/// Says so when a command's supervisor could not start: its listener
/// then closes, and the kernel fails the command's openat2 calls (ENOSYS);
/// none goes unchecked.
fn no_supervisor(started: std::io::Result<()>) {
    if let Err(e) = started {
        eprintln!("llima-box-guest-agent: no system call supervisor for a command: {e}");
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The command's own mount namespace, with the agent's socket bound in.
unsafe fn bind_agent(socket: &CString) -> Result<(), i32> {
    // SAFETY: NUL-terminated constants and strings.
    unsafe {
        let ok = libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                c"llima-box-agent".as_ptr(),
                AGENT_DIR.as_ptr().cast(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=64k".as_ptr().cast(),
            ) == 0;
        if !ok {
            return Err(errno());
        }
        let fd = libc::open(
            AGENT_SOCKET.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            return Err(errno());
        }
        libc::close(fd);
        if libc::mount(
            socket.as_ptr(),
            AGENT_SOCKET.as_ptr().cast(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(errno());
        }
    }
    Ok(())
}

/// A new session whose 0, 1 and 2 are `stdio` (a terminal becomes the
/// controlling one, as login_tty does); nothing for inherited ones.
unsafe fn redirect(stdio: &Stdio) -> Result<(), i32> {
    let (fds, tty) = match *stdio {
        Stdio::Inherited => return Ok(()),
        Stdio::Pty(slave) => ([slave; 3], Some(slave)),
        Stdio::Pipes(fds) => (fds, None),
    };
    // SAFETY: descriptors open in this child.
    unsafe {
        if libc::setsid() < 0 {
            return Err(errno());
        }
        if let Some(tty) = tty
            && libc::ioctl(tty, libc::TIOCSCTTY, 0) != 0
        {
            return Err(errno());
        }
        for (target, fd) in fds.into_iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                return Err(errno());
            }
        }
    }
    Ok(())
}

/// Writes `parts`, the text of `err` and a newline to stderr, then exits.
unsafe fn fail(parts: &[&[u8]], err: i32, status: i32) -> ! {
    // SAFETY: strerror returns a static string for known errors.
    unsafe {
        let text = std::ffi::CStr::from_ptr(libc::strerror(err)).to_bytes();
        write_all(parts);
        write_all(&[text, b"\n"]);
        libc::_exit(status)
    }
}

fn write_all(parts: &[&[u8]]) {
    for part in parts {
        let mut rest = *part;
        while !rest.is_empty() {
            // SAFETY: writes from a live slice.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command<'a>(argv: &'a [String], env: &'a [(String, String)]) -> Command<'a> {
        Command {
            argv,
            env,
            cwd: "/",
            uid: 0,
            gid: 0,
            groups: &[],
            agent: None,
            sandboxed: true,
            umask: None,
        }
    }

    #[test]
    fn searches_path_like_execvp() {
        let env = [("PATH".to_string(), "/usr/local/bin::/bin".to_string())];
        let argv = ["ls".to_string(), "-l".to_string()];
        let p = Prepared::new(&command(&argv, &env)).unwrap();
        let c: Vec<_> = p.candidates.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(c, ["/usr/local/bin/ls", "./ls", "/bin/ls"]);
        assert_eq!(p.argv_ptrs.len(), 3, "NULL-terminated");
        assert!(p.argv_ptrs[2].is_null() && p.envp_ptrs[1].is_null());
        assert_eq!(p._envp[0].to_str().unwrap(), "PATH=/usr/local/bin::/bin");

        let argv = ["./run me".to_string()];
        let p = Prepared::new(&command(&argv, &env)).unwrap();
        assert_eq!(p.candidates, [CString::new("./run me").unwrap()]);
    }

    #[test]
    fn refuses_nul_bytes_and_empty_commands() {
        let argv = ["a\0b".to_string()];
        assert!(Prepared::new(&command(&argv, &[])).is_err());
        assert!(Prepared::new(&command(&[], &[])).is_err());
    }
}

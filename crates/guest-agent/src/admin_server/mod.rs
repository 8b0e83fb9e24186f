//! The admin user's commands (`vm shell`) without sshd: under emulation an
//! SSH session costs sshd a fork, PAM and a login per command, while this
//! server forks once and execs the admin's login shell, or a command in
//! the login environment it remembers (`login_env`), as the environments'
//! spawn servers do (same protocol, same session code). A
//! service of its own (`ADMIN_UNIT`): it reaps every child it has, and its
//! commands must outlive a restart of the agent's service (`KillMode=
//! process`; restarting this one, on an upgrade, ends their sessions).
//!
//! The admin keeps all it has over sshd: its groups and sudo (no
//! `no_new_privs`, no system call filter, no namespace), the guest's whole
//! view, a forwarded agent at `SSH_AUTH_SOCK`, and its user session
//! (`XDG_RUNTIME_DIR`) when one runs.

mod login_env;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use llima_box_proto::paths::{ADMIN_SOCKET, SOCKETS_DIR};
use llima_box_proto::spawn::{AdminRequest, Header};

use crate::env_server::child::{self, Command, Prepared};
use crate::env_server::reaper::{self, Reaper};
use crate::env_server::session::{self, Claimed, Launch, Launcher};
use crate::{accounts, server};

/// sshd's PATH for users on Debian; a login shell sets its own.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/games";

struct AdminServer {
    uid: u32,
    reaper: Reaper,
    logins: login_env::Cache,
}

/// Serves the admin socket; returns only when it cannot start.
pub fn run(admin_uid: u32) -> io::Result<()> {
    reaper::block_signals();
    let dir = Path::new(SOCKETS_DIR);
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(admin_uid), None)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let listener = server::listen(Path::new(ADMIN_SOCKET), admin_uid)?;
    let admin: &'static AdminServer = Box::leak(Box::new(AdminServer {
        uid: admin_uid,
        reaper: Reaper::default(),
        logins: login_env::Cache::default(),
    }));
    std::thread::spawn(|| admin.reaper.run());
    server::accept(listener, admin_uid, |conn| session::serve(admin, conn));
    Ok(())
}

impl Launcher for AdminServer {
    fn launch(&'static self, payload: &[u8], _: &mut Claimed) -> Result<Launch, String> {
        let header: Header<AdminRequest> =
            serde_json::from_slice(payload).map_err(|e| format!("unreadable header: {e}"))?;
        let (passwd, group) = accounts::local_files()?;
        let user = accounts::users(&passwd)
            .find(|u| u.uid == self.uid)
            .ok_or_else(|| format!("no user with uid {} in /etc/passwd", self.uid))?;
        let shell = if user.shell.is_empty() {
            "/bin/sh"
        } else {
            user.shell
        };
        let base: Vec<(String, String)> = [
            ("HOME", user.home.to_string()),
            ("USER", user.name.to_string()),
            ("LOGNAME", user.name.to_string()),
            ("SHELL", shell.to_string()),
            ("PATH", PATH.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        let groups = accounts::groups_of(&group, user.name, user.gid);
        let (run, cwd) = what(&header.request, user.home, |d| Path::new(d).is_dir());
        let mut argv = run.argv(shell);
        // A command runs in a remembered login environment, when there is one.
        let login = match &run {
            Run::Command(line) => {
                let login = Command {
                    argv: &argv,
                    env: &base,
                    cwd: user.home,
                    uid: user.uid,
                    gid: user.gid,
                    groups: &groups,
                    agent: None,
                    sandboxed: false,
                    umask: None,
                };
                let env = self.logins.get(&login, user.home, &self.reaper);
                if env.is_some() {
                    argv = [shell, "-c", line].map(String::from).to_vec();
                }
                env
            }
            _ => None,
        };
        let umask = login.as_ref().map(|l| l.umask);
        let mut env = login.map_or(base, |l| l.vars);
        let runtime_dir = format!("/run/user/{}", self.uid);
        if Path::new(&runtime_dir).is_dir() {
            let bus = format!("{runtime_dir}/bus");
            if Path::new(&bus).exists() {
                env.push((
                    "DBUS_SESSION_BUS_ADDRESS".into(),
                    format!("unix:path={bus}"),
                ));
            }
            env.push(("XDG_RUNTIME_DIR".into(), runtime_dir));
        }
        let term = session::terminal_type(&header.env, header.pty.as_ref());
        child::pass_on(&mut env, &header.env, term);
        if let Some(agent) = &header.agent {
            session::forwarded_agent(agent)?;
            env.push(("SSH_AUTH_SOCK".into(), agent.clone()));
        }
        let prepared = Prepared::new(&Command {
            argv: &argv,
            env: &env,
            cwd: &cwd,
            uid: user.uid,
            gid: user.gid,
            groups: &groups,
            agent: None,
            sandboxed: false,
            umask,
        })?;
        Ok(Launch::of(prepared, header))
    }

    fn reaper(&self) -> &Reaper {
        &self.reaper
    }
}

/// What a request runs: an interactive login shell, a command line in a
/// login shell, or (a required directory the guest lacks) the shell's own
/// `cd` error.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    Interactive,
    Command(String),
    MissingDir(String),
}

impl Run {
    /// The argv as `cd DIR; exec $SHELL -l [-c COMMAND]` would run it.
    fn argv(&self, shell: &str) -> Vec<String> {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Run::Interactive => own(&[shell, "-l"]),
            Run::Command(line) => own(&[shell, "-l", "-c", line]),
            Run::MissingDir(dir) => own(&[shell, "-c", r#"cd -- "$1""#, shell, dir]),
        }
    }
}

/// What `req` runs and where, as sshd would: a directory the guest lacks
/// is the home, or when required, the shell's own error and status 1.
fn what(req: &AdminRequest, home: &str, is_dir: impl Fn(&str) -> bool) -> (Run, String) {
    match req.cwd.as_deref() {
        Some(dir) if !is_dir(dir) && req.cwd_required => {
            (Run::MissingDir(dir.to_string()), home.to_string())
        }
        cwd => {
            let cwd = cwd.filter(|d| is_dir(d)).unwrap_or(home);
            let run = match &req.command {
                Some(line) => Run::Command(line.clone()),
                None => Run::Interactive,
            };
            (run, cwd.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cwd: Option<&str>, required: bool, command: Option<&str>) -> AdminRequest {
        AdminRequest {
            cwd: cwd.map(String::from),
            cwd_required: required,
            command: command.map(String::from),
        }
    }

    #[test]
    fn runs_a_login_shell_where_asked_as_sshd_would() {
        let exists = |d: &str| d == "/work" || d == "/home/a";
        let run = |r: &AdminRequest| what(r, "/home/a", exists);
        let (cmd, cwd) = run(&req(Some("/work"), false, Some("ls -l")));
        assert_eq!(
            (&cmd, cwd.as_str()),
            (&Run::Command("ls -l".into()), "/work")
        );
        assert_eq!(cmd.argv("/bin/bash"), ["/bin/bash", "-l", "-c", "ls -l"]);
        // The host's directory is not in the guest: the home.
        let (shell, cwd) = run(&req(Some("/host/only"), false, None));
        assert_eq!(
            (shell.argv("/bin/bash"), cwd.as_str()),
            (vec!["/bin/bash".to_string(), "-l".into()], "/home/a")
        );
        assert_eq!(run(&req(None, false, None)).1, "/home/a");
        // A directory asked for (--workdir) that is not there: cd's error.
        let (missing, _) = run(&req(Some("/nope"), true, Some("true")));
        let argv = missing.argv("/bin/bash");
        assert_eq!(argv[..3], ["/bin/bash", "-c", r#"cd -- "$1""#]);
        assert_eq!(argv[4], "/nope");
    }
}

//! The admin user's commands (`vm shell`) without sshd: under emulation an
//! SSH session costs sshd a fork, PAM and a login per command, while this
//! server forks once and execs the admin's login shell, as the
//! environments' spawn servers do (same protocol, same session code). A
//! service of its own (`ADMIN_UNIT`): it reaps every child it has, and its
//! commands must outlive a restart of the agent's service (`KillMode=
//! process`; restarting this one, on an upgrade, ends their sessions).
//!
//! The admin keeps all it has over sshd: its groups and sudo (no
//! `no_new_privs`, no system call filter, no namespace), the guest's whole
//! view, a forwarded agent at `SSH_AUTH_SOCK`, and its user session
//! (`XDG_RUNTIME_DIR`) when one runs.

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
    }));
    std::thread::spawn(|| admin.reaper.run());
    server::accept(&listener, admin_uid, |conn| session::serve(admin, conn));
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
        let mut env: Vec<(String, String)> = [
            ("HOME", user.home.to_string()),
            ("USER", user.name.to_string()),
            ("LOGNAME", user.name.to_string()),
            ("SHELL", shell.to_string()),
            ("PATH", PATH.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
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
        let (argv, cwd) = command(&header.request, shell, user.home, |d| Path::new(d).is_dir());
        let prepared = Prepared::new(&Command {
            argv: &argv,
            env: &env,
            cwd: &cwd,
            uid: user.uid,
            gid: user.gid,
            groups: &accounts::groups_of(&group, user.name, user.gid),
            agent: None,
            sandboxed: false,
        })?;
        Ok(Launch::of(prepared, header))
    }

    fn reaper(&self) -> &Reaper {
        &self.reaper
    }
}

/// The argv and working directory for `req`, as sshd and `cd DIR; exec
/// $SHELL -l [-c COMMAND]` would run it: a directory the guest lacks is
/// the home, or when required, the shell's own error and status 1.
fn command(
    req: &AdminRequest,
    shell: &str,
    home: &str,
    is_dir: impl Fn(&str) -> bool,
) -> (Vec<String>, String) {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match req.cwd.as_deref() {
        Some(dir) if !is_dir(dir) && req.cwd_required => (
            own(&[shell, "-c", r#"cd -- "$1""#, shell, dir]),
            home.to_string(),
        ),
        cwd => {
            let cwd = cwd.filter(|d| is_dir(d)).unwrap_or(home);
            let argv = match &req.command {
                Some(line) => own(&[shell, "-l", "-c", line]),
                None => own(&[shell, "-l"]),
            };
            (argv, cwd.to_string())
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
        let run = |r: &AdminRequest| command(r, "/bin/bash", "/home/a", exists);
        assert_eq!(
            run(&req(Some("/work"), false, Some("ls -l"))),
            (
                vec!["/bin/bash".into(), "-l".into(), "-c".into(), "ls -l".into()],
                "/work".into()
            )
        );
        // The host's directory is not in the guest: the home.
        assert_eq!(
            run(&req(Some("/host/only"), false, None)),
            (vec!["/bin/bash".into(), "-l".into()], "/home/a".into())
        );
        assert_eq!(run(&req(None, false, None)).1, "/home/a");
        // A directory asked for (--workdir) that is not there: cd's error.
        let (argv, _) = run(&req(Some("/nope"), true, Some("true")));
        assert_eq!(argv[..3], ["/bin/bash", "-c", r#"cd -- "$1""#]);
        assert_eq!(argv[4], "/nope");
    }
}

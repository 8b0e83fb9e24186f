//! `llima-box vm shell`: a shell or one command in the VM as its admin user,
//! like `limactl shell`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use llima_box_proto::paths::ADMIN_SOCKET;
use llima_box_proto::spawn::AdminRequest;

use super::Output;
use super::args::VmShellArgs;
use crate::ssh::{self, ConnectOptions, RemoteExit, Session};
use crate::timeouts;
use crate::vm::access;

/// ssh's own status for "the connection failed", distinct from any status
/// of the remote command.
const SSH_FAILURE: u8 = 255;

pub(super) fn run(
    lima_home: &Path,
    instance: &str,
    args: &VmShellArgs,
    out: &Output,
) -> Result<ExitCode> {
    let (opts, _) = access::connect_options(
        lima_home,
        instance,
        timeouts::SSH_DEADLINE.get()?,
        agent_socket(args.no_agent),
    )?;
    let cwd = std::env::current_dir().ok();
    let script = remote_script(args.workdir.as_deref(), cwd.as_deref(), &args.command)?;
    let spawn = admin_spawn(args.workdir.as_deref(), cwd.as_deref(), &args.command)?;
    out.debug(&format!(
        "ssh {}@{}: the agent's admin server, else: {script}",
        opts.user, opts.addr
    ));
    let pty = ssh::stdin_is_tty();
    let result = block_on(run_attached(
        &lima_home.join(instance),
        opts,
        &script,
        Some(spawn),
        pty,
        out,
    ))?;
    Ok(exit_code(result, out))
}

/// Runs `f` to completion on a small async runtime.
pub(super) fn block_on<T>(f: impl Future<Output = T>) -> Result<T> {
    let runtime = crate::async_runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(f);
    // Nothing left to wait for: output is flushed as it arrives.
    runtime.shutdown_background();
    Ok(result)
}

/// Runs the shell command line `script` in the guest of the instance in
/// `dir`, attached to this process's stdio (a terminal when `pty`). The
/// host agent tries `spawn` first; a direct connection runs `script`.
pub(super) async fn run_attached(
    dir: &Path,
    opts: ConnectOptions,
    script: &str,
    spawn: Option<ssh::Spawn>,
    pty: bool,
    out: &Output,
) -> Result<RemoteExit, ssh::Error> {
    // The host agent's held connection saves the handshake; without it
    // (older agent, guest not ready, stale socket) connect directly.
    let agent = opts.agent_forwarding.clone();
    match ssh::mux::run_via_mux(dir, script, spawn, pty, agent).await {
        ssh::mux::Outcome::Ran(result) => return result,
        ssh::mux::Outcome::Unavailable(why) => {
            out.debug(&format!(
                "connecting directly: {:#}",
                anyhow::Error::new(why)
            ));
        }
    }
    let session = Session::connect(opts).await?;
    session.run_interactive_or_piped(script, pty).await
}

/// The status to exit with after [`run_attached`]: the remote command's,
/// or ssh's own for a failed connection.
pub(super) fn exit_code(result: Result<RemoteExit, ssh::Error>, out: &Output) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        // The reader of our output went away (`| head`): end quietly with
        // the status of a process killed by SIGPIPE, as the pipeline expects.
        Err(ssh::Error::LocalIo(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(128 + 13)
        }
        Err(e) => {
            out.error(&anyhow::Error::new(e));
            ExitCode::from(SSH_FAILURE)
        }
    }
}

pub(super) fn agent_socket(disabled: bool) -> Option<PathBuf> {
    if disabled {
        return None;
    }
    std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// The same as [`remote_script`] for the guest agent's admin server, which
/// saves sshd's session (a fork, PAM and a shell more) under emulation.
/// Without that server (a guest that has not had `shell` yet, or an older
/// agent) the script runs through sshd.
fn admin_spawn(
    workdir: Option<&str>,
    cwd: Option<&Path>,
    command: &[String],
) -> Result<ssh::Spawn> {
    let (cwd, cwd_required) = match (workdir, cwd.and_then(Path::to_str)) {
        (Some(dir), _) => (Some(dir.to_string()), true),
        (None, dir) => (dir.map(String::from), false),
    };
    let command = match command.is_empty() {
        true => None,
        false => Some(ssh::quote_argv(command)?),
    };
    let request = AdminRequest {
        cwd,
        cwd_required,
        command,
    };
    Ok(ssh::Spawn {
        socket: ADMIN_SOCKET.to_string(),
        request: serde_json::to_value(request).expect("plain data serialises"),
        alternate: None,
    })
}

/// `cd` to the requested or current directory, then a login shell, or a
/// login shell running the exact argv, as `limactl shell` does.
fn remote_script(workdir: Option<&str>, cwd: Option<&Path>, command: &[String]) -> Result<String> {
    let cd = match (workdir, cwd.and_then(Path::to_str)) {
        (Some(dir), _) => format!("cd {} || exit 1", ssh::quote_argv(&[dir])?),
        // The host directory exists in the guest only when it is mounted.
        (None, Some(dir)) => format!("cd {} 2>/dev/null || cd", ssh::quote_argv(&[dir])?),
        (None, None) => "cd".to_string(),
    };
    let shell = if command.is_empty() {
        r#"exec "$SHELL" -l"#.to_string()
    } else {
        let line = ssh::quote_argv(command)?;
        format!(r#"exec "$SHELL" -l -c {}"#, ssh::quote_argv(&[line])?)
    };
    Ok(format!("{cd}; {shell}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_cd_then_exec_a_login_shell() {
        let s = remote_script(None, Some(Path::new("/home/u/my proj")), &[]).unwrap();
        assert_eq!(
            s,
            r#"cd '/home/u/my proj' 2>/dev/null || cd; exec "$SHELL" -l"#
        );
        let s = remote_script(Some("/tmp"), None, &["echo".into(), "a b".into()]).unwrap();
        assert_eq!(s, r#"cd /tmp || exit 1; exec "$SHELL" -l -c "echo 'a b'""#);
    }

    #[test]
    fn asks_the_admin_server_for_the_same() {
        let s = admin_spawn(
            None,
            Some(Path::new("/home/u/p")),
            &["echo".into(), "a b".into()],
        )
        .unwrap();
        assert_eq!(s.socket, ADMIN_SOCKET);
        assert_eq!(
            s.request,
            serde_json::json!({"cwd": "/home/u/p", "cwd_required": false, "command": "echo 'a b'"})
        );
        let s = admin_spawn(Some("/tmp"), None, &[]).unwrap();
        assert_eq!(
            s.request,
            serde_json::json!({"cwd": "/tmp", "cwd_required": true, "command": null})
        );
    }

    /// The doubly quoted command reaches the program as the same argv.
    #[test]
    fn command_survives_both_shells() {
        let argv: Vec<String> = ["printf", "<%s>", "it's", "$HOME", "a  b"]
            .map(String::from)
            .to_vec();
        let script = remote_script(Some("/"), None, &argv).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("SHELL", "/bin/sh")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "<it's><$HOME><a  b>");
    }
}

//! `llima-box vm shell`: a shell or one command in the VM as its admin user,
//! like `limactl shell`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Output;
use super::args::VmShellArgs;
use crate::ssh::{self, ConnectOptions, HostKeyPolicy, Session};
use crate::vm::dirs;

/// How long to wait for sshd when the VM was just started.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
/// ssh's own status for "the connection failed", distinct from any status
/// of the remote command.
const SSH_FAILURE: u8 = 255;

pub fn run(instance: &str, args: &VmShellArgs, out: &Output) -> Result<ExitCode> {
    let lima_home = dirs::lima_home().context("cannot locate $LIMA_HOME")?;
    let dir = lima_home.join(instance);
    if !dir.is_dir() {
        bail!(
            "instance {instance:?} does not exist in {}; create it with `llima-box vm start`",
            lima_home.display()
        );
    }
    if !is_running(&dir) {
        bail!("instance {instance:?} is not running; start it with `llima-box vm start`");
    }
    let port = ssh_port(&dir.join("ssh.config"))?;
    let host_key = ssh::keys::load_host_public_key(&dir.join("ssh_host_key.pub"))
        .context("the instance has no pinned host key; was it created by llima-box?")?;
    let key = ssh::keys::ensure_user_key(&lima_home)?;
    let opts = ConnectOptions {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        user: guest_user(&dir)?,
        key,
        host_key: HostKeyPolicy::Pinned(host_key),
        deadline: deadline()?,
        agent_forwarding: agent_socket(args.no_agent),
    };
    let cwd = std::env::current_dir().ok();
    let script = remote_script(args.workdir.as_deref(), cwd.as_deref(), &args.command)?;
    out.debug(&format!("ssh {}@{}: {script}", opts.user, opts.addr));
    let pty = ssh::stdin_is_tty();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let session = Session::connect(opts).await?;
        session.run_interactive_or_piped(&script, pty).await
    });
    // Nothing left to wait for: output is flushed as it arrives.
    runtime.shutdown_background();
    match result {
        Ok(exit) => Ok(ExitCode::from(exit.code())),
        // The reader of our output went away (`| head`): end quietly with
        // the status of a process killed by SIGPIPE, as the pipeline expects.
        Err(ssh::Error::LocalIo(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::from(128 + 13))
        }
        Err(e) => {
            out.error(&anyhow::Error::new(e));
            Ok(ExitCode::from(SSH_FAILURE))
        }
    }
}

/// Lima's rule: an instance runs while the host agent in `ha.pid` lives.
fn is_running(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("ha.pid")) else {
        return false;
    };
    let Some(pid) = text
        .trim()
        .parse()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // EPERM means it exists but belongs to someone else.
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// The `Port N` line of `$D/ssh.config`.
fn ssh_port(path: &Path) -> Result<u16> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}; is the instance running?", path.display()))?;
    parse_port(&text).with_context(|| format!("{} has no valid `Port N` line", path.display()))
}

fn parse_port(ssh_config: &str) -> Option<u16> {
    ssh_config.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == "Port").then(|| words.next()?.parse().ok())?
    })
}

/// `user.name` from lima.yaml, else Lima's default.
fn guest_user(dir: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Yaml {
        user: Option<User>,
    }
    #[derive(serde::Deserialize)]
    struct User {
        name: Option<String>,
    }
    let path = dir.join("lima.yaml");
    let configured = match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml::from_str::<Yaml>(&text)
            .with_context(|| format!("cannot parse {}", path.display()))?
            .user
            .and_then(|u| u.name),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(configured.unwrap_or_else(|| default_user(&host_user())))
}

fn host_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
}

/// Lima uses the host's user name when it is a valid Linux user name
/// (`^[a-z_][a-z0-9_-]*$`), else `lima`.
fn default_user(host: &str) -> String {
    let mut chars = host.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid { host } else { "lima" }.to_string()
}

fn agent_socket(disabled: bool) -> Option<PathBuf> {
    if disabled {
        return None;
    }
    std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

fn deadline() -> Result<Duration> {
    match std::env::var("LLIMA_BOX_SSH_DEADLINE_SECS") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .with_context(|| {
                format!("LLIMA_BOX_SSH_DEADLINE_SECS={v:?} is not a number of seconds")
            }),
        Err(_) => Ok(DEFAULT_DEADLINE),
    }
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
    fn port_is_read_from_the_ssh_config_lines() {
        let cfg =
            "# comment\nHost lima-x\n  IdentityFile \"/k\"\n  Hostname 127.0.0.1\n  Port 60022\n";
        assert_eq!(parse_port(cfg), Some(60022));
        assert_eq!(parse_port("Host x\n  Port nope\n"), None);
        assert_eq!(parse_port("Host x\n"), None);
    }

    #[test]
    fn default_user_follows_lima() {
        assert_eq!(default_user("alice"), "alice");
        assert_eq!(default_user("_svc-1"), "_svc-1");
        assert_eq!(default_user("Alice"), "lima");
        assert_eq!(default_user("1abc"), "lima");
        assert_eq!(default_user("a.b"), "lima");
        assert_eq!(default_user(""), "lima");
    }

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

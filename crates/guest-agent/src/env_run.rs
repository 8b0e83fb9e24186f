//! `env-run`: one command in an environment without its spawn server, the
//! host's way when that server cannot be reached (the first use in a VM
//! boot, a project whose spare claim was refused, no host agent). Run as
//! root through sudo over an SSH session: it ensures the environment
//! (when asked), enters its cgroup and namespaces and runs the command as
//! its user on the session's own stdio and terminal.
//!
//! Exit status: the command's, else 2 for bad usage, 3 when the name
//! belongs to another project, 125 for any other failure before the
//! command ran.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use llima_box_proto::names::{valid_env_name, valid_path};
use llima_box_proto::paths::{ENV_UNIT_PREFIX, HOMES_DIR, STAGE_DIR};
use llima_box_proto::settings::Settings;

use crate::ensure::{self, EnsureError};
use crate::env_server::child::Prepared;
use crate::env_server::{env_exec, within};
use crate::{list, lock, pool};

pub const USAGE: &str = "env-run NAME CWD [--ensure PROJECT HOST_UID HOST_GID] [--settings JSON] [--agent-env] -- [ARGV...]";

/// The client's variables passed on to the command (sudo keeps these).
const PASSED: [&str; 5] = ["TERM", "COLORTERM", "LANG", "LC_ALL", "LC_CTYPE"];

#[derive(Debug, PartialEq, Eq)]
struct Args<'a> {
    name: &'a str,
    cwd: &'a str,
    /// PROJECT, HOST_UID, HOST_GID.
    ensure: Option<(&'a str, u32, u32)>,
    /// The project's settings, to record with the environment.
    settings: Option<Settings>,
    agent: bool,
    argv: &'a [String],
}

fn parse(args: &[String]) -> Option<Args<'_>> {
    let [name, cwd, rest @ ..] = args else {
        return None;
    };
    let mut rest: &[String] = rest;
    let mut parsed = Args {
        name,
        cwd,
        ensure: None,
        settings: None,
        agent: false,
        argv: &[],
    };
    loop {
        match rest {
            [flag, project, uid, gid, more @ ..] if flag == "--ensure" => {
                let project = project.as_str();
                parsed.ensure = Some((project, uid.parse().ok()?, gid.parse().ok()?));
                rest = more;
            }
            [flag, json, more @ ..] if flag == "--settings" => {
                parsed.settings = Some(serde_json::from_str(json).ok()?);
                rest = more;
            }
            [flag, more @ ..] if flag == "--agent-env" => {
                parsed.agent = true;
                rest = more;
            }
            [dash, argv @ ..] if dash == "--" => {
                parsed.argv = argv;
                return Some(parsed);
            }
            _ => return None,
        }
    }
}

/// Runs the command; returns the status to exit with when it could not.
pub fn run(args: &[String]) -> u8 {
    let Some(a) = parse(args) else {
        eprintln!("usage: {USAGE}");
        return 2;
    };
    match enter(&a) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("llima-box-guest-agent env-run: {e}");
            e.status()
        }
    }
}

fn usage(why: String) -> EnsureError {
    EnsureError::Usage(why)
}

fn enter(a: &Args) -> Result<u8, EnsureError> {
    if !valid_env_name(a.name) {
        return Err(usage(format!("invalid environment name {:?}", a.name)));
    }
    if !valid_path(a.cwd) {
        return Err(usage(format!(
            "working directory must be absolute and normalised: {:?}",
            a.cwd
        )));
    }
    let agent = match a.agent {
        true => std::env::var("SSH_AUTH_SOCK")
            .ok()
            .filter(|s| !s.is_empty()),
        false => None,
    };
    if let Some(path) = &agent {
        if !valid_path(path) || !path.starts_with("/tmp/") {
            return Err(usage(format!(
                "agent socket must be an absolute path under /tmp: {path:?}"
            )));
        }
        if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return Err(usage(format!(
                "agent socket {path:?} does not exist (is agent forwarding on?)"
            )));
        }
    }
    // sudo says who the admin is.
    let admin: u32 = std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    let dir = ensure::env_dir(a.name);
    let env_lock = lock::flock(&format!("{}.lock", a.name))
        .map_err(ensure::io("cannot lock the environment"))?;
    let pid = match a.ensure {
        Some((project, host_uid, host_gid)) => {
            let pid = ensure::ensure(&ensure::Request {
                name: a.name.to_owned(),
                project: project.to_owned(),
                host_uid,
                host_gid,
                admin,
                settings: a.settings.clone(),
            })?;
            // The next new project claims a spare instead of waiting for all this.
            pool::keep(admin, host_uid, host_gid);
            pid
        }
        None => {
            if !dir.join("project").is_file() {
                return Err(usage(format!(
                    "no environment {} (ensure it first)",
                    a.name
                )));
            }
            // After a VM reboot the holder is gone; its records say how to
            // build it again.
            match list::holder_pid(&dir) {
                Some(pid) => pid,
                None => ensure::start_holder(
                    &dir,
                    &format!("{ENV_UNIT_PREFIX}{}", a.name),
                    a.name,
                    admin,
                )?,
            }
        }
    };
    let project = fs::read_to_string(dir.join("project"))
        .map_err(ensure::io("cannot read the environment's records"))?;
    let home = format!("{HOMES_DIR}/{}", a.name);
    if !within(a.cwd, &project) && !within(a.cwd, &home) {
        return Err(usage(format!(
            "working directory {:?} is outside the project {project:?} and the home {home}",
            a.cwd
        )));
    }
    let _ = fs::write(dir.join("last_used"), "");
    let unit = fs::read_to_string(dir.join("unit")).unwrap_or_default();
    drop(env_lock);

    // Into the environment's cgroup, under its limits, like the server's
    // commands.
    let procs = format!(
        "/sys/fs/cgroup/system.slice/{}.service/cgroup.procs",
        unit.trim()
    );
    if let Err(e) = fs::write(&procs, std::process::id().to_string()) {
        eprintln!(
            "llima-box-guest-agent env-run: the command runs outside the environment's limits ({procs}: {e})"
        );
    }
    // The session's agent socket, under /tmp, is reached through the
    // stage; connecting needs write permission, and only this session and
    // the admin can reach the path (its directory is 0700).
    let agent = match agent {
        Some(path) => {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
                .map_err(ensure::io("cannot open the agent socket to the command"))?;
            Some(format!("{STAGE_DIR}/host-tmp/{}", &path["/tmp/".len()..]))
        }
        None => None,
    };
    let vars: Vec<(String, String)> = PASSED
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect();
    join_namespaces(pid)?;
    let prepared = match env_exec::prepare(a.name, a.cwd, agent.as_deref(), &vars, a.argv) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("llima-box-guest-agent env-run: {why}");
            return Ok(125);
        }
    };
    // The PID namespace takes effect for children only.
    // SAFETY: this process has one thread.
    match unsafe { libc::fork() } {
        -1 => Err(ensure::io("cannot start the command")(
            std::io::Error::last_os_error(),
        )),
        0 => {
            let why = env_exec::exec(&prepared);
            eprintln!("llima-box-guest-agent env-run: {why}");
            // SAFETY: ends the child without the parent's exit handlers.
            unsafe { libc::_exit(125) }
        }
        child => Ok(wait(child, prepared)),
    }
}

/// Enters the namespaces of the environment whose first process is `pid`.
fn join_namespaces(pid: u32) -> Result<(), EnsureError> {
    // The mount namespace last: the others' files are found through /proc.
    let kinds = [
        ("ipc", libc::CLONE_NEWIPC),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ];
    let files = kinds
        .iter()
        .map(|(k, _)| fs::File::open(format!("/proc/{pid}/ns/{k}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ensure::io("cannot open the environment's namespaces"))?;
    for (f, (_, kind)) in files.iter().zip(kinds) {
        // SAFETY: a valid namespace descriptor.
        if unsafe { libc::setns(f.as_raw_fd(), kind) } != 0 {
            return Err(ensure::io("cannot enter the environment's namespaces")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Answers the command's `openat2` calls (see `env_server::supervisor`)
/// until it ends, and returns its status as a shell reports it.
fn wait(child: libc::pid_t, prepared: Prepared) -> u8 {
    // The terminal's signals reach the command; this process only waits.
    // SAFETY: setting dispositions has no memory effects.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    prepared.supervise_until(child);
    crate::sys::wait_status(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_options_then_the_command() {
        let a = args(&[
            "app",
            "/p",
            "--ensure",
            "/p",
            "1000",
            "100",
            "--settings",
            r#"{"tasksMax":99}"#,
            "--agent-env",
            "--",
            "ls",
            "--",
            "x",
        ]);
        let p = parse(&a).unwrap();
        assert_eq!((p.name, p.cwd), ("app", "/p"));
        assert_eq!(p.ensure, Some(("/p", 1000, 100)));
        assert_eq!(p.settings.and_then(|s| s.tasks_max), Some(99));
        assert!(p.agent);
        assert_eq!(p.argv, ["ls", "--", "x"]);
        let a = args(&["app", "/p", "--"]);
        let p = parse(&a).unwrap();
        assert_eq!((p.ensure, p.agent, p.argv.len()), (None, false, 0));
        for bad in [
            &["app", "/p", "ls"][..],
            &["app", "/p", "--ensure", "/p", "x", "1", "--"],
            &["app", "/p", "--ensure", "/p", "1", "--"],
            &["app", "/p", "--agent", "/tmp/s", "--", "ls"],
            &["app", "/p", "--settings", "{not json", "--"],
            &["app"],
        ] {
            assert!(parse(&args(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn bad_usage_exits_2_before_anything_is_touched() {
        assert_eq!(run(&args(&["app"])), 2);
        assert_eq!(run(&args(&["../x", "/p", "--"])), 2);
        assert_eq!(run(&args(&["app", "p", "--"])), 2);
    }
}

//! Running the programs that own what the agent cannot do by system calls
//! alone (systemd's units, the firewall, netlink through `ip`): each run
//! one way, with no terminal input, and its complaint kept for the error.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Why a program did not do its work.
#[derive(Debug)]
pub enum Failure {
    /// It could not be started (`NotFound`: it is not installed).
    Spawn(io::Error),
    /// It ran and failed; what it said on stderr.
    Status(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Spawn(e) => write!(f, "cannot start it: {e}"),
            Failure::Status(stderr) => f.write_str(stderr),
        }
    }
}

/// Runs `cmd` with `input` on its stdin (none: an empty one); its stdout
/// goes nowhere.
pub fn run(cmd: &mut Command, input: Option<&str>) -> Result<(), Failure> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(Failure::Spawn)?;
    let written = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => stdin.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child.wait_with_output().map_err(Failure::Spawn)?;
    match (written, out.status.success()) {
        (Ok(()), true) => Ok(()),
        _ => Err(Failure::Status(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )),
    }
}

/// Whether `cmd` ran and succeeded, all its output discarded.
pub fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes `cmd` run in the namespace `ns` (of `kind`, a `CLONE_NEW*` flag),
/// entered between fork and exec: the agent's own threads stay where they
/// are (a process with threads cannot change its mount namespace).
pub fn in_namespace<'a>(cmd: &'a mut Command, ns: &File, kind: libc::c_int) -> &'a mut Command {
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(move || match libc::setns(fd, kind) {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_stderr_and_status_come_back() {
        assert!(
            run(
                Command::new("sh").args(["-c", "read l && [ \"$l\" = hi ]"]),
                Some("hi\n")
            )
            .is_ok()
        );
        match run(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            None,
        ) {
            Err(Failure::Status(s)) => assert_eq!(s, "nope"),
            other => panic!("{other:?}"),
        }
        match run(&mut Command::new("/nonexistent/tool"), None) {
            Err(Failure::Spawn(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        assert!(quiet(&mut Command::new("true")) && !quiet(&mut Command::new("false")));
    }
}

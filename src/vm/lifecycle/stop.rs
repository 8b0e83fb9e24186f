//! Graceful stop (SIGINT to the host agent, which powers the guest down),
//! force stop (SIGKILL and remove the temporary files) and delete.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process, test_kill_process};

use super::LifecycleError;
use crate::vm::layout;
use crate::vm::qemu::virtiofsd;
use crate::vm::store::{self, Instance, Status};

/// How long a graceful stop may take: the agent gives the guest a grace
/// period for ACPI shutdown and then kills QEMU itself.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(190);

/// Asks the host agent to shut the guest down and waits until the
/// instance is Stopped.
pub(crate) fn stop(lima_home: &Path, name: &str, timeout: Duration) -> Result<(), LifecycleError> {
    let inst = inspect(lima_home, name)?;
    let Some(agent) = inst
        .host_agent_pid
        .filter(|_| inst.status == Status::Running)
    else {
        return Err(LifecycleError::NotRunning {
            name: name.to_string(),
            status: inst.status,
            hint: " (maybe use `llima-box vm stop --force`?)",
        });
    };
    signal(agent, Signal::INT);
    let deadline = Instant::now() + timeout;
    loop {
        let inst = inspect(lima_home, name)?;
        if inst.status == Status::Stopped {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LifecycleError::StopTimeout {
                name: name.to_string(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Kills QEMU and the host agent without a shutdown and removes every
/// pid, socket and temporary file, as `limactl stop -f` does. Logs, disks
/// and `ssh.config` stay.
pub(crate) fn force_stop(inst: &Instance) -> Result<(), LifecycleError> {
    // The agent's virtiofsd daemons are in their own process group.
    let daemons = virtiofsd::daemons_of(&inst.dir);
    let pids: Vec<u32> = [inst.driver_pid, inst.host_agent_pid]
        .into_iter()
        .flatten()
        .chain(daemons)
        .collect();
    for &pid in &pids {
        signal(pid, Signal::KILL);
    }
    // A killed QEMU holds its disk's lock and its forwarded ports until the
    // kernel has torn its memory down, which takes seconds on a loaded
    // host: a start that went ahead earlier would fail on them.
    let deadline = Instant::now() + KILL_TIMEOUT;
    for &pid in &pids {
        while alive(pid) {
            if Instant::now() > deadline {
                return Err(LifecycleError::Unkillable {
                    name: inst.name.clone(),
                    pid,
                    secs: KILL_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    remove_temporary_files(&inst.dir)
}

/// How long processes killed by [`force_stop`] may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(60);

/// Removes an instance directory: refused for a protected instance, and
/// without `force` unless it is Stopped.
pub(crate) fn delete(lima_home: &Path, name: &str, force: bool) -> Result<(), LifecycleError> {
    let inst = inspect(lima_home, name)?;
    if inst.protected {
        return Err(LifecycleError::Protected {
            name: name.to_string(),
            path: inst.dir.join(layout::PROTECTED),
        });
    }
    if !force && inst.status != Status::Stopped {
        return Err(LifecycleError::NotStopped {
            name: name.to_string(),
            status: inst.status,
        });
    }
    force_stop(&inst)?;
    std::fs::remove_dir_all(&inst.dir).map_err(|source| LifecycleError::Io {
        what: "remove",
        path: inst.dir.clone(),
        source,
    })
}

fn inspect(lima_home: &Path, name: &str) -> Result<Instance, LifecycleError> {
    match store::inspect(lima_home, name) {
        Err(store::StoreError::NotFound { .. }) => Err(LifecycleError::NotFound {
            name: name.to_string(),
        }),
        other => Ok(other?),
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        // ESRCH means it is already gone, which is what we want.
        let _ = kill_process(pid, sig);
    }
}

/// Whether `pid` still runs. A killed orphan stays a zombie until its new
/// parent reaps it, and some inits never do: a zombie counts as gone.
fn alive(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return false;
    };
    if test_kill_process(p).is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        return !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    }
    true
}

/// Lima's `TmpFileSuffixes`: what a crashed run can leave behind that
/// would confuse the next start.
fn remove_temporary_files(dir: &Path) -> Result<(), LifecycleError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(LifecycleError::Io {
                what: "read",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if layout::TMP_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LifecycleError::Io {
                        what: "remove",
                        path,
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        let kept = [layout::DISK, layout::SERIAL_LOG, layout::SSH_CONFIG];
        for f in layout::RUNNING_ONLY.iter().chain(&["x.tmp"]).chain(&kept) {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        remove_temporary_files(d.path()).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, kept);
    }
}

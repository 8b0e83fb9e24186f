//! `delete`: every process of an environment killed, then its user, home,
//! socket and records removed. The project is never touched: it is only
//! ever mounted inside the environment's namespace, which is gone first.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use llima_box_proto::names::valid_env_name;
use llima_box_proto::paths::{ENV_UNIT_PREFIX, SOCKETS_DIR, is_env_uid};

use crate::{accounts, list, lock, tools};

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("invalid environment name {0:?}")]
    Name(String),
    #[error("processes of uid {uid} are still running after being killed for {secs} s")]
    Survivors { uid: u32, secs: u64 },
    #[error("cannot remove the environment's network policy: {0}")]
    Policy(#[from] crate::guard::GuardError),
    #[error(transparent)]
    Home(#[from] crate::homes::HomesError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeleteError {
    let what = what.into();
    move |source| DeleteError::Io { what, source }
}

/// Deletes the environment `name`; `Ok(false)` when there was none.
pub fn delete(name: &str) -> Result<bool, DeleteError> {
    if !valid_env_name(name) {
        return Err(DeleteError::Name(name.to_owned()));
    }
    let _env = lock::flock(&format!("{name}.lock")).map_err(io("cannot lock the environment"))?;
    let dir = crate::ensure::env_dir(name);
    // A record `ensure` left half made.
    remove_tree(&dir.with_extension("new"))?;
    if !dir.is_dir() {
        return Ok(false);
    }
    teardown(
        &dir,
        &format!("{ENV_UNIT_PREFIX}{name}"),
        name,
        &Path::new(SOCKETS_DIR).join(format!("{name}.sock")),
    )?;
    Ok(true)
}

/// Kills everything of the environment (or spare) `name` recorded in
/// `dir`, whose unit is `unit` (or the one recorded), then removes its
/// user, its network policy, home, spawn socket and records.
pub fn teardown(dir: &Path, unit: &str, name: &str, socket: &Path) -> Result<(), DeleteError> {
    // Killing the namespace's first process kills every process in it.
    if let Some(pid) = list::holder_pid(dir) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    stop_units(dir, unit);
    if let Some(uid) = accounts::local_uid(name).filter(|u| is_env_uid(*u)) {
        kill_all_of(uid)?;
        if let Some(link) = crate::ensure::net::link(uid) {
            crate::guard::policy::forget(&link.veth)?;
        }
        accounts::remove_account(name).map_err(io("cannot remove the user"))?;
    }
    crate::homes::remove(name)?;
    match fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("cannot remove the spawn socket")(e));
        }
        _ => {}
    }
    remove_tree(dir)
}

/// Stops the holder unit recorded in `dir` and the one named `unit`, with
/// every process of theirs, and forgets their failed state; systemd owns
/// units, so this is one of the few things the agent asks another program
/// to do.
pub fn stop_units(dir: &Path, unit: &str) {
    let recorded = fs::read_to_string(dir.join("unit")).unwrap_or_default();
    for u in [recorded.trim(), unit] {
        if u.is_empty() {
            continue;
        }
        for verb in ["stop", "reset-failed"] {
            tools::quiet(Command::new("systemctl").args([verb, &format!("{u}.service")]));
        }
    }
}

/// SIGKILL to every process of `uid` until none is left (a process may
/// fork while the list is read, hence the rounds).
fn kill_all_of(uid: u32) -> Result<(), DeleteError> {
    const ROUNDS: u32 = 100;
    const PAUSE: Duration = Duration::from_millis(100);
    for _ in 0..ROUNDS {
        let pids: Vec<u32> = list::processes()
            .into_iter()
            .filter(|p| p.uid == uid)
            .map(|p| p.pid)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(PAUSE);
    }
    Err(DeleteError::Survivors {
        uid,
        secs: u64::from(ROUNDS) * PAUSE.as_millis() as u64 / 1000,
    })
}

/// Removes `path` and everything below it without following symlinks or
/// crossing into another filesystem (something mounted there is refused,
/// not emptied). A missing `path` is fine.
pub fn remove_tree(path: &Path) -> Result<(), DeleteError> {
    let top = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    };
    if !top.is_dir() {
        return fs::remove_file(path).map_err(io(format!("cannot remove {}", path.display())));
    }
    let dev = top.dev();
    let mut stack = vec![(path.to_path_buf(), false)];
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            fs::remove_dir(&dir).map_err(io(format!("cannot remove {}", dir.display())))?;
            continue;
        }
        stack.push((dir.clone(), true));
        let entries = fs::read_dir(&dir).map_err(io(format!("cannot read {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("cannot read {}", dir.display())))?;
            let p = entry.path();
            let m = entry
                .metadata()
                .map_err(io(format!("cannot read {}", p.display())))?;
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(io(format!("{} is a mount point", p.display()))(
                        std::io::Error::from(std::io::ErrorKind::ResourceBusy),
                    ));
                }
                stack.push((p, false));
            } else {
                fs::remove_file(&p).map_err(io(format!("cannot remove {}", p.display())))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_removes_everything_but_follows_no_symlink() {
        let base = std::env::temp_dir().join(format!("llb-rm-{}", std::process::id()));
        let outside = base.join("outside");
        let t = base.join("tree");
        fs::create_dir_all(t.join("a/b/c")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        fs::write(t.join("a/f"), "x").unwrap();
        fs::write(t.join("a/b/c/g"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/link")).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").exists(), "followed a symlink");
        remove_tree(&t).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn names_are_checked_before_anything_is_touched() {
        assert!(matches!(delete("../etc"), Err(DeleteError::Name(_))));
        assert!(matches!(delete(""), Err(DeleteError::Name(_))));
    }
}

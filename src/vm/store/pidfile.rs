//! Lima's pid files (`ha.pid`, `qemu.pid`): decimal pid and a newline.
//! Liveness is `kill(pid, 0)` only, as in Lima, so a reused pid looks alive.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::process::{Pid, test_kill_process};

#[derive(Debug, thiserror::Error)]
pub(crate) enum PidFileError {
    #[error("cannot read pid file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pid file {} does not hold a process id (it contains {content:?}); remove it if that process is gone",
        path.display()
    )]
    Parse { path: PathBuf, content: String },
    #[error("cannot check whether process {pid} from {} is alive", path.display())]
    Check {
        path: PathBuf,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "process {pid} from {} is still running; stop it first, or remove the file if that pid now belongs to something else",
        path.display()
    )]
    StillRunning { path: PathBuf, pid: u32 },
    #[error("cannot write pid file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The live pid recorded in `path`, or `None` when the file is missing or
/// its process has exited. A stale file is deleted, as Lima's list and
/// inspect do, so that a later start is not refused.
pub(crate) fn read_pid_file(path: &Path) -> Result<Option<u32>, PidFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PidFileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let pid = parse_pid(&text).ok_or_else(|| PidFileError::Parse {
        path: path.to_path_buf(),
        content: text.clone(),
    })?;
    let alive = liveness(test_kill_process(
        Pid::from_raw(pid as i32).expect("pid > 0"),
    ))
    .map_err(|source| PidFileError::Check {
        path: path.to_path_buf(),
        pid,
        source,
    })?;
    if alive {
        Ok(Some(pid))
    } else {
        // Another reader may have removed it first; either way it is gone.
        let _ = std::fs::remove_file(path);
        Ok(None)
    }
}

/// Records `pid` in `path` (mode 0644) unless a live process already owns
/// the file. Creation is exclusive so two racing writers cannot both win.
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> Result<(), PidFileError> {
    if let Some(existing) = read_pid_file(path)? {
        return Err(PidFileError::StillRunning {
            path: path.to_path_buf(),
            pid: existing,
        });
    }
    let write_err = |source| PidFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                // Lost a race with another writer between the check and here.
                PidFileError::StillRunning {
                    path: path.to_path_buf(),
                    pid: read_pid_file(path).ok().flatten().unwrap_or(0),
                }
            } else {
                write_err(e)
            }
        })?;
    file.write_all(format!("{pid}\n").as_bytes())
        .map_err(write_err)
}

/// Trimmed decimal, as Go's `Atoi` accepts it; pids <= 0 would make
/// `kill` address process groups, so they count as garbage.
fn parse_pid(text: &str) -> Option<u32> {
    let pid: i64 = text.trim().parse().ok()?;
    (1..=i64::from(i32::MAX))
        .contains(&pid)
        .then_some(pid as u32)
}

/// `kill(pid, 0)`: success or EPERM (someone else's process) mean alive,
/// ESRCH means gone.
fn liveness(res: Result<(), Errno>) -> std::io::Result<bool> {
    match res {
        Ok(()) | Err(Errno::PERM) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout;

    #[test]
    fn parses_like_atoi_after_trim() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid("  42 "), Some(42));
        assert_eq!(parse_pid("+7"), Some(7));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-1"), None);
        assert_eq!(parse_pid("12a"), None);
        assert_eq!(parse_pid(""), None);
    }

    #[test]
    fn eperm_is_alive_esrch_is_gone() {
        assert!(liveness(Ok(())).unwrap());
        assert!(liveness(Err(Errno::PERM)).unwrap());
        assert!(!liveness(Err(Errno::SRCH)).unwrap());
        assert!(liveness(Err(Errno::INVAL)).is_err());
    }

    #[test]
    fn missing_file_is_no_process() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_pid_file(&dir.path().join(layout::HOST_AGENT_PID)).unwrap(),
            None
        );
    }

    #[test]
    fn live_pid_is_kept_and_stale_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(layout::QEMU_PID);
        write_pid_file(&path, std::process::id()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(read_pid_file(&path).unwrap(), Some(std::process::id()));
        assert!(matches!(
            write_pid_file(&path, 1),
            Err(PidFileError::StillRunning { .. })
        ));

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&path, format!("{dead}\n")).unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), None);
        assert!(!path.exists(), "stale pid file should be deleted");
        write_pid_file(&path, 99).unwrap();
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(layout::HOST_AGENT_PID);
        std::fs::write(&path, "not a pid").unwrap();
        assert!(matches!(
            read_pid_file(&path),
            Err(PidFileError::Parse { .. })
        ));
        assert!(path.exists());
    }
}

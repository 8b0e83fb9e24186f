//! Locks between the agent's processes (flock on files in the locks
//! directory) and with the system's account tools (`lckpwdf`'s fcntl lock
//! on `/etc/.pwd.lock`). Each is released when its guard drops.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use llima_box_proto::paths::{LOCKS_DIR, STATE_DIR};

/// Holds a lock until dropped.
pub struct Guard {
    _file: File,
}

/// `LOCKS_DIR/NAME`, held exclusively (waits for the holder).
pub fn flock(name: &str) -> std::io::Result<Guard> {
    std::fs::create_dir_all(LOCKS_DIR)?;
    for dir in [STATE_DIR, LOCKS_DIR] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let f = open(&Path::new(LOCKS_DIR).join(name))?;
    // SAFETY: a valid descriptor; flock only blocks.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Guard { _file: f })
}

/// `NAME` in the locks directory reached through `state` (a descriptor of
/// the state directory, for a process in which its path is hidden), held
/// exclusively, or with `shared` alongside other shared holders, if it is
/// free: `None` when someone holds it.
pub fn try_flock_at(
    state: &impl AsRawFd,
    name: &str,
    shared: bool,
) -> std::io::Result<Option<Guard>> {
    let path = std::ffi::CString::new(format!("locks/{name}"))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated path.
    let fd = unsafe {
        libc::openat(
            state.as_raw_fd(),
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat returned a descriptor nothing else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: a valid descriptor.
    let kind = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    if unsafe { libc::flock(fd, kind | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(Guard { _file: file }))
}

/// The lock `lckpwdf(3)` takes: a write lock on the whole of
/// `/etc/.pwd.lock`, which shadow-utils' tools respect.
pub fn account_files() -> std::io::Result<Guard> {
    let f = open(Path::new("/etc/.pwd.lock"))?;
    // SAFETY: zeroed flock is valid; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: a valid descriptor and a valid flock struct.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Guard { _file: f })
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

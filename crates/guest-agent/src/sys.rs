//! The system calls the agent builds environments with, each wrapped once:
//! paths as `&str`, failures as `io::Error`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn c(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::other(format!("{s:?} contains a NUL byte")))
}

pub fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// mount(2); `None` for an absent source, type or data.
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let opt = |s: Option<&str>| s.map(c).transpose();
    let (source, fstype, data) = (opt(source)?, opt(fstype)?, opt(data)?);
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    let target = c(target)?;
    // SAFETY: NUL-terminated strings or null pointers, as mount(2) allows.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// Binds `source` on `target` (with the mounts below it when `recursive`).
pub fn bind(source: &str, target: &str, recursive: bool) -> io::Result<()> {
    let rec = if recursive { libc::MS_REC } else { 0 };
    mount(Some(source), target, None, libc::MS_BIND | rec, None)
}

/// Binds what `source` is open on (a file or directory, O_PATH will do)
/// on `target`, with no path in between: unlike a bind from
/// `/proc/self/fd/N`, it works where `/proc` is another PID namespace's.
pub fn bind_fd(source: &impl AsRawFd, target: &str) -> io::Result<()> {
    let empty = c"";
    // SAFETY: a valid descriptor and an empty NUL-terminated path.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            empty.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a descriptor nothing else owns.
    let tree = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(tree as i32) };
    let target = c(target)?;
    // SAFETY: a valid descriptor, an empty path and a NUL-terminated target.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn detach(target: &str) -> io::Result<()> {
    let t = c(target)?;
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) })
}

/// The directory at `path`, opened by one walk of the kernel that follows
/// no symbolic link: what a mount from `/proc/self/fd/N` then takes is
/// exactly the path named, whatever is put in its place meanwhile. `Ok(None)`
/// when a link was on the way.
pub fn open_dir_exact(path: &str) -> io::Result<Option<OwnedFd>> {
    let dir = fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)?;
    let dir = OwnedFd::from(dir);
    let reached = fs::read_link(fd_path(&dir))?;
    Ok((reached == Path::new(path)).then_some(dir))
}

/// The name of an open descriptor that mount(2) and friends accept.
pub fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Waits for the child `pid` and returns its status as a shell reports
/// it (128 + the signal that killed it); 125 when it cannot be waited for.
pub fn wait_status(pid: libc::pid_t) -> u8 {
    let mut status = 0;
    // SAFETY: waits for this process's own child; status is an out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 125;
        }
    }
    if libc::WIFSIGNALED(status) {
        128u8.wrapping_add(libc::WTERMSIG(status) as u8)
    } else {
        libc::WEXITSTATUS(status) as u8
    }
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) })
}

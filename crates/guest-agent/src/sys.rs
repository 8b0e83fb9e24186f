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
    move_tree(&clone_tree(source)?, target)
}

/// Binds `source` on `target` through the ID mapping of the user namespace
/// `userns`: a file owned on disk by an ID its map has inside shows as
/// owned by the ID it maps to outside, and files made through the mount
/// land on disk with the inside ID. The filesystem must allow it (virtiofs
/// from Linux 6.12 with a daemon that says so; 9p never does).
pub fn bind_idmapped(source: &impl AsRawFd, target: &str, userns: &OwnedFd) -> io::Result<()> {
    /// `struct mount_attr` of <linux/mount.h>.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let tree = clone_tree(source)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: a detached tree we own, an empty path and a mount_attr of the
    // size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    move_tree(&tree, target)
}

/// A detached copy of the mount at `source` (open_tree with
/// OPEN_TREE_CLONE).
fn clone_tree(source: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and an empty NUL-terminated path.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(tree as i32) })
}

/// Attaches a detached tree at `target`.
fn move_tree(tree: &OwnedFd, target: &str) -> io::Result<()> {
    let target = c(target)?;
    // SAFETY: a valid descriptor, an empty path and a NUL-terminated target.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
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

/// A user namespace whose maps are `uid_map` and `gid_map` (lines of
/// "INSIDE OUTSIDE COUNT"), for [`bind_idmapped`]. A child made for the
/// purpose enters it, is given the maps and exits; the descriptor keeps
/// the namespace. The caller must have no other thread.
pub fn user_namespace(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    let (entered_r, entered_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    // SAFETY: one thread; the child only makes system calls and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop((entered_r, done_w));
        let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
        let byte = [u8::from(rc == 0)];
        // SAFETY: plain reads and writes on pipes this child owns, then _exit.
        unsafe {
            libc::write(entered_w.as_raw_fd(), byte.as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(done_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0)
        }
    }
    drop((entered_w, done_r));
    let result = (|| {
        let mut byte = [0u8; 1];
        let mut r = fs::File::from(entered_r);
        io::Read::read_exact(&mut r, &mut byte)?;
        if byte[0] != 1 {
            return Err(io::Error::other(
                "the child could not make a user namespace",
            ));
        }
        fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        Ok(OwnedFd::from(fs::File::open(format!(
            "/proc/{pid}/ns/user"
        ))?))
    })();
    drop(done_w);
    wait_status(pid);
    result
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is an out-array of two.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two descriptors nothing else owns.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    })
}

/// A descriptor that becomes readable when process `pid` ends.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: a system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        OwnedFd::from_raw_fd(fd as libc::c_int)
    })
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

/// fstatat(2) of `name` in the directory `dir`, not following a link at
/// its end.
pub fn lstat_at(dir: &impl AsRawFd, name: &std::ffi::CStr) -> io::Result<libc::stat> {
    // SAFETY: plain data filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, name and stat buffer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The mapping runs both ways: a file the host user owns on disk shows
    /// as the environment user's, one made through the mount lands as the
    /// host user's, and an owner outside the map shows as nobody. On a
    /// tmpfs of a private mount namespace, in a child (the test runner has
    /// threads; the namespace must not leak into the other tests).
    #[test]
    #[ignore = "needs root: run through tests/run or with --include-ignored"]
    fn an_idmapped_bind_shows_and_stores_the_mapped_owner() {
        // SAFETY: the child only calls what the test needs, then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let result = std::panic::catch_unwind(|| {
                unshare(libc::CLONE_NEWNS).unwrap();
                mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None).unwrap();
                let base = "/tmp/llima-box-idmap-test";
                let (disk, seen) = (format!("{base}/disk"), format!("{base}/seen"));
                fs::create_dir_all(base).unwrap();
                mount(Some("t"), base, Some("tmpfs"), 0, None).unwrap();
                fs::create_dir(&disk).unwrap();
                fs::create_dir(&seen).unwrap();
                std::os::unix::fs::chown(&disk, Some(1001), Some(1001)).unwrap();
                fs::write(format!("{disk}/host"), "h").unwrap();
                std::os::unix::fs::chown(format!("{disk}/host"), Some(1001), Some(1001)).unwrap();
                fs::write(format!("{disk}/root"), "r").unwrap();

                let ns = user_namespace("1001 60001 1\n", "1001 60002 1\n").unwrap();
                let dir = open_dir_exact(&disk).unwrap().unwrap();
                bind_idmapped(&dir, &seen, &ns).unwrap();
                let owner = |p: &str| {
                    let m = fs::metadata(p).unwrap();
                    (m.uid(), m.gid())
                };
                assert_eq!(owner(&format!("{seen}/host")), (60001, 60002));
                assert_eq!(owner(&format!("{seen}/root")), (65534, 65534));
                // SAFETY: changes this child's own filesystem ids.
                unsafe {
                    libc::setfsgid(60002);
                    libc::setfsuid(60001);
                }
                fs::write(format!("{seen}/made"), "m").unwrap();
                assert_eq!(owner(&format!("{disk}/made")), (1001, 1001));
            });
            // SAFETY: ends the child without running the runner's handlers.
            unsafe { libc::_exit(i32::from(result.is_err())) }
        }
        assert_eq!(
            wait_status(pid),
            0,
            "the child's assertions failed (see above)"
        );
    }
}

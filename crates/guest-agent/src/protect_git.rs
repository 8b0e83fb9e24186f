//! Git metadata that the host executes, read-only inside an environment.
//! The project is shared with the host, and git on the host obeys a
//! repository's `.git/config` (fsmonitor, pager, filters, aliases...) and
//! runs its hooks: an agent that can write them runs code on the host at
//! the user's next `git status`. In the environment's mount namespace the
//! repositories' `config`, `config.worktree` and `hooks` are bind-mounted
//! read-only over themselves; objects, refs, the index and logs stay
//! writable, so commits, branches, fetch and push keep working (what
//! would write the config, such as `push -u`, fails).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use llima_box_proto::git::NOT_REPOSITORIES;

use crate::sys;

/// What git runs or reads settings from, in a repository's git directory.
const PROTECTED: [&str; 3] = ["config", "config.worktree", "hooks"];
/// Repositories looked for: the project's own and those nested this many
/// directory levels below it (a deeper walk would cost a whole tree of
/// directory reads through the share under emulation).
const NESTED_DEPTH: usize = 2;

/// The repositories to protect in `scan` (open, see [`open_dir`]): the
/// project itself, seen another way where that is cheaper (a directory
/// read through bindfs costs several times as much under emulation).
pub fn repositories(scan: &OwnedFd) -> Vec<PathBuf> {
    git_dirs(scan, NESTED_DEPTH)
}

/// [`protect`] of the repositories found in the directory at `scan` (see
/// [`open_dir`] and [`repositories`]).
pub fn protect_found(project: &Path, scan: &Path) -> io::Result<Vec<PathBuf>> {
    protect(project, &repositories(&open_dir(scan)?))
}

/// Makes the git metadata of `repositories` (relative to `project`, see
/// [`repositories`]) read-only in the calling process's mount namespace;
/// returns what it protected. What is bound is opened in `project`.
pub fn protect(project: &Path, repositories: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for rel in repositories {
        for name in PROTECTED {
            let path = project.join(rel).join(name);
            if read_only_bind(&path)? {
                done.push(path);
            }
        }
    }
    Ok(done)
}

/// Undoes [`protect`] for `project` in the calling process's mount
/// namespace: the repositories' metadata writable again.
pub fn unprotect(project: &Path) -> io::Result<()> {
    for rel in git_dirs(&open_dir(project)?, NESTED_DEPTH) {
        for name in PROTECTED {
            let path = project.join(&rel).join(name);
            // Each protect stacked one bind; not a mount point: EINVAL.
            while sys::detach(path.to_str().unwrap_or_default()).is_ok() {}
        }
    }
    Ok(())
}

/// The `.git` directories (not links) in the open directory `dir` and up
/// to `depth` levels below, relative to it, not looking into dependencies
/// and build output. Each directory is reached from its parent's
/// descriptor, never by a path: through a share, the kernel asks the host
/// about every component of a path each time it walks one (virtiofs
/// caches nothing here), at a millisecond or more a question under
/// emulation.
fn git_dirs(dir: &OwnedFd, depth: usize) -> Vec<PathBuf> {
    if depth == 0 {
        return match is_dir_at(dir, c".git") {
            true => vec![PathBuf::from(".git")],
            false => Vec::new(),
        };
    }
    let mut found = Vec::new();
    for (name, kind) in entries(dir).unwrap_or_default() {
        let is_dir = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => is_dir_at(dir, &name),
            _ => false,
        };
        let text = name.to_string_lossy();
        if !is_dir || NOT_REPOSITORIES.contains(&text.as_ref()) {
            continue;
        }
        if text == ".git" {
            found.push(PathBuf::from(".git"));
        } else if let Ok(sub) = open_at(dir, &name) {
            let at = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
            found.extend(git_dirs(&sub, depth - 1).into_iter().map(|p| at.join(p)));
        }
    }
    found
}

/// The directory at `path`, open for reading its entries; a link at its
/// end is refused.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    Ok(dir.into())
}

/// The directory `dir` is open on (with `O_PATH` too), open for reading
/// its entries, without looking it up again.
pub fn reopen(dir: &OwnedFd) -> io::Result<OwnedFd> {
    open_at(dir, c".")
}

/// The directory `name` in `dir`, the same way.
fn open_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `name` in `dir` is a directory (not a link to one).
fn is_dir_at(dir: &OwnedFd, name: &CStr) -> bool {
    sys::lstat_at(dir, name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The names in `dir` (without `.` and `..`) and their types as the
/// directory gives them (`DT_*`).
fn entries(dir: &OwnedFd) -> io::Result<Vec<(CString, u8)>> {
    // A descriptor of its own: closedir closes it.
    let fd = dir.try_clone()?.into_raw_fd();
    // SAFETY: a directory descriptor this function owns from here on.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: a valid stream; the entry is read before the next call.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, kind) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        if name != c"." && name != c".." {
            names.push((name.to_owned(), kind));
        }
    }
    // SAFETY: the stream opened above, closed once.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// Binds `path` read-only over itself when it is a regular file or a
/// directory (not a link: what it would lead to is not the repository's);
/// false when there is nothing there.
fn read_only_bind(path: &Path) -> io::Result<bool> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_dir()) {
        return Ok(false);
    }
    // What was opened is what gets bound, whatever the path leads to now.
    let target = path
        .to_str()
        .ok_or_else(|| io::Error::other("a path that is not UTF-8"))?;
    let flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    sys::bind_fd(&file, target)
        .and_then(|()| sys::mount(None, target, None, flags, None))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot make {} read-only: {e}", path.display()),
            )
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_projects_and_nested_repositories_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in [
            ".git/hooks",
            "a/.git",
            "a/b/.git",
            "a/b/c/.git",
            "x/y/z",
            "node_modules/m/.git",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        // A link named .git is not a repository of the project.
        std::os::unix::fs::symlink("/etc", p.join("x/.git")).unwrap();
        // Nor are the repositories a link to a directory leads to.
        std::os::unix::fs::symlink(p.join("a"), p.join("l")).unwrap();
        let mut found = git_dirs(&open_dir(p).unwrap(), NESTED_DEPTH);
        found.sort();
        assert_eq!(found, [".git", "a/.git", "a/b/.git"].map(PathBuf::from));
    }
}

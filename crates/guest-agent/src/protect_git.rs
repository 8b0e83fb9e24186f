//! Git metadata that the host executes, read-only inside an environment.
//! The project is shared with the host, and git on the host obeys a
//! repository's `.git/config` (fsmonitor, pager, filters, aliases...) and
//! runs its hooks: an agent that can write them runs code on the host at
//! the user's next `git status`. In the environment's mount namespace the
//! repositories' `config`, `config.worktree` and `hooks` are bind-mounted
//! read-only over themselves; objects, refs, the index and logs stay
//! writable, so commits, branches, fetch and push keep working (what
//! would write the config, such as `push -u`, fails).

use std::fs::File;
use std::io;
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

/// Makes the git metadata of the repositories in `project` read-only in
/// the calling process's mount namespace; returns what it protected. The
/// repositories are looked for in `scan`, the same directory seen another
/// way (without the ownership remap: a directory read through FUSE costs
/// several times as much under emulation); what is bound is opened in
/// `project`.
pub fn protect(project: &Path, scan: &Path) -> io::Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for git_dir in git_dirs(scan, NESTED_DEPTH) {
        let Ok(rel) = git_dir.strip_prefix(scan) else {
            continue;
        };
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
    for git_dir in git_dirs(project, NESTED_DEPTH) {
        for name in PROTECTED {
            let path = git_dir.join(name);
            // Each protect stacked one bind; not a mount point: EINVAL.
            while sys::detach(path.to_str().unwrap_or_default()).is_ok() {}
        }
    }
    Ok(())
}

/// `.git` directories (not links) in `dir` and up to `depth` levels below,
/// not looking into dependencies and build output.
fn git_dirs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let git = dir.join(".git");
    if std::fs::symlink_metadata(&git).is_ok_and(|m| m.is_dir()) {
        found.push(git);
    }
    if depth == 0 {
        return found;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name();
        let skipped = name == ".git" || NOT_REPOSITORIES.iter().any(|n| name == *n);
        if is_dir && !skipped {
            found.extend(git_dirs(&entry.path(), depth - 1));
        }
    }
    found
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
        let mut found = git_dirs(p, NESTED_DEPTH);
        found.sort();
        assert_eq!(
            found,
            [p.join(".git"), p.join("a/.git"), p.join("a/b/.git")]
        );
    }
}

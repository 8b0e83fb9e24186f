//! Which directories may become a project. An environment sees its project
//! read-write, so a project that is the home directory, or that contains
//! the VM's own files or the user's keys, hands all of that to the agent;
//! and a path that reaches its directory through a symlink may have been
//! planted by an agent in an earlier project (`proj/sub -> ..`).

use std::path::{Component, Path, PathBuf};

use super::Error;

/// Directories below the home that no project may contain.
const SENSITIVE_IN_HOME: [&str; 4] = [".ssh", ".gnupg", ".aws", ".config"];

/// What the user's home and the VM's files are, for [`check`].
pub(crate) struct Context<'a> {
    pub home: &'a Path,
    pub lima_home: &'a Path,
}

/// The outcome of a selection that is not refused outright.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    Clean,
    /// The directory named is not the one used; ask, or refuse without a
    /// person to ask.
    ThroughSymlink {
        logical: PathBuf,
    },
}

/// Checks `canonical` (symlinks resolved) as the project named by
/// `logical` (the path as the user wrote it or `$PWD`, made absolute).
pub(crate) fn check(logical: &Path, canonical: &Path, cx: &Context) -> Result<Selection, Error> {
    let refuse = |reason: String| Error::SensitiveProject {
        path: canonical.to_path_buf(),
        reason,
    };
    let home = resolve(cx.home);
    if canonical == home {
        return Err(refuse(
            "it is your home directory: the environment would see every file in it".into(),
        ));
    }
    let sensitive = std::iter::once(cx.lima_home.to_path_buf())
        .chain(SENSITIVE_IN_HOME.iter().map(|d| cx.home.join(d)));
    for s in sensitive {
        let s = resolve(&s);
        if s.starts_with(canonical) {
            return Err(refuse(format!("it contains {}", s.display())));
        }
    }
    let logical = normalise(logical);
    // A symlinked prefix (/home -> /usr/home) keeps the directory's own
    // name; a link that leads elsewhere, or up, does not.
    let renamed = canonical.file_name() != logical.file_name();
    let upward = logical.starts_with(canonical) && logical != canonical;
    if renamed || upward {
        return Ok(Selection::ThroughSymlink { logical });
    }
    Ok(Selection::Clean)
}

/// `path` with symlinks resolved where it exists, else as given.
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `.` and `..` taken out lexically, as a shell's logical `cd` does.
pub(crate) fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree {
        _dir: tempfile::TempDir,
        home: PathBuf,
        lima: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(dir.path()).unwrap().join("home");
        for d in [
            "src/app/sub",
            "src/other",
            ".ssh",
            ".lima",
            "lima-elsewhere",
        ] {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("..", home.join("src/app/up")).unwrap();
        std::os::unix::fs::symlink("../other", home.join("src/app/side")).unwrap();
        let lima = home.join(".lima");
        Tree {
            _dir: dir,
            home,
            lima,
        }
    }

    fn check_path(t: &Tree, logical: &Path) -> Result<Selection, Error> {
        let cx = Context {
            home: &t.home,
            lima_home: &t.lima,
        };
        check(logical, &std::fs::canonicalize(logical).unwrap(), &cx)
    }

    #[test]
    fn an_ordinary_project_is_clean() {
        let t = tree();
        assert_eq!(
            check_path(&t, &t.home.join("src/app")).unwrap(),
            Selection::Clean
        );
        assert_eq!(
            check_path(&t, &t.home.join("src/app/./sub/..")).unwrap(),
            Selection::Clean
        );
    }

    #[test]
    fn the_home_and_what_holds_keys_or_the_vm_are_refused() {
        let t = tree();
        for (p, why) in [
            (t.home.clone(), "home directory"),
            (t.home.join("src/app/up/.."), "home directory"),
            (t.home.join(".ssh"), ".ssh"),
            (t.home.join(".lima"), ".lima"),
        ] {
            let e = check_path(&t, &p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
            assert!(e.contains("--force"), "{e}");
        }
        // $LIMA_HOME outside the home counts too.
        let cx = Context {
            home: &t.home,
            lima_home: &t.home.join("lima-elsewhere"),
        };
        let parent = t.home.clone();
        let e = check(&parent, &parent, &cx).unwrap_err().to_string();
        assert!(e.contains("home directory"), "{e}");
    }

    #[test]
    fn a_symlink_that_leads_up_or_aside_needs_confirmation() {
        let t = tree();
        // proj/up -> .. gives src/: not refused by itself, but not the
        // directory named either.
        let up = t.home.join("src/app/up");
        assert_eq!(
            check_path(&t, &up).unwrap(),
            Selection::ThroughSymlink {
                logical: up.clone()
            }
        );
        let side = t.home.join("src/app/side");
        assert!(matches!(
            check_path(&t, &side).unwrap(),
            Selection::ThroughSymlink { .. }
        ));
    }

    #[test]
    fn normalise_is_lexical() {
        assert_eq!(normalise(Path::new("/a/./b/../c/")), Path::new("/a/c"));
        assert_eq!(normalise(Path::new("/..")), Path::new("/"));
    }
}

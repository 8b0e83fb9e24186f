//! Whether the files llima-box trusts under `$LIMA_HOME` can only have been
//! put there by you: the key it logs into the guest with
//! (`_config/user`), the guest's pinned host key and `known_hosts`, and the
//! directories holding them and the instance's sockets.
//!
//! Someone else who could write any of these could read your identity, or
//! swap the pinned host key and the socket the CLI talks to, and so get
//! between you and the VM. The rules follow what sshd's `StrictModes`
//! checks before it trusts `authorized_keys`:
//!
//! - `$LIMA_HOME`, `_config` and the instance directory are owned by you and
//!   writable by nobody else. Readable is fine: Lima itself creates them
//!   0755.
//! - A private key is owned by you and neither readable nor writable by
//!   anyone else (0600 or stricter), as `ssh` demands of its own keys.
//! - A public file (`user.pub`, the host key's public half, `known_hosts`)
//!   is owned by you and writable by nobody else.
//! - Every directory above those, up to `/`, is owned by you or root and
//!   writable by nobody else, unless it has the sticky bit (`/tmp`), where
//!   others may add entries but not rename or remove yours.
//!
//! Symlinks are followed and the rules applied to the real path, every
//! directory on it included: a link is then safe exactly when where it
//! leads is, whoever made it (in a directory only you can write, only you
//! or root could have). A missing file or directory passes, as llima-box
//! creates it private, but the directories it would be created in are
//! checked.
//!
//! Running as root, ownership is not checked, only the modes: root can read
//! and change every file anyway, and every command that uses these files
//! refuses to run as root.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::vm::{dirs, layout, store};

const GROUP_OTHER_WRITE: u32 = 0o022;
const GROUP_OTHER_ANY: u32 = 0o077;
const STICKY: u32 = 0o1000;

/// What a path must be, and so which rule applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    PrivateKey,
    PublicFile,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot check the owner and mode of {}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not a {expected}", path.display())]
    WrongType {
        path: PathBuf,
        expected: &'static str,
    },

    #[error(
        "{} is owned by uid {owner}, not by you (uid {uid}), so that user could replace the keys \
         llima-box trusts; if it is yours, take it back with `{fix}`",
        path.display()
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        uid: u32,
        fix: String,
    },

    #[error(
        "{}, a directory above {}, is owned by uid {owner}, who could replace what is in it; \
         set LIMA_HOME to a directory whose parents belong to you or root",
        path.display(),
        below.display()
    )]
    ParentNotOwned {
        path: PathBuf,
        below: PathBuf,
        owner: u32,
    },

    #[error(
        "{} is writable by {who} (mode {mode:04o}), who could replace the keys llima-box \
         trusts; fix: `{fix}`",
        path.display()
    )]
    Writable {
        path: PathBuf,
        who: &'static str,
        mode: u32,
        fix: String,
    },

    #[error(
        "the private key {} is accessible by {who} (mode {mode:04o}); it must be readable by you \
         alone, as ssh also requires; fix: `{fix}`",
        path.display()
    )]
    KeyExposed {
        path: PathBuf,
        who: &'static str,
        mode: u32,
        fix: String,
    },
}

/// Checks `$LIMA_HOME`, `_config` with the user's key pair and, when
/// `instance` is a valid name, that instance's directory with its host key
/// and `known_hosts`: everything a command trusts before it reads a key or
/// connects to a socket there.
pub(crate) fn check_home(lima_home: &Path, instance: Option<&str>) -> Result<(), TrustError> {
    let config = dirs::config_dir(lima_home);
    check(lima_home, Kind::Dir)?;
    check(&config, Kind::Dir)?;
    check(&config.join("user"), Kind::PrivateKey)?;
    check(&config.join("user.pub"), Kind::PublicFile)?;
    // An invalid name is refused later with its own message.
    if let Some(dir) = instance.and_then(|n| store::instance_dir(lima_home, n).ok()) {
        check(&dir, Kind::Dir)?;
        check(&dir.join(layout::HOST_KEY), Kind::PrivateKey)?;
        check(&dir.join(layout::HOST_KEY_PUB), Kind::PublicFile)?;
        check(&dir.join(layout::KNOWN_HOSTS), Kind::PublicFile)?;
    }
    Ok(())
}

/// Checks one path by `kind` (see the module's rules); a missing path
/// passes if the directory it would be created in does.
pub(crate) fn check(path: &Path, kind: Kind) -> Result<(), TrustError> {
    let uid = rustix::process::geteuid().as_raw();
    match std::fs::canonicalize(path) {
        Ok(real) => {
            check_target(&real, kind, uid)?;
            check_parents(&real, uid)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(existing) = path.ancestors().skip(1).find_map(|a| {
                let a = if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                };
                std::fs::canonicalize(a).ok()
            }) else {
                return Ok(());
            };
            check_parent(&existing, path, uid)?;
            check_parents(&existing, uid)
        }
        Err(source) => Err(TrustError::Stat {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn lstat(path: &Path) -> Result<Metadata, TrustError> {
    std::fs::symlink_metadata(path).map_err(|source| TrustError::Stat {
        path: path.to_path_buf(),
        source,
    })
}

fn check_target(real: &Path, kind: Kind, uid: u32) -> Result<(), TrustError> {
    let meta = lstat(real)?;
    let (is_right_type, expected) = match kind {
        Kind::Dir => (meta.is_dir(), "directory"),
        Kind::PrivateKey | Kind::PublicFile => (meta.is_file(), "regular file"),
    };
    if !is_right_type {
        return Err(TrustError::WrongType {
            path: real.to_path_buf(),
            expected,
        });
    }
    if uid != 0 && meta.uid() != uid {
        return Err(TrustError::NotOwned {
            path: real.to_path_buf(),
            owner: meta.uid(),
            uid,
            fix: format!("sudo chown \"$(id -un)\" {}", quote(real)),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if kind == Kind::PrivateKey && mode & GROUP_OTHER_ANY != 0 {
        return Err(TrustError::KeyExposed {
            path: real.to_path_buf(),
            who: who(mode, GROUP_OTHER_ANY),
            mode,
            fix: format!("chmod 600 {}", quote(real)),
        });
    }
    if mode & GROUP_OTHER_WRITE != 0 {
        return Err(writable(real, &meta, uid));
    }
    Ok(())
}

/// sshd's walk up the path: a directory above can swap what is below it.
fn check_parents(real: &Path, uid: u32) -> Result<(), TrustError> {
    for parent in real.ancestors().skip(1) {
        check_parent(parent, real, uid)?;
    }
    Ok(())
}

fn check_parent(parent: &Path, below: &Path, uid: u32) -> Result<(), TrustError> {
    let meta = lstat(parent)?;
    let owner = meta.uid();
    if uid != 0 && owner != 0 && owner != uid {
        return Err(TrustError::ParentNotOwned {
            path: parent.to_path_buf(),
            below: below.to_path_buf(),
            owner,
        });
    }
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
        return Err(writable(parent, &meta, uid));
    }
    Ok(())
}

fn writable(path: &Path, meta: &Metadata, uid: u32) -> TrustError {
    let mode = meta.permissions().mode() & 0o7777;
    // A directory of root's needs root to fix; say so rather than let the
    // suggested command fail.
    let sudo = if meta.uid() != uid { "sudo " } else { "" };
    TrustError::Writable {
        path: path.to_path_buf(),
        who: who(mode, GROUP_OTHER_WRITE),
        mode,
        fix: format!("{sudo}chmod go-w {}", quote(path)),
    }
}

/// Who besides the owner `mode` lets in, among the bits of `mask`.
fn who(mode: u32, mask: u32) -> &'static str {
    match (mode & mask & 0o070 != 0, mode & mask & 0o007 != 0) {
        (true, true) => "its group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

/// The path as a shell word, so the suggested command can be pasted.
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    shlex::try_quote(&text).map_or_else(|_| text.to_string(), |q| q.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A private `$LIMA_HOME` as llima-box makes it, with an instance.
    fn home() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().canonicalize().unwrap().join("lima");
        let config = home.join("_config");
        let inst = home.join("vm");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(&inst).unwrap();
        for (p, mode) in [
            (config.join("user"), 0o600),
            (config.join("user.pub"), 0o644),
            (inst.join(layout::HOST_KEY), 0o600),
            (inst.join(layout::HOST_KEY_PUB), 0o644),
            (inst.join(layout::KNOWN_HOSTS), 0o644),
        ] {
            std::fs::write(&p, "key\n").unwrap();
            chmod(&p, mode);
        }
        for d in [&home, &config, &inst] {
            chmod(d, 0o700);
        }
        (t, home)
    }

    #[test]
    fn a_private_home_passes_and_lima_style_0755_directories_too() {
        let (_t, home) = home();
        check_home(&home, Some("vm")).unwrap();
        for d in [home.clone(), home.join("_config"), home.join("vm")] {
            chmod(&d, 0o755);
        }
        check_home(&home, Some("vm")).unwrap();
    }

    #[test]
    fn group_or_other_writable_directories_are_refused_with_the_fix() {
        let (_t, home) = home();
        for (dir, mode, who) in [
            (home.join("_config"), 0o770, "its group"),
            (home.clone(), 0o757, "others"),
            (home.join("vm"), 0o777, "its group and others"),
        ] {
            chmod(&dir, mode);
            let err = check_home(&home, Some("vm")).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, TrustError::Writable { path, .. } if *path == dir),
                "{err:?}"
            );
            assert!(text.contains(who), "{text}");
            assert!(
                text.contains(&format!("`chmod go-w {}`", dir.display())),
                "{text}"
            );
            chmod(&dir, 0o700);
        }
        check_home(&home, Some("vm")).unwrap();
    }

    #[test]
    fn private_keys_must_be_0600_and_public_files_not_writable() {
        let (_t, home) = home();
        let user = home.join("_config/user");
        for mode in [0o644, 0o640, 0o604, 0o620] {
            chmod(&user, mode);
            let err = check_home(&home, None).unwrap_err();
            assert!(
                matches!(err, TrustError::KeyExposed { .. }),
                "{mode:o}: {err:?}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("`chmod 600 {}`", user.display())),
                "{err}"
            );
        }
        chmod(&user, 0o400);
        check_home(&home, None).unwrap();

        let host_key = home.join("vm").join(layout::HOST_KEY);
        chmod(&host_key, 0o640);
        assert!(matches!(
            check_home(&home, Some("vm")),
            Err(TrustError::KeyExposed { .. })
        ));
        chmod(&host_key, 0o600);

        let known = home.join("vm").join(layout::KNOWN_HOSTS);
        chmod(&known, 0o664);
        assert!(matches!(
            check_home(&home, Some("vm")),
            Err(TrustError::Writable { .. })
        ));
        chmod(&known, 0o644);
        check_home(&home, Some("vm")).unwrap();
    }

    #[test]
    fn a_writable_parent_is_refused_unless_sticky() {
        let (t, home) = home();
        let parent = t.path().canonicalize().unwrap();
        chmod(&parent, 0o777);
        let err = check_home(&home, None).unwrap_err();
        assert!(
            matches!(&err, TrustError::Writable { path, .. } if *path == parent),
            "{err:?}"
        );
        // A home not created yet is refused in such a place too.
        let missing = parent.join("not-yet");
        assert!(matches!(
            check(&missing.join("_config"), Kind::Dir),
            Err(TrustError::Writable { .. })
        ));
        chmod(&parent, 0o1777);
        check_home(&home, None).unwrap();
        check(&missing.join("_config"), Kind::Dir).unwrap();
    }

    #[test]
    fn symlinks_are_judged_by_where_they_lead() {
        let (t, home) = home();
        let root = t.path().canonicalize().unwrap();
        // A key kept elsewhere, in a private directory: fine.
        let keys = root.join("keys");
        std::fs::create_dir(&keys).unwrap();
        chmod(&keys, 0o700);
        let key = keys.join("id");
        std::fs::write(&key, "key\n").unwrap();
        chmod(&key, 0o600);
        let user = home.join("_config/user");
        std::fs::remove_file(&user).unwrap();
        std::os::unix::fs::symlink(&key, &user).unwrap();
        check_home(&home, None).unwrap();
        // The same key in a directory others may write: refused, naming it.
        chmod(&keys, 0o777);
        let err = check_home(&home, None).unwrap_err();
        assert!(
            matches!(&err, TrustError::Writable { path, .. } if *path == keys),
            "{err:?}"
        );
        // A link to something that is not a file.
        chmod(&keys, 0o700);
        std::fs::remove_file(&user).unwrap();
        std::os::unix::fs::symlink(&keys, &user).unwrap();
        assert!(matches!(
            check_home(&home, None),
            Err(TrustError::WrongType { .. })
        ));
    }

    #[test]
    fn missing_files_pass_as_they_will_be_created_private() {
        let t = tempfile::tempdir().unwrap();
        check_home(&t.path().join("lima"), Some("vm")).unwrap();
    }

    /// Ownership: as a normal user, a directory of root's is not yours; as
    /// root, ownership is not checked (see the module), so a directory given
    /// to another uid still passes while its mode is right.
    #[test]
    fn directories_must_be_yours() {
        let uid = rustix::process::geteuid().as_raw();
        if uid == 0 {
            let t = tempfile::tempdir().unwrap();
            std::os::unix::fs::chown(t.path(), Some(65534), Some(65534)).unwrap();
            check(t.path(), Kind::Dir).unwrap();
            chmod(t.path(), 0o770);
            assert!(matches!(
                check(t.path(), Kind::Dir),
                Err(TrustError::Writable { .. })
            ));
        } else {
            let err = check(Path::new("/"), Kind::Dir).unwrap_err();
            assert!(
                matches!(err, TrustError::NotOwned { owner: 0, .. }),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("sudo chown \"$(id -un)\" /"),
                "{err}"
            );
        }
    }
}

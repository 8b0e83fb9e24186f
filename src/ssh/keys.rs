//! The user identity `$LIMA_HOME/_config/user` and the guest's pinned host
//! key, in the same files and formats limactl uses.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};

pub(crate) use russh::keys::PublicKey;

use super::Error;
use crate::vm::trust;

/// Lima's comment on the key it generates (`ssh-keygen -C lima`).
const KEY_COMMENT: &str = "lima";

/// The private key llima-box (or limactl) logs into the guest with.
#[derive(Clone)]
pub struct KeyPair {
    pub(crate) private: Arc<PrivateKey>,
    path: PathBuf,
}

/// Never prints key material, only where the key is and which it is.
impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl KeyPair {
    /// Where the private key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn public_key(&self) -> &PublicKey {
        self.private.public_key()
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.public_key())
    }

    /// Loads a private key file (OpenSSH or PEM; ed25519, ECDSA or RSA),
    /// once it is yours alone (see `vm::trust`).
    pub fn load(path: &Path) -> Result<KeyPair, Error> {
        trust::check(path, trust::Kind::PrivateKey)?;
        let private = russh::keys::load_secret_key(path, None).map_err(|source| match source {
            russh::keys::Error::IO(source) => Error::File {
                what: "read the SSH key",
                path: path.to_path_buf(),
                source,
            },
            source => Error::KeyDecode {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(KeyPair {
            private: Arc::new(private),
            path: path.to_path_buf(),
        })
    }
}

/// `SHA256:…` fingerprint of a public key.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// `$LIMA_HOME/_config/user`, created as limactl would on first need.
///
/// Creation happens under an exclusive lock on the `_config` directory and
/// through a rename, so concurrent first uses (several shells started at
/// once) end up with one valid key and never read a half-written file. An
/// existing key of any type is used as it is. `$LIMA_HOME` and `_config`
/// must be yours and writable by nobody else, or another user could have
/// put their key there or read yours.
pub fn ensure_user_key(lima_home: &Path) -> Result<KeyPair, Error> {
    let config = crate::vm::dirs::config_dir(lima_home);
    trust::check(lima_home, trust::Kind::Dir)?;
    trust::check(&config, trust::Kind::Dir)?;
    let path = config.join("user");
    if path.exists() {
        return KeyPair::load(&path);
    }
    crate::vm::dirs::create_private(lima_home).map_err(file_err("create", lima_home))?;
    match DirBuilder::new().mode(0o700).create(&config) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(file_err("create", &config)(e)),
    }
    let dir = File::open(&config).map_err(file_err("open", &config))?;
    dir.lock().map_err(file_err("lock", &config))?;
    // Another process may have created it while we waited for the lock.
    if !path.exists() {
        write_new_key(&config, &path)?;
    }
    KeyPair::load(&path)
}

fn write_new_key(config: &Path, path: &Path) -> Result<(), Error> {
    let mut key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(Error::KeyGenerate)?;
    key.set_comment(KEY_COMMENT);
    let private = key.to_openssh(LineEnding::LF).map_err(Error::KeyGenerate)?;
    let public = key.public_key().to_openssh().map_err(Error::KeyGenerate)?;
    // The public half first: once `user` exists, `user.pub` exists too.
    write_atomically(
        config,
        &path.with_extension("pub"),
        public.as_bytes(),
        0o644,
    )?;
    write_atomically(config, path, private.as_bytes(), 0o600)?;
    Ok(())
}

fn write_atomically(dir: &Path, dest: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // Left by a crashed process with our pid: created afresh, so that the
    // mode below applies rather than the old file's.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err("write", dest)(e)
    })
}

/// Loads the guest's host public key, one OpenSSH line (`$D/ssh_host_key.pub`),
/// once it and its directory are yours and writable by nobody else: whoever
/// could replace it could get between you and the guest.
pub fn load_host_public_key(path: &Path) -> Result<PublicKey, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        trust::check(dir, trust::Kind::Dir)?;
    }
    trust::check(path, trust::Kind::PublicFile)?;
    russh::keys::load_public_key(path).map_err(|source| match source {
        russh::keys::Error::IO(source) => Error::File {
            what: "read the guest's host key",
            path: path.to_path_buf(),
            source,
        },
        source => Error::HostKeyParse {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::File { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout;
    use crate::vm::trust::TrustError;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_an_ed25519_key_with_lima_comment_and_private_modes() {
        let home = tempfile::tempdir().unwrap();
        let key = ensure_user_key(home.path()).unwrap();
        assert_eq!(key.public_key().algorithm(), Algorithm::Ed25519);
        let config = home.path().join("_config");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config), 0o700);
        assert_eq!(mode(&config.join("user")), 0o600);
        let pubtext = std::fs::read_to_string(config.join("user.pub")).unwrap();
        assert!(pubtext.starts_with("ssh-ed25519 "), "{pubtext}");
        assert!(pubtext.trim_end().ends_with(" lima"), "{pubtext}");
        let again = ensure_user_key(home.path()).unwrap();
        assert_eq!(again.fingerprint(), key.fingerprint());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&config)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_missing_home_is_created_private_and_an_exposed_key_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("a/lima");
        ensure_user_key(&home).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&home), 0o700);
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let user = home.join("_config/user");
        chmod(&user, 0o644);
        let err = ensure_user_key(&home).unwrap_err();
        assert!(
            matches!(err, Error::Untrusted(TrustError::KeyExposed { .. })),
            "{err:?}"
        );
        chmod(&user, 0o600);
        chmod(&home.join("_config"), 0o775);
        let err = ensure_user_key(&home).unwrap_err();
        assert!(
            matches!(err, Error::Untrusted(TrustError::Writable { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_host_key_others_may_replace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(layout::HOST_KEY_PUB);
        let key = crate::vm::cidata::generate_host_key().unwrap();
        std::fs::write(&p, &key.public_openssh).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_host_public_key(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = load_host_public_key(&p).unwrap_err();
        assert!(
            matches!(err, Error::Untrusted(TrustError::Writable { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn host_key_parse_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(layout::HOST_KEY_PUB);
        std::fs::write(&p, "ssh-ed25519 not-base64!\n").unwrap();
        let err = load_host_public_key(&p).unwrap_err();
        assert!(matches!(err, Error::HostKeyParse { .. }), "{err:?}");
        assert!(err.to_string().contains(layout::HOST_KEY_PUB));
    }
}

//! Where things live: `$LIMA_HOME` and the names reserved inside it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// `$LIMA_HOME` if set and non-empty, else `~/.lima`; symlinks resolved when
/// the directory exists, because every derived path (instance dirs, sockets)
/// must use the real path, as Lima does.
pub(crate) fn lima_home() -> std::io::Result<PathBuf> {
    let dir = match std::env::var_os("LIMA_HOME").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => home_dir()?.join(".lima"),
    };
    match std::fs::canonicalize(&dir) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir),
        Err(e) => Err(e),
    }
}

/// The current user's home directory.
pub(crate) fn home_dir() -> std::io::Result<PathBuf> {
    dirs::home_dir().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "cannot determine the home directory: set HOME",
        )
    })
}

/// `$LIMA_HOME/_config`, holding `user`, `default.yaml` and `override.yaml`.
pub(crate) fn config_dir(lima_home: &Path) -> PathBuf {
    lima_home.join("_config")
}

/// `$LIMA_HOME/_templates`, searched for `template:NAME` after
/// `$LIMA_TEMPLATES_PATH`.
pub(crate) fn templates_dir(lima_home: &Path) -> PathBuf {
    lima_home.join("_templates")
}

/// Creates `dir` and any missing parents as 0700, as `$LIMA_HOME` and what
/// is in it hold keys and sockets meant for you alone. The umask can only
/// take bits away from that; existing directories are left as they are
/// (a Lima-made 0755 `$LIMA_HOME` keeps working).
pub(crate) fn create_private(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

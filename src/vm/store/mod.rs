//! Lima's instance store: which instances exist under `$LIMA_HOME`, and
//! what state each one is in. Status is never stored; like Lima, every
//! reader derives it from pid files and the host agent's socket.

mod format;
mod instance;
mod message;
mod pidfile;
mod unix_http;

pub use crate::vm::sys::{host_arch, host_os};
pub(crate) use format::{Globals, list_json, table};
pub use instance::{DiskLayout, Status, inspect};
pub(crate) use instance::{Instance, inspect_for_list};
pub(crate) use pidfile::{PidFileError, write_pid_file};
pub(crate) use unix_http::{HOSTAGENT_HOST, UnixHttpError, post_json};
pub use unix_http::{Info, hostagent_info};

use std::path::{Path, PathBuf};

use crate::vm::config::ConfigError;
use crate::vm::layout;

/// Longest instance name Lima accepts.
pub(crate) const MAX_NAME_LEN: usize = 76;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the Lima directory {}", dir.display())]
    ReadHome {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid instance name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("instance {name:?} does not exist: {} is missing", dir.join(layout::LIMA_YAML).display())]
    NotFound {
        name: String,
        dir: PathBuf,
        #[source]
        source: ConfigError,
    },
}

/// Instance directory names under `lima_home`, sorted. Like Lima, names
/// starting with `.` or `_` and anything that is not a real directory (a
/// symlink to one included) are skipped; a missing `lima_home` is empty.
pub(crate) fn instance_names(lima_home: &Path) -> Result<Vec<String>, StoreError> {
    let read_err = |source| StoreError::ReadHome {
        dir: lima_home.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(lima_home) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        // Lima compares the names as Go strings; skip what is not UTF-8.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if entry.file_type().map_err(read_err)?.is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Lima's rule: `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76
/// characters, not ending in `.yml`/`.yaml`.
pub(crate) fn validate_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| {
        Err(StoreError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 76 characters");
    }
    let is_sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = name.as_bytes();
    let well_formed = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || is_sep(b))
        && !is_sep(bytes[0])
        && !is_sep(bytes[bytes.len() - 1])
        && !bytes.windows(2).any(|w| is_sep(w[0]) && is_sep(w[1]));
    if !well_formed {
        return invalid(
            "use letters and digits, separated by single '.', '_' or '-' (e.g. my-vm.2)",
        );
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".yml") || lower.ends_with(".yaml") {
        return invalid("it must not end in .yml or .yaml");
    }
    Ok(())
}

/// `$LIMA_HOME/<name>` once the name is known to be valid, as Lima's
/// `InstanceDir`; whether the instance exists is not checked.
pub(crate) fn instance_dir(lima_home: &Path, name: &str) -> Result<PathBuf, StoreError> {
    validate_name(name)?;
    Ok(lima_home.join(name))
}

/// The guest hostname Lima derives from an instance name.
pub(crate) fn hostname(name: &str) -> String {
    format!("lima-{}", name.replace(['.', '_'], "-"))
}

/// Lima's `IsExistingInstanceDir`: `lima.yaml` alone does not make an
/// instance exist; one of the files a create or start leaves behind does.
pub fn is_existing_instance_dir(dir: &Path) -> bool {
    [
        layout::HOST_AGENT_STDOUT_LOG,
        layout::HOST_AGENT_STDERR_LOG,
        layout::VZ_IDENTIFIER,
        layout::IMAGE,
        layout::DISK,
        layout::BASE_DISK,
        layout::DIFF_DISK,
        layout::CIDATA_ISO,
    ]
    .iter()
    .any(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_lima_identifier_rules() {
        for ok in [
            "default",
            "llima-box",
            "a.b_c-d",
            "A1",
            "vm.2",
            &"a".repeat(76),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a._b",
            "a b",
            "ä",
            "a/b",
            ".x",
            &"a".repeat(77),
            "x.yaml",
            "x.YML",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostname_replaces_dots_and_underscores() {
        assert_eq!(hostname("my_vm.2-x"), "lima-my-vm-2-x");
    }

    #[test]
    fn enumeration_skips_reserved_files_and_symlinks() {
        let home = tempfile::tempdir().unwrap();
        let p = home.path();
        for d in ["b", "a", "_config", "_disks", ".hidden", "c.d"] {
            std::fs::create_dir(p.join(d)).unwrap();
        }
        std::fs::write(p.join("file"), "").unwrap();
        std::os::unix::fs::symlink(p.join("a"), p.join("link")).unwrap();
        assert_eq!(instance_names(p).unwrap(), ["a", "b", "c.d"]);
        assert!(instance_names(&p.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn existing_instance_dir_needs_more_than_lima_yaml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(layout::LIMA_YAML), "").unwrap();
        assert!(!is_existing_instance_dir(d.path()));
        std::os::unix::fs::symlink("nowhere", d.path().join(layout::DISK)).unwrap();
        assert!(is_existing_instance_dir(d.path()));
    }
}

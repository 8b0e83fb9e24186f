//! Project directory → environment name: a sanitised basename (so a person
//! recognises it in `list`) and a hash of the whole canonical path (so two
//! projects with the same basename never share an environment).

use std::path::{Path, PathBuf};

use llima_box_proto::names::{MAX_NAME_LEN as MAX_NAME, valid_env_name};
use sha2::{Digest, Sha256};

use super::Error;

/// 32 bits of hash; the guest agent also compares the stored project path, so a
/// collision is refused rather than shared.
const HASH_HEX: usize = 8;
/// Used when nothing of the basename survives sanitising.
const FALLBACK_BASE: &str = "project";

/// The project directory as the guest sees it: absolute, symlinks resolved,
/// no trailing slash, UTF-8 (names and the agent's records are text).
pub(crate) fn canonical_project(path: &Path) -> Result<PathBuf, Error> {
    let canonical = std::fs::canonicalize(path).map_err(|source| Error::Resolve {
        path: path.to_path_buf(),
        source,
    })?;
    if !canonical.is_dir() {
        return Err(Error::NotADirectory(canonical));
    }
    let text = canonical
        .to_str()
        .ok_or_else(|| Error::NotUtf8(canonical.clone()))?;
    let unsupported = |reason| Error::Unsupported {
        path: text.to_string(),
        reason,
    };
    if text == "/" {
        return Err(unsupported(
            "the root directory cannot be a project; pick a directory below it",
        ));
    }
    if text.contains('\n') {
        return Err(unsupported(
            "it contains a newline; rename the directory without one",
        ));
    }
    Ok(canonical)
}

/// [`env_name`] of a path [`canonical_project`] returned (always UTF-8).
pub(crate) fn env_name_of(canonical: &Path) -> String {
    env_name(canonical.to_str().unwrap_or_default())
}

/// The environment name for a canonical project path (see
/// [`canonical_project`]): `<basename>-<8 hex of sha256(path)>`, lowercase,
/// `[a-z0-9_-]`, starting with a letter or `_`, at most 32 characters.
pub(crate) fn env_name(canonical: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    let basename = canonical.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    let mut base = sanitise(basename);
    if base.is_empty() {
        base = FALLBACK_BASE.to_string();
    }
    base.truncate(MAX_NAME - HASH_HEX - 1);
    let base = base.trim_end_matches('-');
    format!("{base}-{}", &hash[..HASH_HEX])
}

/// Lowercase ASCII letters, digits, `_` and `-`; anything else becomes one
/// `-`; no leading `-` and a letter or `_` first.
fn sanitise(basename: &str) -> String {
    let mut out = String::new();
    for c in basename.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Checks a name given by a person (e.g. `delete NAME`) the way the guest
/// will.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    if valid_env_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_valid(name: &str) {
        validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let hash = name.rsplit('-').next().unwrap();
        assert_eq!(hash.len(), HASH_HEX, "{name}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    }

    #[test]
    fn plain_project() {
        let name = env_name("/Users/me/src/app");
        assert!(name.starts_with("app-"), "{name}");
        assert_valid(&name);
        let want = &hex::encode(Sha256::digest(b"/Users/me/src/app"))[..8];
        assert_eq!(name, format!("app-{want}"));
    }

    #[test]
    fn nasty_basenames_stay_valid() {
        for path in [
            "/home/me/my project",
            "/home/me/it's \"quoted\"",
            "/home/me/$(touch /tmp/pwned)",
            "/home/me/`id`;rm -rf ~",
            "/home/me/Ünïcödé Prøjekt",
            "/home/me/日本語",
            "/home/me/---",
            "/home/me/2048-game",
            "/home/me/-rf",
            "/home/me/.hidden",
            "/home/me/tab\there",
            "/home/me/UPPER_Case",
        ] {
            let name = env_name(path);
            assert_valid(&name);
            assert!(!name.contains("--"), "{path} -> {name}");
        }
        // The basename of that path is `pwned)`.
        assert!(env_name("/home/me/$(touch /tmp/pwned)").starts_with("pwned-"));
        assert!(env_name("/home/me/2048-game").starts_with("_2048-game-"));
        assert!(env_name("/home/me/日本語").starts_with("project-"));
        assert!(env_name("/home/me/Ünïcödé Prøjekt").starts_with("n-c-d-pr-jekt-"));
        assert!(env_name("/home/me/UPPER_Case").starts_with("upper_case-"));
    }

    #[test]
    fn long_basename_is_cut_to_32() {
        let path = format!("/home/me/{}", "a".repeat(200));
        let name = env_name(&path);
        assert_eq!(name.len(), MAX_NAME);
        assert_valid(&name);
        // A cut that ends on a separator does not leave "--".
        let path = format!("/home/me/{}-{}", "a".repeat(22), "b".repeat(50));
        let name = env_name(&path);
        assert!(!name.contains("--"), "{name}");
        assert_valid(&name);
    }

    #[test]
    fn same_basename_different_paths_differ() {
        let a = env_name("/home/me/work/app");
        let b = env_name("/home/me/play/app");
        let c = env_name("/home/me/play/App");
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert!(a.starts_with("app-") && b.starts_with("app-") && c.starts_with("app-"));
    }

    #[test]
    fn no_basename_falls_back() {
        assert!(env_name("/").starts_with("project-"));
        assert_valid(&env_name("/"));
    }

    #[test]
    fn validate_name_rules() {
        for ok in ["a", "_", "app-1234abcd", "a_b-c", &"x".repeat(32)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "1a",
            "-a",
            "A",
            "a b",
            "a/b",
            "a.b",
            &"x".repeat(33),
            "ü",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_resolves_symlinks_and_trailing_slashes() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real proj");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let want = std::fs::canonicalize(&real).unwrap();
        assert_eq!(canonical_project(&link).unwrap(), want);
        let slashed = PathBuf::from(format!("{}/", link.display()));
        assert_eq!(canonical_project(&slashed).unwrap(), want);
        let dotted = dir.path().join("real proj/./../real proj");
        assert_eq!(canonical_project(&dotted).unwrap(), want);
        let a = env_name(canonical_project(&link).unwrap().to_str().unwrap());
        let b = env_name(canonical_project(&real).unwrap().to_str().unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn canonical_refuses_what_the_guest_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            canonical_project(&file),
            Err(Error::NotADirectory(_))
        ));
        assert!(matches!(
            canonical_project(&dir.path().join("missing")),
            Err(Error::Resolve { .. })
        ));
        assert!(matches!(
            canonical_project(Path::new("/")),
            Err(Error::Unsupported { .. })
        ));
        let newline = dir.path().join("a\nb");
        std::fs::create_dir(&newline).unwrap();
        assert!(matches!(
            canonical_project(&newline),
            Err(Error::Unsupported { .. })
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn canonical_refuses_non_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir(&bad).unwrap();
        assert!(matches!(canonical_project(&bad), Err(Error::NotUtf8(_))));
    }
}

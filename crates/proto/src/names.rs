//! The environment name rule (a valid Linux user name, at most 32
//! characters, `[a-z_][a-z0-9_-]*`) and the path rule of every path in a
//! request (absolute and normalised).

pub const MAX_NAME_LEN: usize = 32;

/// Whether `name` may name an environment (and so its user, its unit and
/// its records directory).
pub fn valid_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && matches!(b[0], b'a'..=b'z' | b'_')
        && b[1..]
            .iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// Whether `path` is absolute and normalised: not `/`, no empty, `.` or
/// `..` part, no trailing slash, no newline.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path != "/"
        && !path.ends_with('/')
        && !path.contains('\n')
        && path[1..].split('/').all(|p| !matches!(p, "" | "." | ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for good in ["/p", "/home/u/a b", "/x/.hidden", "/a/ü"] {
            assert!(valid_path(good), "{good}");
        }
        for bad in [
            "", "/", "p", "/p/", "/a//b", "/a/./b", "/a/../b", "/..", "/a\nb",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "_", "app-1a2b3c4d", "x_y-z0", &"a".repeat(32)] {
            assert!(valid_env_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            "1a",
            "-a",
            "A",
            "a.b",
            "a b",
            "a/b",
            "ä",
            "a\n",
            &"a".repeat(33),
        ] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
    }
}

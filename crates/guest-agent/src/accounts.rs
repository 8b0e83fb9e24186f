//! The account database, read from `/etc/passwd` directly: a static binary
//! must not load glibc's NSS modules, and environment users are always
//! local.

/// The uid of `name` in the text of a passwd file.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        fields.nth(1)?.parse().ok()
    })
}

/// The uid of the local user `name`.
pub fn local_uid(name: &str) -> Option<u32> {
    uid_of(&std::fs::read_to_string("/etc/passwd").ok()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment line is no user\n\
        app-1a2b3c4d:x:60001:60001::/home/app-1a2b3c4d:/bin/bash\n\
        app:x:60002:60002::/home/app:/bin/bash\n\
        broken:x:notanumber:1::/:/bin/sh\n\
        short:x\n";

    #[test]
    fn finds_exact_names_only() {
        assert_eq!(uid_of(PASSWD, "root"), Some(0));
        assert_eq!(uid_of(PASSWD, "app"), Some(60002));
        assert_eq!(uid_of(PASSWD, "app-1a2b3c4d"), Some(60001));
        assert_eq!(uid_of(PASSWD, "app-1a2b"), None);
        assert_eq!(uid_of(PASSWD, "broken"), None);
        assert_eq!(uid_of(PASSWD, "short"), None);
        assert_eq!(uid_of(PASSWD, ""), None);
    }
}

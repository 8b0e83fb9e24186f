//! The account database, read and edited directly: a static binary must not
//! load glibc's NSS modules, environment users are always local, and one
//! rewrite of each file is far cheaper under emulation than `userdel`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::lock;

/// The fields of a passwd entry the agent uses.
#[derive(Debug, PartialEq)]
pub struct User<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a str,
    pub shell: &'a str,
}

/// The well-formed entries of a passwd file's text.
pub fn users(passwd: &str) -> impl Iterator<Item = User<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, shell] = f[..] else {
            return None;
        };
        Some(User {
            name,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            home,
            shell,
        })
    })
}

/// The uid of `name` in the text of a passwd file.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    users(passwd).find(|u| u.name == name).map(|u| u.uid)
}

/// The texts of `/etc/passwd` and `/etc/group`, or which could not be
/// read and why.
pub fn local_files() -> Result<(String, String), String> {
    let read = |path: &str| fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    Ok((read("/etc/passwd")?, read("/etc/group")?))
}

/// The uid of the local user `name`.
pub fn local_uid(name: &str) -> Option<u32> {
    uid_of(&fs::read_to_string("/etc/passwd").ok()?, name)
}

/// An account file's text without the entry whose first field is `name`,
/// and whether there was one.
fn without_entry(text: &str, name: &str) -> (String, bool) {
    let mut found = false;
    let kept = map_lines(text, |line| {
        if line.split(':').next() == Some(name) {
            found = true;
            None
        } else {
            Some(line.to_owned())
        }
    });
    (kept, found)
}

/// A group or gshadow file's text with `name` taken out of the
/// comma-separated member lists in fields `lists` (0-based).
fn without_member(text: &str, name: &str, lists: &[usize]) -> String {
    map_lines(text, |line| {
        let fields: Vec<String> = line
            .split(':')
            .enumerate()
            .map(|(i, f)| {
                if lists.contains(&i) && !f.is_empty() {
                    f.split(',')
                        .filter(|m| *m != name)
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    f.to_owned()
                }
            })
            .collect();
        Some(fields.join(":"))
    })
}

fn map_lines(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if let Some(l) = f(line) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// An account file's text with the account `old` named `new`: every field
/// or comma-separated list entry that is `old`, and the home `/home/old`.
/// What `usermod -l` and `groupmod -n` do, without starting either.
pub fn renamed(text: &str, old: &str, new: &str) -> String {
    let old_home = format!("/home/{old}");
    let new_home = format!("/home/{new}");
    map_lines(text, |line| {
        let fields: Vec<String> = line
            .split(':')
            .map(|f| {
                if f == old_home {
                    return new_home.clone();
                }
                f.split(',')
                    .map(|e| if e == old { new } else { e })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        Some(fields.join(":"))
    })
}

/// Renames the account `old` to `new` in each of `files` (see [`renamed`]);
/// the caller holds the account files' lock.
pub fn rename_account(old: &str, new: &str, files: &[&str]) -> std::io::Result<()> {
    for file in files {
        rewrite(Path::new(file), |t| renamed(t, old, new))?;
    }
    Ok(())
}

/// The groups `name` is in according to a group file's text, and `gid`
/// (its own), as getgrouplist(3) gives them.
pub fn groups_of(group: &str, name: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let [_, _, g, members] = fields[..]
            && members.split(',').any(|m| m == name)
            && let Ok(g) = g.parse()
            && !groups.contains(&g)
        {
            groups.push(g);
        }
    }
    groups
}

/// Replaces the file at `path` with `edit` of its text, atomically (a
/// temporary file beside it, then rename) and keeping its mode and owner.
/// A missing file is left missing; an unchanged one is not rewritten.
fn rewrite(path: &Path, edit: impl FnOnce(&str) -> String) -> std::io::Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let new = edit(&old);
    if new == old {
        return Ok(());
    }
    let meta = fs::metadata(path)?;
    let tmp = path.with_extension("llima-box-tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(new.as_bytes())?;
    std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
    f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Removes the user `name`, its own group and its subordinate id ranges,
/// and takes it out of other groups' member lists, under the locks that
/// the runtime and the system's tools use. Whether the user existed.
pub fn remove_account(name: &str) -> std::io::Result<bool> {
    let _users = lock::flock(".users.lock")?;
    let _pwd = lock::account_files()?;
    let mut existed = false;
    rewrite(Path::new("/etc/passwd"), |t| {
        let (t, found) = without_entry(t, name);
        existed = found;
        t
    })?;
    for file in ["/etc/shadow", "/etc/subuid", "/etc/subgid"] {
        rewrite(Path::new(file), |t| without_entry(t, name).0)?;
    }
    // group: name:password:gid:members; gshadow: name:password:admins:members.
    rewrite(Path::new("/etc/group"), |t| {
        without_member(&without_entry(t, name).0, name, &[3])
    })?;
    rewrite(Path::new("/etc/gshadow"), |t| {
        without_member(&without_entry(t, name).0, name, &[2, 3])
    })?;
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
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
        let app = users(PASSWD).find(|u| u.uid == 60002);
        assert_eq!(
            app,
            Some(User {
                name: "app",
                uid: 60002,
                gid: 60002,
                home: "/home/app",
                shell: "/bin/bash"
            })
        );
    }

    #[test]
    fn removes_exactly_one_entry() {
        let (t, found) = without_entry(PASSWD, "app");
        assert!(found);
        assert_eq!(uid_of(&t, "app"), None);
        assert_eq!(
            uid_of(&t, "app-1a2b3c4d"),
            Some(60001),
            "a longer name stays"
        );
        assert_eq!(t.lines().count(), PASSWD.lines().count() - 1);
        let (same, found) = without_entry(PASSWD, "nobody-here");
        assert!(!found);
        assert_eq!(same, PASSWD);
        // No final newline in: one out, and nothing else changes.
        let (t, _) = without_entry("a:x:1:1::/:/bin/sh\nb:x:2:2::/:/bin/sh", "a");
        assert_eq!(t, "b:x:2:2::/:/bin/sh\n");
    }

    #[test]
    fn leaves_member_lists_without_the_user() {
        let group = "sudo:x:27:admin,app\nusers:x:100:app\nstaff:x:50:\napp:x:60002:\nmix:x:7:app-1,app,other\n";
        let t = without_member(&without_entry(group, "app").0, "app", &[3]);
        assert_eq!(
            t,
            "sudo:x:27:admin\nusers:x:100:\nstaff:x:50:\nmix:x:7:app-1,other\n"
        );
        let gshadow = "sudo:*:app:admin,app\napp:!::\n";
        let t = without_member(&without_entry(gshadow, "app").0, "app", &[2, 3]);
        assert_eq!(t, "sudo:*::admin\n");
    }

    #[test]
    fn renames_names_members_and_home_only() {
        let passwd = "spare-7:x:70001:70001::/home/spare-7:/bin/bash\n\
            spare-70:x:70002:70002::/home/spare-70:/bin/bash\n";
        assert_eq!(
            renamed(passwd, "spare-7", "app-1a2b3c4d"),
            "app-1a2b3c4d:x:70001:70001::/home/app-1a2b3c4d:/bin/bash\n\
             spare-70:x:70002:70002::/home/spare-70:/bin/bash\n"
        );
        let group = "spare-7:x:70001:\nusers:x:100:a,spare-7,spare-70\n";
        assert_eq!(
            renamed(group, "spare-7", "new"),
            "new:x:70001:\nusers:x:100:a,new,spare-70\n"
        );
        assert_eq!(renamed(group, "nobody", "new"), group);
    }

    #[test]
    fn finds_supplementary_groups() {
        let group = "app:x:70001:\nusers:x:100:a,app\ndocker:x:999:app-2\nbad:x:z:app\n";
        assert_eq!(groups_of(group, "app", 70001), [70001, 100]);
        assert_eq!(groups_of("", "app", 5), [5]);
    }

    #[test]
    fn rewrite_keeps_mode_and_skips_missing_files() {
        let d = std::env::temp_dir().join(format!("llb-acct-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let f = d.join("shadow");
        fs::write(&f, "a:!:1::::::\nb:!:1::::::\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        rewrite(&f, |t| without_entry(t, "a").0).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "b:!:1::::::\n");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
        rewrite(&d.join("missing"), |_| "x".into()).unwrap();
        assert!(!d.join("missing").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}

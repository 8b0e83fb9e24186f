//! The account database, read and edited directly: a static binary must not
//! load glibc's NSS modules, environment users are always local, and one
//! rewrite of each file is far cheaper under emulation than `userdel`.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use llima_box_proto::paths::{ENV_UIDS, HOMES_DIR};

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

/// The name of the local user `uid`.
pub fn local_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    users(&passwd)
        .find(|u| u.uid == uid)
        .map(|u| u.name.to_owned())
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
        // As in `renamed`: a line without the name stays as it is.
        if !line.contains(name) {
            return Some(line.to_string());
        }
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
        // Most lines are other accounts': kept as they are, without the
        // splitting (which costs under emulation, once per environment).
        if !line.contains(old) {
            return Some(line.to_string());
        }
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
/// the caller holds the account files' lock. Without `durable` the new
/// texts are not flushed to disk (a rename over the old file still never
/// leaves half of one): the caller calls [`flush`] once it can wait.
pub fn rename_account(old: &str, new: &str, files: &[&str], durable: bool) -> std::io::Result<()> {
    for file in files {
        rewrite(Path::new(file), |t| renamed(t, old, new), durable)?;
    }
    Ok(())
}

/// Flushes `files` (those that exist) and their directories to disk.
pub fn flush(files: &[&str]) -> std::io::Result<()> {
    let mut dirs: Vec<&Path> = Vec::new();
    for file in files {
        match fs::File::open(file) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let dir = Path::new(file).parent().unwrap_or(Path::new("/"));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        fs::File::open(dir)?.sync_all()?;
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

/// What names a user, and what a claim renames the spare's user in while a
/// first shell waits: kept [`prepare`]d.
pub const NAME_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// Where the next text of an account file is written before it replaces
/// the file (see [`rewrite`] and [`prepare`]).
fn temporary(path: &Path) -> PathBuf {
    path.with_extension("llima-box-tmp")
}

/// The temporary file of `path`, as it is (see [`rewrite`]) or new.
fn open_temporary(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(temporary(path))
}

/// Gives `f` (which `had`) the owner and mode of `meta` (the file it is
/// to replace), changing only what differs.
fn own_as(f: &fs::File, had: &fs::Metadata, meta: &fs::Metadata) -> std::io::Result<()> {
    if (had.uid(), had.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid()))?;
    }
    if had.mode() & 0o7777 != meta.mode() & 0o7777 {
        f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

/// Room for the next text of a file beyond its size today, in bytes.
const PREPARED_ROOM: u64 = 8192;

/// Leaves beside each of `files` its next temporary file with disk space
/// already given to it, and the file's owner and mode (each change costs
/// a journal entry later), the caller holding the account files' lock. ext4
/// gives a new file's data its blocks only when it writes it out, and
/// when a rename replaces a file by one whose blocks are still to be
/// given, it does that at once (its `auto_da_alloc`): 1-1.5 ms a file
/// under emulation, in a claim that a first shell waits for. An error
/// costs only that time, and leaves nothing worse than a temporary file.
pub fn prepare(files: &[&str]) -> std::io::Result<()> {
    for file in files {
        let meta = fs::metadata(file)?;
        let f = open_temporary(Path::new(file))?;
        // SAFETY: a descriptor this function owns; KEEP_SIZE: the blocks
        // lie beyond the file's end until written.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                (meta.len() + PREPARED_ROOM) as libc::off_t,
            )
        };
        crate::sys::check(rc)?;
        own_as(&f, &f.metadata()?, &meta)?;
    }
    Ok(())
}

/// Replaces the file at `path` with `edit` of its text, atomically (a
/// temporary file beside it, then rename) and keeping its mode and owner;
/// flushed to disk first when `durable`. A missing file is left missing;
/// an unchanged one is not rewritten. The temporary file is written over,
/// not emptied first, so that what [`prepare`] gave it is used; it is
/// then cut to the new text's length if it was longer.
fn rewrite(path: &Path, edit: impl FnOnce(&str) -> String, durable: bool) -> std::io::Result<()> {
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
    let mut f = open_temporary(path)?;
    let had = f.metadata()?;
    f.write_all(new.as_bytes())?;
    if had.len() > new.len() as u64 {
        f.set_len(new.len() as u64)?;
    }
    // A prepared one has them already.
    own_as(&f, &had, &meta)?;
    if durable {
        f.sync_all()?;
    }
    fs::rename(temporary(path), path)
}

/// The uid (and gid) for a new environment user: above `last` (the last
/// one given out) and above every id of [`ENV_UIDS`] in the passwd and
/// group texts (should the record be lost), so that no id is ever given
/// out twice. `None` when the range is used up.
pub fn next_uid(last: Option<u32>, passwd: &str, group: &str) -> Option<u32> {
    let taken = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .filter(|id| ENV_UIDS.contains(id))
            .collect()
    };
    let highest = taken(passwd)
        .into_iter()
        .chain(taken(group))
        .chain(last)
        .max();
    let next = highest.map_or(*ENV_UIDS.start(), |h| (h + 1).max(*ENV_UIDS.start()));
    ENV_UIDS.contains(&next).then_some(next)
}

/// `text` with `line` added at the end (and a newline before it if the
/// text lacked its last one).
fn with_line(text: &str, line: &str) -> String {
    let mut t = text.to_owned();
    if !t.is_empty() && !t.ends_with('\n') {
        t.push('\n');
    }
    t.push_str(line);
    t.push('\n');
    t
}

/// The entries of a new environment user `name` with `id` as uid and gid,
/// for passwd, group, shadow and gshadow (password locked).
fn new_entries(name: &str, id: u32, days: u64) -> [(&'static str, String); 4] {
    [
        (
            "/etc/passwd",
            format!("{name}:x:{id}:{id}:llima-box environment:{HOMES_DIR}/{name}:/bin/bash"),
        ),
        ("/etc/group", format!("{name}:x:{id}:")),
        ("/etc/shadow", format!("{name}:!:{days}:0:99999:7:::")),
        ("/etc/gshadow", format!("{name}:!::")),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error(
        "no environment uids left ({}-{} are used up; uids are never reused)",
        ENV_UIDS.start(),
        ENV_UIDS.end()
    )]
    NoUids,
    #[error("a user or group named {0} exists already")]
    Exists(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Home(#[from] crate::homes::HomesError),
}

fn add_io(what: &'static str) -> impl FnOnce(std::io::Error) -> AddError {
    move |source| AddError::Io { what, source }
}

/// Creates the environment user `name` and its group, with an id never
/// given out before (recorded in `last_uid` first, so that a failure
/// wastes the id rather than reusing it), under the account files' locks;
/// then its home, from `/etc/skel`, mode 0700. What `useradd -m` does,
/// without starting it. Returns the uid.
pub fn add_env_user(name: &str, last_uid: &Path) -> Result<u32, AddError> {
    let _users = lock::flock(".users.lock").map_err(add_io("cannot lock the users"))?;
    let _pwd = lock::account_files().map_err(add_io("cannot lock the account files"))?;
    let (passwd, group) = local_files().map_err(|e| AddError::Io {
        what: "cannot read the account files",
        source: std::io::Error::other(e),
    })?;
    let named = |text: &str| text.lines().any(|l| l.split(':').next() == Some(name));
    if named(&passwd) || named(&group) {
        return Err(AddError::Exists(name.to_owned()));
    }
    let last = fs::read_to_string(last_uid)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let id = next_uid(last, &passwd, &group).ok_or(AddError::NoUids)?;
    fs::write(last_uid, format!("{id}\n")).map_err(add_io("cannot record the uid"))?;
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86400);
    for (file, line) in new_entries(name, id, days) {
        rewrite(Path::new(file), |t| with_line(t, &line), true)
            .map_err(add_io("cannot add the user to the account files"))?;
    }
    // For the claim that may rename this user; a failure costs only time.
    let _ = prepare(&NAME_FILES);
    crate::homes::make(name, id)?;
    Ok(id)
}

/// Removes the user `name`, its own group and its subordinate id ranges,
/// and takes it out of other groups' member lists, under the locks that
/// the agent and the system's tools use. Whether the user existed.
pub fn remove_account(name: &str) -> std::io::Result<bool> {
    let _users = lock::flock(".users.lock")?;
    let _pwd = lock::account_files()?;
    let mut existed = false;
    rewrite(
        Path::new("/etc/passwd"),
        |t| {
            let (t, found) = without_entry(t, name);
            existed = found;
            t
        },
        true,
    )?;
    for file in ["/etc/shadow", "/etc/subuid", "/etc/subgid"] {
        rewrite(Path::new(file), |t| without_entry(t, name).0, true)?;
    }
    // group: name:password:gid:members; gshadow: name:password:admins:members.
    rewrite(
        Path::new("/etc/group"),
        |t| without_member(&without_entry(t, name).0, name, &[3]),
        true,
    )?;
    rewrite(
        Path::new("/etc/gshadow"),
        |t| without_member(&without_entry(t, name).0, name, &[2, 3]),
        true,
    )?;
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
    fn new_uids_are_never_given_out_twice() {
        let p = "root:x:0:0::/root:/bin/bash\nold:x:60005:60005::/home/old:/bin/bash\n";
        assert_eq!(
            next_uid(None, p, ""),
            Some(70000),
            "legacy ids do not count"
        );
        let p2 = format!("{p}a:x:70004:70004::/home/a:/bin/bash\n");
        assert_eq!(next_uid(None, &p2, ""), Some(70005));
        // The record says a later one was given out (and deleted since).
        assert_eq!(next_uid(Some(70010), &p2, ""), Some(70011));
        // A group with a higher id in the range blocks its gid.
        assert_eq!(next_uid(Some(70010), &p2, "g:x:70020:\n"), Some(70021));
        assert_eq!(next_uid(Some(99998), "", ""), Some(99999));
        assert_eq!(next_uid(Some(99999), "", ""), None);
        assert_eq!(next_uid(None, "", "g:x:99999:\n"), None);
        // A record below the range (an earlier version's) starts at its start.
        assert_eq!(next_uid(Some(64000), "", ""), Some(70000));
    }

    #[test]
    fn new_entries_parse_back_and_lines_are_appended() {
        let [(_, passwd), (_, group), (_, shadow), (_, gshadow)] =
            new_entries("new-1a2b3c4d", 70001, 20000);
        let text = with_line(PASSWD.trim_end(), &passwd);
        assert!(text.starts_with(PASSWD), "{text}");
        let u = users(&text).find(|u| u.name == "new-1a2b3c4d").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home, u.shell),
            (70001, 70001, "/home/new-1a2b3c4d", "/bin/bash")
        );
        assert_eq!(
            groups_of(&with_line("", &group), "new-1a2b3c4d", 70001),
            [70001]
        );
        assert_eq!(shadow.split(':').count(), 9, "{shadow}");
        assert!(shadow.starts_with("new-1a2b3c4d:!:20000:"), "{shadow}");
        assert_eq!(gshadow.split(':').count(), 4, "{gshadow}");
        assert_eq!(with_line("", "x"), "x\n");
    }

    #[test]
    fn rewrite_keeps_mode_and_skips_missing_files() {
        let d = std::env::temp_dir().join(format!("llb-acct-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let f = d.join("shadow");
        fs::write(&f, "a:!:1::::::\nb:!:1::::::\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        rewrite(&f, |t| without_entry(t, "a").0, true).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "b:!:1::::::\n");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
        rewrite(&d.join("missing"), |_| "x".into(), false).unwrap();
        assert!(!d.join("missing").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rewrite_takes_a_prepared_or_left_temporary_file() {
        let d = std::env::temp_dir().join(format!("llb-prep-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let f = d.join("passwd");
        let text = "root:x:0:0:root:/root:/bin/sh\nspare-1:x:70001:70001::/h:/bin/sh\n";
        fs::write(&f, text).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let path = f.to_str().unwrap();
        prepare(&[path]).unwrap();
        let tmp = temporary(&f);
        let prepared = fs::metadata(&tmp).unwrap();
        assert_eq!((prepared.len(), prepared.mode() & 0o777), (0, 0o644));
        assert!(prepared.blocks() > 0, "no space was given to it");
        rename_account("spare-1", "app-0123abcd", &[path], false).unwrap();
        let renamed = text.replace("spare-1", "app-0123abcd");
        assert_eq!(fs::read_to_string(&f).unwrap(), renamed);
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o644);
        assert!(!tmp.exists());
        // One left longer by an interrupted rewrite is cut to the new text.
        fs::write(&tmp, "x".repeat(4096)).unwrap();
        rename_account("app-0123abcd", "b", &[path], false).unwrap();
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            text.replace("spare-1", "b")
        );
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o644);
        fs::remove_dir_all(&d).unwrap();
    }
}

//! Environment homes and the cap on their disk use. The guest's own
//! filesystem has no quotas (turning them on needs it unmounted), so the
//! homes live in a filesystem of their own that has: an ext4 image with
//! user quotas, sparse (it takes only what the homes hold), as big as the
//! guest's disk, mounted at [`STORE`]. A home is `STORE/UID` there, and
//! `/home/NAME` a symbolic link to it, so that renaming a claimed spare
//! stays a rename in `/home`; the environment itself sees its home at
//! `/home/NAME` (a bind mount). Its user's quota is its cap.
//!
//! A guest that cannot make such an image (no `mkfs.ext4`, no loop
//! devices or quotas in its kernel) keeps homes in `/home` as before,
//! without a cap; so do homes made before the image existed.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use llima_box_proto::paths::{HOMES_DIR, STATE_DIR};

use crate::{lock, sys, tools};

/// The image and where it is mounted; both only root can reach.
const IMAGE: &str = "/var/lib/llima-box/homes.img";
pub const STORE: &str = "/var/lib/llima-box/homes";
/// Written when this boot found the guest unable to mount an image it had
/// just made, so that each new home does not try again.
const UNSUPPORTED: &str = "/run/llima-box/homes-unsupported";
/// The default cap, in percent of the guest's disk.
const DEFAULT_PERCENT: u64 = 25;

#[derive(Debug, thiserror::Error)]
pub enum HomesError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "cannot mount the environments' homes ({IMAGE} at {STORE}): {0}; \
         see `journalctl -b -k` in the VM (`llima-box vm shell`)"
    )]
    Mount(tools::Failure),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> HomesError {
    move |source| HomesError::Io { what, source }
}

/// Whether the homes' filesystem is mounted, mounting it (and making it on
/// the first call) when needed; `false` when the guest cannot have one.
pub fn ensure_store() -> Result<bool, HomesError> {
    if mounted() {
        return Ok(true);
    }
    let _lock = lock::flock(".homes.lock").map_err(io_err("cannot lock the homes"))?;
    if mounted() {
        return Ok(true);
    }
    let made = !Path::new(IMAGE).exists();
    if made && (Path::new(UNSUPPORTED).exists() || !make_image()?) {
        return Ok(false);
    }
    fs::create_dir_all(STORE).map_err(io_err("cannot make the homes' mount point"))?;
    let mount = tools::run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,usrquota,discard,nosuid,nodev"])
            .args([IMAGE, STORE]),
        None,
    );
    match mount {
        // Its root is the filesystem's own (0755 from mkfs): root's alone.
        Ok(()) => fs::set_permissions(STORE, fs::Permissions::from_mode(0o700))
            .map(|()| true)
            .map_err(io_err("cannot protect the homes' mount")),
        // An image this call made holds nothing yet: this guest cannot use
        // one, and homes stay in /home.
        Err(e) if made => {
            eprintln!("llima-box-guest-agent: homes without a disk cap: cannot mount {IMAGE}: {e}");
            let _ = fs::remove_file(IMAGE);
            let _ = fs::write(UNSUPPORTED, e.to_string());
            Ok(false)
        }
        Err(e) => Err(HomesError::Mount(e)),
    }
}

fn mounted() -> bool {
    let dev = |p: &str| fs::metadata(p).map(|m| m.dev());
    matches!((dev(STORE), dev(STATE_DIR)), (Ok(a), Ok(b)) if a != b)
}

/// Makes the image, sparse and as big as the guest's disk; `false` when
/// the guest has no `mkfs.ext4`.
fn make_image() -> Result<bool, HomesError> {
    let size = disk_bytes().map_err(io_err("cannot read the size of the guest's disk"))?;
    let new = format!("{IMAGE}.new");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&new)
        .map_err(io_err("cannot make the homes' image"))?;
    file.set_len(size >> 20 << 20)
        .map_err(io_err("cannot make the homes' image"))?;
    drop(file);
    // Lazy initialisation keeps the image sparse; a small journal is
    // enough for homes.
    let made = tools::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "quota", "-J", "size=64"])
            .args([
                "-E",
                "quotatype=usrquota,lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
                "-L",
                "llima-homes",
                &new,
            ]),
        None,
    );
    match made {
        Ok(()) => fs::rename(&new, IMAGE)
            .map(|()| true)
            .map_err(io_err("cannot make the homes' image")),
        Err(e) => {
            let _ = fs::remove_file(&new);
            match e {
                tools::Failure::Spawn(s) if s.kind() == io::ErrorKind::NotFound => {
                    eprintln!(
                        "llima-box-guest-agent: homes without a disk cap: mkfs.ext4 is missing"
                    );
                    Ok(false)
                }
                e => Err(HomesError::Io {
                    what: "cannot make the homes' filesystem",
                    source: io::Error::other(e.to_string()),
                }),
            }
        }
    }
}

/// The size of the filesystem the guest's state is on.
fn disk_bytes() -> io::Result<u64> {
    let path = sys::c(STATE_DIR)?;
    // SAFETY: a NUL-terminated path and a statvfs the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    sys::check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st.f_blocks * st.f_frsize)
}

/// The cap when a project sets none.
pub fn default_cap() -> io::Result<u64> {
    Ok(disk_bytes()? * DEFAULT_PERCENT / 100)
}

/// Makes the home of the new user `name` (uid `uid`): a copy of
/// `/etc/skel`, in the homes' filesystem when the guest has one.
pub fn make(name: &str, uid: u32) -> Result<(), HomesError> {
    let home = Path::new(HOMES_DIR).join(name);
    if !ensure_store()? {
        return make_dir(&home, uid).map_err(io_err("cannot make the home"));
    }
    let data = Path::new(STORE).join(uid.to_string());
    make_dir(&data, uid)
        .and_then(|()| std::os::unix::fs::symlink(&data, &home))
        .map_err(|e| {
            let _ = crate::delete::remove_tree(&data);
            io_err("cannot make the home")(e)
        })
}

/// `home` with a copy of `/etc/skel` in it, all owned by `id`.
fn make_dir(home: &Path, id: u32) -> io::Result<()> {
    fs::create_dir(home)?;
    fs::set_permissions(home, fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::lchown(home, Some(id), Some(id))?;
    copy_tree(Path::new("/etc/skel"), home, id)
}

/// Copies what is in `from` into `to` (directories, files and symlinks,
/// as they are), owned by `id`; a missing `from` is an empty one.
fn copy_tree(from: &Path, to: &Path, id: u32) -> io::Result<()> {
    let entries = match fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = entry.metadata()?;
        if meta.is_dir() {
            fs::create_dir(&dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o777))?;
            copy_tree(&src, &dst, id)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if meta.is_file() {
            fs::copy(&src, &dst)?;
        } else {
            continue;
        }
        std::os::unix::fs::lchown(&dst, Some(id), Some(id))?;
    }
    Ok(())
}

/// Where the home of `name` holds its files: its directory in the homes'
/// filesystem, or `/home/NAME` itself for a home without a cap.
pub fn data_dir(name: &str) -> PathBuf {
    let home = Path::new(HOMES_DIR).join(name);
    match fs::read_link(&home) {
        Ok(target) if in_store(&target) => target,
        _ => home,
    }
}

/// Whether `path` is a home in the homes' filesystem, `STORE/UID`.
fn in_store(path: &Path) -> bool {
    path.parent() == Some(Path::new(STORE))
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Caps the disk use of the home of `name` (uid `uid`) at `bytes` (none:
/// the default); a home without a cap is left as it is.
pub fn set_cap(name: &str, uid: u32, bytes: Option<u64>) -> Result<(), HomesError> {
    if !in_store(&data_dir(name)) || !ensure_store()? {
        return Ok(());
    }
    let bytes = match bytes {
        Some(b) => b,
        None => default_cap().map_err(io_err("cannot read the size of the guest's disk"))?,
    };
    // SAFETY: all zeroes is a valid dqblk.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    // The kernel counts limits in 1 KiB blocks.
    q.dqb_bhardlimit = bytes.div_ceil(1024);
    q.dqb_valid = libc::QIF_BLIMITS;
    quotactl(libc::Q_SETQUOTA, uid, &mut q).map_err(io_err("cannot set the home's disk cap"))
}

/// The bytes the home of `name` (uid `uid`) takes, when it has a cap.
pub fn usage(name: &str, uid: u32) -> Option<u64> {
    if !in_store(&data_dir(name)) || !mounted() {
        return None;
    }
    // SAFETY: all zeroes is a valid dqblk.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    quotactl(libc::Q_GETQUOTA, uid, &mut q).ok()?;
    Some(q.dqb_curspace)
}

/// The user quota call on the homes' filesystem (named by its device).
fn quotactl(cmd: libc::c_int, uid: u32, q: &mut libc::dqblk) -> io::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let device = source_of(&mountinfo, STORE)
        .ok_or_else(|| io::Error::other(format!("{STORE} is not mounted")))?;
    let device = CString::new(device).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated device path and a dqblk the call reads or fills.
    sys::check(unsafe {
        libc::quotactl(
            libc::QCMD(cmd, libc::USRQUOTA),
            device.as_ptr(),
            uid as libc::c_int,
            (q as *mut libc::dqblk).cast(),
        )
    })
}

/// The source (device) of the last mount at `point` in `mountinfo`.
fn source_of<'a>(mountinfo: &'a str, point: &str) -> Option<&'a str> {
    mountinfo
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(point))
        .find_map(|l| l.split_once(" - ")?.1.split(' ').nth(1))
}

/// Removes the home of `name`: its files wherever they are, and the link.
pub fn remove(name: &str) -> Result<(), crate::delete::DeleteError> {
    // After a reboot the homes' filesystem is mounted again only on demand.
    ensure_store()?;
    crate::delete::remove_tree(&data_dir(name))?;
    crate::delete::remove_tree(&Path::new(HOMES_DIR).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skel_is_copied_with_links_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let (skel, home) = (d.path().join("skel"), d.path().join("home"));
        fs::create_dir_all(skel.join(".config/sub")).unwrap();
        fs::write(skel.join(".bashrc"), "rc").unwrap();
        fs::write(skel.join(".config/sub/f"), "f").unwrap();
        std::os::unix::fs::symlink("/nowhere", skel.join("link")).unwrap();
        fs::create_dir(&home).unwrap();
        // SAFETY: getuid has no failure and no memory effects.
        let me = unsafe { libc::getuid() };
        copy_tree(&skel, &home, me).unwrap();
        assert_eq!(fs::read_to_string(home.join(".bashrc")).unwrap(), "rc");
        assert_eq!(fs::read_to_string(home.join(".config/sub/f")).unwrap(), "f");
        assert_eq!(
            fs::read_link(home.join("link")).unwrap(),
            Path::new("/nowhere")
        );
        copy_tree(&d.path().join("missing"), &home, me).unwrap();
    }

    #[test]
    fn only_uid_directories_of_the_store_are_homes_there() {
        assert!(in_store(Path::new("/var/lib/llima-box/homes/70001")));
        for p in [
            "/var/lib/llima-box/homes",
            "/var/lib/llima-box/homes/",
            "/var/lib/llima-box/homes/../envs",
            "/var/lib/llima-box/homes/70001/x",
            "/var/lib/llima-box/homes/app",
            "/home/app",
            "/etc",
        ] {
            assert!(!in_store(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn the_homes_device_is_found_in_mountinfo() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
97 22 7:0 / /var/lib/llima-box/homes rw,nosuid,nodev shared:50 - ext4 /dev/loop0 rw,quota,usrquota
98 22 0:5 / /var/lib/llima-box/homesX rw shared:51 - tmpfs tmpfs rw
";
        assert_eq!(source_of(info, STORE), Some("/dev/loop0"));
        assert_eq!(source_of(info, "/"), Some("/dev/vda"));
        assert_eq!(source_of(info, "/var/lib/llima-box"), None);
        // The mount on top is the one that counts.
        let twice = format!("{info}99 97 7:1 / {STORE} rw - ext4 /dev/loop1 rw\n");
        assert_eq!(source_of(&twice, STORE), Some("/dev/loop1"));
    }
}

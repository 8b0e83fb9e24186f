//! An environment's spawn server: the first process of the environment's PID
//! namespace (root, in its mount, IPC and network namespaces), started by
//! the environment's holder (see `holder`). It runs each command the host sends over its socket
//! (see `llima_box_proto::spawn`) with one fork and one exec, which is what
//! makes a warm `shell` cheaper than an SSH session under emulation, and
//! reaps orphans as a PID namespace's first process must.
//!
//! Its arguments are `VERSION SOCKET NAME UID GID PROJECT ADMIN HOST_UID
//! HOST_GID [ROOT...]` (PROJECT empty for a spare, whose ROOTs are the
//! remapped shares) and the directories the namespace hides by path, held
//! open ([`Dirs`]). As the `env-server` command (how its tests start it)
//! they are descriptors 7 (the ready file), 8 (the environment's record
//! directory), 6 (the state directory) and 5 (the guest's `/home`).

pub(crate) mod child;
mod claim;
pub mod env_exec;
mod launch;
mod pty;
pub(crate) mod reaper;
pub(crate) mod session;
mod supervisor;

use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use llima_box_proto::paths::{HOMES_DIR, SPARE_SOCKET, STAGE_DIR};

use crate::accounts;
use crate::holder::shares;

pub const USAGE: &str =
    "env-server VERSION SOCKET NAME UID GID PROJECT ADMIN HOST_UID HOST_GID [ROOT...]";

/// What the server was started for; fixed for its life.
pub struct Config {
    /// The agent's version (sha256): a claim made for another is refused.
    version: String,
    admin: u32,
    uid: u32,
    gid: u32,
    host_uid: u32,
    host_gid: u32,
    /// The shares remapped in the namespace (at the stage's `remap/I`).
    roots: Vec<String>,
}

/// Who the environment is: a spare's changes once, when it is claimed.
pub struct Identity {
    name: String,
    project: Option<String>,
    /// The user's own group first, then its supplementary groups.
    groups: Vec<u32>,
}

impl Identity {
    fn home(&self) -> String {
        format!("{HOMES_DIR}/{}", self.name)
    }
}

/// Directories the namespace hides by path, held open from before.
pub struct Dirs {
    /// The environment's record directory.
    pub env: OwnedFd,
    /// The agent's state directory.
    pub state: OwnedFd,
    /// The guest's `/home`.
    pub homes: OwnedFd,
}

pub struct Server {
    config: Config,
    identity: Mutex<Identity>,
    dirs: Dirs,
    reaper: reaper::Reaper,
    retired: AtomicBool,
    /// The shares of `config.roots` that arrive over 9p.
    nine_p: Vec<OwnedFd>,
    /// For each of `config.roots`, whether its remap is the share itself
    /// through a kernel ID mapping (virtiofs), not bindfs over it: then a
    /// claim looks for git metadata through the project it opened there,
    /// rather than walking the raw share's path again.
    idmapped: Vec<bool>,
    /// For a spare's claim.
    helper: claim::Helper,
}

impl Server {
    /// Marks a spare of no more use: it exits once its refusal is sent.
    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        // Reached there, so the path is this server's; the pool's keeper
        // replaces it.
        let _ = std::fs::remove_file(SPARE_SOCKET);
    }
}

/// The socket path, the configuration and the starting identity.
fn parse(args: &[String]) -> Option<(String, Config, Identity)> {
    let [
        version,
        socket,
        name,
        uid,
        gid,
        project,
        admin,
        host_uid,
        host_gid,
        roots @ ..,
    ] = args
    else {
        return None;
    };
    let id = |s: &String| s.parse::<u32>().ok();
    let (uid, gid) = (id(uid)?, id(gid)?);
    let config = Config {
        version: version.clone(),
        admin: id(admin)?,
        uid,
        gid,
        host_uid: id(host_uid)?,
        host_gid: id(host_gid)?,
        roots: roots.to_vec(),
    };
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let identity = Identity {
        name: name.clone(),
        project: (!project.is_empty()).then(|| project.clone()),
        groups: accounts::groups_of(&group, name, gid),
    };
    Some((socket.clone(), config, identity))
}

/// Runs the server with the descriptors of `USAGE`; returns only when it
/// cannot start.
pub fn run(args: &[String]) -> io::Result<()> {
    for fd in [5, 6, 8] {
        // SAFETY: descriptors this process owns; commands must not inherit them.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: the starter opened these for this process and nothing else
    // in it owns them.
    let (ready, dirs) = unsafe {
        (
            std::fs::File::from_raw_fd(7),
            Dirs {
                env: OwnedFd::from_raw_fd(8),
                state: OwnedFd::from_raw_fd(6),
                homes: OwnedFd::from_raw_fd(5),
            },
        )
    };
    serve(args, ready, dirs)
}

/// Runs the server for `args` (`USAGE` without the descriptors), reporting
/// to `ready` once it listens; returns only when it cannot start.
pub fn serve(args: &[String], ready: std::fs::File, dirs: Dirs) -> io::Result<()> {
    let Some((socket, config, identity)) = parse(args) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("usage: {USAGE}"),
        ));
    };
    reaper::block_signals();
    drop_bounding_set()?;
    let admin = config.admin;
    let listener = crate::server::listen(std::path::Path::new(&socket), admin)?;
    let mounts =
        shares::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let nine_p = nine_p_shares(&mounts);
    let idmapped = idmapped_remaps(&mounts, config.roots.len());
    let spare = identity.project.is_none();
    let server: &'static Server = Box::leak(Box::new(Server {
        nine_p,
        idmapped,
        config,
        identity: Mutex::new(identity),
        dirs,
        reaper: reaper::Reaper::default(),
        retired: AtomicBool::new(false),
        helper: claim::Helper::start(spare),
    }));
    std::thread::spawn(|| server.reaper.run());
    // Before the spare can be published: no claim waits for it.
    if spare {
        map_in_own_code();
    }
    (&ready).write_all(b"ready\n")?;
    drop(ready);
    crate::server::accept(listener, admin, |conn| session::serve(server, conn));
    Ok(())
}

/// Maps in every page of this program's executable while a spare waits:
/// its claim is the first time it runs most of its code, and under
/// emulation faulting that in page by page cost milliseconds of a first
/// shell. The pages are the page cache's, shared with every other server.
fn map_in_own_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for (start, end) in mappings_of(&maps, &exe.to_string_lossy()) {
        // SAFETY: a range this process has mapped; populating only reads
        // it in. An older kernel refuses the advice (EINVAL): no harm.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_READ,
            )
        };
    }
}

/// The address ranges that map the file `path`, from the text of
/// `/proc/PID/maps`.
fn mappings_of(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter(|l| l.split_whitespace().nth(5) == Some(path))
        .filter_map(|l| {
            let (start, end) = l.split(' ').next()?.split_once('-')?;
            let hex = |h| usize::from_str_radix(h, 16).ok();
            Some((hex(start)?, hex(end)?))
        })
        .collect()
}

/// The raw shares (the stage's `raw/I`, as the holder bound them) that
/// arrive over 9p. With Lima's `mmap` cache mode, Linux 6.12 keeps what is
/// written there in the guest's page cache until the file is closed, and
/// the remap (bindfs) closes it when FUSE tells it to, which is after the
/// writer's own close() has returned: without a sync, a command's last
/// writes could reach the host after its exit status. virtiofs needs none
/// (its writes go through), and a sync there would sync the host's whole
/// file system. The mount table tells which is which: 9p's statfs reports
/// the host's file system. The sync covers the whole share, so a command
/// may wait for what other environments wrote there in the last seconds.
fn nine_p_shares(mounts: &[shares::Share]) -> Vec<OwnedFd> {
    let raw = format!("{STAGE_DIR}/raw/");
    mounts
        .iter()
        .filter(|s| s.kind == shares::Kind::NineP && s.target.starts_with(&raw))
        .filter_map(|s| std::fs::File::open(&s.target).ok())
        .map(OwnedFd::from)
        .collect()
}

/// For each of `count` roots, whether its remap (the stage's `remap/I`)
/// is a virtiofs mount, so the share itself through an ID mapping, rather
/// than bindfs over it.
fn idmapped_remaps(mounts: &[shares::Share], count: usize) -> Vec<bool> {
    (0..count)
        .map(|i| {
            let remap = format!("{STAGE_DIR}/remap/{i}");
            mounts
                .iter()
                .any(|m| m.target == remap && m.kind == shares::Kind::Virtiofs)
        })
        .collect()
}

/// Whether `path` is `top` or inside it (both normalised).
pub fn within(path: &str, top: &str) -> bool {
    path == top
        || path
            .strip_prefix(top)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Once here rather than per command: the commands inherit both, and this
/// process keeps its own capabilities (it never execs).
pub(crate) fn drop_bounding_set() -> io::Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mappings_of_a_file() {
        let maps = "\
5581f0000000-5581f0010000 r--p 00000000 fe:01 1234  /usr/local/libexec/agent
5581f0010000-5581f0200000 r-xp 00010000 fe:01 1234  /usr/local/libexec/agent
5581f0300000-5581f0400000 rw-p 00000000 00:00 0     [heap]
7f0000000000-7f0000001000 r--p 00000000 fe:01 99    /usr/local/libexec/agent-old
";
        assert_eq!(
            mappings_of(maps, "/usr/local/libexec/agent"),
            [
                (0x5581_f000_0000, 0x5581_f001_0000),
                (0x5581_f001_0000, 0x5581_f020_0000)
            ]
        );
    }

    #[test]
    fn tells_id_mapped_remaps_from_bindfs() {
        let table = "\
90 80 0:40 / /run/llima-box/stage/raw/0 rw,relatime - virtiofs mount0 rw
91 80 0:40 / /run/llima-box/stage/remap/0 rw,relatime,idmapped - virtiofs mount0 rw
92 80 0:41 / /run/llima-box/stage/raw/1 rw,relatime - 9p mount1 rw
93 80 0:42 / /run/llima-box/stage/remap/1 rw,nosuid,nodev - fuse.bindfs /run/llima-box/stage/raw/1 rw
";
        let mounts = shares::parse(table);
        assert_eq!(idmapped_remaps(&mounts, 3), [true, false, false]);
    }

    #[test]
    fn parses_its_arguments() {
        let args: Vec<String> = [
            "v1", "/s.sock", "spare-1", "70001", "70001", "", "1000", "501", "20", "/a", "/b",
        ]
        .map(String::from)
        .to_vec();
        let (socket, config, identity) = parse(&args).unwrap();
        assert_eq!(
            (config.version.as_str(), socket.as_str()),
            ("v1", "/s.sock")
        );
        assert_eq!(
            (config.uid, config.admin, config.host_gid),
            (70001, 1000, 20)
        );
        assert_eq!(config.roots, ["/a", "/b"]);
        assert_eq!(identity.project, None);
        assert_eq!(identity.groups[0], 70001);
        assert_eq!(identity.home(), "/home/spare-1");
        assert!(parse(&args[..8]).is_none());
        let mut bad = args.clone();
        bad[3] = "x".into();
        assert!(parse(&bad).is_none());
    }
}

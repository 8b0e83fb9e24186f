//! An environment's holder: the main process of its systemd unit (whose
//! cgroup carries the environment's limits). It builds the environment's
//! mount namespace by the [`plan`], then makes the IPC, network and PID
//! namespaces, whose first process becomes the spawn server
//! (`env_server`), and waits for it: the environment lives as long as
//! that process does.
//!
//! Started as `env-holder DIR NAME ADMIN VERSION SCRATCH_KIB
//! [NAMESERVER...]`: DIR is the environment's record directory (`project`,
//! absent for a spare, `host_ids`, "HOST_UID HOST_GID", and the project's
//! `settings.json` if it has any), where the
//! holder writes its pid (`holder_parent`) and the server reports ready
//! (`ready`).

mod plan;
pub(crate) mod shares;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use llima_box_proto::paths::{HOMES_DIR, SOCKETS_DIR, STAGE_DIR, STATE_DIR};

use crate::env_server::{self, Dirs};
use crate::{accounts, sys};
use plan::{RESOLV_CONF, Step};

pub const USAGE: &str = "env-holder DIR NAME ADMIN VERSION SCRATCH_KIB [NAMESERVER...]";

/// Caching attributes and directory entries for a second saves FUSE round
/// trips (git status stats every file). bindfs's --multithreaded made
/// untar 5-7x slower than raw 9p in the TCG test guest: it stays
/// single-threaded.
const BINDFS_TUNING: &str = "attr_timeout=1,entry_timeout=1,negative_timeout=1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("usage: {USAGE}")]
    Usage,
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "the environment's user {0} is not in /etc/passwd; delete the environment and start it again"
    )]
    NoUser(String),
    #[error("cannot {what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot {step}: {source}")]
    Step { step: String, source: io::Error },
}

fn sys_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Sys { what, source }
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds the environment and runs it; returns the exit status of its
/// first process (the holder's own), or why it could not start.
pub fn run(args: &[String]) -> Result<u8, Error> {
    let [dir, name, admin, version, scratch, nameservers @ ..] = args else {
        return Err(Error::Usage);
    };
    let (Ok(admin), Ok(scratch_kib)) = (admin.parse::<u32>(), scratch.parse::<u64>()) else {
        return Err(Error::Usage);
    };
    let dir = Path::new(dir);
    let ready = fs::File::create(dir.join("ready")).map_err(sys_err("open the ready file"))?;
    fs::write(dir.join("holder_parent"), std::process::id().to_string())
        .map_err(sys_err("record the holder's pid"))?;
    // The holder's processes (the remap, the server) are the last the OOM
    // killer may pick; the server puts its commands back to 0.
    fs::write("/proc/self/oom_score_adj", "-1000").map_err(sys_err("protect the holder"))?;
    let project = match fs::read_to_string(dir.join("project")) {
        Ok(p) if !p.is_empty() => Some(p),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Read {
                path: dir.join("project").display().to_string(),
                source,
            });
        }
    };
    let ids_file = dir.join(crate::ensure::HOST_IDS);
    let ids = read(&ids_file)?;
    let Some((host_uid, host_gid)) = crate::ensure::parse_host_ids(&ids) else {
        return Err(Error::Read {
            path: ids_file.display().to_string(),
            source: io::Error::other(format!("not \"UID GID\": {ids:?}")),
        });
    };
    let passwd = read(Path::new("/etc/passwd"))?;
    let user = accounts::users(&passwd)
        .find(|u| u.name == name)
        .ok_or_else(|| Error::NoUser(name.clone()))?;
    let admin_home = accounts::users(&passwd)
        .find(|u| u.uid == host_uid)
        .map(|u| u.home);

    sys::unshare(libc::CLONE_NEWNS).map_err(sys_err("make a mount namespace"))?;
    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(sys_err("make the mounts private"))?;
    // For the server once the plan hid them: `last_used`, and a spare's
    // claim (records, locks, the home to rename).
    let open = |p: &Path| fs::File::open(p).map(OwnedFd::from);
    let dirs = Dirs {
        env: open(dir).map_err(sys_err("open the environment's records"))?,
        state: open(Path::new(STATE_DIR)).map_err(sys_err("open the state directory"))?,
        homes: open(Path::new(HOMES_DIR)).map_err(sys_err("open /home"))?,
    };
    let shares = shares::parse(&read(Path::new("/proc/self/mountinfo"))?);
    let plan = plan::plan(
        &plan::Request {
            name,
            uid: user.uid,
            gid: user.gid,
            host_uid,
            host_gid,
            project: project.as_deref(),
            shares: &shares,
            home: &crate::homes::data_dir(name).to_string_lossy(),
            admin_home,
            scratch_kib,
            nameservers,
            git_writes: crate::ensure::recorded_settings(dir).git_writes,
        },
        |d| Path::new(d).is_dir(),
    );
    apply(&plan.steps, &mut Kernel)?;

    let socket = match project {
        Some(_) => format!("{SOCKETS_DIR}/{name}.sock"),
        // A spare listens on a name of its own until the pool publishes it.
        None => format!("{SOCKETS_DIR}/.{name}.sock"),
    };
    let mut server_args = vec![version.clone(), socket, name.clone()];
    server_args.extend([user.uid, user.gid].map(|i| i.to_string()));
    server_args.push(project.unwrap_or_default());
    server_args.extend([admin, host_uid, host_gid].map(|i| i.to_string()));
    server_args.extend(plan.roots);
    // SysV objects, message queues, loopback and abstract sockets are the
    // environment's own, and its cgroup (the unit's) is the root of the
    // cgroups it sees; the PID namespace's first process is the child.
    sys::unshare(
        libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP,
    )
    .map_err(sys_err("make the environment's namespaces"))?;
    // SAFETY: this process has no other thread (bindfs ran to its end).
    match unsafe { libc::fork() } {
        -1 => Err(sys_err("start the environment's first process")(
            io::Error::last_os_error(),
        )),
        0 => {
            let e = first_process(&server_args, ready, dirs);
            eprintln!("llima-box-guest-agent env-holder: {e}");
            // SAFETY: ends the child without the parent's exit handlers.
            unsafe { libc::_exit(125) }
        }
        pid => {
            drop((ready, dirs));
            Ok(wait_for(pid))
        }
    }
}

/// PID 1 of the environment: its own /proc, /sys (its network devices
/// only, not the guest's), cgroups (its own subtree) and message queues,
/// then the spawn server. Returns only why the server could not start.
fn first_process(args: &[String], ready: fs::File, dirs: Dirs) -> io::Error {
    let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let read_only = hidden | libc::MS_RDONLY;
    for (fs, target, flags) in [
        ("proc", "/proc", hidden),
        ("sysfs", "/sys", read_only),
        ("cgroup2", "/sys/fs/cgroup", read_only),
    ] {
        if let Err(e) = sys::mount(Some(fs), target, Some(fs), flags, None) {
            return io::Error::new(e.kind(), format!("cannot mount {target}: {e}"));
        }
    }
    // The guest's queues are writable by every environment.
    if Path::new("/dev/mqueue").is_dir()
        && let Err(e) = sys::mount(
            Some("llima-box-mqueue"),
            "/dev/mqueue",
            Some("mqueue"),
            hidden,
            None,
        )
    {
        return e;
    }
    match env_server::serve(args, ready, dirs) {
        Ok(()) => io::Error::other("the server stopped listening"),
        Err(e) => e,
    }
}

/// The exit status of `pid` as a shell reports it. INT and TERM wait
/// until the environment's first process has ended (systemd sends them to
/// all of the unit's processes).
fn wait_for(pid: libc::pid_t) -> u8 {
    // SAFETY: plain signal-set calls on a local set; one thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    sys::wait_status(pid)
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Mkdir { path, .. } => write!(f, "make the directory {path}"),
            Step::Tmpfs { target, .. } => write!(f, "mount a tmpfs on {target}"),
            Step::Bind { source, target, .. } => write!(f, "bind {source} on {target}"),
            Step::Remap {
                raw, target, idmap, ..
            } => {
                let how = if *idmap { "ID-mapped bind" } else { "bindfs" };
                write!(f, "remap {raw} at {target} ({how})")
            }
            Step::Chown { path, .. } => write!(f, "give {path} to the environment's user"),
            Step::ProtectGit { project, .. } => {
                write!(f, "make the git settings and hooks in {project} read-only")
            }
            Step::Resolver { .. } => write!(f, "give the environment its resolver list"),
        }
    }
}

/// Carries out steps: the kernel, or a test's record.
trait Executor {
    fn run(&mut self, step: &Step) -> io::Result<()>;
}

/// Carries out `steps` in order, stopping at the first that fails; only
/// the resolver list is optional (without it the guest's applies, which
/// may not answer in the environment, but everything else works).
fn apply(steps: &[Step], exec: &mut impl Executor) -> Result<(), Error> {
    for step in steps {
        match exec.run(step) {
            Ok(()) => {}
            Err(e) if matches!(step, Step::Resolver { .. }) => {
                eprintln!("llima-box-guest-agent env-holder: cannot {step}: {e}");
            }
            Err(source) => {
                return Err(Error::Step {
                    step: step.to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

struct Kernel;

impl Executor for Kernel {
    fn run(&mut self, step: &Step) -> io::Result<()> {
        match step {
            Step::Mkdir { path, mode } => {
                fs::DirBuilder::new().recursive(true).create(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            }
            Step::Tmpfs {
                target,
                source,
                mode,
                size_kib,
            } => sys::mount(
                Some(source),
                target,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&format!("mode={mode:o},size={size_kib}k")),
            ),
            Step::Bind {
                source,
                target,
                recursive,
            } => {
                let Some(dir) = sys::open_dir_exact(source)? else {
                    return Err(io::Error::other(
                        "a symbolic link is on the way (was a directory replaced by a link?)",
                    ));
                };
                sys::bind(&sys::fd_path(&dir), target, *recursive)
            }
            Step::Remap {
                raw,
                target,
                host,
                env,
                idmap,
            } => {
                if *idmap {
                    match remap_by_idmap(raw, target, *host, *env) {
                        Ok(()) => return Ok(()),
                        // An older kernel or daemon: the notice says why
                        // file work is slower here.
                        Err(e) => eprintln!(
                            "llima-box-guest-agent env-holder: notice: no ID-mapped mount of {raw} ({e}); remapping through bindfs instead (slower)"
                        ),
                    }
                }
                let status = std::process::Command::new("bindfs")
                    .arg(format!("--map={}/{}:@{}/@{}", host.0, env.0, host.1, env.1))
                    .args(["--chown-ignore", "--chgrp-ignore"])
                    .args(["-o", "allow_other,nosuid,nodev", "-o", BINDFS_TUNING])
                    .args([raw, target])
                    .status()?;
                if status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("bindfs failed ({status})")))
                }
            }
            Step::Chown { path, uid, gid } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
            }
            Step::ProtectGit { project, scan } => {
                crate::protect_git::protect_found(Path::new(project), Path::new(scan)).map(drop)
            }
            Step::Resolver { nameservers } => {
                let list = format!("{STAGE_DIR}/resolv.conf");
                let mut file = fs::File::create(&list)?;
                for ns in nameservers {
                    writeln!(file, "nameserver {ns}")?;
                }
                fs::set_permissions(&list, fs::Permissions::from_mode(0o644))?;
                sys::bind(&list, RESOLV_CONF, false)
            }
        }
    }
}

/// Binds `raw` on `target` with the host user's IDs shown as the
/// environment user's: on disk first, then as seen (what the mount's user
/// namespace has inside and outside). Any other owner shows as nobody, and
/// a chown to anyone else fails (EOVERFLOW).
fn remap_by_idmap(raw: &str, target: &str, host: (u32, u32), env: (u32, u32)) -> io::Result<()> {
    let userns = sys::user_namespace(
        &format!("{} {} 1\n", host.0, env.0),
        &format!("{} {} 1\n", host.1, env.1),
    )?;
    let source = sys::open_dir_exact(raw)?.ok_or_else(|| io::Error::other("not a directory"))?;
    sys::bind_idmapped(&source, target, &userns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the steps run and fails those whose description contains
    /// `fail`.
    struct Record {
        ran: Vec<String>,
        fail: &'static str,
    }

    impl Executor for Record {
        fn run(&mut self, step: &Step) -> io::Result<()> {
            self.ran.push(step.to_string());
            if step.to_string().contains(self.fail) {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(())
            }
        }
    }

    fn steps() -> Vec<Step> {
        vec![
            Step::Mkdir {
                path: "/a".into(),
                mode: 0o755,
            },
            Step::Resolver {
                nameservers: vec!["10.0.2.3".into()],
            },
            Step::Bind {
                source: "/a".into(),
                target: "/b".into(),
                recursive: false,
            },
            Step::ProtectGit {
                project: "/b".into(),
                scan: "/s/b".into(),
            },
        ]
    }

    #[test]
    fn stops_at_the_first_failure_and_names_the_step() {
        let mut rec = Record {
            ran: vec![],
            fail: "bind",
        };
        let err = apply(&steps(), &mut rec).unwrap_err().to_string();
        assert_eq!(rec.ran.len(), 3, "{:?}", rec.ran);
        assert!(err.starts_with("cannot bind /a on /b: "), "{err}");
    }

    #[test]
    fn goes_on_without_a_resolver_list() {
        let mut rec = Record {
            ran: vec![],
            fail: "resolver",
        };
        apply(&steps(), &mut rec).unwrap();
        assert_eq!(rec.ran.len(), 4);
    }
}

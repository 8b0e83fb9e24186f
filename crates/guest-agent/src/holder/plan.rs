//! An environment's mount plan: what its mount namespace is made of, as a
//! pure function of the request, so that every rule is tested here and the
//! code that mounts only follows the steps.
//!
//! The view hides everything that could hold another user's or another
//! project's data (the homes, root's, the shares, the temporary and
//! runtime directories, the agent's state) under empty tmpfs mounts, then
//! brings back the environment's own home and its project, remapped so
//! that the host user's files are the environment user's.

use llima_box_proto::paths::{HOMES_DIR, STAGE_DIR, STATE_DIR};

use super::shares::{Kind, Share};
use crate::env_server::within;

/// Directories whose content belongs to others, hidden in every
/// environment (the shares and the admin's home come on top).
const HIDDEN: [&str; 9] = [
    HOMES_DIR,
    "/root",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/run/lock",
    "/run/user",
    "/mnt/lima-cidata",
    STATE_DIR,
];
/// The hidden directories that everyone may write: the environment gets
/// its own instead of an empty read-only view, each a directory of one
/// tmpfs (the stage's `scratch`), so that together they hold at most its
/// size: apart, they could fill more memory than the environment may use,
/// and tmpfs pages are not freed by killing processes.
const SCRATCH: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];
/// Where commands that asked for the forwarded SSH agent find its socket
/// (a tmpfs of the command's own is mounted there).
pub const AGENT_DIR: &str = "/run/user/agent";
/// The guest's resolver list, replaced when it names a stub on the guest's
/// loopback (not the environment's).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the environment is: its user, its project (none for a spare) and
/// the facts of the guest it is built in.
pub struct Request<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// The host user, whose files the remap shows as the environment's.
    pub host_uid: u32,
    pub host_gid: u32,
    pub project: Option<&'a str>,
    /// The host's shares mounted in the guest.
    pub shares: &'a [Share],
    /// Where the environment's home keeps its files (see `homes`).
    pub home: &'a str,
    /// The guest account of the host user (the admin), hidden too.
    pub admin_home: Option<&'a str>,
    /// The size of the tmpfs of the scratch directories together.
    pub scratch_kib: u64,
    /// The environment's own resolver list; empty: the guest's.
    pub nameservers: &'a [String],
    /// The project's settings allow writes to its git metadata.
    pub git_writes: bool,
}

#[derive(Debug, PartialEq)]
pub enum Step {
    /// Makes the directory and its missing parents; the directory gets
    /// exactly `mode` (the umask does not apply).
    Mkdir {
        path: String,
        mode: u32,
    },
    Tmpfs {
        target: String,
        source: &'static str,
        mode: u32,
        size_kib: u64,
    },
    /// A bind mount of exactly the directory named (no symbolic link on
    /// the way), with the mounts below it when `recursive`.
    Bind {
        source: String,
        target: String,
        recursive: bool,
    },
    /// The ownership remap of `raw` at `target`: the host user's files
    /// appear as the environment user's and back. By a kernel ID mapping
    /// when `idmap` (no process serves it), else through FUSE (bindfs).
    Remap {
        raw: String,
        target: String,
        host: (u32, u32),
        env: (u32, u32),
        idmap: bool,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// Git's settings and hooks of the project's repositories read-only.
    ProtectGit {
        project: String,
        /// The same directory without the remap, where the repositories
        /// are looked for (faster than through FUSE).
        scan: String,
    },
    /// A resolver list of the environment's own over the guest's.
    Resolver {
        nameservers: Vec<String>,
    },
}

pub struct Plan {
    /// The shares remapped, in order: the I-th is at the stage's `remap/I`.
    pub roots: Vec<String>,
    pub steps: Vec<Step>,
}

fn mkdir(path: impl Into<String>, mode: u32) -> Step {
    Step::Mkdir {
        path: path.into(),
        mode,
    }
}

fn bind(source: impl Into<String>, target: impl Into<String>) -> Step {
    Step::Bind {
        source: source.into(),
        target: target.into(),
        recursive: false,
    }
}

/// The deepest share holding `path`, or `path` itself when none does.
fn share_of(path: &str, shares: &[Share]) -> String {
    shares
        .iter()
        .map(|s| s.target.as_str())
        .filter(|s| within(path, s))
        .max_by_key(|s| s.len())
        .unwrap_or(path)
        .to_owned()
}

/// The steps, in order, for `req`; `is_dir` says what exists in the guest
/// (only existing directories are hidden).
pub fn plan(req: &Request, is_dir: impl Fn(&str) -> bool) -> Plan {
    let roots = match req.project {
        Some(p) => vec![share_of(p, req.shares)],
        // A spare remaps every writable share, so that whichever project
        // claims it can be bound in.
        None => req
            .shares
            .iter()
            .filter(|s| s.writable)
            .map(|s| s.target.clone())
            .collect(),
    };
    let stage = |sub: &str| format!("{STAGE_DIR}/{sub}");
    let home = format!("{HOMES_DIR}/{}", req.name);
    let mut steps = vec![
        // Mount points in the guest's own tree, made before they are used.
        mkdir(STAGE_DIR, 0o700),
        mkdir("/run/user", 0o755),
        Step::Tmpfs {
            target: STAGE_DIR.into(),
            source: "llima-box-stage",
            mode: 0o700,
            size_kib: 1024,
        },
    ];
    for sub in ["raw", "remap", "home", "host-tmp", "scratch"] {
        steps.push(mkdir(stage(sub), 0o700));
    }
    steps.push(Step::Tmpfs {
        target: stage("scratch"),
        source: "llima-box-tmp",
        mode: 0o755,
        size_kib: req.scratch_kib,
    });
    let scratch_of = |dir: &str| stage(&format!("scratch/{}", dir[1..].replace('/', "-")));
    for dir in SCRATCH {
        steps.push(mkdir(scratch_of(dir), 0o1777));
    }
    for (i, root) in roots.iter().enumerate() {
        let (raw, remap) = (stage(&format!("raw/{i}")), stage(&format!("remap/{i}")));
        steps.push(mkdir(&raw, 0o700));
        steps.push(mkdir(&remap, 0o700));
        steps.push(bind(root, &raw));
        steps.push(Step::Remap {
            raw,
            target: remap,
            host: (req.host_uid, req.host_gid),
            env: (req.uid, req.gid),
            idmap: req
                .shares
                .iter()
                .any(|s| &s.target == root && s.kind == Kind::Virtiofs),
        });
    }
    steps.push(bind(req.home, stage("home")));
    // Root's only way to a session's forwarded agent once /tmp is private.
    steps.push(Step::Bind {
        source: "/tmp".into(),
        target: stage("host-tmp"),
        recursive: true,
    });

    let mut hidden: Vec<&str> = HIDDEN.to_vec();
    hidden.extend(req.shares.iter().map(|s| s.target.as_str()));
    hidden.extend(req.admin_home.filter(|h| *h != "/"));
    hidden.sort_unstable();
    hidden.dedup();
    // Parents first; what lies in a hidden directory needs no mount of its own.
    let mut done: Vec<&str> = Vec::new();
    for dir in hidden {
        if done.iter().any(|d| within(dir, d)) || !is_dir(dir) {
            continue;
        }
        steps.push(if SCRATCH.contains(&dir) {
            bind(scratch_of(dir), dir)
        } else {
            Step::Tmpfs {
                target: dir.into(),
                source: "llima-box-hidden",
                mode: 0o755,
                size_kib: 1024,
            }
        });
        done.push(dir);
    }

    let runtime_dir = format!("/run/user/{}", req.uid);
    steps.push(mkdir(&runtime_dir, 0o700));
    steps.push(Step::Chown {
        path: runtime_dir,
        uid: req.uid,
        gid: req.gid,
    });
    steps.push(mkdir(AGENT_DIR, 0o755));
    steps.push(mkdir(&home, 0o755));
    steps.push(bind(stage("home"), &home));
    if let Some(project) = req.project {
        let rest = &project[roots[0].len()..];
        steps.push(mkdir(project, 0o755));
        steps.push(bind(format!("{}{rest}", stage("remap/0")), project));
        if !req.git_writes {
            steps.push(Step::ProtectGit {
                project: project.into(),
                scan: format!("{}{rest}", stage("raw/0")),
            });
        }
    }
    if !req.nameservers.is_empty() {
        steps.push(Step::Resolver {
            nameservers: req.nameservers.to_vec(),
        });
    }
    Plan { roots, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(target: &str, writable: bool) -> Share {
        Share {
            target: target.into(),
            writable,
            kind: Kind::NineP,
        }
    }

    fn request<'a>(project: Option<&'a str>, shares: &'a [Share]) -> Request<'a> {
        Request {
            name: "app",
            uid: 70001,
            gid: 70002,
            host_uid: 1000,
            host_gid: 100,
            project,
            shares,
            home: "/var/lib/llima-box/homes/70001",
            admin_home: Some("/home/u.linux"),
            scratch_kib: 4096,
            nameservers: &[],
            git_writes: false,
        }
    }

    fn tmpfs_targets(steps: &[Step]) -> Vec<&str> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Tmpfs { target, .. } => Some(target.as_str()),
                _ => None,
            })
            .collect()
    }

    fn binds(steps: &[Step]) -> Vec<(&str, &str)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind { source, target, .. } => Some((source.as_str(), target.as_str())),
                _ => None,
            })
            .collect()
    }

    fn position(steps: &[Step], wanted: &Step) -> usize {
        steps
            .iter()
            .position(|s| s == wanted)
            .unwrap_or_else(|| panic!("{wanted:?} not in {steps:#?}"))
    }

    #[test]
    fn a_project_gets_its_deepest_share_remapped_and_bound_at_its_path() {
        let shares = [share("/home/u", false), share("/home/u/work", true)];
        let p = plan(&request(Some("/home/u/work/proj"), &shares), |_| true);
        assert_eq!(p.roots, ["/home/u/work"]);
        let remap = Step::Remap {
            raw: format!("{STAGE_DIR}/raw/0"),
            target: format!("{STAGE_DIR}/remap/0"),
            host: (1000, 100),
            env: (70001, 70002),
            idmap: false,
        };
        let project = bind(format!("{STAGE_DIR}/remap/0/proj"), "/home/u/work/proj");
        assert!(position(&p.steps, &remap) < position(&p.steps, &project));
        assert!(binds(&p.steps).contains(&("/home/u/work", "/run/llima-box/stage/raw/0")));
        // Looked for without the remap, made read-only in the view.
        let protect = Step::ProtectGit {
            project: "/home/u/work/proj".into(),
            scan: format!("{STAGE_DIR}/raw/0/proj"),
        };
        assert!(position(&p.steps, &project) < position(&p.steps, &protect));
        // Unless the project's settings allow writes.
        let mut allowed = request(Some("/home/u/work/proj"), &shares);
        allowed.git_writes = true;
        let p2 = plan(&allowed, |_| true);
        assert!(!p2.steps.contains(&protect) && p2.steps.len() == p.steps.len() - 1);
        assert_eq!(
            p.steps
                .iter()
                .filter(|s| matches!(s, Step::Remap { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn only_a_virtiofs_share_is_remapped_by_the_kernel() {
        let mut shares = [share("/home/u", true), share("/data", true)];
        shares[1].kind = Kind::Virtiofs;
        let idmaps = |p: &Plan| -> Vec<bool> {
            p.steps
                .iter()
                .filter_map(|s| match s {
                    Step::Remap { idmap, .. } => Some(*idmap),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            idmaps(&plan(&request(None, &shares), |_| true)),
            [false, true]
        );
        assert_eq!(
            idmaps(&plan(&request(Some("/data/p"), &shares), |_| true)),
            [true]
        );
        assert_eq!(
            idmaps(&plan(&request(Some("/srv/p"), &shares), |_| true)),
            [false]
        );
    }

    #[test]
    fn a_project_on_no_share_is_its_own_root() {
        let p = plan(&request(Some("/srv/p"), &[share("/home/u", true)]), |_| {
            true
        });
        assert_eq!(p.roots, ["/srv/p"]);
        assert!(binds(&p.steps).contains(&("/run/llima-box/stage/remap/0", "/srv/p")));
    }

    #[test]
    fn a_spare_remaps_every_writable_share_and_binds_no_project() {
        let shares = [
            share("/home/u", false),
            share("/tmp/lima", true),
            share("/data", true),
        ];
        let p = plan(&request(None, &shares), |_| true);
        assert_eq!(p.roots, ["/tmp/lima", "/data"]);
        assert!(!p.steps.iter().any(|s| matches!(s, Step::ProtectGit { .. })));
        let targets: Vec<_> = binds(&p.steps)
            .into_iter()
            .filter(|(s, _)| !s.contains("/scratch/"))
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            targets,
            [
                "/run/llima-box/stage/raw/0",
                "/run/llima-box/stage/raw/1",
                "/run/llima-box/stage/home",
                "/run/llima-box/stage/host-tmp",
                "/home/app"
            ]
        );
    }

    #[test]
    fn hides_everything_shared_once_parents_first_and_only_what_exists() {
        let shares = [
            share("/home/u", true),
            share("/tmp/lima", true),
            share("/data/x", true),
        ];
        let p = plan(&request(Some("/home/u/p"), &shares), |d| {
            d != "/mnt/lima-cidata"
        });
        assert_eq!(
            tmpfs_targets(&p.steps),
            [
                STAGE_DIR,
                "/run/llima-box/stage/scratch",
                "/data/x",
                "/home",
                "/root",
                "/run/user",
                "/var/lib/llima-box",
            ]
        );
        let hidden_by_binds: Vec<_> = binds(&p.steps)
            .into_iter()
            .filter(|(s, _)| s.starts_with("/run/llima-box/stage/scratch/"))
            .collect();
        assert_eq!(
            hidden_by_binds,
            [
                ("/run/llima-box/stage/scratch/dev-shm", "/dev/shm"),
                ("/run/llima-box/stage/scratch/run-lock", "/run/lock"),
                ("/run/llima-box/stage/scratch/tmp", "/tmp"),
                ("/run/llima-box/stage/scratch/var-tmp", "/var/tmp"),
            ]
        );
    }

    #[test]
    fn the_scratch_directories_share_one_sized_tmpfs_the_rest_is_tiny_and_closed() {
        let p = plan(&request(Some("/home/u/p"), &[]), |_| true);
        for s in &p.steps {
            match s {
                Step::Tmpfs {
                    target,
                    mode,
                    size_kib,
                    ..
                } => {
                    let (want_mode, want_size) = match target.as_str() {
                        STAGE_DIR => (0o700, 1024),
                        "/run/llima-box/stage/scratch" => (0o755, 4096),
                        _ => (0o755, 1024),
                    };
                    assert_eq!((*mode, *size_kib), (want_mode, want_size), "{target}");
                }
                Step::Mkdir { path, mode } if path.contains("/scratch/") => {
                    assert_eq!(*mode, 0o1777, "{path}");
                }
                _ => {}
            }
        }
        // Mounted before its directories are made in it.
        let mounted = position(
            &p.steps,
            &Step::Tmpfs {
                target: "/run/llima-box/stage/scratch".into(),
                source: "llima-box-tmp",
                mode: 0o755,
                size_kib: 4096,
            },
        );
        let made = position(&p.steps, &mkdir("/run/llima-box/stage/scratch/tmp", 0o1777));
        assert!(mounted < made);
    }

    #[test]
    fn the_home_is_stashed_before_hiding_and_bound_back_after() {
        let p = plan(&request(Some("/home/u/p"), &[]), |_| true);
        // Its files are where the request says (the homes' filesystem, in
        // the state directory, hidden too), its view at /home/NAME.
        let stash = position(
            &p.steps,
            &bind(
                "/var/lib/llima-box/homes/70001",
                "/run/llima-box/stage/home",
            ),
        );
        let hide = |dir: &str| {
            p.steps
                .iter()
                .position(|s| matches!(s, Step::Tmpfs { target, .. } if target == dir))
                .unwrap()
        };
        let back = position(&p.steps, &bind("/run/llima-box/stage/home", "/home/app"));
        for dir in ["/home", STATE_DIR] {
            assert!(stash < hide(dir) && hide(dir) < back, "{dir}");
        }
        // The user's runtime directory is its own.
        assert!(p.steps.contains(&Step::Chown {
            path: "/run/user/70001".into(),
            uid: 70001,
            gid: 70002
        }));
    }

    #[test]
    fn a_root_admin_home_is_not_hidden_and_resolvers_only_when_given() {
        let mut req = request(Some("/home/u/p"), &[]);
        req.admin_home = Some("/");
        let p = plan(&req, |_| true);
        assert!(!tmpfs_targets(&p.steps).contains(&"/"));
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Resolver { .. })));
        let servers = ["192.168.5.3".to_string()];
        req.nameservers = &servers;
        let p = plan(&req, |_| true);
        assert_eq!(
            p.steps.last(),
            Some(&Step::Resolver {
                nameservers: servers.to_vec()
            })
        );
    }
}

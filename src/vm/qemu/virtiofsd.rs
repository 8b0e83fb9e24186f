//! virtiofsd, the vhost-user daemon behind `mountType: virtiofs` (one per
//! mount, as Lima runs it): finding a suitable one, its command line, and
//! noticing when it runs out of file descriptors.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::vm::layout;

/// The oldest virtiofsd that lets the guest make ID-mapped mounts of a
/// share (it announces FUSE_ALLOW_IDMAP).
pub(crate) const MIN_VERSION: (u32, u32) = (1, 13);

/// How to get a good one, for every error that needs one.
const INSTALL: &str = "install virtiofsd 1.13 or newer (your distribution's `virtiofsd` package, or `cargo install virtiofsd --locked` with libseccomp-dev and libcap-ng-dev), or point LLIMA_BOX_VIRTIOFSD at one";

#[derive(Debug, thiserror::Error)]
pub(crate) enum VirtiofsdError {
    #[error("no virtiofsd found on PATH or in QEMU's vhost-user descriptors: {INSTALL}")]
    NotFound,
    #[error(
        "{0} is QEMU's old C virtiofsd, which needs root and cannot share with ID mapping: {INSTALL}"
    )]
    OldC(PathBuf),
    #[error("{path} is virtiofsd {version}, too old to let the guest map IDs: {INSTALL}")]
    TooOld { path: PathBuf, version: String },
    #[error("{path} does not say which virtiofsd it is ({why}): {INSTALL}")]
    Unusable { path: PathBuf, why: String },
}

/// A virtiofsd that passed the version check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Virtiofsd {
    pub path: PathBuf,
    pub version: String,
}

/// What `--version` printed: the Rust daemon prints `virtiofsd 1.14.0`,
/// QEMU's C daemon `virtiofsd version 7.2.22 (...)`.
fn check_version(path: &Path, output: &str) -> Result<Virtiofsd, VirtiofsdError> {
    let first = output.lines().next().unwrap_or("").trim();
    let mut words = first.split_whitespace();
    if words.next() != Some("virtiofsd") {
        return Err(VirtiofsdError::Unusable {
            path: path.to_path_buf(),
            why: format!("--version printed {first:?}"),
        });
    }
    let version = match words.next() {
        Some("version") => return Err(VirtiofsdError::OldC(path.to_path_buf())),
        Some(v) => v.trim_start_matches('v'),
        None => "",
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(VirtiofsdError::Unusable {
            path: path.to_path_buf(),
            why: format!("cannot read a version in {first:?}"),
        });
    };
    if (major, minor) < MIN_VERSION {
        return Err(VirtiofsdError::TooOld {
            path: path.to_path_buf(),
            version: version.to_string(),
        });
    }
    Ok(Virtiofsd {
        path: path.to_path_buf(),
        version: version.to_string(),
    })
}

/// Where to look, in order: QEMU's vhost-user descriptors (the user's,
/// then those of the prefix QEMU is installed in, then /usr's and /etc's),
/// then `PATH`, then where distributions put it outside `PATH`.
fn candidates(
    home: Option<&Path>,
    qemu: &Path,
    path_var: Option<&std::ffi::OsStr>,
    read_dir: impl Fn(&Path) -> Vec<(PathBuf, String)>,
) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(h) = home {
        dirs.push(h.join(".local/share/qemu/vhost-user"));
    }
    if let Some(prefix) = qemu.parent().and_then(Path::parent) {
        dirs.push(prefix.join("share/qemu/vhost-user"));
    }
    dirs.push(PathBuf::from("/usr/share/qemu/vhost-user"));
    dirs.push(PathBuf::from("/etc/qemu/vhost-user"));
    dirs.dedup();

    let mut found = Vec::new();
    for dir in dirs {
        let mut files = read_dir(&dir);
        files.sort();
        for (_, text) in files {
            #[derive(serde::Deserialize)]
            struct Descriptor {
                #[serde(rename = "type")]
                kind: String,
                binary: PathBuf,
            }
            if let Ok(d) = serde_json::from_str::<Descriptor>(&text)
                && d.kind == "fs"
            {
                found.push(d.binary);
            }
        }
    }
    if let Some(p) = path_var {
        found.extend(std::env::split_paths(p).map(|d| d.join("virtiofsd")));
    }
    found.extend(["/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"].map(PathBuf::from));
    let mut seen = Vec::new();
    found.retain(|p| {
        let new = !seen.contains(p);
        seen.push(p.clone());
        new
    });
    found
}

/// The first suitable virtiofsd: `$LLIMA_BOX_VIRTIOFSD` when set (and then
/// only that one), else the first good [`candidates`] entry. When none is
/// good, the error is about the first one found (an old daemon says more
/// than "none").
pub(crate) fn find(qemu: &Path) -> Result<Virtiofsd, VirtiofsdError> {
    let probe = |p: &Path| -> Option<Result<Virtiofsd, VirtiofsdError>> {
        if !p.is_file() {
            return None;
        }
        Some(
            match std::process::Command::new(p)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
            {
                Ok(out) => check_version(p, &String::from_utf8_lossy(&out.stdout)),
                Err(e) => Err(VirtiofsdError::Unusable {
                    path: p.to_path_buf(),
                    why: e.to_string(),
                }),
            },
        )
    };
    if let Some(p) = std::env::var_os("LLIMA_BOX_VIRTIOFSD").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return probe(&p).unwrap_or(Err(VirtiofsdError::Unusable {
            path: p,
            why: "LLIMA_BOX_VIRTIOFSD names no file".into(),
        }));
    }
    let read_dir = |d: &Path| -> Vec<(PathBuf, String)> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| Some((p.clone(), std::fs::read_to_string(&p).ok()?)))
            .collect()
    };
    let home = crate::vm::dirs::home_dir().ok();
    let mut first_error = None;
    for c in candidates(
        home.as_deref(),
        qemu,
        std::env::var_os("PATH").as_deref(),
        read_dir,
    ) {
        match probe(&c) {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        }
    }
    Err(first_error.unwrap_or(VirtiofsdError::NotFound))
}

/// The socket of mount `index` in the instance directory, as Lima names it.
pub(crate) fn socket(instance_dir: &Path, index: usize) -> PathBuf {
    instance_dir.join(layout::virtiofsd_sock(index))
}

/// The daemons still serving sockets of `instance_dir`, from /proc: a
/// killed host agent leaves them behind, and each removes its socket path
/// as it exits, which would take the next start's socket with it.
pub(crate) fn daemons_of(instance_dir: &Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| serves(&c, instance_dir))
        })
        .collect()
}

/// Whether a NUL-separated command line is a daemon of ours for a socket
/// in `instance_dir`.
fn serves(cmdline: &[u8], instance_dir: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let is_virtiofsd = args.next().is_some_and(|exe| exe.ends_with(b"virtiofsd"));
    let mut args = args.skip_while(|a| *a != b"--socket-path");
    is_virtiofsd
        && args.next().is_some()
        && args.next().is_some_and(|sock| {
            let sock = Path::new(std::ffi::OsStr::from_bytes(sock));
            sock.parent() == Some(instance_dir)
                && sock
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("virtiofsd-") && n.ends_with(".sock"))
        })
}

/// The daemon's arguments for one mount. Unprivileged with no sandbox of
/// its own (a namespace sandbox needs user namespaces, which Ubuntu hosts
/// restrict; it can do only what the user can). `--cache never` lets the
/// guest forget every inode it stops using (entries expire at once), so
/// the daemon's descriptors (one per inode the guest holds) follow what is
/// in use, not what was ever seen: a tree of more files than the user's
/// descriptor limit (raised to the hard one) can be walked whole. Host
/// mounts below the share are shown as part of it, so an ID-mapped bind in
/// the guest covers them too.
pub(crate) fn args(socket: &Path, shared_dir: &Path, readonly: bool, nofile: u64) -> Vec<String> {
    let mut a: Vec<String> = [
        "--socket-path",
        &socket.to_string_lossy(),
        "--shared-dir",
        &shared_dir.to_string_lossy(),
        "--sandbox",
        "none",
        "--cache",
        "never",
        "--allow-mmap",
        "--no-announce-submounts",
        "--rlimit-nofile",
        &nofile.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if readonly {
        a.push("--readonly".into());
    }
    a
}

/// The hard limit on open files, which an unprivileged daemon may raise
/// its soft limit to.
pub(crate) fn nofile_hard_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20)
}

/// Open descriptors against the soft limit of process `pid`, from /proc.
pub(crate) fn descriptor_use(pid: u32) -> Option<(u64, u64)> {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    Some((open, soft_nofile(&limits)?))
}

fn soft_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Nine in ten of the limit: past this the guest's next lookups fail
/// with EMFILE, so the log should already say why.
pub(crate) fn nearly_exhausted(open: u64, limit: u64) -> bool {
    open * 10 >= limit * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_daemons_of_an_instance() {
        let dir = Path::new("/l/d");
        let line = |args: &[&str]| args.join("\0").into_bytes();
        let ours = args(&socket(dir, 1), Path::new("/home/u"), false, 10);
        let mut cmd = vec!["/usr/local/bin/virtiofsd"];
        cmd.extend(ours.iter().map(String::as_str));
        assert!(serves(&line(&cmd), dir));
        assert!(!serves(&line(&cmd), Path::new("/l/other")));
        assert!(!serves(&line(&cmd), Path::new("/l")));
        cmd[0] = "/usr/bin/qemu-system-x86_64";
        assert!(!serves(&line(&cmd), dir));
        assert!(!serves(
            &line(&["virtiofsd", "--socket-path", "/l/d/qmp.sock"]),
            dir
        ));
        assert!(!serves(&line(&["virtiofsd", "--socket-path"]), dir));
    }

    #[test]
    fn takes_the_rust_daemon_from_1_13_and_names_what_it_rejects() {
        let p = Path::new("/x/virtiofsd");
        assert_eq!(
            check_version(p, "virtiofsd 1.14.0\n").unwrap().version,
            "1.14.0"
        );
        assert!(check_version(p, "virtiofsd 1.13.2").is_ok());
        let old = check_version(p, "virtiofsd 1.12.0").unwrap_err();
        assert!(matches!(old, VirtiofsdError::TooOld { .. }), "{old}");
        assert!(old.to_string().contains("1.12.0") && old.to_string().contains("cargo install"));
        let c = check_version(
            p,
            "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright",
        )
        .unwrap_err();
        assert!(matches!(c, VirtiofsdError::OldC(_)), "{c}");
        assert!(matches!(
            check_version(p, "something else 1.2"),
            Err(VirtiofsdError::Unusable { .. })
        ));
        assert!(matches!(
            check_version(p, "virtiofsd dev-build"),
            Err(VirtiofsdError::Unusable { .. })
        ));
    }

    #[test]
    fn looks_in_descriptors_first_then_path_then_libexec() {
        let read_dir = |d: &Path| -> Vec<(PathBuf, String)> {
            match d.to_str().unwrap() {
                "/opt/q/share/qemu/vhost-user" => vec![
                    (
                        d.join("60-gpu.json"),
                        r#"{"type":"gpu","binary":"/opt/q/gpu"}"#.into(),
                    ),
                    (
                        d.join("50-fs.json"),
                        r#"{"description":"fs","type":"fs","binary":"/opt/q/libexec/virtiofsd"}"#
                            .into(),
                    ),
                ],
                "/home/u/.local/share/qemu/vhost-user" => {
                    vec![(d.join("bad.json"), "{".into())]
                }
                _ => vec![],
            }
        };
        let c = candidates(
            Some(Path::new("/home/u")),
            Path::new("/opt/q/bin/qemu-system-x86_64"),
            Some(std::ffi::OsStr::new("/usr/local/bin:/usr/bin")),
            read_dir,
        );
        assert_eq!(
            c,
            [
                "/opt/q/libexec/virtiofsd",
                "/usr/local/bin/virtiofsd",
                "/usr/bin/virtiofsd",
                "/usr/libexec/virtiofsd",
                "/usr/lib/virtiofsd",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn one_unprivileged_daemon_per_mount_that_lets_the_guest_forget() {
        let a = args(
            Path::new("/l/d/virtiofsd-1.sock"),
            Path::new("/home/u"),
            true,
            20000,
        )
        .join(" ");
        assert_eq!(
            a,
            "--socket-path /l/d/virtiofsd-1.sock --shared-dir /home/u --sandbox none --cache never --allow-mmap --no-announce-submounts --rlimit-nofile 20000 --readonly"
        );
        assert_eq!(
            socket(Path::new("/l/d"), 3),
            Path::new("/l/d/virtiofsd-3.sock")
        );
    }

    #[test]
    fn reads_the_soft_limit_and_warns_near_it() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              unlimited            unlimited            seconds\nMax open files            20000                20000                files\n";
        assert_eq!(soft_nofile(limits), Some(20000));
        assert!(!nearly_exhausted(17_999, 20_000));
        assert!(nearly_exhausted(18_000, 20_000));
        let mine = descriptor_use(std::process::id()).unwrap();
        assert!(mine.0 > 0 && mine.1 >= mine.0, "{mine:?}");
    }
}

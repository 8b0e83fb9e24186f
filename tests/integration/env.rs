//! Environments end to end: `shell`, `list`, `delete` and `delete-all`
//! against the local Debian test guest (see vm.rs). One VM boot serves
//! every step; `#[ignore]`d for a plain `cargo test`, tests/run runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;
use crate::ssh_support::{Agent, Pty, wait_timeout};

struct Lb {
    home: TestDir,
}

impl Drop for Lb {
    fn drop(&mut self) {
        kill_instances(self.home.path());
    }
}

impl Lb {
    fn lima_home(&self) -> PathBuf {
        std::fs::canonicalize(self.home.path()).unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = llima_box(&self.lima_home());
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// `shell PROJECT -- ARGV...`
    fn shell(&self, project: &Path, argv: &[&str]) -> Output {
        let mut args = vec!["shell", project.to_str().unwrap(), "--"];
        args.extend_from_slice(argv);
        self.run(&args)
    }

    fn shell_ok(&self, project: &Path, argv: &[&str]) -> String {
        let out = self.shell(project, argv);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "shell {argv:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    fn list(&self) -> Vec<Value> {
        self.ok(&["list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// sha256 over every path, type, mode, owner and content below `dir`.
fn tree_hash(dir: &Path) -> String {
    fn walk(p: &Path, root: &Path, h: &mut Sha256) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap();
        h.update(format!(
            "{rel:?} {:o} {}:{}\n",
            meta.mode(),
            meta.uid(),
            meta.gid()
        ));
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, root, h);
            }
        } else if meta.is_file() {
            h.update(std::fs::read(p).unwrap());
        }
    }
    let mut h = Sha256::new();
    walk(dir, dir, &mut h);
    hex::encode(h.finalize())
}

#[test]
#[ignore = "boots a VM: run through tests/run"]
fn environments_end_to_end() {
    let home = TestDir::new();
    home.write("_config/override.yaml", &guest_override());
    let lb = Lb { home };
    let u = user();
    // Only the user's home is mounted in the guest.
    let projects = TestDir::new_in(&u.home);
    let a = projects.mkdir("alpha");
    projects.write("alpha/keep.txt", "alpha's file\n");
    projects.write("alpha/sub/deep.bin", "\u{0}\u{1}binary");
    let b = projects.mkdir("beta");
    projects.write("beta/secret", "beta only\n");
    let odd = projects.mkdir("it's a $(touch /tmp/pwned) dir");

    // Outside every mount: refused before anything boots.
    let outside = TestDir::new();
    let out = lb.shell(outside.path(), &["true"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is not shared with the VM"), "{stderr}");
    assert!(stderr.contains("writable"), "{stderr}");
    assert!(
        stderr.contains(&outside.path().display().to_string()),
        "{stderr}"
    );
    // The VM is not running yet: list says so and succeeds.
    let out = lb.run(&["list"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("the VM is stopped"), "{stderr}");

    // The first shell boots the VM and creates the environment; the exit
    // status is the command's.
    let out = lb.shell(&a, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{:?}", text(&out));

    // The environment's own user, in the project directory.
    let name_a = lb.shell_ok(&a, &["id", "-un"]).trim().to_string();
    assert!(name_a.starts_with("alpha-"), "{name_a}");
    assert_ne!(name_a, u.name);
    let pwd = lb.shell_ok(&a, &["pwd"]);
    assert_eq!(
        pwd.trim(),
        std::fs::canonicalize(&a).unwrap().to_str().unwrap()
    );

    // Piped stdin arrives byte for byte.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = lb
        .cmd(&["shell", a.to_str().unwrap(), "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        text(&out).0.split_whitespace().next().unwrap(),
        hex::encode(Sha256::digest(&data))
    );

    // Files made in the environment are the host user's on the host.
    lb.shell_ok(&a, &["sh", "-c", "printf 'made inside\\n' > new.txt"]);
    let made = a.join("new.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made inside\n");
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&made).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (u.uid, u.gid));
    }

    // The host's SSH agent reaches the environment unless refused.
    let agent = Agent::start(&lb.home);
    let out = lb
        .cmd(&["shell", a.to_str().unwrap(), "--", "ssh-add", "-l"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&agent.key_comment), "{stdout}");
    let out = lb
        .cmd(&[
            "shell",
            a.to_str().unwrap(),
            "--no-agent",
            "--",
            "sh",
            "-c",
            "ssh-add -l; echo rc=$?",
        ])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(text(&out).0.contains("rc=2"), "{:?}", text(&out));

    // On a terminal: a remote terminal of the same size.
    let pty = Pty::open(33, 101);
    let mut child = pty.spawn(&mut lb.cmd(&[
        "shell",
        a.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo \"T=$(tty) S=$(stty size) U=$(id -un)\"",
    ]));
    let t = Duration::from_secs(120);
    let at = pty.expect(0, "T=/dev/pts/", t);
    pty.expect(at, &format!("S=33 101 U={name_a}"), t);
    assert!(wait_timeout(&mut child, t).success(), "{}", pty.output());

    // Another project's files are out of reach.
    lb.shell_ok(&b, &["true"]);
    let out = lb.shell(&a, &["cat", b.join("secret").to_str().unwrap()]);
    assert!(!out.status.success(), "{:?}", text(&out));
    assert!(!text(&out).0.contains("beta only"));

    // Arguments reach the command unchanged and nothing is evaluated.
    let _ = std::fs::remove_file("/tmp/pwned");
    let echoed = lb.shell_ok(
        &odd,
        &["printf", "<%s>", "$(touch /tmp/pwned)", "a  b", "it's"],
    );
    assert_eq!(echoed, "<$(touch /tmp/pwned)><a  b><it's>");
    let pwd = lb.shell_ok(&odd, &["pwd"]);
    assert_eq!(
        pwd.trim(),
        std::fs::canonicalize(&odd).unwrap().to_str().unwrap()
    );
    let guest_pwned = lb.ok(&[
        "vm",
        "shell",
        "--",
        "sh",
        "-c",
        "test -e /tmp/pwned && echo yes || echo no",
    ]);
    assert_eq!(guest_pwned.trim(), "no");
    assert!(!Path::new("/tmp/pwned").exists());

    // list shows all three with their projects.
    let listed = lb.list();
    let project_of = |name: &str| {
        listed
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["project"].as_str().unwrap().to_string())
    };
    assert_eq!(
        project_of(&name_a).as_deref(),
        std::fs::canonicalize(&a).unwrap().to_str()
    );
    let canon_b = std::fs::canonicalize(&b).unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e["project"] == canon_b.to_str().unwrap()),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 3, "{listed:?}");
    let table = lb.ok(&["list"]);
    assert!(table.contains(&name_a), "{table}");

    // Deleting an environment leaves the project untouched.
    let before = tree_hash(&a);
    lb.ok(&["delete", a.to_str().unwrap(), "-y"]);
    assert_eq!(tree_hash(&a), before);
    let listed = lb.list();
    assert!(
        listed.iter().all(|e| e["name"] != name_a.as_str()),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 2);
    // Again: nothing to do, still fine.
    lb.ok(&["delete", &name_a, "-y"]);

    let before_b = tree_hash(&b);
    lb.ok(&["delete-all", "-y"]);
    assert!(lb.list().is_empty());
    assert_eq!(tree_hash(&b), before_b);
    assert_eq!(tree_hash(&a), before);
    lb.ok(&["delete-all", "-y"]);

    lb.ok(&["vm", "stop", "--force"]);
}

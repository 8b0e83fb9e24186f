//! Test harness: run the real binary as an unprivileged user, as a person
//! would. Under root (as CI runs) product commands run as a dedicated test
//! user created on first use; otherwise as the current user.

mod checks;
mod vm_home;

pub use checks::Checks;
pub use vm_home::VmHome;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use llima_box::testing::vm::layout;

/// The unprivileged account product commands run as.
pub const TEST_USER: &str = "llbtest";

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The user product commands run as (created when running as root).
pub fn user() -> &'static User {
    static USER: OnceLock<User> = OnceLock::new();
    USER.get_or_init(|| {
        if is_root() {
            let exists = Command::new("id")
                .arg("-u")
                .arg(TEST_USER)
                .output()
                .unwrap();
            if !exists.status.success() {
                let st = Command::new("useradd")
                    .args(["-m", "-s", "/bin/bash", TEST_USER])
                    .status()
                    .expect("useradd");
                assert!(st.success(), "useradd {TEST_USER} failed");
            }
            lookup(TEST_USER)
        } else {
            lookup(&whoami())
        }
    })
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn lookup(name: &str) -> User {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(name).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let home = line
        .trim()
        .split(':')
        .nth(5)
        .expect("home in passwd")
        .to_string();
    User {
        name: name.to_string(),
        uid: id("-u"),
        gid: id("-g"),
        home: PathBuf::from(home),
    }
}

/// The binary under test, in a place the test user can execute.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_llima-box"));
        if !is_root() {
            return built;
        }
        let dir = PathBuf::from(format!("/tmp/llima-box-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dest = dir.join("llima-box");
        std::fs::copy(&built, &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        dest
    })
}

/// A scratch directory owned by the test user, removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("llb-")
            .tempdir_in("/tmp")
            .unwrap();
        chown(dir.path());
        TestDir { dir }
    }

    /// A scratch directory inside `parent` (for example the test user's
    /// home, which the VM mounts).
    pub fn new_in(parent: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("llb-")
            .tempdir_in(parent)
            .unwrap();
        chown(dir.path());
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating parents) owned by the test user.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        let mut created = Vec::new();
        let mut cur = p.parent().unwrap().to_path_buf();
        while !cur.exists() {
            created.push(cur.clone());
            cur = cur.parent().unwrap().to_path_buf();
        }
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        for d in created {
            chown(&d);
        }
        std::fs::write(&p, contents).unwrap();
        chown(&p);
        p
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        chown_r(&p);
        p
    }
}

/// Gives a path to the test user (no-op unless root).
pub fn chown(p: &Path) {
    if is_root() {
        let u = user();
        std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid)).unwrap();
    }
}

pub fn chown_r(p: &Path) {
    if is_root() {
        let u = user();
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", u.uid, u.gid))
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A command run as the test user with a clean, predictable environment.
pub fn as_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let u = user();
    let mut cmd = if is_root() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args([
            "--reuid",
            &u.uid.to_string(),
            "--regid",
            &u.gid.to_string(),
            "--init-groups",
            "--",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.env_clear()
        .env("HOME", &u.home)
        .env("USER", &u.name)
        .env("LOGNAME", &u.name)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LANG", "C.UTF-8")
        .current_dir("/");
    cmd
}

/// `llima-box ARGS` as the test user with `LIMA_HOME` set.
pub fn llima_box(lima_home: &Path) -> Command {
    let mut cmd = as_user(bin());
    cmd.env("LIMA_HOME", lima_home);
    cmd
}

/// Polls `f` until it holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Output as text, for assertions with useful failure messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The override.yaml printed by tests/guest/build-image, which points the
/// VM tests at the local Debian test guest (tests/run sets the variable).
pub fn guest_override() -> String {
    let path = std::env::var("LLIMA_BOX_TEST_OVERRIDE").expect(
        "LLIMA_BOX_TEST_OVERRIDE is not set: run tests/run, or set it to the path \
         printed by tests/guest/build-image",
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Held by every test that boots a guest, for as long as it runs. Guests
/// run under TCG on two shared cores: two at once starved each other into
/// boots of over ten minutes in CI, so they take turns.
pub fn one_guest() -> MutexGuard<'static, ()> {
    static GUEST: Mutex<()> = Mutex::new(());
    // A test that failed while holding it leaves nothing running behind
    // (kill_instances), so the next one may go on.
    GUEST.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every host agent and QEMU recorded under `lima_home`, so that a
/// VM test that fails half-way leaves no guest running behind it. When the
/// test is failing, the instances' logs are printed first: CI keeps only
/// the test output, and the error's short serial tail rarely says enough.
pub fn kill_instances(lima_home: &Path) {
    let Ok(entries) = std::fs::read_dir(lima_home) else {
        return;
    };
    for dir in entries.flatten() {
        if std::thread::panicking() {
            for (log, lines) in [
                (layout::HOST_AGENT_STDERR_LOG, 60),
                (layout::SERIAL_LOG, 150),
            ] {
                let path = dir.path().join(log);
                if path.is_file() {
                    let tail = llima_box::testing::vm::lifecycle::log_tail(&path, lines);
                    eprintln!("---- last {lines} lines of {}\n{tail}", path.display());
                }
            }
        }
        for pid_file in [layout::HOST_AGENT_PID, layout::QEMU_PID] {
            let pid = std::fs::read_to_string(dir.path().join(pid_file))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            // Only ours: a stale pid file may name a reused pid.
            let ours = |pid: &i32| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("qemu-system") || c.contains("llima-box")
                })
            };
            if let Some(pid) = pid.filter(|p| *p > 0).filter(ours) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

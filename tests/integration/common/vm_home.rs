//! The one fixture of the tests that run `vm start`: a temporary
//! `$LIMA_HOME`, the turn on the shared guest, and a Drop that leaves no VM
//! running behind a test (printing its logs when the test failed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::MutexGuard;

use serde_json::Value;

use super::{TestDir, guest_override, kill_instances, llima_box, one_guest, text};

pub struct VmHome {
    dir: TestDir,
    _turn: Option<MutexGuard<'static, ()>>,
}

impl VmHome {
    /// A home whose instances boot the local test guest.
    pub fn new() -> VmHome {
        VmHome::with_override(&guest_override())
    }

    /// A home whose instances boot with `override_yaml` as
    /// `_config/override.yaml`.
    pub fn with_override(override_yaml: &str) -> VmHome {
        let turn = one_guest();
        let dir = TestDir::new();
        dir.write("_config/override.yaml", override_yaml);
        VmHome {
            dir,
            _turn: Some(turn),
        }
    }

    /// A bare home, for starts that fail before any guest boots: they
    /// need no turn, and the home holds only what the test puts there.
    pub fn without_guest() -> VmHome {
        VmHome {
            dir: TestDir::new(),
            _turn: None,
        }
    }

    /// The directory itself, to put files in.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    /// `llima-box ARGS` in this home, as the test user.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = llima_box(&self.path());
        c.args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// `shell PROJECT -- ARGV...`
    pub fn shell(&self, project: &Path, argv: &[&str]) -> Output {
        let mut args = vec!["shell", project.to_str().unwrap(), "--"];
        args.extend_from_slice(argv);
        self.run(&args)
    }

    pub fn shell_ok(&self, project: &Path, argv: &[&str]) -> String {
        let out = self.shell(project, argv);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "shell {argv:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// `bash -c SCRIPT sh ARG` as the VM's admin (`vm shell`).
    pub fn admin_bash(&self, script: &str, arg: &str) -> String {
        self.ok(&["vm", "shell", "--", "bash", "-c", script, "sh", arg])
    }

    /// The environments, from `list --json`.
    pub fn list(&self) -> Vec<Value> {
        self.ok(&["list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `vm status --json` of instance `name`.
    pub fn status(&self, name: &str) -> Value {
        let out = self.ok(&["--instance", name, "vm", "status", "--json"]);
        serde_json::from_str(out.trim()).unwrap()
    }
}

impl Drop for VmHome {
    fn drop(&mut self) {
        kill_instances(self.dir.path());
    }
}

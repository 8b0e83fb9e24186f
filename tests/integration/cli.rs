//! The command-line surface itself: help, refusal as root, pending commands.

use std::path::Path;
use std::process::Stdio;

use crate::common::*;

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["shell"],
        vec!["list"],
        vec!["delete"],
        vec!["delete-all"],
        vec!["test-vm"],
        vec!["vm", "start"],
        vec!["vm", "stop"],
        vec!["vm", "status"],
        vec!["vm", "delete"],
        vec!["vm", "logs"],
        vec!["vm", "list"],
        vec!["vm", "validate"],
        vec!["vm", "shell"],
    ] {
        let out = std::process::Command::new(bin())
            .args(&cmd)
            .arg("--help")
            .output()
            .unwrap();
        let (stdout, _) = text(&out);
        assert!(out.status.success(), "{cmd:?} --help failed");
        assert!(
            stdout.contains("Example"),
            "{cmd:?} --help has no example:\n{stdout}"
        );
    }
}

#[test]
fn root_is_refused_for_vm_commands() {
    if !is_root() {
        return;
    }
    let home = TestDir::new();
    let out = std::process::Command::new(bin())
        .args(["vm", "start"])
        .env("LIMA_HOME", home.path())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing to run as root"), "{stderr}");
}

/// Attacks on project selection, each refused before anything boots: the
/// home itself, a directory holding keys, and links an agent could plant
/// in a project (`up -> ..` reaches the home, `side -> ../other` another
/// project). `--force` gets past the check (to the next one here: the
/// directory is not shared with the VM).
#[test]
fn shell_refuses_the_home_keys_and_planted_symlinks() {
    let home = TestDir::new();
    let h = std::fs::canonicalize(home.path()).unwrap();
    home.mkdir(".ssh");
    home.mkdir("proj");
    home.mkdir("other");
    let outside = TestDir::new();
    for (link, to) in [
        ("proj/up", Path::new("..")),
        ("proj/side", Path::new("../other")),
        ("proj/out", outside.path()),
    ] {
        std::os::unix::fs::symlink(to, h.join(link)).unwrap();
    }
    let lima_home = TestDir::new();
    let shell = |path: &Path, force: bool| {
        let mut cmd = llima_box(lima_home.path());
        cmd.env("HOME", &h).arg("shell").arg(path);
        if force {
            cmd.arg("--force");
        }
        let out = cmd
            .args(["--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{path:?} was accepted");
        text(&out).1
    };
    for (path, why) in [
        (h.clone(), "it is your home directory"),
        (h.join("proj/up"), "it is your home directory"),
        (h.join(".ssh"), "it contains"),
    ] {
        let stderr = shell(&path, false);
        assert!(stderr.contains("refusing"), "{path:?}: {stderr}");
        assert!(stderr.contains(why), "{path:?}: {stderr}");
        assert!(stderr.contains("--force"), "{path:?}: {stderr}");
    }
    let stderr = shell(&h.join("proj/side"), false);
    assert!(stderr.contains("leads through a symlink"), "{stderr}");
    assert!(stderr.contains("refusing without a terminal"), "{stderr}");
    let stderr = shell(&h.join("proj/out"), true);
    assert!(stderr.contains("is not shared with the VM"), "{stderr}");
    assert!(
        std::fs::read_dir(lima_home.path())
            .unwrap()
            .next()
            .is_none()
    );
}

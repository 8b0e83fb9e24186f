//! The command-line surface itself: help, refusal as root, pending commands.

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

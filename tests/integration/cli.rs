//! The command-line surface itself: help, refusal as root, completions and
//! manual pages.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

/// Every command a user runs (the host agent is internal).
const COMMANDS: [&[&str]; 15] = [
    &["shell"],
    &["list"],
    &["delete"],
    &["delete-all"],
    &["test-vm"],
    &["completions"],
    &["man"],
    &["vm", "start"],
    &["vm", "stop"],
    &["vm", "status"],
    &["vm", "delete"],
    &["vm", "logs"],
    &["vm", "list"],
    &["vm", "validate"],
    &["vm", "shell"],
];

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in COMMANDS {
        let out = Command::new(bin())
            .args(cmd)
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
    let out = Command::new(bin())
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

/// Sources the bash completion in a real bash and completes `vm st` and
/// `vm start --t`, which needs the subcommands' own completion to work.
#[test]
fn bash_completion_registers_and_completes_subcommands() {
    let script = r#"
        source <("$1" completions bash) || exit 1
        complete -p llima-box || exit 1
        fn=$(complete -p llima-box | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        COMP_WORDS=(llima-box vm st); COMP_CWORD=2
        "$fn" llima-box st vm; echo "vm st: ${COMPREPLY[*]}"
        COMP_WORDS=(llima-box vm start --t); COMP_CWORD=3
        "$fn" llima-box --t start; echo "vm start --t: ${COMPREPLY[*]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script, "bash"])
        .arg(bin())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" llima-box\n"), "not registered:\n{stdout}");
    let line = |prefix: &str| {
        let l = stdout.lines().find(|l| l.starts_with(prefix));
        l.unwrap_or_else(|| panic!("no {prefix:?} in:\n{stdout}"))
            .to_string()
    };
    let vm = line("vm st:");
    for sub in ["start", "stop", "status"] {
        assert!(vm.split(' ').any(|w| w == sub), "{vm}");
    }
    assert!(line("vm start --t:").ends_with(" --template"), "{stdout}");
}

#[test]
fn every_shell_gets_a_completion_without_the_internal_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        assert!(stdout.contains("delete-all"), "{shell}:\n{stdout}");
        assert!(!stdout.contains("hostagent"), "{shell} offers hostagent");
    }
}

#[test]
fn man_page_lists_the_commands_and_dir_gets_one_page_each() {
    let out = Command::new(bin()).arg("man").output().unwrap();
    let (page, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(page.contains(".TH llima-box 1"), "{page}");
    // Each top-level command (vm included), as roff spells it.
    let top: std::collections::BTreeSet<&str> = COMMANDS.iter().map(|c| c[0]).collect();
    for cmd in top {
        let entry = format!("llima\\-box\\-{}(1)", cmd.replace('-', "\\-"));
        assert!(page.contains(&entry), "no {entry} in:\n{page}");
    }
    assert!(!page.contains("hostagent"), "{page}");

    let dir = TestDir::new();
    let out = Command::new(bin())
        .args(["man", "--dir"])
        .arg(dir.path().join("man1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let pages = COMMANDS
        .iter()
        .map(|c| format!("llima-box-{}.1", c.join("-")));
    for file in pages.chain(["llima-box.1".into(), "llima-box-vm.1".into()]) {
        assert!(dir.path().join("man1").join(&file).is_file(), "no {file}");
    }
}

/// Commands that use the keys refuse a `$LIMA_HOME` others could write to,
/// or a private key others could read, say how to fix it and change
/// nothing; once fixed (and on a fresh home) they go on. `list` reads the
/// keys only with a VM, but checks first, so no VM is needed here.
#[test]
fn keys_in_a_home_others_can_write_are_refused_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestDir::new();
    let h = std::fs::canonicalize(home.path()).unwrap();
    let list = || {
        let out = llima_box(&h).arg("list").output().unwrap();
        let (_, stderr) = text(&out);
        (out.status.success(), stderr)
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let (ok, stderr) = list();
    assert!(ok && stderr.contains("the VM is stopped"), "{stderr}");

    let config = home.mkdir("_config");
    let key = home.write("_config/user", "not really a key\n");
    chmod(&key, 0o600);
    chmod(&config, 0o770);
    let (ok, stderr) = list();
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("refusing to trust"), "{stderr}");
    assert!(stderr.contains("writable by its group"), "{stderr}");
    assert!(
        stderr.contains(&format!("`chmod go-w {}`", config.display())),
        "{stderr}"
    );
    assert_eq!(mode(&config), 0o770);

    chmod(&config, 0o700);
    chmod(&key, 0o644);
    let (ok, stderr) = list();
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("private key"), "{stderr}");
    assert!(
        stderr.contains(&format!("`chmod 600 {}`", key.display())),
        "{stderr}"
    );
    assert_eq!(mode(&key), 0o644);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "not really a key\n");
    let names: Vec<_> = std::fs::read_dir(&config)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["user"]);

    chmod(&key, 0o600);
    let (ok, stderr) = list();
    assert!(ok && stderr.contains("the VM is stopped"), "{stderr}");
}

//! Environments end to end: `shell`, `list`, `delete` and `delete-all`
//! against the local Debian test guest (see vm.rs). One VM boot serves
//! every named check but persistence, which needs one restart; a second VM
//! on 9p runs the checks that depend on the share;
//! `#[ignore]`d for a plain `cargo test`, tests/run runs it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::ssh_support::{Pty, SshAgent, wait_timeout};

/// sha256 over every path, type, mode, owner and content below `dir`.
fn tree_hash(dir: &Path) -> String {
    fn walk(p: &Path, root: &Path, h: &mut Sha256) {
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

/// On the default share (virtiofs, with the project ID-mapped into each
/// environment: CI installs virtiofsd).
#[test]
#[ignore = "boots a VM: run through tests/run"]
fn environments_end_to_end() {
    environments(VmHome::new());
}

/// The fallback: a 9p instance, where the environments remap ownership
/// through FUSE (bindfs). Only the checks whose outcome depends on how the
/// project reaches the environment run here: the rest (network, limits,
/// the agent, ...) is the same code on either share, and running it twice
/// cost CI half an hour.
#[test]
#[ignore = "boots a VM: run through tests/run"]
fn environments_end_to_end_on_9p() {
    let config = format!("{}\nmountType: 9p\n", guest_override());
    let vm = VmHome::with_override(&config);
    let projects = TestDir::new_in(&user().home);
    let a = projects.mkdir("alpha");
    projects.write("alpha/keep.txt", "alpha's file\n");
    let b = projects.mkdir("beta");
    projects.write("beta/secret", "beta only\n");
    let mut checks = Checks::new();

    let name_a = checks.run("first_shell", || check_first_shell(&vm, &a));
    let name_a = || name_a.as_deref().expect("first_shell passed");
    const FIRST: &[&str] = &["first_shell"];
    checks.run_after("file_sharing", FIRST, || {
        check_file_sharing(&vm, &projects, &a, Share::NineP)
    });
    checks.run_after("files_owned_by_host_user", FIRST, || {
        check_files_owned_by_host_user(&vm, &a)
    });
    checks.run_after("linked_project", FIRST, || check_linked_project(&vm, &a));
    checks.run_after("setid_race", FIRST, || check_setid_race(&vm, &a));
    // A spare gets its project's remap when claimed: B is one.
    checks.run_after("spare_claimed", FIRST, || {
        check_spare_claimed(&vm, &b, &projects)
    });
    checks.run_after("isolation_of_a", FIRST, || {
        check_isolation(&vm, &projects, &a, &b)
    });
    checks.run_after("isolation_of_b", FIRST, || {
        check_isolation(&vm, &projects, &b, &a)
    });
    checks.run_after("exec_bits_and_git", FIRST, || {
        check_exec_bits_and_git(&vm, &projects, &a)
    });
    checks.run_after("git_metadata_read_only", FIRST, || {
        check_git_metadata_read_only(&vm, &projects)
    });
    checks.run_after("delete", &["first_shell", "spare_claimed"], || {
        check_delete(&vm, &a, name_a(), 2)
    });
    checks.run("stop", || vm.ok(&["vm", "stop", "--force"]));
    checks.finish();
}

#[derive(Clone, Copy, PartialEq)]
enum Share {
    Virtiofs,
    NineP,
}

fn environments(vm: VmHome) {
    let u = user();
    // Only the user's home is mounted in the guest.
    let projects = TestDir::new_in(&u.home);
    let a = projects.mkdir("alpha");
    projects.write("alpha/keep.txt", "alpha's file\n");
    projects.write("alpha/sub/deep.bin", "\u{0}\u{1}binary");
    let b = projects.mkdir("beta");
    projects.write("beta/secret", "beta only\n");
    let odd = projects.mkdir("it's a $(touch /tmp/pwned) dir");
    let canary = Canary::start();
    let mut checks = Checks::new();

    checks.run("refused_before_boot", || check_refused_before_boot(&vm));

    // The first shell boots the VM and creates A's environment: most
    // checks need it.
    let name_a = checks.run("first_shell", || check_first_shell(&vm, &a));
    let name_a = || name_a.as_deref().expect("first_shell passed");
    const FIRST: &[&str] = &["first_shell"];

    // No way out through the guest's sshd or the host's loopback.
    checks.run_after("sshd_escape", FIRST, || {
        check_sshd_escape(&vm, &a, name_a())
    });
    checks.run_after("linked_project", FIRST, || check_linked_project(&vm, &a));
    checks.run_after("command_credentials", FIRST, || {
        check_command_credentials(&vm, &a)
    });
    checks.run_after("setid_race", FIRST, || check_setid_race(&vm, &a));
    checks.run_after("vm_shell_through_agent", FIRST, || {
        check_vm_shell_through_agent(&vm)
    });
    checks.run_after("network_escape", FIRST, || {
        check_network_escape(&vm, &a, &canary)
    });
    checks.run_after("guard_idempotent", FIRST, || check_guard_idempotent(&vm));
    checks.run_after("piped_stdin", FIRST, || check_piped_stdin(&vm, &a));
    checks.run_after("file_sharing", FIRST, || {
        check_file_sharing(&vm, &projects, &a, Share::Virtiofs)
    });
    checks.run_after("files_owned_by_host_user", FIRST, || {
        check_files_owned_by_host_user(&vm, &a)
    });
    checks.run_after("ssh_agent_forwarding", FIRST, || {
        check_ssh_agent_forwarding(&vm, &a)
    });
    checks.run_after("terminal", FIRST, || check_terminal(&vm, &a, name_a()));
    checks.run_after("server_is_the_agent", FIRST, || {
        check_server_is_the_agent(&vm, &a)
    });
    // Before anything else makes B: B and the project right after it must
    // be the ones to claim the spares.
    checks.run_after("spare_claimed", FIRST, || {
        check_spare_claimed(&vm, &b, &projects)
    });

    // Both ways: A was made from scratch, B from the spare.
    checks.run_after("isolation_of_a", FIRST, || {
        // Another project's files are out of reach.
        let out = vm.shell(&a, &["cat", b.join("secret").to_str().unwrap()]);
        assert!(!out.status.success(), "{:?}", text(&out));
        assert!(!text(&out).0.contains("beta only"));
        check_isolation(&vm, &projects, &a, &b)
    });
    checks.run_after("isolation_of_b", FIRST, || {
        check_isolation(&vm, &projects, &b, &a)
    });
    checks.run_after("ipc_private", FIRST, || check_ipc_private(&vm, &a, &b));
    checks.run_after("loopback_private", FIRST, || {
        check_loopback_private(&vm, &a, &b)
    });
    let published = checks.run_after("published_ports", FIRST, || {
        check_published_ports(&vm, &a, &b)
    });
    checks.run_after("net_policy", FIRST, || {
        check_net_policy(&vm, &a, &b, &canary)
    });
    checks.run_after("limits", FIRST, || check_limits(&vm, &a, &b));
    checks.run_after("project_settings", FIRST, || {
        check_project_settings(&vm, &projects)
    });
    checks.run_after("project_defaults", FIRST, || {
        check_project_defaults(&vm, &projects, &canary)
    });
    checks.run_after("exec_bits_and_git", FIRST, || {
        check_exec_bits_and_git(&vm, &projects, &a)
    });
    checks.run_after("git_config_warning", FIRST, || {
        check_git_config_warning(&vm, &a)
    });
    checks.run_after("git_metadata_read_only", FIRST, || {
        check_git_metadata_read_only(&vm, &projects)
    });
    checks.run_after("shared_processes", FIRST, || {
        check_shared_processes(&vm, &a)
    });
    checks.run_after("install_tool", FIRST, || install_tool(&vm, &a));

    // How many environments there are from here on: alpha, beta, the
    // nasty names and the parallel one.
    checks.run_after("odd_arguments", FIRST, || check_odd_arguments(&vm, &odd));
    let nasty = checks.run_after("nasty_names", FIRST, || {
        check_nasty_names(&vm, &projects, &odd)
    });
    checks.run_after("nothing_ran", FIRST, || check_nothing_ran(&vm));
    let total = || 2 + nasty.expect("nasty_names passed") + 1;
    let fresh = checks.run_after("parallel_first_shells", FIRST, || {
        check_parallel_first_shells(&vm, &projects)
    });

    checks.run_after(
        "list",
        &["first_shell", "nasty_names", "parallel_first_shells"],
        || {
            check_list(
                &vm,
                [
                    &a,
                    &b,
                    fresh.as_ref().expect("parallel_first_shells passed"),
                ],
                name_a(),
                total(),
            )
        },
    );
    checks.run_after("guest_agent", &["nasty_names"], || {
        check_guest_agent(&vm, total())
    });

    // The one restart of this test: the home and the tool in it survive
    // it, and the namespace is re-created on first use.
    checks.run_after(
        "restart",
        &["first_shell", "install_tool", "nasty_names"],
        || {
            // A repository that A's next holder (built the long way after
            // the restart, not claimed) finds: its config is read-only.
            projects.write("alpha/later/.git/config", "[core]\n");
            vm.ok(&["vm", "stop"]);
            vm.ok(&["vm", "start"]);
            // The first command after a boot comes through sshd and
            // `env-run` (no server yet): its keyring is its own too.
            check_command_credentials(&vm, &a);
            check_tool(&vm, &a, name_a(), "after-restart");
            let write = "echo x >>later/.git/config && echo written || echo refused";
            assert_eq!(vm.shell_ok(&a, &["sh", "-c", write]).trim(), "refused");
            // The firewall rules are gone with the old boot; they are back
            // before the environment runs again.
            check_network_escape(&vm, &a, &canary);
            assert_eq!(vm.list().len(), total(), "environments lost in the restart");
        },
    );
    checks.run_after(
        "net_policy_after_restart",
        &["restart", "net_policy"],
        || {
            // B's policy outlived the VM: its new namespace reaches the host
            // port it was allowed (A, without one, does not: see `restart`).
            let in_b = probe_network(&vm, &b, &canary);
            assert!(field(&in_b, "tcp").contains(&canary.secret), "{in_b}");
            vm.ok(&["net", "set", b.to_str().unwrap(), "--reset"]);
        },
    );
    let host_a = || published.expect("published_ports passed");
    checks.run_after(
        "ports_after_restart",
        &["restart", "published_ports"],
        || {
            // The table outlived the VM: the new host agent listens again and
            // reaches the environment's new namespace.
            vm.shell_ok(&a, &["bash", "-c", LISTEN, "sh", "a-after-restart"]);
            assert_eq!(fetch(host_a()), "a-after-restart");
            vm.shell_ok(&a, &["pkill", "-f", "llb-listen.py"]);
        },
    );

    // Deleting last: the checks above count and use the environments.
    let uid_a = checks.run_after("delete", &["first_shell", "nasty_names"], || {
        check_delete(&vm, &a, name_a(), total())
    });
    checks.run_after(
        "ports_closed_on_delete",
        &["delete", "published_ports"],
        || {
            assert_eq!(port_rows(&vm, &a).len(), 0);
            let closed = std::net::TcpStream::connect(("127.0.0.1", host_a()));
            assert!(closed.is_err(), "127.0.0.1:{} still open", host_a());
        },
    );
    checks.run_after("uid_not_reused", &["delete"], || {
        check_uid_not_reused(&vm, &projects, uid_a.as_deref().expect("delete passed"))
    });
    checks.run("delete_all", || {
        let before_a = tree_hash(&a);
        let before_b = tree_hash(&b);
        vm.ok(&["delete-all", "-y"]);
        assert!(vm.list().is_empty());
        assert_eq!(tree_hash(&b), before_b);
        assert_eq!(tree_hash(&a), before_a);
        vm.ok(&["delete-all", "-y"]);
    });
    checks.run_after("without_python", &["delete_all"], || {
        check_without_python(&vm, &projects)
    });
    checks.run("stop", || {
        vm.ok(&["vm", "stop", "--force"]);
        // On virtiofs the share's daemons go with QEMU.
        let dir = vm.path().join("llima-box");
        let left = || virtiofsd_running(&dir);
        for _ in 0..50 {
            if left().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(left(), "", "virtiofsd still runs after the VM stopped");
        assert!(!dir.join("virtiofsd-0.sock").exists());
    });

    checks.finish();
}

/// The guest agent: `env-run` and `guard` are run through sudo.
const AGENT: &str = "/usr/local/libexec/llima-box/guest-agent";

/// Writes to the git config and hooks of the repositories a project had
/// when its environment started (its own and a nested one) are refused
/// inside; commits and branches still work. On the old runtime every
/// write went through.
const GIT_WRITES: &str = r#"
git config core.fsmonitor 'touch /tmp/pwned' 2>/dev/null && echo config=written || echo config=refused
(echo '#!/bin/sh' >.git/hooks/pre-commit) 2>/dev/null && echo hook=written || echo hook=refused
git -C sub/inner config core.pager evil 2>/dev/null && echo nested=written || echo nested=refused
git -c user.name=t -c user.email=t@t commit -q --allow-empty -m inside && echo commit=ok
git branch side && echo branch=ok
"#;

/// A new repository in `dir`, made on the host as the test user.
fn git_init(dir: &Path) {
    let out = as_user("git")
        .args(["init", "-q"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn check_git_metadata_read_only(vm: &VmHome, projects: &TestDir) {
    projects.mkdir("git-read-only/sub/inner");
    let p = projects.mkdir("git-read-only");
    for repo in [p.clone(), p.join("sub/inner")] {
        git_init(&repo);
    }
    let out = vm.shell_ok(&p, &["sh", "-c", GIT_WRITES]);
    // Out again, so that the other checks count the environments they made.
    vm.ok(&["delete", p.to_str().unwrap(), "-y"]);
    assert_eq!(
        out,
        "config=refused\nhook=refused\nnested=refused\ncommit=ok\nbranch=ok\n"
    );
    let config = std::fs::read_to_string(p.join(".git/config")).unwrap();
    assert!(!config.contains("fsmonitor"), "{config}");
}

/// A project's own settings, kept on the host: limits set before its
/// environment exists are its unit's from the start (it is made the long
/// way, not from a spare, which has the defaults); changed while it runs,
/// they apply at once, and so do git writes, allowed and denied again.
/// The home's disk cap holds an agent that fills its home (before, it
/// could fill the guest's disk).
fn check_project_settings(vm: &VmHome, projects: &TestDir) {
    let p = projects.mkdir("tuned");
    git_init(&p);
    let path = p.to_str().unwrap();
    vm.ok(&[
        "project", "set", path, "--memory", "300M", "--tasks", "321", "--disk", "32M",
    ]);
    let shown: serde_json::Value =
        serde_json::from_str(&vm.ok(&["project", "show", path, "--json"])).unwrap();
    assert_eq!(shown["tasksMax"], 321, "{shown}");
    assert_eq!(shown["diskMax"], 32u64 << 20, "{shown}");
    const LIMITS: &[&str] = &[
        "cat",
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/pids.max",
    ];
    assert_eq!(vm.shell_ok(&p, LIMITS), "314572800\n321\n");
    const FILL: &[&str] = &[
        "sh",
        "-c",
        "head -c 48M /dev/zero >$HOME/fill; echo rc=$?; rm -f $HOME/fill",
    ];
    let full = vm.shell(&p, FILL);
    let (stdout, stderr) = text(&full);
    assert_ne!(field(&stdout, "rc"), "0", "{stdout}\n{stderr}");
    assert!(stderr.contains("Disk quota exceeded"), "{stderr}");
    let said = vm.run(&["project", "set", path, "--tasks", "400", "--disk", "64M"]);
    assert!(
        text(&said).1.contains("applied to the running environment"),
        "{:?}",
        text(&said)
    );
    assert_eq!(vm.shell_ok(&p, LIMITS), "314572800\n400\n");
    assert_eq!(field(&vm.shell_ok(&p, FILL), "rc"), "0");
    const WRITE: &[&str] = &[
        "sh",
        "-c",
        "git config llb.probe x 2>/dev/null && echo written || echo refused",
    ];
    assert_eq!(vm.shell_ok(&p, WRITE), "refused\n");
    vm.ok(&["project", "set", path, "--git-writes", "allow"]);
    assert_eq!(vm.shell_ok(&p, WRITE), "written\n");
    vm.ok(&["project", "set", path, "--git-writes", "deny"]);
    assert_eq!(vm.shell_ok(&p, WRITE), "refused\n");
    vm.ok(&["project", "set", path, "--reset"]);
    let reset = vm.shell_ok(&p, LIMITS);
    assert!(
        !reset.contains("314572800") && reset.ends_with("\n4096\n"),
        "{reset}"
    );
    // Out again, so that the other checks count the environments they made.
    vm.ok(&["delete", path, "-y"]);
}

/// Defaults set with `--default` are what a new project gets, limits and
/// network policy; a project given a setting of its own keeps the rest of
/// them, also once the defaults go back to the built-in ones.
fn check_project_defaults(vm: &VmHome, projects: &TestDir, canary: &Canary) {
    let p = projects.mkdir("defaulted");
    let path = p.to_str().unwrap();
    vm.ok(&["project", "set", "--default", "--tasks", "333"]);
    vm.ok(&["net", "set", "--default", "--mode", "none"]);
    let shown = |what: &str| -> serde_json::Value {
        serde_json::from_str(&vm.ok(&[what, "show", path, "--json"])).unwrap()
    };
    assert_eq!(shown("project")["own"], false);
    assert_eq!(shown("net")["mode"], "none");
    let pids = ["cat", "/sys/fs/cgroup/pids.max"];
    assert_eq!(vm.shell_ok(&p, &pids), "333\n");
    let probe = probe_network(vm, &p, canary);
    assert!(udp_blocked(&probe, "192.0.2.1:53"), "{probe}");

    vm.ok(&["project", "set", path, "--tasks", "400"]);
    vm.ok(&["project", "set", "--default", "--reset"]);
    vm.ok(&["net", "set", "--default", "--reset"]);
    let own = shown("project");
    assert_eq!(
        (own["own"].clone(), own["tasksMax"].clone()),
        (true.into(), 400.into())
    );
    assert_eq!(shown("net")["mode"], "none");
    let defaults: serde_json::Value =
        serde_json::from_str(&vm.ok(&["project", "show", "--default", "--json"])).unwrap();
    assert_eq!(defaults, serde_json::json!({"default": true}));
    assert_eq!(vm.shell_ok(&p, &pids), "400\n");
    vm.ok(&["delete", path, "-y"]);
}

/// What an agent plants in a repository for the host's git to run is
/// reported on the host after the shell; a shell that plants nothing gets
/// no warning.
fn check_git_config_warning(vm: &VmHome, a: &Path) {
    const PLANT: &str = "mkdir -p planted && cd planted && git init -q && \
        git config core.fsmonitor 'touch /tmp/pwned' && \
        printf '#!/bin/sh\\nexit 0\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit";
    let out = vm.shell(a, &["sh", "-c", PLANT]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let config = std::fs::canonicalize(a)
        .unwrap()
        .join("planted/.git/config");
    assert!(
        stderr.contains(&format!(
            "{} now has core.fsmonitor = touch /tmp/pwned",
            config.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--unset-all core.fsmonitor"), "{stderr}");
    assert!(
        stderr.contains("planted/.git/hooks/pre-commit is a new or changed git hook"),
        "{stderr}"
    );
    let (_, quiet) = text(&vm.shell(a, &["true"]));
    assert!(!quiet.contains("planted"), "{quiet}");
}

/// The environment's first process, which runs its commands, is the guest
/// agent's env-server (a resident python3 was about 10 MiB per environment).
fn check_server_is_the_agent(vm: &VmHome, a: &Path) {
    let out = vm.shell_ok(
        a,
        &["sh", "-c", "cat /proc/1/comm; grep VmRSS /proc/1/status"],
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("guest-agent"), "{out}");
    let rss_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {out:?}"));
    eprintln!("env-server resident: {rss_kib} KiB");
    assert!(rss_kib < 4096, "the env-server holds {rss_kib} KiB");
}

/// Environments need no python3 in the guest: with it made unusable, a new
/// project's first shell and a second one work.
fn check_without_python(vm: &VmHome, projects: &TestDir) {
    const HIDE: &str = r#"p=$(readlink -f /usr/bin/python3)
case $1 in
hide) sudo mount --bind /dev/null "$p" && ! python3 -c 1 2>/dev/null && echo hidden ;;
*) sudo umount "$p" && python3 -c 'print("back")' ;;
esac"#;
    assert_eq!(vm.admin_bash(HIDE, "hide").trim(), "hidden");
    let project = projects.mkdir("no-python");
    projects.write("no-python/file", "here\n");
    let first = vm.shell(&project, &["sh", "-c", "cat file; cat /proc/1/comm"]);
    let again = vm.shell(&project, &["cat", "file"]);
    assert_eq!(vm.admin_bash(HIDE, "show").trim(), "back");
    assert_eq!(text(&first).0, "here\nguest-agent\n", "{:?}", text(&first));
    assert_eq!(text(&again).0, "here\n", "{:?}", text(&again));
}

/// Outside every mount: refused before anything boots; and list, with the
/// VM not running yet, says so and succeeds.
fn check_refused_before_boot(vm: &VmHome) {
    let outside = TestDir::new();
    let out = vm.shell(outside.path(), &["true"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is not shared with the VM"), "{stderr}");
    assert!(stderr.contains("writable"), "{stderr}");
    assert!(
        stderr.contains(&outside.path().display().to_string()),
        "{stderr}"
    );
    let out = vm.run(&["list"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("the VM is stopped"), "{stderr}");
}

/// The first shell boots the VM and creates the environment; the exit
/// status is the command's. It runs as the environment's own user, in the
/// project directory. Returns that user.
fn check_first_shell(vm: &VmHome, a: &Path) -> String {
    let out = vm.shell(a, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{:?}", text(&out));
    // Creating the environment adds no tool's warnings to the command's
    // stderr (booting the VM shows its progress there).
    let stderr = text(&out).1;
    assert!(!stderr.to_lowercase().contains("warning"), "{stderr}");

    let name_a = vm.shell_ok(a, &["id", "-un"]).trim().to_string();
    assert!(name_a.starts_with("alpha-"), "{name_a}");
    assert_ne!(name_a, user().name);
    let pwd = vm.shell_ok(a, &["pwd"]);
    assert_eq!(
        pwd.trim(),
        std::fs::canonicalize(a).unwrap().to_str().unwrap()
    );
    name_a
}

/// Piped stdin arrives byte for byte.
fn check_piped_stdin(vm: &VmHome, a: &Path) {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = vm
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
}

/// How the project reaches the environment: on virtiofs an ID-mapped bind
/// (no FUSE process), where a chown to anyone else fails, a tree of
/// [`FILES`] files, more than virtiofsd's descriptor limit, is made and
/// listed whole, and a host mount inside the project is seen and written
/// with the same mapping; on 9p a bindfs remap. A chown to root fails on
/// both.
fn check_file_sharing(vm: &VmHome, projects: &TestDir, a: &Path, share: Share) {
    const HOW: &str = r#"awk -v p="$PWD" '$5 == p { for (i = 7; $i != "-"; i++); print $(i + 1), $(i + 2), $6 }' /proc/self/mountinfo
touch owned && stat -c 'owner=%u' owned && echo "me=$(id -u)"
chown 0 owned 2>&1; echo "chown=$?"
"#;
    let out = vm.shell_ok(a, &["sh", "-c", HOW]);
    let first = out.lines().next().unwrap_or_default();
    let me = field(&out, "me");
    assert_eq!(field(&out, "owner"), me, "{out}");
    match share {
        Share::Virtiofs => {
            assert!(
                first.starts_with("virtiofs ") && first.contains("idmapped"),
                "not an ID-mapped virtiofs mount: {out}"
            );
            // No id on the mount for root: EOVERFLOW, not EPERM.
            assert!(out.contains("Value too large"), "{out}");
        }
        Share::NineP => {
            // bindfs (FUSE) serving the raw share.
            assert!(
                first.starts_with("fuse") && first.contains(" /run/llima-box/stage/raw/"),
                "not bindfs: {out}"
            );
        }
    }
    assert_ne!(
        field(&out, "chown"),
        "0",
        "chown to root went through: {out}"
    );
    let meta = std::fs::metadata(a.join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user().uid, user().gid));
    std::fs::remove_file(a.join("owned")).unwrap();
    if share == Share::NineP {
        return;
    }

    // Made in the environment, then every file looked up and stat'ed
    // there: each is an inode the guest caches and virtiofsd holds a
    // descriptor for until the guest forgets it (with virtiofsd's default
    // cache it ran out at its descriptor limit, 20,000 here). The tree
    // outnumbers the limit by half: more only costs CI time.
    let limit = virtiofsd_nofile(vm);
    assert!(
        limit < FILES,
        "virtiofsd may open {limit} files, more than the {FILES} of this check: \
         run the tests with a lower hard limit (ulimit -Hn 20000)"
    );
    // $1 directories of 1,000 files.
    const TREE: &str = r#"mkdir big && cd big && for d in $(seq 1 "$1"); do
    mkdir "d$d" && (cd "d$d" && seq 0 999 | sed 's/^/f/' | xargs touch) || exit 1
done && cd .. && find big -type f -printf '%u\n' | sort | uniq -c"#;
    let dirs = (FILES / 1000).to_string();
    let listed = vm.shell_ok(a, &["sh", "-c", TREE, "sh", &dirs]);
    let name = field(
        &vm.shell_ok(a, &["sh", "-c", "echo name=$(id -un)"]),
        "name",
    );
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        [FILES.to_string().as_str(), name.as_str()],
        "{listed}"
    );
    let tree = a.join("big");
    let mut on_host = 0;
    for d in std::fs::read_dir(&tree).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let meta = f.unwrap().metadata().unwrap();
            assert_eq!((meta.uid(), meta.gid()), (user().uid, user().gid));
            on_host += 1;
        }
    }
    assert_eq!(on_host, FILES);
    std::fs::remove_dir_all(&tree).unwrap();

    // A host mount inside the project is part of the share (virtiofsd does
    // not announce it as a submount) and so of the ID-mapped view.
    assert!(
        is_root(),
        "mounting inside the project needs root on the host"
    );
    let nested = projects.mkdir("alpha/nested");
    let u = user();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("uid={},gid={},mode=0755", u.uid, u.gid))
        .arg("llima-box-nested")
        .arg(&nested)
        .status()
        .unwrap();
    assert!(st.success());
    let host_file = nested.join("from-host");
    std::fs::write(&host_file, "host\n").unwrap();
    chown(&host_file);
    let seen = vm.shell(
        a,
        &[
            "sh",
            "-c",
            "cat nested/from-host && echo inside > nested/from-env && stat -c 'owner=%u' nested/from-host",
        ],
    );
    let made = std::fs::metadata(nested.join("from-env")).map(|m| (m.uid(), m.gid()));
    let _ = std::process::Command::new("umount").arg(&nested).status();
    let _ = std::fs::remove_dir(&nested);
    let (stdout, stderr) = text(&seen);
    assert!(seen.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("host\n"), "{stdout}");
    assert_eq!(field(&stdout, "owner"), me, "{stdout}");
    assert_eq!(made.unwrap(), (u.uid, u.gid));
}

/// How many files `check_file_sharing` makes in one tree.
const FILES: u64 = 30_000;

/// The command lines of the virtiofsd daemons serving instances under
/// `dir`, as `pgrep -a` lists them.
fn virtiofsd_running(dir: &Path) -> String {
    let pattern = format!("virtiofsd --socket-path {}", dir.display());
    let out = std::process::Command::new("pgrep")
        .args(["-af", &pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The descriptor limit of `vm`'s virtiofsd, from its command line.
fn virtiofsd_nofile(vm: &VmHome) -> u64 {
    let line = virtiofsd_running(&vm.path());
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "--rlimit-nofile");
    at.and_then(|i| words.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| panic!("no --rlimit-nofile in virtiofsd's command line: {line:?}"))
}

/// Files made in the environment are the host user's on the host, with
/// what the command wrote there by the time it has ended: even one a
/// process it left behind still holds open (on 9p the guest writes back
/// later, seconds after, unless the agent syncs; bindfs closing a file
/// after its writer did raced the exit status the same way).
fn check_files_owned_by_host_user(vm: &VmHome, a: &Path) {
    const WRITE: &str = "printf 'made inside\\n' > new.txt && exec 3> held.txt && \
        printf 'still open\\n' >&3 && (sleep 20 > /dev/null 2>&1 &)";
    vm.shell_ok(a, &["sh", "-c", WRITE]);
    let read = |name: &str| std::fs::read_to_string(a.join(name)).unwrap();
    let (made, held) = (read("new.txt"), read("held.txt"));
    vm.shell_ok(a, &["pkill", "-x", "sleep"]);
    std::fs::remove_file(a.join("held.txt")).unwrap();
    assert_eq!(made, "made inside\n");
    assert_eq!(held, "still open\n");
    let meta = std::fs::metadata(a.join("new.txt")).unwrap();
    let u = user();
    assert_eq!((meta.uid(), meta.gid()), (u.uid, u.gid));
}

/// The host's SSH agent reaches the environment unless refused.
fn check_ssh_agent_forwarding(vm: &VmHome, a: &Path) {
    let agent = SshAgent::start(vm.dir());
    let out = vm
        .cmd(&["shell", a.to_str().unwrap(), "--", "ssh-add", "-l"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&agent.key_comment), "{stdout}");
    let out = vm
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
    // What a command leaves running loses the agent once the command has
    // ended. Before, the forward lived as long as the held connection.
    let leftover = "(sleep 4; ssh-add -l >/tmp/leftover-agent 2>&1; echo rc=$? >>/tmp/leftover-agent) \
        </dev/null >/dev/null 2>&1 & ssh-add -l >/dev/null && echo during=ok";
    let out = vm
        .cmd(&["shell", a.to_str().unwrap(), "--", "sh", "-c", leftover])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(text(&out).0.contains("during=ok"), "{:?}", text(&out));
    std::thread::sleep(Duration::from_secs(6));
    let late = vm.shell_ok(a, &["cat", "/tmp/leftover-agent"]);
    assert!(
        late.contains("rc=2"),
        "the leftover reached the agent: {late}"
    );
}

/// On a terminal: a remote terminal of the same size.
fn check_terminal(vm: &VmHome, a: &Path, name_a: &str) {
    let pty = Pty::open(33, 101);
    let mut child = pty.spawn(&mut vm.cmd(&[
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
}

/// The first environment left the pool full (two spares); the next two
/// new projects (B and one right after it, with no time to make another)
/// each claim one (same user id, renamed), and new spares take their
/// places. A project built the long way would get a new uid instead.
/// The repositories the host found are read-only in a claimed one, even
/// one deeper than the guest's own search goes (before, it was writable).
fn check_spare_claimed(vm: &VmHome, b: &Path, projects: &TestDir) {
    let right_after = &projects.mkdir("right-after");
    git_init(&projects.mkdir("right-after/deep/er/inner"));
    let spares = wait_for_pool(vm, &[]);
    let uid_of = |user: &str| {
        vm.ok(&["vm", "shell", "--", "id", "-u", user])
            .trim()
            .to_string()
    };
    let spare_uids: Vec<String> = spares.iter().map(|s| uid_of(s)).collect();
    let mut claimed = vec![];
    let mut names = vec![];
    for (p, prefix) in [(b, "beta-"), (right_after, "right-after-")] {
        let ids = vm.shell_ok(p, &["sh", "-c", "id -u; id -un"]);
        let (uid, name) = ids.trim().split_once('\n').unwrap();
        assert!(
            spare_uids.iter().any(|s| s == uid),
            "{name} (uid {uid}) claimed none of the spares {spares:?} (uids {spare_uids:?})"
        );
        assert!(name.starts_with(prefix), "{name}");
        claimed.push(uid.to_string());
        names.push(name.to_string());
    }
    let write = "echo x >>deep/er/inner/.git/config && echo written || echo refused";
    let out = vm.shell_ok(right_after, &["sh", "-c", write]);
    assert_eq!(out.trim(), "refused");
    assert_ne!(claimed[0], claimed[1], "both projects got one spare");
    // Not counted among the environments of the later checks.
    vm.ok(&["delete", "-y", right_after.to_str().unwrap()]);
    let next = wait_for_pool(vm, &spares);
    assert!(
        next.iter().all(|n| !spares.contains(n)),
        "{next:?} {spares:?}"
    );
    // Once complete, a claim has renamed the spare's user in every account
    // file (the password files after the command started), and the deleted
    // environment's user is in none.
    for file in ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"] {
        let text = vm.ok(&["vm", "shell", "--", "sudo", "cat", file]);
        let named = |n: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{n}:")))
                .count()
        };
        assert_eq!(named(&names[0]), 1, "{file}:\n{text}");
        for gone in spares.iter().chain(&names[1..]) {
            assert_eq!(named(gone), 0, "{gone} in {file}:\n{text}");
        }
    }
}

/// Arguments reach the command unchanged and nothing is evaluated.
fn check_odd_arguments(vm: &VmHome, odd: &Path) {
    let _ = std::fs::remove_file("/tmp/pwned");
    let echoed = vm.shell_ok(
        odd,
        &["printf", "<%s>", "$(touch /tmp/pwned)", "a  b", "it's"],
    );
    assert_eq!(echoed, "<$(touch /tmp/pwned)><a  b><it's>");
}

/// No `$(...)` in a project's name or arguments ran, in the guest or on
/// the host.
fn check_nothing_ran(vm: &VmHome) {
    let guest_pwned = vm.ok(&[
        "vm",
        "shell",
        "--",
        "sh",
        "-c",
        "test -e /tmp/pwned && echo yes || echo no",
    ]);
    assert_eq!(
        guest_pwned.trim(),
        "no",
        "a $(...) in a name ran in the guest"
    );
    assert!(
        !Path::new("/tmp/pwned").exists(),
        "a $(...) in a name ran on the host"
    );
}

/// list shows every environment (`total` of them) with its project: A's
/// under its name, and `projects`.
fn check_list(vm: &VmHome, projects: [&Path; 3], name_a: &str, total: usize) {
    let listed = vm.list();
    let project_of = |name: &str| {
        listed
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["project"].as_str().unwrap().to_string())
    };
    assert_eq!(
        project_of(name_a).as_deref(),
        std::fs::canonicalize(projects[0]).unwrap().to_str()
    );
    for p in &projects[1..] {
        let canon = std::fs::canonicalize(p).unwrap();
        assert!(
            listed
                .iter()
                .any(|e| e["project"] == canon.to_str().unwrap()),
            "{listed:?}"
        );
    }
    assert_eq!(listed.len(), total, "{listed:?}");
    let table = vm.ok(&["list"]);
    assert!(table.contains(name_a), "{table}");
}

/// Deleting an environment leaves the project untouched, and nothing of
/// the environment: no process (a detached one was left running), no
/// user, no home.
/// Deletes A with a process still running; returns the uid A had.
fn check_delete(vm: &VmHome, a: &Path, name_a: &str, total: usize) -> String {
    let before = tree_hash(a);
    vm.shell_ok(
        a,
        &[
            "sh",
            "-c",
            "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &",
        ],
    );
    let uid_a = vm
        .ok(&["vm", "shell", "--", "id", "-u", name_a])
        .trim()
        .to_string();
    let procs = vm.ok(&["vm", "shell", "--", "pgrep", "-c", "-U", &uid_a]);
    assert_ne!(procs.trim(), "0", "no process of {name_a} to kill");
    // Its home's files are in the homes' filesystem, /home/NAME leads there.
    let home = vm.ok(&["vm", "shell", "--", "readlink", &format!("/home/{name_a}")]);
    assert_eq!(home.trim(), format!("/var/lib/llima-box/homes/{uid_a}"));
    vm.ok(&["delete", a.to_str().unwrap(), "-y"]);
    assert_eq!(tree_hash(a), before);
    let gone = vm.run(&[
        "vm",
        "shell",
        "--",
        "sh",
        "-c",
        &format!(
            "pgrep -U {uid_a}; getent passwd {name_a}; getent group {name_a}; \
             grep -s '^{name_a}:' /etc/subuid; ls -d /home/{name_a} 2>/dev/null; \
             sudo -n ls -d /var/lib/llima-box/homes/{uid_a} 2>/dev/null; true"
        ),
    ]);
    assert_eq!(text(&gone).0, "", "left behind by delete");
    let listed = vm.list();
    assert!(listed.iter().all(|e| e["name"] != name_a), "{listed:?}");
    assert_eq!(listed.len(), total - 1, "{listed:?}");
    // Again: nothing to do, still fine.
    vm.ok(&["delete", name_a, "-y"]);
    uid_a
}

/// The isolation checks, run as environment A inside it. Arguments: B's
/// project, B's name, the admin's home, the guest pid of B's `sleep 3607`,
/// the host user's home. Prints one `NAME=ok` or `NAME=fail DETAIL` line
/// per check, so that each is asserted (and reported) on its own.
const ISOLATION: &str = r#"
PB=$1 B=$2 ADMIN_HOME=$3 BPID=$4 HOST_HOME=$5
me=$(id -un)
parent=$(dirname "$PWD")
ok() { echo "$1=ok"; }
fail() { echo "$1=fail $(printf '%s' "$2" | tr '\n' ' ')"; }
# NAME DIR: DIR is hidden: missing, or an empty directory. Merely
# unreadable is not hidden (and is what permissions alone would give).
empty() {
    local out
    if [ ! -e "$2" ]; then
        ok "$1"
    elif out=$(ls -A -- "$2" 2>&1) && [ -z "$out" ]; then
        ok "$1"
    else
        fail "$1" "$2 is not hidden: $out"
    fi
}
# NAME DIR WANT: DIR lists exactly WANT.
lists() {
    local out
    out=$(ls -A -- "$2" 2>&1)
    if [ "$out" = "$3" ]; then ok "$1"; else fail "$1" "$2 lists: $out"; fi
}
# NAME CMD...: CMD fails.
deny() {
    local n=$1
    shift
    if "$@" >/dev/null 2>&1; then fail "$n" "succeeded: $*"; else ok "$n"; fi
}
# NAME CMD...: CMD succeeds (controls: the denials are not a broken shell).
allow() {
    local n=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$n"; else fail "$n" "failed: $*"; fi
}

empty project_b_list "$PB"
deny project_b_read cat "$PB/secret"
empty home_b_list "/home/$B"
deny home_b_read cat "/home/$B/home-secret"
# Only the path down to A's project exists of the host home.
lists host_around_list "$parent" "$(basename "$PWD")"
deny host_around_read cat "$parent/around.txt"
rel=${PWD#"$HOST_HOME"/}
lists host_home_list "$HOST_HOME" "${rel%%/*}"
under_home=${PWD#/home/}
others=$(ls -A /home | grep -vx -e "$me" -e "${under_home%%/*}")
[ -z "$others" ] && ok other_homes_list || fail other_homes_list "/home shows: $others"
empty admin_home_list "$ADMIN_HOME"
deny admin_keys_read cat "$ADMIN_HOME/.ssh/authorized_keys"
empty cidata_list /mnt/lima-cidata
deny cidata_read cat /mnt/lima-cidata/user-data
empty metadata_list /var/lib/llima-box
deny metadata_read cat "/var/lib/llima-box/envs/$B/project"
deny proc1_root ls /proc/1/root/

allow ps_sees_self ps -o pid= -p $$
uids=$(ps -eo uid= | sort -un | tr -d ' ' | tr '\n' ' ')
[ "$uids" = "0 $(id -u) " ] && ok ps_uids || fail ps_uids "ps shows uids $uids"
sys=$(ps -eo comm= | grep -E '^(sshd|systemd|agetty|cron|dbus)')
[ -z "$sys" ] && ok ps_no_system || fail ps_no_system "ps shows $sys"
# The namespace's init and its sleep are the only root processes.
roots=$(ps -eo user=,pid=,args= | grep '^root')
[ "$(printf '%s\n' "$roots" | grep -c .)" -le 2 ] && ok ps_root_only_init || fail ps_root_only_init "$roots"
if buid=$(id -u "$B"); then
    bprocs=$(ps -eo uid=,pid=,args= | awk -v u="$buid" '$1 == u')
    [ -z "$bprocs" ] && ok ps_not_b || fail ps_not_b "ps shows B's processes: $bprocs"
else
    fail ps_not_b "B's user $B is unknown"
fi
deny signal_b_probe kill -0 "$BPID"
deny signal_b_term kill -TERM "$BPID"
deny sudo sudo -n true

deny write_etc touch /etc/llb-probe
deny write_usr touch /usr/llb-probe
deny write_var touch /var/llb-probe
deny write_opt touch /opt/llb-probe
deny write_root touch /llb-probe
deny write_parent touch "$parent/llb-probe"
deny write_host_home touch "$HOST_HOME/llb-probe"
deny write_home_dir mkdir /home/llb-probe
allow write_project touch ./llb-probe
allow write_home touch "$HOME/llb-probe"
allow write_tmp touch /tmp/llb-probe
rm -f ./llb-probe "$HOME/llb-probe" /tmp/llb-probe

# Its own /sys: its network devices only; its own cgroup as the root.
lists sys_net /sys/class/net "$(printf 'eth0\nlo')"
if [ -e /sys/fs/cgroup/system.slice ]; then
    fail cgroup_own "the guest's cgroups are visible: $(ls /sys/fs/cgroup | head -n 5)"
else
    ok cgroup_own
fi
grep -qx '[0-9]*' /sys/fs/cgroup/memory.max && ok cgroup_limit ||
    fail cgroup_limit "memory.max: $(cat /sys/fs/cgroup/memory.max 2>&1)"
# Agents run their tools in sandboxes of their own (bubblewrap): user
# namespaces work here. They give root over copies of the mounts, but the
# mounts that hide things are locked together and cannot be peeled off.
allow userns unshare -rm true
got=$(unshare -rm sh -c 'for m in /home /tmp "$1" /mnt/lima-cidata /var/lib/llima-box; do umount -l "$m"; done
    cat "$2/around.txt" "$3/secret"; ls -A /var/lib/llima-box; ls -A /mnt/lima-cidata' x "$PWD" "$parent" "$PB" 2>/dev/null)
[ -z "$got" ] && ok umount_escape || fail umount_escape "after unshare and umount: $got"
# What Claude Code and Codex run their tools under; the hidden stays hidden.
if got=$(bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --unshare-all --die-with-parent \
    sh -c 'id -u; ls -A /var/lib/llima-box; ls -A /mnt/lima-cidata; cat "$1/around.txt"; true' x "$parent" 2>/dev/null); then
    [ "$got" = "$(id -u)" ] && ok bubblewrap || fail bubblewrap "it showed: $got"
else
    fail bubblewrap "bwrap failed: $(bwrap --ro-bind / / --dev /dev --proc /proc --unshare-all true 2>&1)"
fi
exit 0
"#;

/// Every line ISOLATION prints, by name.
const ISOLATION_CHECKS: &[&str] = &[
    "project_b_list",
    "project_b_read",
    "home_b_list",
    "home_b_read",
    "host_around_list",
    "host_around_read",
    "host_home_list",
    "other_homes_list",
    "admin_home_list",
    "admin_keys_read",
    "cidata_list",
    "cidata_read",
    "metadata_list",
    "metadata_read",
    "proc1_root",
    "ps_sees_self",
    "ps_uids",
    "ps_no_system",
    "ps_root_only_init",
    "ps_not_b",
    "signal_b_probe",
    "signal_b_term",
    "sudo",
    "write_etc",
    "write_usr",
    "write_var",
    "write_opt",
    "write_root",
    "write_parent",
    "write_host_home",
    "write_home_dir",
    "write_project",
    "write_home",
    "write_tmp",
    "sys_net",
    "cgroup_own",
    "cgroup_limit",
    "userns",
    "umount_escape",
    "bubblewrap",
];

/// What the admin sees of the things A must not: its home and keys, the
/// cloud-init seed, B's metadata and B's `sleep 3607` (`$1` is B's name).
const ADMIN_VIEW: &str = r#"
echo "home=$HOME"
test -s "$HOME/.ssh/authorized_keys" && echo keys=yes
sudo -n test -s /mnt/lima-cidata/user-data && echo cidata=yes
sudo -n test -s "/var/lib/llima-box/envs/$1/project" && echo meta=yes
echo "bpid=$(pgrep -u "$1" -fx 'sleep 3607')"
exit 0
"#;

/// Isolation from inside A, against environment B (which must exist).
fn check_isolation(vm: &VmHome, projects: &TestDir, a: &Path, b: &Path) {
    // B gets a secret in its home and a process that outlives its shell.
    let name_b = vm
        .shell_ok(
            b,
            &[
                "sh",
                "-c",
                "echo beta-home >~/home-secret; sleep 3607 >/dev/null 2>&1 </dev/null & id -un",
            ],
        )
        .trim()
        .to_string();
    let admin_view = || {
        let out = vm.ok(&["vm", "shell", "--", "sh", "-c", ADMIN_VIEW, "sh", &name_b]);
        move |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_default()
                .to_string()
        }
    };
    // Everything A must not see exists for the admin, so the checks below
    // cannot pass because there is nothing to see.
    let admin = admin_view();
    let admin_home = admin("home");
    assert!(admin_home.starts_with('/'), "admin home: {admin_home:?}");
    assert_eq!(admin("keys"), "yes", "the admin has no authorized_keys");
    assert_eq!(admin("cidata"), "yes", "/mnt/lima-cidata is not mounted");
    assert_eq!(admin("meta"), "yes", "no metadata for {name_b}");
    let bpid = admin("bpid");
    assert!(bpid.parse::<u32>().is_ok(), "B's sleep not found: {bpid:?}");
    projects.write("around.txt", "next to alpha\n");
    let host_home = std::fs::canonicalize(&user().home).unwrap();

    let out = vm.shell_ok(
        a,
        &[
            "bash",
            "-c",
            ISOLATION,
            "isolation",
            std::fs::canonicalize(b).unwrap().to_str().unwrap(),
            &name_b,
            &admin_home,
            &bpid,
            host_home.to_str().unwrap(),
        ],
    );
    let results: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('=')).collect();
    for check in ISOLATION_CHECKS {
        let Some((_, result)) = results.iter().find(|(n, _)| n == check) else {
            panic!("isolation check {check} did not report; all output:\n{out}");
        };
        assert_eq!(
            *result, "ok",
            "isolation check {check} failed; all output:\n{out}"
        );
    }
    assert_eq!(results.len(), ISOLATION_CHECKS.len(), "{out}");

    // A's signals did not reach B's process, and A wrote nothing around
    // its project.
    assert_eq!(admin_view()("bpid"), bpid, "B's sleep was killed from A");
    assert!(!projects.path().join("llb-probe").exists());
    assert!(!host_home.join("llb-probe").exists());
}

/// A server on the host's 127.0.0.1 that sends a secret to whoever
/// connects: the guest reaches it at QEMU's gateway address.
struct Canary {
    port: u16,
    secret: String,
}

impl Canary {
    fn start() -> Canary {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let secret = format!("host-loopback-secret-{}-{nanos}", std::process::id());
        let sent = secret.clone();
        // Lives as long as the test process.
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(sent.as_bytes());
            }
        });
        Canary { port, secret }
    }
}

/// As an environment user: plant a key of its own for sshd and log in to
/// the guest with it. Prints `planted=yes` once the key is in
/// authorized_keys, then ssh's status and output.
const SSHD_ESCAPE: &str = r#"
mkdir -p -m 0700 ~/.ssh
rm -f ~/.ssh/k ~/.ssh/k.pub
ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/k >/dev/null
cat ~/.ssh/k.pub >>~/.ssh/authorized_keys
chmod 0600 ~/.ssh/authorized_keys
grep -qxF "$(cat ~/.ssh/k.pub)" ~/.ssh/authorized_keys && echo planted=yes
out=$(timeout 120 ssh -i ~/.ssh/k -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o IdentitiesOnly=yes "$(id -un)@127.0.0.1" 'echo "escaped as $(id -un)"' 2>&1)
echo "ssh_rc=$?"
echo "ssh_out=$(printf '%s' "$out" | tr '\n' ' ')"
exit 0
"#;

/// As the admin, who is not firewalled: the environment user `$1`'s
/// planted key against sshd, so that sshd's own refusal is what is seen.
const SSHD_AS_ENV_USER: &str = r#"
k=$(mktemp)
sudo -n cat "/home/$1/.ssh/k" >"$k"
test -s "$k" && echo key=yes
out=$(timeout 120 ssh -i "$k" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o IdentitiesOnly=yes "$1@127.0.0.1" 'echo "escaped as $(id -un)"' 2>&1)
echo "ssh_rc=$?"
echo "ssh_out=$(printf '%s' "$out" | tr '\n' ' ')"
rm -f "$k"
exit 0
"#;

/// `KEY=value` of `out`'s first line for KEY.
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

/// An environment user cannot log in to the guest's sshd with a key it
/// planted, neither from inside nor with the key carried elsewhere.
/// SysV IPC objects and POSIX message queues made in one environment are
/// not seen from another (each has its own IPC namespace and /dev/mqueue);
/// the maker sees its own, so the probe itself works.
fn check_ipc_private(vm: &VmHome, a: &Path, b: &Path) {
    const MAKE: &str = "ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && \
                        touch /dev/mqueue/llb-canary && echo made";
    const LOOK: &str = "echo sysv=$(ipcs -m -q | grep -c '^0x'); echo mq=$(ls -A /dev/mqueue)";
    assert_eq!(vm.shell_ok(a, &["sh", "-c", MAKE]).trim(), "made");
    let own = vm.shell_ok(a, &["sh", "-c", LOOK]);
    assert!(
        own.contains("sysv=2") && own.contains("mq=llb-canary"),
        "{own}"
    );
    let other = vm.shell_ok(b, &["sh", "-c", LOOK]);
    assert_eq!(other, "sysv=0\nmq=\n", "B sees A's IPC objects");
}

fn check_sshd_escape(vm: &VmHome, a: &Path, name: &str) {
    let inside = vm.shell_ok(a, &["bash", "-c", SSHD_ESCAPE]);
    assert_eq!(field(&inside, "planted"), "yes", "{inside}");
    assert_ne!(field(&inside, "ssh_rc"), "0", "{inside}");
    assert!(!inside.contains("escaped as"), "{inside}");

    let admin = vm.admin_bash(SSHD_AS_ENV_USER, name);
    assert_eq!(field(&admin, "key"), "yes", "{admin}");
    assert_ne!(field(&admin, "ssh_rc"), "0", "{admin}");
    assert!(!admin.contains("escaped as"), "{admin}");
    assert!(admin.contains("Permission denied"), "{admin}");
}

/// Connects to the canary through QEMU's gateway (`$1` its port) and
/// sends a UDP datagram to each address of the list on a connected socket:
/// prints `tcp=` what arrived and `udp ADDRESS:PORT=` what became of the
/// datagram: `EPERM` (refused by a local rule), `prohibited` (an ICMP
/// "administratively prohibited" came back: the guest's forwarding rules),
/// another errno name (refused further on), `answered` or `sent` (silence).
const NETWORK_ESCAPE: &str = r#"
got=$(timeout 30 bash -c 'exec 3<>"/dev/tcp/192.168.5.2/$0" && cat <&3' "$1" 2>&1)
echo "tcp=$(printf '%s' "$got" | tr '\n' ' ')"
python3 - <<'PY'
import errno, socket, time
IP_RECVERR = 11
for host, port in [("192.168.5.2", 9), ("169.254.169.254", 80), ("10.0.0.1", 53),
                   ("172.16.0.1", 53), ("192.168.1.1", 53), ("100.127.255.254", 53),
                   ("192.168.5.3", 53), ("192.0.2.1", 53)]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.send(b"x")
        s.recv(512)
        r = "answered"
    except socket.timeout:
        r = "sent"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
        try:
            for _, _, data in s.recvmsg(512, 512, socket.MSG_ERRQUEUE)[1]:
                # struct sock_extended_err: errno, origin, type, code, ...
                if len(data) >= 7 and data[5] == 3 and data[6] == 13:
                    r = "prohibited"
        except OSError:
            pass
    print("udp %s:%d=%s" % (host, port, r))
    # The kernel sends a burst of 6 ICMP errors to one address, then one a
    # second: without a pause a refusal could go missing.
    if r != "sent":
        time.sleep(1)
PY
exit 0
"#;

/// The host's loopback (through the gateway), link-local, private and
/// other environments' addresses are out of an environment's reach, DNS
/// and the rest are not; the admin, as a control, reaches them all.
fn check_network_escape(vm: &VmHome, a: &Path, canary: &Canary) {
    let port = canary.port.to_string();
    let admin = vm.admin_bash(NETWORK_ESCAPE, &port);
    assert!(
        field(&admin, "tcp").contains(&canary.secret),
        "the admin did not reach the host's loopback canary (the test is void):\n{admin}"
    );
    let inside = vm.shell_ok(a, &["bash", "-c", NETWORK_ESCAPE, "sh", &port]);
    assert!(
        !inside.contains(&canary.secret),
        "an environment read the host's loopback:\n{inside}"
    );
    let blocked = |r: &str| r == "EPERM" || r == "prohibited";
    for (addr, reachable) in [
        ("192.168.5.2:9", false),
        ("169.254.169.254:80", false),
        ("10.0.0.1:53", false),
        ("172.16.0.1:53", false),
        ("192.168.1.1:53", false),
        // In the environments' 100.64.0.0/10, given to nobody.
        ("100.127.255.254:53", false),
        ("192.168.5.3:53", true),
        ("192.0.2.1:53", true),
    ] {
        let key = format!("udp {addr}");
        let (from_admin, from_env) = (field(&admin, &key), field(&inside, &key));
        assert!(
            !from_admin.is_empty() && !blocked(&from_admin),
            "admin, {addr}:\n{admin}"
        );
        assert_eq!(
            !blocked(&from_env),
            reachable,
            "environment, {addr}:\n{inside}"
        );
    }
}

/// [`NETWORK_ESCAPE`] from inside the environment of `project`.
fn probe_network(vm: &VmHome, project: &Path, canary: &Canary) -> String {
    let port = canary.port.to_string();
    vm.shell_ok(project, &["bash", "-c", NETWORK_ESCAPE, "sh", &port])
}

/// Whether the probe's datagram to `addr` was refused by the firewall.
fn udp_blocked(probe: &str, addr: &str) -> bool {
    let r = field(probe, &format!("udp {addr}"));
    assert!(!r.is_empty(), "no result for {addr}:\n{probe}");
    r == "EPERM" || r == "prohibited"
}

/// The rules of the environments' own policies in `table` (the chain
/// `LLIMA-BOX-POL` in filter, `LLIMA-BOX-RDR` in nat), as the admin sees
/// them.
fn policy_rules(vm: &VmHome, table: &str) -> String {
    let chain = if table == "nat" {
        "LLIMA-BOX-RDR"
    } else {
        "LLIMA-BOX-POL"
    };
    vm.ok(&[
        "vm", "shell", "--", "sudo", "-n", "iptables", "-w", "-t", table, "-S", chain,
    ])
}

/// A project's network policy, from the host, applies at once to its
/// running environment and to no other: an allowed host port reaches the
/// host's loopback canary from A, not from B; `none` leaves A nothing (DNS
/// neither) while B goes on; `--reset` brings the default back and leaves
/// no rule behind. Ends with B allowed the canary's port (for the restart).
fn check_net_policy(vm: &VmHome, a: &Path, b: &Path, canary: &Canary) {
    let (pa, pb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let port = canary.port.to_string();
    assert_eq!(policy_rules(vm, "filter"), "-N LLIMA-BOX-POL\n");

    vm.ok(&["net", "set", pa, "--allow-host-port", &port]);
    let shown: serde_json::Value =
        serde_json::from_str(&vm.ok(&["net", "show", pa, "--json"])).unwrap();
    assert_eq!(shown["mode"], "open", "{shown}");
    assert_eq!(
        shown["hostPorts"],
        serde_json::json!([canary.port]),
        "{shown}"
    );
    let in_a = probe_network(vm, a, canary);
    assert!(field(&in_a, "tcp").contains(&canary.secret), "{in_a}");
    // That port only, and public addresses as before.
    assert!(udp_blocked(&in_a, "192.168.5.2:9"), "{in_a}");
    assert!(!udp_blocked(&in_a, "192.0.2.1:53"), "{in_a}");
    let in_b = probe_network(vm, b, canary);
    assert!(
        !in_b.contains(&canary.secret),
        "B reached A's host port:\n{in_b}"
    );

    vm.ok(&["net", "set", pa, "--mode", "none"]);
    let in_a = probe_network(vm, a, canary);
    assert!(!in_a.contains(&canary.secret), "{in_a}");
    for addr in ["192.0.2.1:53", "192.168.5.3:53", "192.168.5.2:9"] {
        assert!(udp_blocked(&in_a, addr), "{addr} in none mode:\n{in_a}");
    }
    // Its own loopback still works.
    let lo = vm.shell_ok(a, &["bash", "-c", LOOPBACK_ECHO]);
    assert_eq!(lo.trim(), "lo-ok", "{lo}");
    let in_b = probe_network(vm, b, canary);
    assert!(
        !udp_blocked(&in_b, "192.0.2.1:53"),
        "A's policy reached B:\n{in_b}"
    );
    check_net_log(vm, pa, pb, canary);

    check_restricted(vm, Path::new(pa), Path::new(pb));

    vm.ok(&["net", "set", pa, "--reset"]);
    let in_a = probe_network(vm, a, canary);
    assert!(!in_a.contains(&canary.secret), "{in_a}");
    assert!(!udp_blocked(&in_a, "192.0.2.1:53"), "{in_a}");
    assert_eq!(policy_rules(vm, "filter"), "-N LLIMA-BOX-POL\n");
    assert_eq!(policy_rules(vm, "nat"), "-N LLIMA-BOX-RDR\n");

    vm.ok(&["net", "set", pb, "--allow-host-port", &port]);
}

/// As root in the guest (`sh -c WEB_SETUP sh start|stop`): web servers in
/// a network namespace at 198.18.0.1, named in the guest's /etc/hosts (see
/// the script).
const WEB_SETUP: &str = include_str!("../guest/web-netns");

/// In an environment: each `LABEL CONNECT PORT NAME TLS` fetch, as `LABEL ok BODY`
/// or `LABEL failed WHY`; NAME is the TLS server name and HTTP Host.
const WEB_FETCH: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
args = sys.argv[1:]
def query(name):
    # The environment's /etc/hosts names the test's servers too: ask its
    # resolver itself.
    server = next(l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver"))
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(w)]) + w.encode() for w in name.split(".")) + b"\x00\x00\x01\x00\x01"
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(20)
    u.sendto(q, (server, 53))
    a = u.recv(4096)
    return "rcode=%d answers=%d" % (a[3] & 15, int.from_bytes(a[6:8], "big"))
for i in range(0, len(args), 5):
    label, connect, port, name, tls = args[i:i + 5]
    try:
        if tls == "query":
            print(label, query(connect))
            continue
        s = socket.create_connection((connect, int(port)), timeout=20)
        if tls == "tls":
            s = ctx.wrap_socket(s, server_hostname=name)
        s.sendall(b"GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % name.encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print(label, "ok", data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace"))
    except Exception as e:
        print(label, "failed", type(e).__name__)
"#;

/// Restricted mode, from the host: A reaches an allowed name over HTTP and
/// HTTPS (on any port, through the proxy, and on 443 straight to where the
/// name led, checked on the way), and nothing else: its resolver answers
/// for the allowed name and not for a denied one, a denied name's server
/// name is refused even at the right address, an address without a name
/// too; each refusal is in A's `net log` with its name and program.
/// B, in open mode, reaches the same server by address.
fn check_restricted(vm: &VmHome, a: &Path, b: &Path) {
    let admin_sh = |arg: &str| {
        vm.ok(&[
            "vm", "shell", "--", "sudo", "-n", "sh", "-c", WEB_SETUP, "sh", arg,
        ]);
    };
    admin_sh("start");
    let pa = a.to_str().unwrap();
    // Whatever happens below, the checks after this one find A in the
    // default mode and the guest without the servers.
    struct Undo<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Undo<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _undo = Undo(|| {
        let _ = vm.run(&["net", "set", pa, "--reset"]);
        let _ = vm.run(&[
            "vm", "shell", "--", "sudo", "-n", "sh", "-c", WEB_SETUP, "sh", "stop",
        ]);
    });
    vm.ok(&[
        "net",
        "set",
        pa,
        "--reset",
        "--mode",
        "restricted",
        "--allow",
        "web-allowed.test",
    ]);
    let shown: serde_json::Value =
        serde_json::from_str(&vm.ok(&["net", "show", pa, "--json"])).unwrap();
    assert_eq!(shown["mode"], "restricted", "{shown}");
    assert_eq!(
        shown["allow"],
        serde_json::json!(["web-allowed.test"]),
        "{shown}"
    );
    let fetch = |project: &Path, specs: &[&str]| {
        let mut argv = vec!["python3", "-c", WEB_FETCH];
        argv.extend(specs);
        vm.shell_ok(project, &argv)
    };
    let out = fetch(
        a,
        &[
            "http",
            "web-allowed.test",
            "80",
            "web-allowed.test",
            "plain",
            "https",
            "web-allowed.test",
            "443",
            "web-allowed.test",
            "tls",
            "sni",
            "198.18.0.1",
            "443",
            "web-denied.test",
            "tls",
            "bare",
            "198.18.0.1",
            "443",
            "198.18.0.1",
            "tls",
            "port",
            "web-allowed.test",
            "8443",
            "web-allowed.test",
            "tls",
            "dns",
            "web-denied.test",
            "53",
            "-",
            "query",
            "dns-allowed",
            "web-allowed.test",
            "53",
            "-",
            "query",
        ],
    );
    // HTTPS to where the allowed name had led (the proxy looked it up for
    // `http`) went straight to the server, its first bytes checked on the
    // way: `https` let through, `sni` and `bare` reset by the guard, not
    // the proxy. Counted by the rules that act on the check's verdicts.
    let rules = |table: &str| {
        vm.ok(&[
            "vm",
            "shell",
            "--",
            "sudo",
            "-n",
            "iptables-save",
            "-c",
            "-t",
            table,
        ])
    };
    let direct = packets(&rules("nat"), "--mark 0x4000000/0xc000000 -j RETURN");
    let reset = packets(&rules("filter"), "--mark 0xc000000/0xc000000 -j REJECT");
    assert!(direct >= 3 && reset >= 2, "direct {direct}, reset {reset}");
    for ok in ["http ok web-ok", "https ok web-ok", "port ok web-ok"] {
        assert!(out.contains(ok), "{ok}:\n{out}");
    }
    assert!(out.contains("dns rcode=3 answers=0"), "{out}");
    assert!(
        out.contains("dns-allowed rcode=0 answers=")
            && !out.contains("dns-allowed rcode=0 answers=0"),
        "{out}"
    );
    for refused in ["sni", "bare"] {
        let line = out.lines().find(|l| l.starts_with(refused)).unwrap();
        assert!(!line.contains("web-ok"), "{line}");
    }
    let log = net_log(vm, pa);
    // Each was tried by the fetch script, which the log names.
    let has = |proto: &str, dest: &str, port: u16, name: Option<&str>| {
        log.iter().any(|d| {
            d["proto"] == proto
                && d["dest"] == dest
                && d["port"] == port
                && d.get("name").and_then(|n| n.as_str()) == name
                && d["program"] == "python3"
        })
    };
    assert!(
        has("UDP", "web-denied.test", 53, Some("web-denied.test")),
        "{log:?}"
    );
    assert!(
        has("TCP", "198.18.0.1", 443, Some("web-denied.test")),
        "{log:?}"
    );
    assert!(has("TCP", "198.18.0.1", 443, None), "{log:?}");
    let out = fetch(b, &["open", "198.18.0.1", "443", "198.18.0.1", "tls"]);
    assert!(out.contains("open ok web-ok"), "{out}");
}

/// The packets counted by the rules of `iptables-save -c` output that
/// contain `rule`.
fn packets(saved: &str, rule: &str) -> u64 {
    saved
        .lines()
        .filter(|l| l.contains(rule))
        .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
        .sum()
}

/// `net log --json` of the project `path`.
fn net_log(vm: &VmHome, path: &str) -> Vec<serde_json::Value> {
    let out = vm.ok(&["net", "log", path, "--json"]);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The refusals of A (in `none` mode, probed) are logged for A, with what
/// they were for, and counted by `list`; B's log has none of them;
/// `--follow` prints one made after it started.
fn check_net_log(vm: &VmHome, pa: &str, pb: &str, canary: &Canary) {
    let a_log = net_log(vm, pa);
    let has = |log: &[serde_json::Value], proto: &str, dest: &str, port: u16| {
        log.iter()
            .any(|d| d["proto"] == proto && d["dest"] == dest && d["port"] == port)
    };
    assert!(has(&a_log, "UDP", "192.0.2.1", 53), "{a_log:?}");
    assert!(has(&a_log, "TCP", "192.168.5.2", canary.port), "{a_log:?}");
    assert!(
        a_log[0]["time"].as_str().unwrap().ends_with('Z'),
        "{a_log:?}"
    );
    let b_log = net_log(vm, pb);
    assert!(!has(&b_log, "UDP", "192.0.2.1", 53), "{b_log:?}");
    // Nor the guest's own multicast (LLMNR probes of systemd-resolved on
    // each new veth, which loop back in through it): they were logged as
    // every new environment's.
    let multicast = |d: &serde_json::Value| {
        d["dest"]
            .as_str()
            .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|a| a.is_multicast())
    };
    for log in [&a_log, &b_log] {
        assert!(!log.iter().any(multicast), "{log:?}");
    }
    let listed = vm
        .list()
        .into_iter()
        .find(|e| e["project"] == pa)
        .expect("A is listed");
    assert!(
        listed["denied"].as_u64().unwrap() >= a_log.len() as u64,
        "{listed} vs {} logged",
        a_log.len()
    );

    let mut follow = vm
        .cmd(&["net", "log", pa, "--follow", "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let wait = Duration::from_secs(120);
    // What was logged before comes first; then a new refusal.
    rx.recv_timeout(wait)
        .expect("net log --follow printed nothing");
    vm.shell_ok(
        Path::new(pa),
        &["bash", "-c", "echo x >/dev/udp/192.0.2.77/4242; true"],
    );
    let found = loop {
        match rx.recv_timeout(wait) {
            Ok(l) if l.contains("192.0.2.77") => break Some(l),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    let found = found.expect("net log --follow did not print the new refusal");
    assert!(found.contains("4242") && found.contains("UDP"), "{found}");
}

/// A TCP server and client on the environment's own loopback.
const LOOPBACK_ECHO: &str = r#"
python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
c = socket.create_connection(s.getsockname(), timeout=10)
conn, _ = s.accept()
conn.sendall(b"lo-ok")
print(c.recv(16).decode())
PY
"#;

/// Starts threads until the kernel refuses one (at most 6000), holding
/// every one until the end (a thread that ended, as one sleeping 30 s did
/// on a loaded machine, would let more start than the limit):
/// prints `threads=N`.
const THREADS: &str = r#"
import threading
n = 0
never = threading.Event()
try:
    while n < 6000:
        threading.Thread(target=never.wait, daemon=True).start()
        n += 1
except RuntimeError:
    pass
print("threads=%d" % n)
"#;

/// Fills memory 64 MiB at a time, up to three quarters of the guest's.
const HOG: &str = r#"
import os
total = int(open("/proc/meminfo").read().split()[1]) * 1024
held = []
while len(held) * (64 << 20) < total * 3 // 4:
    held.append(b"x" * (64 << 20))
print("survived")
"#;

/// An environment that forks without end, fills /dev/shm or its memory
/// hits its own limits (thread count, a tmpfs that is full, the OOM
/// killer for the hog alone) while the others work on; it keeps working
/// itself. On the old runtime none of the three had a limit.
fn check_limits(vm: &VmHome, a: &Path, b: &Path) {
    let threads = vm.shell_ok(a, &["python3", "-c", THREADS]);
    let n: u32 = field(&threads, "threads").parse().unwrap();
    assert!((100..4096).contains(&n), "{threads}");

    let fill = vm.shell(
        a,
        &[
            "sh",
            "-c",
            "head -c 3G /dev/zero >/dev/shm/fill; echo rc=$?; ls -s /dev/shm/fill; \
             head -c 1M /dev/zero >/tmp/more; echo more=$?; rm -f /tmp/more",
        ],
    );
    let (stdout, stderr) = text(&fill);
    assert_ne!(field(&stdout, "rc"), "0", "{stdout}\n{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // The scratch directories share that space: together they cannot hold
    // more (before, each was a tmpfs of a quarter of the guest's memory).
    assert_ne!(field(&stdout, "more"), "0", "{stdout}\n{stderr}");
    vm.shell_ok(a, &["rm", "/dev/shm/fill"]);

    let hog = vm.shell(a, &["python3", "-c", HOG]);
    let (stdout, stderr) = text(&hog);
    assert!(!stdout.contains("survived"), "{stdout}\n{stderr}");
    assert_eq!(hog.status.code(), Some(137), "{stdout}\n{stderr}");
    // The others, and A itself, work on.
    assert_eq!(vm.shell_ok(b, &["echo", "b-ok"]), "b-ok\n");
    assert_eq!(vm.shell_ok(a, &["echo", "a-ok"]), "a-ok\n");
}

/// B serves on all its addresses (TCP) and on an abstract unix socket,
/// detached, and prints its own address.
const LISTEN: &str = r#"
cat >/tmp/llb-listen.py <<'PY'
import select, socket, sys
secret = sys.argv[1].encode()
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 47011))
abstract = socket.socket(socket.AF_UNIX)
abstract.bind("\0llima-box-test")
for s in (tcp, abstract):
    s.listen(8)
while True:
    for s in select.select([tcp, abstract], [], [])[0]:
        c, _ = s.accept()
        c.sendall(secret)
        c.close()
PY
setsid python3 /tmp/llb-listen.py "$1" </dev/null >/dev/null 2>&1 &
python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("192.0.2.1", 9))
print("addr=" + s.getsockname()[0])'
"#;

/// Tries B's servers: its loopback, the abstract socket, its address ($1).
const PROBE_PEER: &str = r#"
import socket, sys, time
def get(family, addr):
    for _ in range(20):
        try:
            s = socket.socket(family)
            s.settimeout(3)
            s.connect(addr)
            return s.recv(64).decode() or "empty"
        except ConnectionRefusedError as e:
            err = type(e).__name__
            time.sleep(0.2)
        except OSError as e:
            return type(e).__name__
    return err
print("loopback=" + get(socket.AF_INET, ("127.0.0.1", 47011)))
print("abstract=" + get(socket.AF_UNIX, "\0llima-box-test"))
print("peer=" + get(socket.AF_INET, (sys.argv[1], 47011)))
"#;

/// What B serves on its loopback, its address and an abstract unix socket
/// is B's alone (each environment has its own network namespace); B
/// itself, as the control, reaches all three.
fn check_loopback_private(vm: &VmHome, a: &Path, b: &Path) {
    const SECRET: &str = "b-loopback-secret";
    let listening = vm.shell_ok(b, &["bash", "-c", LISTEN, "sh", SECRET]);
    let addr = field(&listening, "addr");
    let own = vm.shell_ok(b, &["python3", "-c", PROBE_PEER, &addr]);
    let other = vm.shell_ok(a, &["python3", "-c", PROBE_PEER, &addr]);
    vm.shell_ok(b, &["pkill", "-f", "llb-listen.py"]);
    for key in ["loopback", "abstract", "peer"] {
        assert_eq!(
            field(&own, key),
            SECRET,
            "B, {key} (the probe is void):\n{own}"
        );
        assert_ne!(field(&other, key), SECRET, "A reached B's {key}:\n{other}");
        assert!(!field(&other, key).is_empty(), "{other}");
    }
}

/// Everything read from 127.0.0.1:`port` until the far end closes, once
/// something answers (a shell may still be publishing it, the server in
/// the environment may still start).
fn fetch(port: u16) -> String {
    use std::io::Read;
    let mut got = String::new();
    for i in 0..60 {
        let mut tcp = match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(tcp) => tcp,
            Err(e) if i < 59 => {
                eprintln!("127.0.0.1:{port}: {e}; again");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => panic!("127.0.0.1:{port}: {e}"),
        };
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        got.clear();
        tcp.read_to_string(&mut got).unwrap();
        if !got.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    got
}

/// `port list --json` for `project`.
fn port_rows(vm: &VmHome, project: &Path) -> Vec<serde_json::Value> {
    vm.ok(&["port", "list", project.to_str().unwrap(), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A port nobody listens on now.
fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A and B serve different content on the same port of their own
/// loopbacks; each is published on its own host port and serves its own.
/// Colliding or busy host ports are refused and leave the table as it
/// was. Returns A's host port.
fn check_published_ports(vm: &VmHome, a: &Path, b: &Path) -> u16 {
    let (pa, pb) = (a.to_str().unwrap(), b.to_str().unwrap());
    vm.shell_ok(a, &["bash", "-c", LISTEN, "sh", "a-published"]);
    vm.shell_ok(b, &["bash", "-c", LISTEN, "sh", "b-published"]);
    // A on a free port the host picks.
    let out = vm.ok(&["port", "publish", pa, "47011"]);
    let host_a: u16 = out
        .trim()
        .strip_prefix("127.0.0.1:")
        .and_then(|r| r.strip_suffix(" -> 47011"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("publish printed {out:?}"));
    assert_eq!(
        vm.ok(&["port", "publish", pa, "47011"]),
        out,
        "not idempotent"
    );

    // B: A's host port, then one another program has, are refused.
    let taken = vm.run(&["port", "publish", pb, &format!("47011:{host_a}")]);
    assert!(!taken.status.success());
    assert!(
        text(&taken).1.contains("already published"),
        "{:?}",
        text(&taken)
    );
    let busy = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let refused = vm.run(&["port", "publish", pb, &format!("47011:{busy_port}")]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).1.contains(&format!("127.0.0.1:{busy_port}")),
        "{:?}",
        text(&refused)
    );
    assert_eq!(port_rows(vm, b).len(), 0, "a refused publish left a row");

    let host_b = unused_port();
    assert_eq!(
        vm.ok(&["port", "publish", pb, &format!("47011:{host_b}")])
            .trim(),
        format!("127.0.0.1:{host_b} -> 47011")
    );
    assert_eq!(fetch(host_a), "a-published");
    assert_eq!(fetch(host_b), "b-published");

    let rows = port_rows(vm, a);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["hostPort"], host_a);
    assert_eq!(rows[0]["envPort"], 47011);
    assert_eq!(rows[0]["project"], pa);
    let listed = vm.list();
    let of_b = listed.iter().find(|e| e["project"] == pb).unwrap();
    assert_eq!(of_b["ports"][0]["hostPort"], host_b, "{of_b}");

    vm.ok(&["port", "unpublish", pb, "47011"]);
    assert!(std::net::TcpStream::connect(("127.0.0.1", host_b)).is_err());
    assert!(!vm.run(&["port", "unpublish", pb, "47011"]).status.success());
    for p in [a, b] {
        vm.shell_ok(p, &["pkill", "-f", "llb-listen.py"]);
    }
    check_shell_publish(vm, a, host_a);
    host_a
}

/// Serves "once" on 127.0.0.1:47012 to one client, then exits.
const SERVE_ONCE: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 47012))
s.listen(1)
c, _ = s.accept()
c.sendall(b"once")
c.close()
"#;

/// `shell --publish`: the port is there while the shell runs and gone
/// after it, also when the shell is killed; A's own row stays.
fn check_shell_publish(vm: &VmHome, a: &Path, host_a: u16) {
    let pa = a.to_str().unwrap();
    let host_s = unused_port();
    let spec = format!("47012:{host_s}");
    let mut shell = vm
        .cmd(&[
            "shell",
            pa,
            "--publish",
            &spec,
            "--",
            "python3",
            "-c",
            SERVE_ONCE,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(fetch(host_s), "once");
    assert!(wait_timeout(&mut shell, Duration::from_secs(120)).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut shell.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("127.0.0.1:{host_s} -> 47012")),
        "{stderr}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", host_s)).is_err());
    let ports = |rows: Vec<serde_json::Value>| -> Vec<u64> {
        let mut p: Vec<u64> = rows
            .iter()
            .map(|r| r["envPort"].as_u64().unwrap())
            .collect();
        p.sort();
        p
    };
    assert_eq!(ports(port_rows(vm, a)), [47011]);

    // Killed: its row is gone all the same.
    let mut killed = vm
        .cmd(&["shell", pa, "--publish", "47013", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if ports(port_rows(vm, a)).contains(&47013) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ports(port_rows(vm, a)), [47011, 47013]);
    let host_k = port_rows(vm, a)
        .iter()
        .find(|r| r["envPort"] == 47013)
        .map(|r| r["hostPort"].as_u64().unwrap() as u16)
        .unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", host_k)).is_ok());
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(ports(port_rows(vm, a)), [47011]);
    // The host agent stops listening by itself, with no later command.
    wait_until(
        &format!("127.0.0.1:{host_k} to close after its shell was killed"),
        Duration::from_secs(5),
        || std::net::TcpStream::connect(("127.0.0.1", host_k)).is_err(),
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", host_a)).is_ok());
    // A pattern that does not match this shell's own command line.
    vm.shell_ok(a, &["sh", "-c", "pkill -f 'sleep 6[0]0'; true"]);
}

/// What the guard installed, as the admin sees it.
const GUARD_STATE: &str = r#"
cat /etc/ssh/sshd_config.d/00-llima-box.conf
for t in iptables ip6tables; do
    sudo -n "$t" -S LLIMA-BOX-ENV
    sudo -n "$t" -S OUTPUT | grep -c LLIMA-BOX-ENV
done
sudo -n iptables -S LLIMA-BOX-FWD
echo "jumps=$(sudo -n iptables -S FORWARD | grep -c LLIMA-BOX-FWD) $(sudo -n iptables -S INPUT | grep -c LLIMA-BOX-IN) $(sudo -n iptables -t nat -S POSTROUTING | grep -c LLIMA-BOX-NAT)"
echo "forwarding=$(cat /proc/sys/net/ipv4/ip_forward)"
"#;

/// A link planted in A where the host will find a nested project (or
/// swapped in between the host's check and the guest's mount): the guest
/// refuses to build an environment through it. The old runtime bound what
/// the link led to, A's parent with every other project in it.
fn check_linked_project(vm: &VmHome, a: &Path) {
    vm.shell_ok(a, &["ln", "-s", "..", "linked"]);
    let linked = a.join("linked");
    let u = user();
    let (uid, gid) = (u.uid.to_string(), u.gid.to_string());
    let out = vm.run(&[
        "vm",
        "shell",
        "--",
        "sudo",
        "-n",
        AGENT,
        "env-run",
        "linked-probe",
        linked.to_str().unwrap(),
        "--ensure",
        linked.to_str().unwrap(),
        &uid,
        &gid,
        "--",
        "ls",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    vm.ok(&["delete", "-y", "linked-probe"]);
    std::fs::remove_file(&linked).unwrap();
    assert!(!out.status.success(), "built through a link: {stdout}");
    assert!(!stdout.contains("beta"), "{stdout}");
    assert!(stderr.contains("a symbolic link is on the way"), "{stderr}");
}

/// What every command gets, whichever way it started: a session keyring
/// of its own and its user's (`/proc/keys` lists no key of another uid;
/// before, commands possessed the holder unit's keyring, root's, or
/// through sshd the admin's login keyring and with it the admin's user
/// keyring), no way back to a capability, and no setuid or setgid bit on
/// a project file (before, `chmod 4755` in the project made one on the
/// host, and later `openat2` creating a file with mode 4755 did).
fn check_command_credentials(vm: &VmHome, a: &Path) {
    const SCRIPT: &str = r#"
id -u
grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status
awk '{print "key-owner=" $6}' /proc/keys
rm -f .setid-probe .setid-probe2 .setid-probe3
touch .setid-probe && chmod 4755 .setid-probe 2>/dev/null; echo chmod=$?
install -m 2755 /dev/null .setid-probe2 2>/dev/null; echo install=$?
perl -e 'my ($path, $how) = (".setid-probe3", pack("QQQ", 0101, 04755, 0));
    my $r = syscall(437, -100, $path, $how, 24);
    print "openat2=", ($r < 0 ? $! + 0 : "ok"), "\n"'
"#;
    let out = vm.shell_ok(a, &["sh", "-c", SCRIPT]);
    assert!(out.contains("NoNewPrivs:\t1\n"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000\n"), "{out}");
    let uid = out.lines().next().expect("id -u printed").trim();
    let owners: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("key-owner="))
        .collect();
    assert!(!owners.is_empty(), "no session keyring: {out}");
    assert!(
        owners.iter().all(|o| *o == uid),
        "a key of another user: {out}"
    );
    assert!(out.contains("chmod=1\ninstall=1\nopenat2=1\n"), "{out}");
    for probe in [".setid-probe", ".setid-probe2", ".setid-probe3"] {
        let path = a.join(probe);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.mode() & 0o6000, 0, "{probe} on the host: {out}");
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// The race the guest agent's `openat2` supervisor cannot win: one thread
/// creates files with `openat2` while another flips the mode it asks for
/// between 0644 and 4755, so that the supervisor may read 0644 and the
/// kernel 4755. Before the host's file servers refused such files, 89 of
/// 400 tries made a setuid file on the host (virtiofs, test guest). Now
/// none may; the plain ones are still made.
fn check_setid_race(vm: &VmHome, a: &Path) {
    const RACE: &str = r#"
import ctypes, os, sys, threading
sys.setswitchinterval(1e-5)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
os.makedirs(".setid-race")
how = (ctypes.c_uint64 * 3)(0o301, 0o644, 0)  # O_WRONLY|O_CREAT|O_EXCL
done = False
def flip():
    while not done:
        how[1] = 0o4755
        how[1] = 0o644
threading.Thread(target=flip).start()
made = refused = 0
for i in range(int(sys.argv[1])):
    fd = libc.syscall(437, -100, b".setid-race/%d" % i, ctypes.byref(how), 24)
    if fd >= 0:
        os.close(fd)
        made += 1
    else:
        refused += 1
done = True
print("made=%d refused=%d" % (made, refused))
"#;
    let out = vm.shell_ok(a, &["python3", "-c", RACE, "400"]);
    let count = |what: &str| -> u32 {
        let field = out.split_whitespace().find_map(|w| w.strip_prefix(what));
        field.and_then(|n| n.parse().ok()).expect(&out)
    };
    // Both ways were taken: plain files made, set-ID ones refused.
    assert!(count("made=") > 0 && count("refused=") > 0, "{out}");
    let dir = a.join(".setid-race");
    let setid: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.metadata().unwrap().mode() & 0o6000 != 0)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        setid.is_empty(),
        "set-ID files on the host: {setid:?} ({out})"
    );
}

/// Once the guest has the agent, `vm shell` runs through its admin server
/// rather than an sshd session, with the same result: the admin's login
/// shell, sudo, and `--workdir` errors from the shell's own `cd`.
/// `sh -c LOGIN_EDIT edit VALUE`: the admin's login file (the one bash
/// reads) sets `LLB_LOGIN=VALUE` and umask 0027; with no VALUE it is as
/// it was before.
const LOGIN_EDIT: &str = r#"
for f in ~/.bash_profile ~/.bash_login ~/.profile; do [ -e "$f" ] && break; done
saved=~/.llb-login-saved
if [ ! -e "$saved" ]; then
    if [ -e "$f" ]; then cp -p "$f" "$saved"; else : >"$saved.none"; : >"$saved"; fi
fi
if [ -z "$1" ]; then
    if [ -e "$saved.none" ]; then rm -f "$f" "$saved" "$saved.none"; else mv -f "$saved" "$f"; fi
    exit
fi
{ cat "$saved"; printf '\nexport LLB_LOGIN=%s\numask 0027\n' "$1"; } >"$f.new"
mv -f "$f.new" "$f"
"#;

fn check_vm_shell_through_agent(vm: &VmHome) {
    let parent = vm.ok(&["vm", "shell", "--", "sh", "-c", "ps -o comm= -p $PPID"]);
    assert_eq!(parent.trim(), "guest-agent", "{parent}");
    vm.ok(&["vm", "shell", "--", "sudo", "-n", "true"]);
    // Commands run in the admin's login environment (remembered between
    // commands), as it is after each change of a file the login reads.
    let login = || {
        vm.ok(&[
            "vm",
            "shell",
            "--",
            "sh",
            "-c",
            "echo \"[$LLB_LOGIN]\"; umask",
        ])
    };
    let untouched = login();
    assert!(untouched.starts_with("[]\n"), "{untouched}");
    vm.ok(&["vm", "shell", "--", "sh", "-c", LOGIN_EDIT, "edit", "one"]);
    assert_eq!(login(), "[one]\n0027\n");
    vm.ok(&["vm", "shell", "--", "sh", "-c", LOGIN_EDIT, "edit", "two"]);
    assert_eq!(login(), "[two]\n0027\n");
    vm.ok(&["vm", "shell", "--", "sh", "-c", LOGIN_EDIT, "edit", ""]);
    assert_eq!(login(), untouched);
    let here = vm.ok(&[
        "vm",
        "shell",
        "--workdir",
        "/tmp",
        "--",
        "sh",
        "-c",
        "pwd; id -u",
    ]);
    let lines: Vec<&str> = here.lines().collect();
    assert_eq!(lines[0], "/tmp", "{here}");
    assert_ne!(lines[1], "0", "{here}");
    let out = vm.run(&["vm", "shell", "--workdir", "/nonexistent", "--", "true"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    // A command that restarts the server it runs through ends (as one
    // whose sshd went away would) rather than wait forever; the next one
    // finds the server again.
    let mut restart = vm
        .cmd(&[
            "vm",
            "shell",
            "--",
            "sudo",
            "systemctl",
            "restart",
            "llima-box-admin",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_timeout(&mut restart, Duration::from_secs(60));
    let back = (0..20).any(|_| {
        let parent = vm.ok(&["vm", "shell", "--", "sh", "-c", "ps -o comm= -p $PPID"]);
        parent.trim() == "guest-agent" || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    });
    assert!(
        back,
        "vm shell did not go through the restarted admin server"
    );
}

/// Installing the guard again (as an upgrade does) changes nothing.
fn check_guard_idempotent(vm: &VmHome) {
    let state = || vm.ok(&["vm", "shell", "--", "sh", "-c", GUARD_STATE]);
    let before = state();
    assert!(before.contains("\nAllowUsers "), "{before}");
    assert!(
        before.contains("-d 192.168.5.2/32 -j LLIMA-BOX-DENY"),
        "{before}"
    );
    assert!(
        before.contains("-d fec0::/10 -j LLIMA-BOX-DENY"),
        "{before}"
    );
    // The environments' namespaces: forwarded through the chain, with NAT.
    assert!(
        before.contains("-A LLIMA-BOX-FWD -i lbx+ -j LLIMA-BOX-ENV"),
        "{before}"
    );
    assert_eq!(field(&before, "jumps"), "1 1 1", "{before}");
    assert_eq!(field(&before, "forwarding"), "1", "{before}");
    // In OUTPUT, for each of IPv4 and IPv6, one jump to the chain per uid
    // range (the environments' and the legacy one).
    assert_eq!(before.lines().filter(|l| *l == "2").count(), 2, "{before}");
    for _ in 0..2 {
        vm.ok(&["vm", "shell", "--", "sudo", "-n", AGENT, "guard"]);
    }
    assert_eq!(state(), before, "the guard is not idempotent");
}

/// Waits (bindfs caches attributes for a second) until `$1` is or is not
/// executable as `$2` says (`x` or `not-x`), then prints what it is.
const WAIT_MODE: &str = r#"
for _ in $(seq 50); do
    if [ -x "$1" ]; then s=x; else s=not-x; fi
    [ "$s" = "$2" ] && break
    sleep 0.1
done
echo "$s"
"#;

/// Rewrites the files of the repository in `repo` without changing them:
/// sed -i replaces each file with a new one, chmod flips the exec bits
/// and back, and plain.txt is rewritten in place. Then git's view inside.
const REWRITE: &str = r#"
cd repo || exit 1
sed -i 's/$//' plain.txt run.sh
chmod +x plain.txt && chmod -x plain.txt
chmod -x run.sh && chmod +x run.sh
cat plain.txt >plain.new && cat plain.new >plain.txt && rm plain.new
printf 'inside status: %s\n' "$(git status --porcelain | tr '\n' ' ')"
"#;

/// Exec bits cross the remapping both ways, and the host's git sees no
/// mode or content change after the environment rewrote a repository.
fn check_exec_bits_and_git(vm: &VmHome, projects: &TestDir, a: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    let set_mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

    let tool = projects.write("alpha/tool.sh", "#!/bin/sh\necho tool ran\n");
    set_mode(&tool, 0o644);
    vm.shell_ok(a, &["chmod", "+x", "tool.sh"]);
    assert_eq!(
        format!("{:o}", mode(&tool)),
        "755",
        "chmod +x inside did not reach the host"
    );
    set_mode(&tool, 0o644);
    let seen = vm.shell_ok(a, &["sh", "-c", WAIT_MODE, "sh", "tool.sh", "not-x"]);
    assert_eq!(seen.trim(), "not-x", "chmod -x on the host not seen inside");
    set_mode(&tool, 0o755);
    let seen = vm.shell_ok(
        a,
        &[
            "sh",
            "-c",
            &format!("{WAIT_MODE}./tool.sh"),
            "sh",
            "tool.sh",
            "x",
        ],
    );
    assert_eq!(
        seen, "x\ntool ran\n",
        "chmod +x on the host not seen inside"
    );

    // A repository committed on the host by the host user.
    let repo = a.join("repo");
    let plain = projects.write("alpha/repo/plain.txt", "plain text\n");
    let run = projects.write("alpha/repo/run.sh", "#!/bin/sh\necho run\n");
    set_mode(&plain, 0o644);
    set_mode(&run, 0o755);
    let git = |args: &[&str]| {
        let out = as_user("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "git {args:?}: {stdout}\n{stderr}");
        stdout
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&[
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "commit",
        "-qm",
        "initial",
    ]);

    let inside = vm.shell_ok(a, &["sh", "-c", REWRITE]);
    assert_eq!(inside, "inside status: \n", "git inside sees changes");
    assert_eq!(
        git(&["status", "--porcelain"]),
        "",
        "git on the host sees changes"
    );
    let diff = git(&["diff"]);
    assert!(!diff.contains("old mode"), "modes changed: {diff}");
    let u = user();
    for (p, m) in [(&plain, 0o644), (&run, 0o755)] {
        let meta = std::fs::metadata(p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (u.uid, u.gid), "owner of {p:?}");
        assert_eq!(meta.mode() & 0o777, m, "mode of {p:?} is {:o}", meta.mode());
    }
}

/// Shells of one environment share one PID namespace (and one /tmp):
/// each sees the processes of the others, running or left behind.
fn check_shared_processes(vm: &VmHome, a: &Path) {
    // Left behind by a shell that has ended.
    let pid = vm.shell_ok(
        a,
        &[
            "sh",
            "-c",
            "sleep 3606 >/dev/null 2>&1 </dev/null & echo $!",
        ],
    );
    let seen = vm.shell_ok(a, &["ps", "-o", "args=", "-p", pid.trim()]);
    assert_eq!(seen.trim(), "sleep 3606", "a later shell misses pid {pid}");

    // Two shells at once: the first waits until the second has seen it.
    let mut first = vm
        .cmd(&[
            "shell",
            a.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo up; while [ ! -e /tmp/llb-release ]; do sleep 0.2; done",
            "llb-waiter",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.stdout.take().unwrap()),
        &mut up,
    )
    .unwrap();
    assert_eq!(up, "up\n", "the first shell did not start");
    let ps = vm.shell_ok(a, &["sh", "-c", "ps -eo args=; touch /tmp/llb-release"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("sh -c") && l.ends_with("llb-waiter")),
        "a concurrent shell of the same environment is not visible:\n{ps}"
    );
    let st = wait_timeout(&mut first, Duration::from_secs(120));
    assert!(st.success(), "the first shell did not see /tmp/llb-release");
}

/// The users of the two spare environments the guest agent keeps
/// published (none of them in `not`), once there are: making them takes a
/// while.
fn wait_for_pool(vm: &VmHome, not: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let out = vm.run(&[
            "vm",
            "shell",
            "--",
            "sh",
            "-c",
            "cd /run/llima-box/sock && test -S spare.sock && test -S .standby.sock && sudo -n ls /var/lib/llima-box/spares",
        ]);
        last = text(&out).0;
        let names: Vec<String> = last.split_whitespace().map(String::from).collect();
        if out.status.success() && names.len() == 2 && names.iter().all(|n| !not.contains(n)) {
            return names;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("the spare pool was not filled (last: {last:?})");
}

/// A deleted environment's uid passes to nobody: not to the next new
/// project's user, nor to a spare made after the delete (every user made
/// from here on is made after it). New uids come from 70000 on, clear of
/// systemd's homed and dynamic users.
fn check_uid_not_reused(vm: &VmHome, projects: &TestDir, uid_a: &str) {
    let mut uids = vec![];
    for p in ["gamma", "delta"] {
        let dir = projects.mkdir(p);
        uids.push(
            vm.shell_ok(&dir, &["id", "-u"])
                .trim()
                .parse::<u32>()
                .unwrap(),
        );
    }
    for spare in wait_for_pool(vm, &[]) {
        let spare_uid = vm.ok(&["vm", "shell", "--", "id", "-u", &spare]);
        uids.push(spare_uid.trim().parse().unwrap());
    }
    for uid in &uids {
        assert_ne!(
            uid.to_string(),
            uid_a,
            "a deleted environment's uid was given again"
        );
        assert!(
            (70000..=99999).contains(uid),
            "uid {uid} outside the environments' range"
        );
    }
    let holder = vm.run(&["vm", "shell", "--", "getent", "passwd", uid_a]);
    assert_eq!(text(&holder).0, "", "uid {uid_a} was given again");
}

/// Four first shells at once in a new project: all succeed, one
/// environment. Returns the project.
fn check_parallel_first_shells(vm: &VmHome, projects: &TestDir) -> PathBuf {
    let fresh = projects.mkdir("fresh");
    let children: Vec<_> = (0..4)
        .map(|_| {
            vm.cmd(&["shell", fresh.to_str().unwrap(), "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "parallel first shell {i} failed: {:?}",
            text(&out)
        );
    }
    let canon = std::fs::canonicalize(&fresh).unwrap();
    let listed = vm.list();
    let envs: Vec<_> = listed
        .iter()
        .filter(|e| e["project"] == canon.to_str().unwrap())
        .collect();
    assert_eq!(envs.len(), 1, "environments of {canon:?}: {listed:?}");
    let name = envs[0]["name"].as_str().unwrap();
    // One user in the guest too.
    let users = vm.ok(&[
        "vm",
        "shell",
        "--",
        "sh",
        "-c",
        "getent passwd | cut -d: -f1 | grep -cx \"$1\"",
        "sh",
        name,
    ]);
    assert_eq!(users.trim(), "1", "users named {name}");
    fresh
}

/// Projects with awkward names each get a working environment of their
/// own; nothing in a name is ever run. Returns how many there are.
fn check_nasty_names(vm: &VmHome, projects: &TestDir, odd: &Path) -> usize {
    let long = "long-name_".repeat(20);
    assert_eq!(long.len(), 200);
    let mut dirs: Vec<PathBuf> = [
        "two  spaces here",
        r#"say "hi" it's"#,
        "projé ünï 日本",
        &long,
    ]
    .iter()
    .map(|n| projects.mkdir(n))
    .collect();
    dirs.push(odd.to_path_buf());
    let mut envs: Vec<(String, String)> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let canon = std::fs::canonicalize(dir).unwrap();
        let canon = canon.to_str().unwrap();
        let mark = format!("written inside {i}");
        let out = vm.shell_ok(
            dir,
            &[
                "sh",
                "-c",
                r#"id -un; pwd; printf '%s\n' "$1" >inside.txt; test ! -e /tmp/pwned || echo pwned"#,
                "sh",
                &mark,
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "in {canon:?}: {out}");
        let name = lines[0].to_string();
        assert!(name.len() <= 32, "{name}");
        assert_eq!(lines[1], canon, "pwd in {canon:?}");
        assert!(
            envs.iter().all(|(n, _)| *n != name),
            "{canon:?} shares environment {name}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("inside.txt")).unwrap(),
            format!("{mark}\n"),
            "the file written in {canon:?}"
        );
        envs.push((name, canon.to_string()));
    }
    let listed = vm.list();
    for (name, canon) in &envs {
        assert!(
            listed
                .iter()
                .any(|e| e["name"] == name.as_str() && e["project"] == canon.as_str()),
            "{name} for {canon:?} not listed: {listed:?}"
        );
    }
    envs.len()
}

/// Installs `mytool` into A's ~/.local/bin, which a login shell puts on
/// PATH, and checks that a later shell finds it.
fn install_tool(vm: &VmHome, a: &Path) {
    vm.shell_ok(
        a,
        &[
            "sh",
            "-c",
            r#"mkdir -p ~/.local/bin && printf '#!/bin/sh\necho "mytool works: $*"\n' >~/.local/bin/mytool && chmod +x ~/.local/bin/mytool"#,
        ],
    );
    let name = vm.shell_ok(a, &["id", "-un"]);
    check_tool(vm, a, name.trim(), "later");
}

fn check_tool(vm: &VmHome, a: &Path, name: &str, word: &str) {
    let out = vm.shell_ok(
        a,
        &["bash", "-lc", "command -v mytool; mytool \"$0\"", word],
    );
    assert_eq!(
        out,
        format!("/home/{name}/.local/bin/mytool\nmytool works: {word}\n"),
        "the tool installed in the home ({word})"
    );
}

/// The guest agent that answers `list`: a running service, upgraded when
/// the guest has another version (environments keep running through it),
/// and never replaced by an agent of the wrong architecture.
fn check_guest_agent(vm: &VmHome, total: usize) {
    const VERSION: &str = "/usr/local/libexec/llima-box/guest-agent.sha256";
    let state = vm.ok(&[
        "vm",
        "shell",
        "--",
        "systemctl",
        "is-active",
        "llima-box-agent",
    ]);
    assert_eq!(state.trim(), "active");
    let installed = vm.ok(&["vm", "shell", "--", "cat", VERSION]);

    // An older agent: the next list installs this one again.
    vm.ok(&[
        "vm",
        "shell",
        "--",
        "sudo",
        "sh",
        "-c",
        &format!("echo old > {VERSION} && systemctl restart llima-box-agent"),
    ]);
    assert_eq!(vm.list().len(), total, "environments lost in the upgrade");
    assert_eq!(vm.ok(&["vm", "shell", "--", "cat", VERSION]), installed);

    // An aarch64 agent for this x86_64 guest: a clear error, nothing replaced.
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
    elf.resize(64, 0);
    elf[18] = 0xb7;
    let fake = TestDir::new();
    let path = fake.write("agent-aarch64", "");
    std::fs::write(&path, &elf).unwrap();
    let out = vm
        .cmd(&["list"])
        .env("LLIMA_BOX_GUEST_AGENT", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the VM is x86_64 but this llima-box carries a guest agent for aarch64"),
        "{stderr}"
    );
    assert!(stderr.contains("LLIMA_BOX_GUEST_AGENT"), "{stderr}");
    assert_eq!(vm.ok(&["vm", "shell", "--", "cat", VERSION]), installed);
}

//! End to end: real QEMU (TCG here), real cloud-init, the local Debian test
//! guest from tests/guest/build-image. These tests boot VMs, so they are
//! `#[ignore]`d for a plain `cargo test`; tests/run includes them. The main
//! scenario shares one instance across its named checks to keep boots few.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llima_box::testing::vm::layout;
use serde_json::Value;

use crate::common::*;

/// `sh -c SCRIPT` in instance `name` as its user; stdout.
fn guest_sh(home: &VmHome, name: &str, script: &str) -> String {
    home.ok(&["--instance", name, "vm", "shell", "--", "sh", "-c", script])
}

fn pid_of(v: &Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}")) as u32
}

/// `kill -SIGNAL pid`, e.g. `signal("KILL", pid)`.
fn signal(signal: &str, pid: u32) {
    assert!(
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Exited: no such process, or a zombie nobody has reaped yet (the
/// sandbox's init may not reap orphans).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
#[ignore = "boots VMs: run through tests/run"]
fn lifecycle_end_to_end() {
    let home = VmHome::new();
    let name = "e2e";
    let dir = home.path().join(name);
    let mut checks = Checks::new();

    checks.run("concurrent_first_starts", || {
        check_concurrent_first_starts(&home, name)
    });
    const STARTED: &[&str] = &["concurrent_first_starts"];

    checks.run_after("status_and_list", STARTED, || {
        // Running, with an SSH port, reachable through ha.sock as limactl
        // would.
        let st = home.status(name);
        assert_eq!(st["status"], "Running", "{st}");
        let port = st["sshLocalPort"].as_u64().unwrap();
        assert!(port > 0);
        let info =
            llima_box::testing::vm::store::hostagent_info(&dir.join(layout::HOST_AGENT_SOCK))
                .unwrap();
        assert_eq!(u64::from(info.ssh_local_port), port);
        let listed = home.ok(&["vm", "list", "--json"]);
        let entry: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
        assert_eq!(entry["name"], name);
        assert_eq!(entry["status"], "Running");
        assert_eq!(entry["sshLocalPort"].as_u64(), Some(port));
    });

    checks.run_after("qemu_seccomp", STARTED, || {
        // QEMU runs under its seccomp sandbox (mode 2: a filter).
        let qemu = std::fs::read_to_string(dir.join(layout::QEMU_PID)).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", qemu.trim())).unwrap();
        assert!(
            status.contains("Seccomp:\t2"),
            "QEMU is not sandboxed:\n{status}"
        );
    });

    checks.run_after("ssh_exec", STARTED, || {
        // SSH exec through our client and through plain OpenSSH.
        let uname = home.ok(&["--instance", name, "vm", "shell", "--", "uname", "-a"]);
        assert!(uname.starts_with("Linux lima-e2e "), "{uname}");
        let out = as_user("ssh")
            .args([
                "-F",
                dir.join(layout::SSH_CONFIG).to_str().unwrap(),
                "lima-e2e",
                "true",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh -F: {:?}", text(&out));
    });

    checks.run_after("guest_file_on_host", STARTED, || {
        // A file written by the guest on the mounted home appears on the
        // host, owned by the host user.
        let shared = TestDir::new_in(&user().home);
        let target = shared.path().join("from-guest.txt");
        guest_sh(
            &home,
            name,
            &format!("printf 'hello from the guest\\n' > '{}'", target.display()),
        );
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "hello from the guest\n"
        );
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), user().uid);
    });

    checks.run_after("stop_and_start_again", STARTED, || {
        // Stop: Stopped, no stale pid or socket files.
        guest_sh(&home, name, "echo kept > ~/persist");
        home.ok(&["--instance", name, "vm", "stop"]);
        assert_stopped(&home, name, "stop");

        // Start again: the guest home survived.
        home.ok(&["--instance", name, "vm", "start"]);
        let kept = guest_sh(&home, name, "cat ~/persist");
        assert_eq!(kept.trim(), "kept");
    });

    // The kills need a running VM, which the check before leaves.
    checks.run_after("host_agent_killed", &["stop_and_start_again"], || {
        // kill -9 of the host agent: QEMU is orphaned and the status says
        // Broken. Lima's wording depends on whether the dead agent was
        // already reaped or is a zombie whose socket refuses, so only the
        // state is checked.
        let st = home.status(name);
        let orphan = pid_of(&st, "driverPID");
        let agent = pid_of(&st, "hostAgentPID");
        // Its virtiofsd daemons are orphaned too. Each removes its socket
        // as it exits: one slow to go would take the next start's socket
        // with it, so they are frozen here and the start must end them.
        let out = Command::new("pgrep")
            .args(["-P", &agent.to_string(), "virtiofsd"])
            .output()
            .unwrap();
        let daemons: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert!(!daemons.is_empty(), "no virtiofsd under the host agent");
        for d in &daemons {
            signal("STOP", *d);
        }
        signal("KILL", agent);
        wait_until("the agent to die", Duration::from_secs(10), || {
            home.status(name)["status"] == "Broken"
        });
        assert!(!home.status(name)["errors"].as_array().unwrap().is_empty());
        // delete refuses a Broken instance without --force.
        assert!(
            !home
                .run(&["--instance", name, "vm", "delete"])
                .status
                .success()
        );
        // The next start kills the orphan and boots afresh.
        home.ok(&["--instance", name, "vm", "start"]);
        assert!(gone(orphan), "the orphaned QEMU {orphan} still runs");
        for d in daemons {
            assert!(gone(d), "the orphaned virtiofsd {d} still runs");
        }
        let st = home.status(name);
        assert_eq!(st["status"], "Running", "{st}");
    });

    // Last, since it leaves the VM stopped: no boot to recover.
    checks.run_after("qemu_killed", &["host_agent_killed"], || {
        // kill -9 of QEMU: the agent notices, stops, and leaves no file of
        // a running instance behind; the status is truthful.
        let st = home.status(name);
        let agent = pid_of(&st, "hostAgentPID");
        signal("KILL", pid_of(&st, "driverPID"));
        wait_until(
            "the agent to notice QEMU died and end",
            Duration::from_secs(30),
            || gone(agent),
        );
        assert_stopped(&home, name, "QEMU was killed");
    });

    checks.run_after("stop_and_delete", STARTED, || {
        // `vm stop` of a stopped instance is an error, as limactl's is.
        if home.status(name)["status"] == "Running" {
            home.ok(&["--instance", name, "vm", "stop"]);
        }
        home.ok(&["--instance", name, "vm", "delete"]);
        assert!(!dir.exists());
    });

    checks.finish();
}

/// `name` is Stopped, with no file of a running instance left `after`.
fn assert_stopped(home: &VmHome, name: &str, after: &str) {
    assert_eq!(home.status(name)["status"], "Stopped", "after {after}");
    for f in layout::RUNNING_ONLY {
        let path = home.path().join(name).join(f);
        assert!(!path.exists(), "{f} left after {after}");
    }
}

/// Three concurrent first starts: one boots, all succeed.
fn check_concurrent_first_starts(home: &VmHome, name: &str) {
    let starts: Vec<_> = (0..3)
        .map(|_| {
            home.cmd(&["--instance", name, "vm", "start"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = starts
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut booted = 0;
    for out in &outs {
        let (stdout, stderr) = text(out);
        assert!(
            out.status.success(),
            "concurrent start failed:\n{stdout}\n{stderr}"
        );
        if stderr.contains("is ready after") {
            booted += 1;
        } else {
            assert!(stderr.contains("is running"), "{stderr}");
        }
    }
    assert_eq!(booted, 1, "exactly one start boots the VM");
}

#[test]
#[ignore = "boots a VM: run through tests/run"]
fn test_vm_self_test_passes() {
    let home = VmHome::new();
    let out = home.run(&["test-vm"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "create and boot: ok",
        "SSH exec `uname -a`: ok",
        "a command in an environment: ok",
        "project shared over virtiofs through an ID-mapped mount",
        "home with a disk cap; user namespaces work; bubblewrap works",
        "file sharing daemons: ok",
        "1 virtiofsd running, none short of file descriptors",
        "stop: ok",
        "delete: ok",
    ] {
        assert!(stdout.contains(step), "missing {step:?}:\n{stdout}");
    }
    assert!(stdout.contains("all steps passed"), "{stdout}");
    // Nothing is left behind.
    let names = home.ok(&["vm", "list", "--names-only"]);
    assert!(names.trim().is_empty(), "{names}");
}

/// A home whose test guest boots its kernel with `cmdline`.
fn home_with_cmdline(cmdline: &str) -> VmHome {
    let mut v: serde_yaml::Value = serde_yaml::from_str(&guest_override()).unwrap();
    v["images"][0]["kernel"]["cmdline"] = serde_yaml::Value::from(cmdline);
    VmHome::with_override(&serde_yaml::to_string(&v).unwrap())
}

/// `vm start` of instance `name` with a boot timeout of `secs`, which must
/// fail; its stderr.
fn failed_start(home: &VmHome, name: &str, secs: u32) -> String {
    let out = home
        .cmd(&["--instance", name, "vm", "start"])
        .env("LLIMA_BOX_BOOT_TIMEOUT", secs.to_string())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[test]
#[ignore = "boots a VM: run through tests/run"]
fn a_guest_that_never_comes_up_times_out_with_the_serial_tail() {
    // A disk that does not exist: QEMU runs, the guest never comes up.
    let home = home_with_cmdline("root=/dev/nonexistent console=ttyS0 panic=0 rootwait");
    let stderr = failed_start(&home, "never", 45);
    assert!(
        stderr.contains("did not become ready within 45 s"),
        "{stderr}"
    );
    // The kernel's own words from the serial console are in the error.
    assert!(stderr.contains("last serial console lines"), "{stderr}");
    // The Debian initramfs, still looking for its root device.
    assert!(stderr.contains("Begin: "), "{stderr}");
    assert!(stderr.contains(layout::SERIAL_LOG), "{stderr}");
    // The agent shut QEMU down and cleaned up.
    let st = home.status("never");
    assert_eq!(st["status"], "Stopped", "{st}");
}

/// A kernel that panics on every boot (its init exits) and is not told to
/// restart: the host agent resets it twice (a panic of TCG's making does
/// not come back), then fails the start with the reason, rather than wait
/// out the boot timeout for a guest that is gone.
#[test]
#[ignore = "boots a VM: run through tests/run"]
fn a_guest_whose_kernel_panics_is_reset_then_given_up() {
    let home = home_with_cmdline("root=/dev/vda rw console=ttyS0 panic=0 init=/bin/false");
    let started = Instant::now();
    let stderr = failed_start(&home, "panics", 500);
    for n in 1..=2 {
        assert!(
            stderr.contains(&format!("); resetting it ({n} of 2)")),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("kernel panicked while booting, 3 times, the last one: "),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(400),
        "took {:?}",
        started.elapsed()
    );
    let st = home.status("panics");
    assert_eq!(st["status"], "Stopped", "{st}");
}

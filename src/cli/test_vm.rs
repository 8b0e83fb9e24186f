//! `llima-box test-vm`: a step-by-step self-test of the VM lifecycle
//! (create and boot, SSH exec, an environment, stop, delete) on a
//! throwaway instance, so a person can tell in one command whether their
//! machine runs the VM and its environments.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Output;
use super::args::TestVmArgs;
use super::vm_shell::block_on;
use super::vm_start;
use crate::ssh::Session;
use crate::vm::lifecycle::{self, InstanceLock};
use crate::vm::store::{self, Status};
use crate::vm::{access, layout};

pub(super) fn run(lima_home: &Path, args: &TestVmArgs, out: &Output) -> Result<ExitCode> {
    let throwaway = args.existing.is_none();
    let name = args
        .existing
        .clone()
        .unwrap_or_else(|| format!("llima-box-selftest-{}", std::process::id()));
    println!("self-test of instance {name} in {}", lima_home.display());

    let mut steps = Steps::default();
    let result = (|| -> Result<()> {
        steps.run("create and boot", || {
            let started = vm_start::start(lima_home, &name, None, out)?;
            Ok(format!("SSH on 127.0.0.1:{}", started.ssh_local_port))
        })?;
        steps.run("SSH exec `uname -a`", || ssh_uname(lima_home, &name))?;
        steps.run("a command in an environment", || {
            environment(lima_home, &name)
        })?;
        steps.run("file sharing daemons", || {
            virtiofsd_health(lima_home, &name)
        })?;
        steps.run("stop", || {
            let _lock = InstanceLock::acquire(lima_home, &name)?;
            lifecycle::stop(lima_home, &name, lifecycle::STOP_TIMEOUT)?;
            let inst = store::inspect(lima_home, &name)?;
            let leftovers: Vec<_> = layout::RUNNING_ONLY
                .into_iter()
                .filter(|f| inst.dir.join(f).exists())
                .collect();
            if inst.status != Status::Stopped || !leftovers.is_empty() {
                bail!("status {} with leftover files {leftovers:?}", inst.status);
            }
            Ok("Stopped, no pid or socket files left".to_string())
        })?;
        if throwaway && !args.keep {
            steps.run("delete", || {
                let _lock = InstanceLock::acquire(lima_home, &name)?;
                lifecycle::delete(lima_home, &name, false)?;
                Ok("instance directory removed".to_string())
            })?;
        }
        Ok(())
    })();

    match result {
        Ok(()) => {
            println!("all steps passed in {:.1}s", steps.total().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if throwaway && !args.keep {
                // Leave nothing behind: kill whatever is left and remove it.
                if let Ok(_lock) = InstanceLock::acquire(lima_home, &name) {
                    let _ = lifecycle::delete(lima_home, &name, true);
                }
            }
            Err(e.context(format!("self-test failed at step {:?}", steps.current)))
        }
    }
}

fn ssh_uname(lima_home: &Path, name: &str) -> Result<String> {
    let (opts, _) = access::connect_options(lima_home, name, Duration::from_secs(60), None)?;
    let captured = block_on(async {
        let session = Session::connect(opts).await?;
        let out = session.exec_capture(&["uname", "-a"]).await?;
        let _ = session.close().await;
        Ok::<_, crate::ssh::Error>(out)
    })??;
    let text = String::from_utf8_lossy(&captured.stdout).trim().to_string();
    if !captured.exit.success() || !text.starts_with("Linux") {
        bail!(
            "exit status {}, output {text:?}, stderr {:?}",
            captured.exit.code(),
            String::from_utf8_lossy(&captured.stderr)
        );
    }
    Ok(text)
}

/// What the environment step runs: who it is, how its project is shared
/// (and whether a file made there is its own), whether its home's
/// filesystem has quotas (its disk cap), and whether the sandboxes
/// coding agents make for their tools (user namespaces, bubblewrap) work.
const ENV_PROBE: &str = r#"
id -un
awk -v p="$PWD" '$5 == p { for (i = 7; $i != "-"; i++); print "share=" $(i + 1) " " $(i + 2) " " $6 }' /proc/self/mountinfo
awk -v h="$HOME" '$5 == h { for (i = 7; $i != "-"; i++); print "home=" $(i + 3) }' /proc/self/mountinfo
touch owned && [ "$(stat -c %u owned)" = "$(id -u)" ] && echo owned=yes
unshare -rm true 2>&1 && echo userns=ok
if command -v bwrap >/dev/null; then
    bwrap --ro-bind / / --dev /dev --proc /proc --unshare-all true 2>&1 && echo bubblewrap=ok
else
    echo bubblewrap=absent
fi
"#;

/// `shell` in a throwaway project in the home directory (what the VM
/// shares by default), through this binary as a user would run it; the
/// environment is deleted again.
fn environment(lima_home: &Path, name: &str) -> Result<String> {
    let project =
        crate::vm::dirs::home_dir()?.join(format!(".llima-box-selftest-{}", std::process::id()));
    std::fs::create_dir(&project)
        .with_context(|| format!("cannot create {}", project.display()))?;
    let exe = std::env::current_exe().context("cannot find this program")?;
    let run = |args: &[&OsStr]| {
        Command::new(&exe)
            .env("LIMA_HOME", lima_home)
            .args(["--instance", name])
            .args(args)
            .stdin(Stdio::null())
            .output()
    };
    let p = project.as_os_str();
    let out = run(&[
        "shell".as_ref(),
        p,
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        ENV_PROBE.as_ref(),
    ]);
    let deleted = run(&["delete".as_ref(), "-y".as_ref(), p]);
    let _ = std::fs::remove_dir_all(&project);
    let out = out.context("cannot run `shell`")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`shell` failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !deleted.is_ok_and(|d| d.status.success()) {
        bail!("`delete` of the throwaway environment failed");
    }
    let user = stdout.lines().next().unwrap_or_default();
    let share = sharing(&stdout)?;
    if !stdout.contains("userns=ok") {
        bail!(
            "user namespaces do not work in the environment (the sandboxes coding agents run their tools in will fail): {stdout}"
        );
    }
    let bwrap = if stdout.contains("bubblewrap=ok") {
        "bubblewrap works"
    } else if stdout.contains("bubblewrap=absent") {
        "bubblewrap is not installed in the guest"
    } else {
        bail!("bubblewrap fails in the environment: {stdout}");
    };
    Ok(format!(
        "as {user}; {share}; {}; user namespaces work; {bwrap}",
        home_cap(&stdout)
    ))
}

/// Whether the probe's home is on a filesystem with user quotas.
fn home_cap(probe: &str) -> &'static str {
    let capped = probe
        .lines()
        .filter_map(|l| l.strip_prefix("home="))
        .any(|opts| opts.split(',').any(|o| o == "usrquota"));
    match capped {
        true => "home with a disk cap",
        false => "home WITHOUT a disk cap (see the README's threat model)",
    }
}

/// How the environment got its project, from the probe's `share=` line:
/// on virtiofs it must be an ID-mapped mount, and a file made there must
/// be the environment's.
fn sharing(probe: &str) -> Result<String> {
    let line = probe
        .lines()
        .find_map(|l| l.strip_prefix("share="))
        .unwrap_or_default();
    let mut words = line.split(' ');
    let (fstype, source, options) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let idmapped = options.split(',').any(|o| o == "idmapped");
    let how = match (fstype, source) {
        ("virtiofs", _) if idmapped => "project shared over virtiofs through an ID-mapped mount",
        ("virtiofs", _) => bail!(
            "the project is on virtiofs but not ID-mapped into the environment (mount options {options}); the guest's kernel must be Linux 6.12 or newer and virtiofsd 1.13 or newer"
        ),
        // bindfs (FUSE, "fuse" or "fuse.bindfs") serving the raw share.
        (t, s) if t.starts_with("fuse") && s.starts_with(llima_box_proto::paths::STAGE_DIR) => {
            "project remapped through bindfs (9p share: slower file work; install virtiofsd 1.13 or newer for virtiofs)"
        }
        _ => bail!("the project is mounted as {line:?}, not through virtiofs or bindfs"),
    };
    if !probe.lines().any(|l| l == "owned=yes") {
        bail!("a file made in the environment is not its own ({how})");
    }
    Ok(how.to_string())
}

/// Whether the host agent logged a virtiofsd close to its descriptor
/// limit (the guest then gets "too many open files" there) in this run.
fn virtiofsd_health(lima_home: &Path, name: &str) -> Result<String> {
    let dir = lima_home.join(name);
    let log = std::fs::read_to_string(dir.join(layout::HOST_AGENT_STDERR_LOG)).unwrap_or_default();
    // This run's part of the log: since the agent's last start.
    let run = log.rsplit("host agent for").next().unwrap_or_default();
    if let Some(line) = run
        .lines()
        .find(|l| l.contains(crate::vm::hostagent::virtiofs::EXHAUSTED))
    {
        bail!("{line}");
    }
    let daemons = run
        .lines()
        .filter(|l| l.contains("virtiofsd ") && l.contains(" shares "))
        .count();
    Ok(match daemons {
        0 => "no virtiofsd (9p share)".to_string(),
        n => format!("{n} virtiofsd running, none short of file descriptors"),
    })
}

#[derive(Default)]
struct Steps {
    n: usize,
    current: String,
    total: Duration,
}

impl Steps {
    fn run(&mut self, what: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
        self.n += 1;
        self.current = what.to_string();
        println!("[{}] {what} ...", self.n);
        let begin = Instant::now();
        let result = f();
        let took = begin.elapsed();
        self.total += took;
        match result {
            Ok(detail) => {
                println!(
                    "[{}] {what}: ok in {:.1}s ({detail})",
                    self.n,
                    took.as_secs_f64()
                );
                Ok(())
            }
            Err(e) => {
                println!(
                    "[{}] {what}: FAILED after {:.1}s",
                    self.n,
                    took.as_secs_f64()
                );
                Err(e)
            }
        }
    }

    fn total(&self) -> Duration {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofs_must_be_id_mapped_and_the_file_the_environments() {
        let probe = |line: &str, owned: bool| {
            format!(
                "app-1\nshare={line}\n{}userns=ok\n",
                if owned { "owned=yes\n" } else { "" }
            )
        };
        let ok = sharing(&probe("virtiofs lima-ab rw,relatime,idmapped", true)).unwrap();
        assert!(ok.contains("ID-mapped"), "{ok}");
        let not_mapped = sharing(&probe("virtiofs lima-ab rw,relatime", true)).unwrap_err();
        assert!(
            not_mapped.to_string().contains("not ID-mapped"),
            "{not_mapped}"
        );
        for bindfs in [
            "fuse /run/llima-box/stage/raw/0 rw,nosuid",
            "fuse.bindfs /run/llima-box/stage/raw/1 rw",
        ] {
            assert!(sharing(&probe(bindfs, true)).unwrap().contains("bindfs"));
        }
        assert!(sharing(&probe("9p lima-ab rw", true)).is_err());
        assert!(sharing(&probe("fuse sshfs rw", true)).is_err());
        assert_eq!(
            home_cap("x\nhome=rw,quota,usrquota\n"),
            "home with a disk cap"
        );
        for uncapped in ["home=rw,relatime\n", "home=rw,usrquotax\n", ""] {
            assert!(home_cap(uncapped).contains("WITHOUT"), "{uncapped}");
        }
        let not_owned = sharing(&probe("virtiofs lima-ab rw,idmapped", false)).unwrap_err();
        assert!(not_owned.to_string().contains("not its own"), "{not_owned}");
    }
}

//! `llima-box test-vm`: a step-by-step self-test of the VM lifecycle
//! (create and boot, SSH exec, stop, delete) on a throwaway instance, so a
//! person can tell in one command whether their machine runs the VM.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

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

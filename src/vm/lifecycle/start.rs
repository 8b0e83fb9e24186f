//! `vm start`: create the instance if needed, launch the detached host
//! agent and follow its events until the guest is ready. Concurrent starts
//! serialise on the instance lock; the later ones find the instance
//! Running and wait for the same readiness event instead of booting again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{LifecycleError, create, force_stop};
use crate::timeouts;
use crate::vm::hostagent::events::{self, Status as EventStatus};
use crate::vm::image::Progress;
use crate::vm::layout;
use crate::vm::store::{self, Instance, Status};

/// What `start` reports as it goes.
pub(crate) trait StartUi {
    fn stage(&mut self, stage: &str);
    fn download(&self) -> &dyn Progress;
}

#[derive(Debug)]
pub(crate) struct Started {
    pub ssh_local_port: u16,
    pub already_running: bool,
}

/// Boots `name`, creating it first from `template` (a lima.yaml with its
/// bases embedded) or the built-in config when it does not exist.
pub(crate) fn start(
    lima_home: &Path,
    name: &str,
    template: Option<&str>,
    ui: &mut dyn StartUi,
) -> Result<Started, LifecycleError> {
    // Before anything boots: a bad value must not cost a boot.
    let timeout = timeouts::start()?;
    let _lock = super::InstanceLock::acquire(lima_home, name)?;
    let (inst, created) = match store::inspect(lima_home, name) {
        Ok(inst) => (inst, false),
        Err(store::StoreError::NotFound { .. }) => {
            // Fail before fetching gigabytes when QEMU is not installed.
            crate::vm::qemu::find_exe_from_env(crate::vm::sys::host_arch())?;
            ui.stage("creating the instance (first start)");
            create::create(lima_home, name, template, ui.download())?;
            (store::inspect(lima_home, name)?, true)
        }
        Err(e) => return Err(e.into()),
    };
    match inst.status {
        Status::Running => {
            ui.stage("already running; waiting until it is ready");
            let port = follow_events(&inst.dir, inst.host_agent_pid, 0, timeout, ui)?;
            return Ok(Started {
                ssh_local_port: port,
                already_running: true,
            });
        }
        Status::Unknown => {
            return Err(LifecycleError::InvalidConfig {
                name: name.to_string(),
                errors: inst.errors.join("; "),
            });
        }
        // A crash (kill -9 of QEMU or the agent) leaves one process or a
        // stale socket: clean up and boot afresh.
        Status::Broken => force_stop(&inst)?,
        Status::Stopped => {}
    }
    let cfg = crate::vm::config::load_instance(&inst.dir, lima_home)?;
    crate::vm::qemu::find_exe_from_env(cfg.arch.as_deref().unwrap_or(crate::vm::sys::host_arch()))?;
    if !created {
        create::prepare_disk(&inst.dir, &cfg, ui.download())?;
    }
    ui.stage("starting the host agent");
    let agent = spawn_host_agent(&inst)?;
    let port = follow_events(&inst.dir, Some(agent), 0, timeout, ui)?;
    Ok(Started {
        ssh_local_port: port,
        already_running: false,
    })
}

/// Re-executes this binary as `llima-box hostagent DIR` in its own process
/// group, so that it outlives the CLI and a Ctrl-C aimed at the CLI.
fn spawn_host_agent(inst: &Instance) -> Result<u32, LifecycleError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| LifecycleError::Io { what, path, source }
    };
    let stdout_log = inst.dir.join(layout::HOST_AGENT_STDOUT_LOG);
    let stderr_log = inst.dir.join(layout::HOST_AGENT_STDERR_LOG);
    let stdout = File::create(&stdout_log).map_err(io("create", &stdout_log))?;
    let stderr = File::create(&stderr_log).map_err(io("create", &stderr_log))?;
    let exe = std::env::current_exe().map_err(io("locate", Path::new("llima-box")))?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(exe)
        .arg("hostagent")
        .arg(&inst.dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(io("start the host agent for", &inst.dir))?;
    Ok(child.id())
}

/// Tails `ha.stdout.log` from `offset` until an event says running or
/// exiting, the agent dies, or `timeout` passes.
fn follow_events(
    dir: &Path,
    agent_pid: Option<u32>,
    offset: u64,
    timeout: Duration,
    ui: &mut dyn StartUi,
) -> Result<u16, LifecycleError> {
    let log = dir.join(layout::HOST_AGENT_STDOUT_LOG);
    let deadline = Instant::now() + timeout;
    let mut pos = offset;
    let mut buf = Vec::new();
    let mut port = 0;
    loop {
        if let Ok(mut f) = File::open(&log) {
            let _ = f.seek(SeekFrom::Start(pos));
            let mut chunk = Vec::new();
            let _ = f.read_to_end(&mut chunk);
            buf.extend_from_slice(&chunk);
            let (evs, used) = events::parse_lines(&buf);
            pos += used as u64;
            buf.drain(..used);
            for ev in evs {
                let EventStatus {
                    running,
                    degraded,
                    exiting,
                    errors,
                    ssh_local_port,
                    stage,
                } = ev.status;
                if ssh_local_port != 0 {
                    port = ssh_local_port;
                }
                if let Some(s) = stage {
                    ui.stage(&s);
                }
                if exiting || degraded {
                    return Err(failure(dir, errors));
                }
                if running {
                    return Ok(port);
                }
            }
        }
        if let Some(pid) = agent_pid
            && !alive(pid)
            && !has_more(&log, pos)
        {
            return Err(failure(
                dir,
                vec!["the host agent exited without saying why".to_string()],
            ));
        }
        if Instant::now() > deadline {
            return Err(LifecycleError::StartTimeout {
                secs: timeout.as_secs(),
                serial_tail: serial_tail(dir, 20),
                dir: dir.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_more(log: &Path, pos: u64) -> bool {
    std::fs::metadata(log).is_ok_and(|m| m.len() > pos)
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

fn failure(dir: &Path, errors: Vec<String>) -> LifecycleError {
    LifecycleError::StartFailed {
        errors: if errors.is_empty() {
            "the host agent gave up".to_string()
        } else {
            errors.join("; ")
        },
        serial_tail: serial_tail(dir, 20),
        dir: dir.to_path_buf(),
    }
}

/// The last `n` lines of the guest's serial console, for error messages.
pub(crate) fn serial_tail(dir: &Path, n: usize) -> String {
    log_tail(&dir.join(layout::SERIAL_LOG), n)
}

/// The last `n` lines of a log file; empty when it cannot be read.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

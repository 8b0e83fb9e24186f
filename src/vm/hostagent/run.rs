//! The agent's life: write `ha.pid`, render cidata and `ssh.config`, serve
//! `ha.sock`, launch QEMU, wait for the guest to be ready for this boot,
//! then hold the VM until SIGINT/SIGTERM (graceful power-down) or until the
//! guest powers itself off. Once the guest is ready it also serves
//! `mux.sock`, the CLI's warm path into the guest. Every exit path removes
//! `ha.pid`, `ha.sock` and `mux.sock` and ends with an `exiting` event.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use super::events::{self, Status};
use super::{HostAgentError, api, panic_watch, plan, ports, readiness, virtiofs};
use crate::ssh;
use crate::timeouts;
use crate::vm::cidata;
use crate::vm::config;
use crate::vm::layout;
use crate::vm::qemu;
use crate::vm::share;
use crate::vm::store;
use crate::vm::sys::RealSys;
use crate::vm::trust;

/// Entry point of `llima-box hostagent DIR`. stdout is `ha.stdout.log`
/// (events), stderr is `ha.stderr.log` (a human log).
pub(crate) fn main(dir: &Path) -> std::process::ExitCode {
    // Everything the agent and QEMU create (sockets that control the VM,
    // the serial logs, pid files) is for this user alone, whatever umask
    // started it.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let rt = match crate::async_runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!("cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(dir));
    let code = match &result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("error: {}", crate::errors::one_line(e)));
            std::process::ExitCode::FAILURE
        }
    };
    // The pid file may only be ours to remove: `run` fails before writing
    // it when another agent is alive.
    if !matches!(result, Err(HostAgentError::AlreadyRunning { .. })) {
        let _ = events::emit(
            &mut std::io::stdout(),
            Status {
                exiting: true,
                errors: result
                    .err()
                    .map(|e| vec![crate::errors::one_line(&e)])
                    .unwrap_or_default(),
                ..Default::default()
            },
        );
        let _ = std::fs::remove_file(dir.join(layout::HOST_AGENT_SOCK));
        let _ = std::fs::remove_file(dir.join(layout::MUX_SOCK));
        let _ = std::fs::remove_file(dir.join(layout::HOST_AGENT_PID));
    }
    code
}

/// A line in `ha.stderr.log` with a timestamp.
pub(super) fn log(msg: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "{} {msg}",
        llima_box_proto::time::rfc3339_nanos(SystemTime::now())
    );
}

fn emit(status: Status) {
    if let Err(e) = events::emit(&mut std::io::stdout(), status) {
        log(&format!("cannot write an event: {e}"));
    }
}

fn stage(port: u16, text: &str) {
    log(text);
    emit(Status {
        ssh_local_port: port,
        stage: Some(text.to_string()),
        ..Default::default()
    });
}

async fn run(dir: &Path) -> Result<(), HostAgentError> {
    let dir = std::fs::canonicalize(dir).map_err(|source| HostAgentError::Io {
        what: "resolve",
        path: dir.to_path_buf(),
        source,
    })?;
    let lima_home = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid_file = dir.join(layout::HOST_AGENT_PID);
    store::write_pid_file(&pid_file, std::process::id()).map_err(|e| match e {
        store::PidFileError::StillRunning { pid, .. } => HostAgentError::AlreadyRunning { pid },
        e => e.into(),
    })?;
    // Before any key is read or socket bound (after the pid file, which
    // `main` removes on failure, so never another agent's): the CLI checked
    // too, but the agent outlives it and can be started by hand.
    trust::check_home(&lima_home, Some(&name))?;
    log(&format!(
        "host agent for {name} started (pid {})",
        std::process::id()
    ));

    let cfg = config::load_instance(&dir, &lima_home)?;
    let port = match cfg.ssh.as_ref().and_then(|s| s.local_port) {
        Some(p) if p != 0 => p,
        _ => qemu::free_port().map_err(|source| HostAgentError::Io {
            what: "find a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?,
    };
    let arch = cfg
        .arch
        .clone()
        .unwrap_or_else(|| crate::vm::sys::host_arch().to_string());
    let exe = qemu::find_exe_from_env(&arch)?;
    let chosen = share::choose(cfg.mount_type.as_deref(), cfg!(target_os = "linux"), || {
        qemu::virtiofsd::find(&exe.path)
    })?;
    let iid = cidata::InstanceId::at(SystemTime::now());
    let mut plan = plan::Plan::new(&name, &dir, &lima_home, &cfg, iid, port, chosen.share)?;
    plan.write_files()?;

    let listener =
        api::bind(&dir.join(layout::HOST_AGENT_SOCK)).map_err(|source| HostAgentError::Io {
            what: "listen on",
            path: dir.join(layout::HOST_AGENT_SOCK),
            source,
        })?;
    // One connection to the guest, made when first needed, for `vm shell`
    // commands and published ports.
    let guest = guest_login(&plan, port)
        .inspect_err(|e| log(&format!("cannot log in to the guest: {e}")))
        .ok()
        .map(|opts| Arc::new(ssh::SharedSession::new(opts)));
    // Published ports listen from the start (they are the user's while the
    // VM runs); connections wait for the guest.
    let forwarder = guest
        .clone()
        .map(|guest| ports::Forwarder::new(dir.clone(), guest));
    if let Some(f) = &forwarder {
        let _ = f.sync().await;
    }
    let server = tokio::spawn(api::serve_with(
        listener,
        store::Info {
            ssh_local_port: port,
            ..Default::default()
        },
        forwarder,
    ));

    let result = supervise(&dir, &plan, port, &iid.to_string(), exe, &chosen, guest).await;
    server.abort();
    result
}

/// Boots QEMU and runs it until a signal or a guest power-off.
async fn supervise(
    dir: &Path,
    plan: &plan::Plan,
    port: u16,
    iid: &str,
    exe: qemu::QemuExe,
    chosen: &share::Chosen,
    guest: Option<Arc<ssh::SharedSession>>,
) -> Result<(), HostAgentError> {
    // Both read before QEMU starts: a bad value must fail the start, not
    // the shutdown.
    let boot_timeout = timeouts::BOOT.get()?;
    let grace = timeouts::SHUTDOWN_GRACE.get()?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(HostAgentError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(HostAgentError::Signal)?;

    if !plan.qemu.mounts.is_empty() {
        stage(port, &sharing(chosen));
    }
    let mut daemons = match &chosen.virtiofsd {
        Some(v) if !plan.qemu.mounts.is_empty() => {
            let (v, spec) = (v.clone(), plan.qemu.clone());
            Some(
                tokio::task::spawn_blocking(move || virtiofs::Daemons::start(&v, &spec))
                    .await
                    .map_err(|e| HostAgentError::Join(e.to_string()))??,
            )
        }
        _ => None,
    };
    stage(
        port,
        &format!("booting the guest ({})", plan.qemu.accel.as_str()),
    );
    let (spec, log_path) = (plan.qemu.clone(), dir.join(layout::QEMU_LOG));
    let launched = tokio::task::spawn_blocking(move || {
        qemu::launch_with_fallback(&RealSys, &exe, &spec, &log_path, qemu::stuck::KVM_WINDOW)
    })
    .await
    .map_err(|e| HostAgentError::Join(e.to_string()))??;
    if let Some(why) = &launched.fell_back {
        stage(port, &format!("{why}; running under TCG instead (slower)"));
    }
    let qemu::Running {
        mut child,
        pid: qemu_pid,
        mut qmp,
        ..
    } = launched;

    // The child is reaped on a thread so the async side can wait on it.
    let (exited_tx, mut exited) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = exited_tx.send(child.wait().map(|s| s.to_string()));
    });

    stage(port, "waiting for SSH and cloud-init");
    let consoles = vec![
        dir.join(layout::SERIAL_LOG),
        dir.join(layout::SERIAL_VIRTIO_LOG),
    ];
    let readiness = readiness::wait(plan, port, iid, boot_timeout, |s| stage(port, s));
    tokio::pin!(readiness);
    let (mut panics, mut from) = (0, Vec::new());
    let ready = loop {
        tokio::select! {
            r = &mut readiness => break r,
            status = &mut exited => break Err(HostAgentError::GuestExited {
                status: status.ok().and_then(Result::ok).unwrap_or_default(),
            }),
            why = panic_watch::wait(&consoles, &from, panic_watch::QUIET) => {
                panics += 1;
                if panics > panic_watch::RESETS {
                    break Err(HostAgentError::GuestPanicked { why, times: panics });
                }
                let resets = panic_watch::RESETS;
                stage(port, &format!(
                    "the guest's kernel panicked while booting ({why}); resetting it ({panics} of {resets})"
                ));
                from = panic_watch::sizes(&consoles);
                if let Err(e) = tokio::task::block_in_place(|| qmp.system_reset()) {
                    break Err(HostAgentError::Qemu(e.into()));
                }
            }
            _ = sigint.recv() => break Err(HostAgentError::Interrupted),
            _ = sigterm.recv() => break Err(HostAgentError::Interrupted),
        }
    };
    if let Err(e) = ready {
        kill(qemu_pid);
        let _ = (&mut exited).await;
        qemu_gone(dir);
        return Err(e);
    }
    log("guest is ready");
    emit(Status {
        running: true,
        ssh_local_port: port,
        ..Default::default()
    });
    let _mux = serve_mux(dir, guest);

    let mut watch = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = watch.tick() => {
                if let Some(d) = &mut daemons {
                    d.check();
                }
            }
            status = &mut exited => {
                log(&format!("QEMU exited ({}); the guest powered off", status.ok().and_then(Result::ok).unwrap_or_default()));
                qemu_gone(dir);
                return Ok(());
            }
        }
    }
    log("shutting the guest down (ACPI power button)");
    let graceful = tokio::task::block_in_place(|| qmp.system_powerdown()).is_ok()
        && tokio::time::timeout(grace, &mut exited).await.is_ok();
    if !graceful {
        log(&format!(
            "the guest did not power off within {} s; killing QEMU",
            grace.as_secs()
        ));
        kill(qemu_pid);
        let _ = exited.await;
    }
    qemu_gone(dir);
    log("stopped");
    Ok(())
}

/// QEMU has ended: what only a running QEMU has goes too (killed, it
/// cannot remove its QMP socket itself).
fn qemu_gone(dir: &Path) {
    for file in [layout::QMP_SOCK, layout::QEMU_PID] {
        let _ = std::fs::remove_file(dir.join(file));
    }
}

/// What `vm start` shows about file sharing.
fn sharing(chosen: &share::Chosen) -> String {
    match (&chosen.virtiofsd, &chosen.not_virtiofs) {
        (Some(v), _) => format!(
            "sharing files over virtiofs (virtiofsd {} at {}); environments get their project through ID-mapped mounts",
            v.version,
            v.path.display()
        ),
        (None, Some(why)) => format!(
            "sharing files over 9p, not virtiofs: {why}. Environments remap file ownership through FUSE (slower file work)"
        ),
        (None, None) => "sharing files over 9p (mountType: 9p); environments remap file ownership through FUSE (slower file work)".to_string(),
    }
}

/// How the host agent logs in to the guest as the admin.
fn guest_login(plan: &plan::Plan, port: u16) -> Result<ssh::ConnectOptions, String> {
    let host_key = ssh::PublicKey::from_openssh(plan.host_key_public.trim())
        .map_err(|e| format!("cannot parse the pinned host key: {e}"))?;
    let key = ssh::keys::ensure_user_key(&plan.lima_home).map_err(|e| e.to_string())?;
    Ok(ssh::ConnectOptions {
        addr: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        user: plan.user.clone(),
        key,
        host_key: ssh::HostKeyPolicy::Pinned(host_key),
        deadline: Duration::from_secs(10),
        agent_forwarding: None,
    })
}

/// Serves `mux.sock` (see [`ssh::mux`]) until dropped; without it the CLI
/// connects directly, so a failure here is only logged.
fn serve_mux(dir: &Path, guest: Option<Arc<ssh::SharedSession>>) -> Option<AbortOnDrop> {
    let path = dir.join(layout::MUX_SOCK);
    let guest = guest?;
    match ssh::mux::bind(&path) {
        Ok(listener) => Some(AbortOnDrop(tokio::spawn(ssh::mux::serve_shared(
            listener, guest,
        )))),
        Err(e) => {
            log(&format!("not serving {}: {e}", path.display()));
            None
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn kill(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

//! The virtiofsd daemons of a virtiofs instance, one per mount: started
//! before QEMU (which connects to their sockets as it starts), watched
//! while it runs, stopped with it. Their log lines go to `ha.stderr.log`.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::HostAgentError;
use super::run::log;
use crate::vm::qemu::QemuSpec;
use crate::vm::qemu::virtiofsd::{self, Virtiofsd};

/// How long a daemon may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A warning marker `test-vm` looks for in the log.
pub(crate) const EXHAUSTED: &str = "virtiofsd is running out of file descriptors";

struct Daemon {
    location: PathBuf,
    socket: PathBuf,
    child: Child,
    /// Whether the descriptor warning is out (logged once per crossing).
    warned: bool,
    exited: bool,
}

/// The running daemons; dropping this stops them.
pub(super) struct Daemons(Vec<Daemon>);

impl Daemons {
    /// Starts a daemon per mount of `spec` and waits until each listens.
    pub(super) fn start(exe: &Virtiofsd, spec: &QemuSpec) -> Result<Daemons, HostAgentError> {
        let nofile = virtiofsd::nofile_hard_limit();
        let mut daemons = Daemons(Vec::new());
        for (i, m) in spec.mounts.iter().enumerate() {
            let sock = virtiofsd::socket(&spec.instance_dir, i);
            let io = |what| {
                let path = sock.clone();
                move |source| HostAgentError::Io { what, path, source }
            };
            match std::fs::remove_file(&sock) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove the stale socket")(e));
                }
                _ => {}
            }
            // Lima creates a missing mount source; so does QEMU's 9p path.
            std::fs::create_dir_all(&m.host_path).map_err(|source| HostAgentError::Io {
                what: "create the shared directory",
                path: m.host_path.clone(),
                source,
            })?;
            let stderr = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(io("pass the log to virtiofsd for"))?;
            // No setuid or setgid file from the guest (see
            // `llima_box_setid_filter`): the environments' own filter can be
            // raced, this one cannot.
            let child = llima_box_setid_filter::file_server(&mut Command::new(&exe.path))
                .args(virtiofsd::args(&sock, &m.host_path, m.readonly, nofile))
                .stdin(Stdio::null())
                .stdout(Stdio::from(
                    stderr
                        .try_clone()
                        .map_err(io("pass the log to virtiofsd for"))?,
                ))
                .stderr(Stdio::from(stderr))
                // Not in the CLI's process group: a Ctrl-C there must not stop it.
                .process_group(0)
                .spawn()
                .map_err(|source| HostAgentError::Io {
                    what: "start",
                    path: exe.path.clone(),
                    source,
                })?;
            log(&format!(
                "virtiofsd {} (pid {}) shares {}",
                exe.version,
                child.id(),
                m.host_path.display()
            ));
            daemons.0.push(Daemon {
                location: m.host_path.clone(),
                socket: sock.clone(),
                child,
                warned: false,
                exited: false,
            });
        }
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while !daemons.0.iter().all(|d| d.socket.exists()) {
            for d in &mut daemons.0 {
                if let Ok(Some(status)) = d.child.try_wait() {
                    return Err(HostAgentError::Virtiofsd {
                        location: d.location.clone(),
                        why: format!("it exited ({status}); its messages are above in this log"),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(HostAgentError::Virtiofsd {
                    location: daemons.0[0].location.clone(),
                    why: format!("no socket within {} s", LISTEN_TIMEOUT.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemons)
    }

    /// Logs a daemon that stopped (its share is gone from the guest) and
    /// one close to its descriptor limit (the guest's next lookups there
    /// would fail with "too many open files").
    pub(super) fn check(&mut self) {
        for d in &mut self.0 {
            if d.exited {
                continue;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                d.exited = true;
                log(&format!(
                    "error: virtiofsd for {} exited ({status}): the guest can no longer reach it; restart the VM (llima-box vm stop; llima-box vm start)",
                    d.location.display()
                ));
                continue;
            }
            let Some((open, limit)) = virtiofsd::descriptor_use(d.child.id()) else {
                continue;
            };
            let near = virtiofsd::nearly_exhausted(open, limit);
            if near && !d.warned {
                log(&format!(
                    "error: {EXHAUSTED} for {}: {open} of {limit} are open, one per file the guest keeps in its cache; \
                     files there will fail with \"too many open files\". Raise the hard limit (ulimit -Hn, or LimitNOFILE) and restart the VM",
                    d.location.display()
                ));
            } else if !near && d.warned {
                log(&format!(
                    "virtiofsd for {} is back to {open} of {limit} file descriptors",
                    d.location.display()
                ));
            }
            d.warned = near;
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // Each exits once QEMU has gone; one that is still there (QEMU
        // never connected) is killed. Their sockets go too.
        for d in &mut self.0 {
            let _ = d.child.kill();
            let _ = d.child.wait();
            let _ = std::fs::remove_file(&d.socket);
            // virtiofsd's lock file beside its socket.
            let mut pid_file = d.socket.clone().into_os_string();
            pid_file.push(".pid");
            let _ = std::fs::remove_file(pid_file);
        }
    }
}

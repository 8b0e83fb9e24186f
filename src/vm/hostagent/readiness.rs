//! Is the guest ready for this boot? SSH must accept our key with the
//! pinned host key, and the boot script must have written this boot's
//! instance id to `/run/lima-boot-done` (cloud-init and provisioning
//! done), as Lima's readiness requirements check.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::HostAgentError;
use super::plan::Plan;
use crate::ssh::{self, ConnectOptions, HostKeyPolicy, Session};

// Short: a check on the open connection is cheap, and every second of
// polling is a second added to `vm start`.
const POLL: Duration = Duration::from_millis(500);

/// Waits until the guest is ready or `deadline` passes. Failures that a
/// booting guest produces (no sshd yet, our key or host key not installed
/// yet by cloud-init) are retried; the last one is reported at the deadline.
pub(super) async fn wait(
    plan: &Plan,
    port: u16,
    iid: &str,
    timeout: Duration,
    on_stage: impl Fn(&str),
) -> Result<(), HostAgentError> {
    let deadline = Instant::now() + timeout;
    let key = ssh::keys::ensure_user_key(&plan.lima_home)?;
    let host_key = ssh::PublicKey::from_openssh(plan.host_key_public.trim()).map_err(|e| {
        HostAgentError::Io {
            what: "parse the pinned host key in",
            path: plan.dir.join(crate::vm::layout::HOST_KEY_PUB),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    let mut waiting_for = String::from("SSH");
    let not_ready = |waiting_for: &str, secs| HostAgentError::NotReady {
        secs,
        waiting_for: waiting_for.to_string(),
    };
    let total = timeout.as_secs();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(not_ready(&waiting_for, total));
        }
        let opts = ConnectOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            user: plan.user.clone(),
            key: key.clone(),
            host_key: HostKeyPolicy::Pinned(host_key.clone()),
            deadline: left,
            agent_forwarding: None,
        };
        let session = match Session::connect(opts).await {
            Ok(s) => s,
            Err(e) => {
                waiting_for = format!("SSH: {e}");
                tokio::time::sleep(POLL.min(left)).await;
                continue;
            }
        };
        on_stage("SSH is up; waiting for cloud-init and provisioning");
        loop {
            match session.exec_capture(&["cat", "/run/lima-boot-done"]).await {
                Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == iid => {
                    let _ = session.close().await;
                    return Ok(());
                }
                Ok(_) => waiting_for = "the boot scripts (/run/lima-boot-done)".to_string(),
                // The connection broke (sshd restarted by cloud-init): reconnect.
                Err(_) => break,
            }
            if Instant::now() + POLL > deadline {
                return Err(not_ready(&waiting_for, total));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

//! The host side of the guest agent (`crates/guest-agent`): the executable
//! this binary carries, its installation and upgrade in the guest, and
//! requests to it over the admin's SSH connection.

use std::borrow::Cow;
use std::time::Duration;

use llima_box_proto::frame::Decoder;
use llima_box_proto::message::{self, Reply, Request};
use llima_box_proto::paths::{
    ADMIN_UNIT, AGENT_PATH, AGENT_SOCKET, AGENT_UNIT, AGENT_VERSION_PATH,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Error;
use crate::ssh::{Session, SocketStream};

/// The agent built by build.rs for this binary's architecture; empty where
/// none could be built (a non-Linux build host).
const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-agent"));

/// Names an agent executable to install instead of the embedded one (for a
/// guest of another architecture than this binary's).
pub(crate) const OVERRIDE_VAR: &str = "LLIMA_BOX_GUEST_AGENT";

/// How long a freshly (re)started agent may take to listen: under TCG a
/// static binary starts in well under a second, systemd's job a bit more.
const START_WAIT: Duration = Duration::from_secs(30);

/// The agent executable to install, and what identifies it.
pub(crate) struct GuestAgentBinary {
    bytes: Cow<'static, [u8]>,
    pub sha256: String,
    /// `uname -m` of the machines it runs on.
    pub arch: &'static str,
}

impl GuestAgentBinary {
    /// `$LLIMA_BOX_GUEST_AGENT` when set, else the embedded agent.
    pub(crate) fn load() -> Result<GuestAgentBinary, Error> {
        let bytes: Cow<'static, [u8]> =
            match std::env::var_os(OVERRIDE_VAR) {
                Some(path) => Cow::Owned(std::fs::read(&path).map_err(|source| {
                    Error::GuestAgentOverride {
                        path: path.into(),
                        source,
                    }
                })?),
                None if EMBEDDED.is_empty() => return Err(Error::GuestAgentNotBuilt),
                None => Cow::Borrowed(EMBEDDED),
            };
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Cow<'static, [u8]>) -> Result<GuestAgentBinary, Error> {
        let arch = elf_arch(&bytes).ok_or(Error::GuestAgentNotElf)?;
        if has_interpreter(&bytes) {
            return Err(Error::GuestAgentNotStatic);
        }
        Ok(GuestAgentBinary {
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes,
            arch,
        })
    }
}

/// The architecture (`uname -m`) of a 64-bit little-endian ELF executable.
fn elf_arch(b: &[u8]) -> Option<&'static str> {
    if b.len() < 20 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([b[18], b[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        0xf3 => Some("riscv64"),
        _ => None,
    }
}

/// Whether an ELF executable names a program interpreter (`PT_INTERP`): a
/// dynamically linked one, which would need the guest to have the libc it
/// was built against.
fn has_interpreter(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let (Some(phoff), Some(size), Some(count)) = (
        b.get(32..40)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()) as usize),
        u16_at(54),
        u16_at(56),
    ) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        let at = phoff + i * usize::from(size);
        b.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == PT_INTERP)
    })
}

/// Exit status of the install script when the guest's architecture is not
/// the agent's; it prints the guest's on stderr.
const EXIT_WRONG_ARCH: u32 = 4;

// Installs the executable read on stdin and the unit, then (re)starts the
// agent; a running agent keeps its old inode until then. The unit runs as
// root; the admin (the sudo caller) owns the socket.
const INSTALL_SCRIPT: &str = concat!(
    "set -eu\n",
    r##"sha=$1 arch=$2 bin=$3 version=$4 unit=$5 admin_unit=$6
if [ "$(uname -m)" != "$arch" ]; then
    cat >/dev/null
    uname -m >&2
    exit 4
fi
# Checked against its sha256, written beside its destination and renamed
# over it, so that a reader or a running program never sees half a file.
mkdir -p -m 0755 "${bin%/*}"
tmp=$(mktemp "${bin%/*}/.receive.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat >"$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
    echo "the guest agent arrived damaged (sha256 $got, expected $sha); try again" >&2
    exit 1
fi
chown root:root "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$bin"
trap - EXIT
printf '%s\n' "$sha" >"$version"
cat >"/etc/systemd/system/$unit" <<UNIT
[Unit]
Description=llima-box guest agent
After=local-fs.target

[Service]
ExecStart=$bin serve --admin-uid ${SUDO_UID:?run through sudo}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
UNIT
# The admin's vm shell commands run as this service's children: a restart
# of the agent leaves them alone, and a restart of this one (an upgrade)
# ends only the server.
cat >"/etc/systemd/system/$admin_unit" <<UNIT
[Unit]
Description=llima-box admin commands (vm shell)
After=local-fs.target

[Service]
ExecStart=$bin admin-server --admin-uid ${SUDO_UID:?run through sudo}
Restart=always
RestartSec=1
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --quiet "$unit" "$admin_unit"
systemctl restart "$unit" "$admin_unit"
# The pool's keeper runs the old executable (or, from before the agent made
# environments, the shell runtime, removed here): the next new environment
# starts it again.
systemctl stop llima-box-pool.service 2>/dev/null || true
rm -f "${bin%/*}/env-runtime" "${bin%/*}/version"
"##
);

impl GuestAgentBinary {
    /// Installs this agent and restarts the service; run with the
    /// executable on stdin.
    fn install_argv(&self) -> Vec<String> {
        [
            "sudo",
            "-n",
            "sh",
            "-c",
            INSTALL_SCRIPT,
            "llima-box-install-agent",
            &self.sha256,
            self.arch,
            AGENT_PATH,
            AGENT_VERSION_PATH,
            AGENT_UNIT,
            ADMIN_UNIT,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// One request to the agent on its own stream.
pub(crate) async fn request(session: &Session, req: &Request) -> Result<Reply, Error> {
    let mut stream = open(session).await?;
    let (reply, _) = exchange(&mut stream, req).await?;
    let _ = stream.shutdown().await;
    Ok(reply)
}

/// A connection to `port` on the loopback of the running environment
/// `name`, through the agent, and the bytes of it that came with the
/// agent's reply.
pub(crate) async fn connect_port(
    session: &Session,
    name: &str,
    port: u16,
) -> Result<(SocketStream, Vec<u8>), Error> {
    let mut stream = open(session).await?;
    let req = Request::Connect {
        name: name.to_owned(),
        port,
    };
    match exchange(&mut stream, &req).await? {
        (Reply::Connected, early) => Ok((stream, early)),
        (Reply::Error { message }, _) => Err(Error::GuestAgentFailed(message)),
        (other, _) => Err(Error::GuestAgentProtocol(format!(
            "unexpected reply to connect: {other:?}"
        ))),
    }
}

async fn open(session: &Session) -> Result<SocketStream, Error> {
    session
        .open_socket_stream(AGENT_SOCKET)
        .await
        .map_err(|e| Error::GuestAgentUnreachable(e.to_string()))
}

/// Sends `req` and reads one reply; what followed it on the stream comes
/// back with it.
async fn exchange(stream: &mut SocketStream, req: &Request) -> Result<(Reply, Vec<u8>), Error> {
    let io = |e: std::io::Error| Error::GuestAgentUnreachable(e.to_string());
    stream
        .write_all(&message::encode_request(req))
        .await
        .map_err(io)?;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some(frame) = decoder
            .next_frame()
            .map_err(|e| Error::GuestAgentProtocol(e.to_string()))?
        {
            let reply = message::decode_reply(&frame)
                .map_err(|e| Error::GuestAgentProtocol(e.to_string()))?;
            return Ok((reply, decoder.into_rest()));
        }
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            decoder
                .finish()
                .map_err(|e| Error::GuestAgentProtocol(e.to_string()))?;
            return Err(Error::GuestAgentUnreachable(
                "it closed the stream without a reply".into(),
            ));
        }
        decoder.push(&buf[..n]);
    }
}

/// Makes sure the guest runs `agent`: asks the running one its version and,
/// when it is not there or another, installs this one and waits until it
/// answers. One round trip when the agent is current.
pub(crate) async fn ensure(session: &Session, agent: &GuestAgentBinary) -> Result<(), Error> {
    if running_version(session).await.as_deref() == Some(agent.sha256.as_str()) {
        return Ok(());
    }
    let done = session
        .exec_with_stdin(&agent.install_argv(), &agent.bytes)
        .await
        .map_err(|e| Error::GuestAgentInstall(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&done.stderr).trim().to_string();
    match done.exit {
        crate::ssh::RemoteExit::Code(0) => {}
        crate::ssh::RemoteExit::Code(EXIT_WRONG_ARCH) => {
            return Err(Error::GuestAgentArch {
                guest: stderr,
                agent: agent.arch,
            });
        }
        other => {
            return Err(Error::GuestAgentInstall(format!(
                "exit status {}: {stderr}",
                other.code()
            )));
        }
    }
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        if running_version(session).await.as_deref() == Some(agent.sha256.as_str()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::GuestAgentUnreachable(format!(
                "the new agent did not answer within {} s",
                START_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn running_version(session: &Session) -> Option<String> {
    match request(session, &Request::Version).await {
        Ok(Reply::Version { sha256 }) => Some(sha256),
        _ => None,
    }
}

/// Every environment in the guest, from the agent.
pub(crate) async fn list(session: &Session) -> Result<Vec<message::EnvInfo>, Error> {
    match request(session, &Request::List).await? {
        Reply::List { envs } => Ok(envs),
        Reply::Error { message } => Err(Error::GuestAgentFailed(message)),
        other => Err(Error::GuestAgentProtocol(format!(
            "unexpected reply to list: {other:?}"
        ))),
    }
}

/// Gives the environment `name` `settings` (see [`Request::Configure`]).
pub(crate) async fn configure(
    session: &Session,
    name: &str,
    settings: &llima_box_proto::settings::Settings,
) -> Result<(bool, bool), Error> {
    let req = Request::Configure {
        name: name.to_owned(),
        settings: settings.clone(),
    };
    match request(session, &req).await? {
        Reply::Configured { existed, running } => Ok((existed, running)),
        Reply::Error { message } => Err(Error::GuestAgentFailed(message)),
        other => Err(Error::GuestAgentProtocol(format!(
            "unexpected reply to configure: {other:?}"
        ))),
    }
}

/// The refusals logged for the environment `name` after the kernel log
/// record `after`, and the `after` for the next call (see
/// [`Request::NetLog`]).
pub(crate) async fn net_log(
    session: &Session,
    name: &str,
    after: u64,
) -> Result<(Vec<llima_box_proto::net::Denial>, u64), Error> {
    let req = Request::NetLog {
        name: name.to_owned(),
        after,
    };
    match request(session, &req).await? {
        Reply::NetLog { denials, next } => Ok((denials, next)),
        Reply::Error { message } => Err(Error::GuestAgentFailed(message)),
        other => Err(Error::GuestAgentProtocol(format!(
            "unexpected reply to net-log: {other:?}"
        ))),
    }
}

/// Deletes the environment `name` (nothing to do when there is none).
pub(crate) async fn delete(session: &Session, name: &str) -> Result<(), Error> {
    let req = Request::Delete {
        name: name.to_owned(),
    };
    match request(session, &req).await? {
        Reply::Deleted { .. } => Ok(()),
        Reply::Error { message } => Err(Error::GuestAgentFailed(message)),
        other => Err(Error::GuestAgentProtocol(format!(
            "unexpected reply to delete: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_agent_is_a_static_executable_for_this_arch() {
        let a = GuestAgentBinary::load().unwrap();
        assert_eq!(a.arch, std::env::consts::ARCH);
        assert_eq!(a.sha256.len(), 64);
        // No program interpreter: it runs whatever libc the guest has.
        assert!(!has_interpreter(EMBEDDED));
    }

    #[test]
    fn a_dynamically_linked_agent_is_refused() {
        // This test program itself is dynamically linked.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&exe));
        assert!(matches!(
            GuestAgentBinary::from_bytes(Cow::Owned(exe)),
            Err(Error::GuestAgentNotStatic)
        ));
    }

    #[test]
    fn elf_arch_reads_the_machine_field() {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1];
        h.resize(20, 0);
        h[18] = 0xb7;
        assert_eq!(elf_arch(&h), Some("aarch64"));
        h[18] = 0x3e;
        assert_eq!(elf_arch(&h), Some("x86_64"));
        h[18] = 0x28; // 32-bit ARM: not a guest we build for
        assert_eq!(elf_arch(&h), None);
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
        assert!(matches!(
            GuestAgentBinary::from_bytes(Cow::Borrowed(b"#!/bin/sh\nexit 0\n")),
            Err(Error::GuestAgentNotElf)
        ));
    }

    #[test]
    fn install_argv_passes_every_value_as_its_own_word() {
        let a = GuestAgentBinary::load().unwrap();
        let argv = a.install_argv();
        assert_eq!(&argv[..4], ["sudo", "-n", "sh", "-c"]);
        assert_eq!(
            &argv[6..],
            [
                a.sha256.as_str(),
                a.arch,
                AGENT_PATH,
                AGENT_VERSION_PATH,
                AGENT_UNIT,
                ADMIN_UNIT
            ]
        );
    }
}

//! The socket the host reaches: owned by the admin user, mode 0600, and
//! every peer's credentials checked again (root or the admin), so an
//! environment user that finds a way to the path still gets nothing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use llima_box_proto::frame::Decoder;
use llima_box_proto::message::{self, Reply, Request};
use llima_box_proto::paths::{AGENT_SOCKET, AGENT_VERSION_PATH};

use crate::{delete, list};

pub fn serve(admin_uid: u32) -> std::io::Result<()> {
    let path = Path::new(AGENT_SOCKET);
    let dir = path.parent().expect("the socket path has a directory");
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    // Before any environment starts again, and after an upgrade for those
    // that run: a failure here is reported again by the next start.
    if let Err(e) = crate::guard::ensure(admin_uid, false) {
        eprintln!("llima-box-guest-agent: {e}");
    }
    // Restricted environments' resolver and proxy: without them their
    // DNS and TCP go nowhere (the guard still refuses all else).
    if let Err(e) = crate::egress::start() {
        eprintln!("llima-box-guest-agent: cannot start restricted mode's resolver and proxy: {e}");
    }
    crate::pool::resume(admin_uid);
    let listener = listen(path, admin_uid)?;
    let version = std::fs::read_to_string(AGENT_VERSION_PATH)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    accept(listener, admin_uid, move |stream| {
        if let Err(e) = connection(stream, &version) {
            eprintln!("llima-box-guest-agent: connection: {e}");
        }
    });
    Ok(())
}

/// A socket at `path` for the admin alone (its owner, mode 0600), in
/// place of one an earlier run left (restarted or killed).
pub fn listen(path: &Path, admin_uid: u32) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(path, Some(admin_uid), None)?;
    Ok(listener)
}

/// Hands each connection of root or the admin to `handle` (see
/// `accepters`); never returns.
pub fn accept<F>(listener: UnixListener, admin_uid: u32, handle: F)
where
    F: Fn(UnixStream) + Send + Sync + 'static,
{
    crate::accepters::serve(listener, move |conn: UnixStream| {
        if matches!(peer_uid(&conn), Some(uid) if uid == 0 || uid == admin_uid) {
            handle(conn);
        }
    });
}

pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len describe a writable ucred of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// Answers requests until the host closes the stream.
fn connection(mut stream: UnixStream, version: &str) -> std::io::Result<()> {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        decoder.push(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // The stream is out of step: say why and hang up.
                    let reply = Reply::Error {
                        message: e.to_string(),
                    };
                    return stream.write_all(&message::encode_reply(&reply));
                }
            };
            let reply = match message::decode_request(&frame) {
                Ok(Request::Connect { name, port }) => {
                    return crate::forward::serve(stream, &decoder.into_rest(), &name, port);
                }
                Ok(request) => handle(request, version),
                Err(e) => Reply::Error {
                    message: format!(
                        "the guest agent cannot read the request: {e}; upgrade llima-box or the agent"
                    ),
                },
            };
            stream.write_all(&message::encode_reply(&reply))?;
        }
    }
}

fn handle(request: Request, version: &str) -> Reply {
    match request {
        Request::Version => Reply::Version {
            sha256: version.to_owned(),
        },
        Request::List => match list::list() {
            Ok(envs) => Reply::List { envs },
            Err(e) => Reply::Error {
                message: format!("cannot read the environments' records: {e}"),
            },
        },
        Request::Configure { name, settings } => match crate::ensure::configure(&name, &settings) {
            Ok((existed, running)) => Reply::Configured { existed, running },
            Err(e) => Reply::Error {
                message: format!("cannot change the settings of environment {name}: {e}"),
            },
        },
        Request::Delete { name } => match delete::delete(&name) {
            Ok(existed) => Reply::Deleted { existed },
            Err(e) => Reply::Error {
                message: format!("cannot delete environment {name}: {e}"),
            },
        },
        Request::NetLog { name, after } => match crate::netlog::of_env(&name, after) {
            Ok((denials, next)) => Reply::NetLog { denials, next },
            Err(message) => Reply::Error { message },
        },
        Request::Connect { .. } => unreachable!("connections are served by the caller"),
    }
}

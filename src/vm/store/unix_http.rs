//! A minimal HTTP/1.1 client over a unix socket: enough to ask a host agent
//! (Lima's or ours) `GET /v1/info` on `ha.sock`, and ours `POST /v1/ports`.
//! Blocking std I/O with one overall deadline, so a wedged agent cannot
//! hang `list`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The host name Lima's client puts in `Host:`.
pub(crate) const HOSTAGENT_HOST: &str = "lima-hostagent";
/// Lima's Inspect gives the host agent this long to answer.
pub(crate) const HOSTAGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The body of `GET /v1/info`, as Lima's host agent sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auto_started_identifier: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ssh_local_port: u16,
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

#[derive(Debug, thiserror::Error)]
pub enum UnixHttpError {
    #[error("cannot connect to {}", sock.display())]
    Connect {
        sock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no complete answer from {} within {}s; the process serving it may be hung", sock.display(), timeout.as_secs_f32())]
    Timeout { sock: PathBuf, timeout: Duration },
    #[error("talking to {} failed", sock.display())]
    Io {
        sock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} answered with something that is not valid HTTP: {reason}", sock.display())]
    Malformed { sock: PathBuf, reason: String },
    #[error("{} answered {path} with HTTP {status}: {message}", sock.display())]
    Status {
        sock: PathBuf,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{} answered {path} with JSON that does not fit", sock.display())]
    Json {
        sock: PathBuf,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Asks the host agent listening on `sock` for its info, within
/// [`HOSTAGENT_TIMEOUT`].
pub fn hostagent_info(sock: &Path) -> Result<Info, UnixHttpError> {
    get_json(sock, HOSTAGENT_HOST, "/v1/info", HOSTAGENT_TIMEOUT)
}

/// `GET path` expecting a 2xx JSON body. Error bodies in Lima's
/// `{"message": …}` shape are surfaced in the error.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    sock: &Path,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<T, UnixHttpError> {
    json(sock, host, "GET", path, timeout)
}

/// `POST path` without a body, expecting a 2xx JSON body.
pub(crate) fn post_json<T: serde::de::DeserializeOwned>(
    sock: &Path,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<T, UnixHttpError> {
    json(sock, host, "POST", path, timeout)
}

fn json<T: serde::de::DeserializeOwned>(
    sock: &Path,
    host: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<T, UnixHttpError> {
    let resp = request(sock, host, method, path, timeout)?;
    if !(200..300).contains(&resp.status) {
        #[derive(Deserialize)]
        struct ErrorBody {
            message: String,
        }
        let message = serde_json::from_slice::<ErrorBody>(&resp.body)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).trim().to_string());
        return Err(UnixHttpError::Status {
            sock: sock.to_path_buf(),
            path: path.to_string(),
            status: resp.status,
            message,
        });
    }
    serde_json::from_slice(&resp.body).map_err(|source| UnixHttpError::Json {
        sock: sock.to_path_buf(),
        path: path.to_string(),
        source,
    })
}

/// One request on a fresh connection, all of it within `timeout`.
pub(crate) fn request(
    sock: &Path,
    host: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, UnixHttpError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || UnixHttpError::Timeout {
        sock: sock.to_path_buf(),
        timeout,
    };
    let io_err = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            timed_out()
        } else {
            UnixHttpError::Io {
                sock: sock.to_path_buf(),
                source,
            }
        }
    };
    let mut stream = UnixStream::connect(sock).map_err(|source| UnixHttpError::Connect {
        sock: sock.to_path_buf(),
        source,
    })?;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    stream
        .set_write_timeout(Some(remaining().ok_or_else(timed_out)?))
        .map_err(io_err)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io_err)?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let eof = {
            stream
                .set_read_timeout(Some(remaining().ok_or_else(timed_out)?))
                .map_err(io_err)?;
            let n = stream.read(&mut chunk).map_err(io_err)?;
            buf.extend_from_slice(&chunk[..n]);
            n == 0
        };
        // A server may keep the connection open despite `Connection: close`,
        // so stop as soon as the framing says the body is complete.
        match parse_response(&buf, eof) {
            Ok(Some(resp)) => return Ok(resp),
            Ok(None) if !eof => continue,
            Ok(None) => {
                return Err(UnixHttpError::Malformed {
                    sock: sock.to_path_buf(),
                    reason: "connection closed before the response was complete".into(),
                });
            }
            Err(reason) => {
                return Err(UnixHttpError::Malformed {
                    sock: sock.to_path_buf(),
                    reason,
                });
            }
        }
    }
}

/// `Ok(None)` while more bytes are needed. `eof` completes a body that has
/// neither a length nor chunked framing.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| "header is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    let body = if chunked {
        match dechunk(body)? {
            Some(b) => b,
            None => return Ok(None),
        }
    } else if let Some(len) = content_length {
        if body.len() < len {
            return Ok(None);
        }
        body[..len].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, body }))
}

/// Decodes `Transfer-Encoding: chunked`; `None` until the last chunk.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let size_field =
            std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size".to_string())?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout;
    use std::os::unix::net::UnixListener;

    /// Serves one connection with `answer`, returning the request it read.
    fn serve_once(listener: UnixListener, answer: String) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = conn.read(&mut b).unwrap();
                req.extend_from_slice(&b[..n]);
            }
            conn.write_all(answer.as_bytes()).unwrap();
            // Keep the connection open: the client must rely on framing.
            std::thread::sleep(Duration::from_millis(200));
            String::from_utf8(req).unwrap()
        })
    }

    #[test]
    fn info_with_content_length() {
        let body = r#"{"autoStartedIdentifier":"x","sshLocalPort":2222}"#;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(layout::HOST_AGENT_SOCK);
        let server = serve_once(
            UnixListener::bind(&sock).unwrap(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        let info = hostagent_info(&sock).unwrap();
        assert_eq!(info.ssh_local_port, 2222);
        assert_eq!(info.auto_started_identifier, "x");
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /v1/info HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: lima-hostagent\r\n"), "{req}");
    }

    #[test]
    fn chunked_body_and_error_message() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(layout::HOST_AGENT_SOCK);
        let server = serve_once(
            UnixListener::bind(&sock).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"messag\r\n11\r\ne\":\"not allowed\"}\r\n0\r\n\r\n".into(),
        );
        let err = hostagent_info(&sock).unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&err, UnixHttpError::Status { status: 405, message, .. } if message == "not allowed"),
            "{err:?}"
        );
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(layout::HOST_AGENT_SOCK);
        let _listener = UnixListener::bind(&sock).unwrap(); // never accepts
        let start = Instant::now();
        let err = request(
            &sock,
            HOSTAGENT_HOST,
            "GET",
            "/v1/info",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, UnixHttpError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = hostagent_info(&dir.path().join(layout::HOST_AGENT_SOCK)).unwrap_err();
        assert!(matches!(err, UnixHttpError::Connect { .. }), "{err:?}");
    }

    #[test]
    fn body_until_eof_without_length() {
        let resp = parse_response(b"HTTP/1.0 200 OK\r\n\r\n{}", true)
            .unwrap()
            .unwrap();
        assert_eq!(resp.body, b"{}");
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\n{}", false).unwrap(),
            None
        );
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n", true).is_err());
    }
}

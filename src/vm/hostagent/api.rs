//! The host agent's REST API on `ha.sock`: HTTP/1.1 over a unix socket,
//! `GET /v1/info` answering `{"sshLocalPort": N}` so that `limactl list`
//! and our own store see the instance as Running, and llima-box's own
//! `POST /v1/ports`: listen for the published ports' table as it is now,
//! answering what listens (a list of [`super::ports::Listening`]).

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::ports::Forwarder;
use crate::vm::store::Info;

/// The route of [`Forwarder::sync`].
pub(crate) const PORTS_PATH: &str = "/v1/ports";

/// Binds `ha.sock`, replacing a stale socket file left by a crashed agent.
pub fn bind(sock: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(sock)
}

/// Serves Lima's requests until the task is dropped.
pub async fn serve(listener: UnixListener, info: Info) {
    serve_with(listener, info, None).await
}

/// [`serve`], and `POST /v1/ports` with `ports` (`None` when the agent
/// cannot reach the guest: it says why in its log).
pub(super) async fn serve_with(listener: UnixListener, info: Info, ports: Option<Arc<Forwarder>>) {
    let body = serde_json::to_string(&info).unwrap_or_else(|_| "{}".into());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        let ports = ports.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let Ok(Some(request_line)) = lines.next_line().await else {
                return;
            };
            // Drain the headers; the API has no request bodies.
            while let Ok(Some(line)) = lines.next_line().await {
                if line.is_empty() {
                    break;
                }
            }
            let response = match (request_line.split_whitespace().nth(1), &ports) {
                (Some(PORTS_PATH), Some(ports)) if request_line.starts_with("POST ") => {
                    match ports.sync().await {
                        Ok(states) => ok(&serde_json::to_string(&states).unwrap_or_default()),
                        Err(e) => reply(500, "Internal Server Error", &message(&e)),
                    }
                }
                _ => respond(&request_line, &body),
            };
            let _ = write.write_all(response.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
}

fn respond(request_line: &str, info_body: &str) -> String {
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    match (method, path) {
        ("GET", "/v1/info") => ok(info_body),
        (_, "/v1/info") => reply(405, "Method Not Allowed", &message("method not allowed")),
        (_, PORTS_PATH) => reply(
            503,
            "Service Unavailable",
            &message("this host agent cannot reach the guest; see ha.stderr.log"),
        ),
        _ => reply(404, "Not Found", &message("not found")),
    }
}

fn ok(body: &str) -> String {
    reply(200, "OK", body)
}

/// Lima's error body.
fn message(text: &str) -> String {
    serde_json::json!({ "message": text }).to_string()
}

fn reply(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout;

    #[test]
    fn routes() {
        let ok = respond("GET /v1/info HTTP/1.1", r#"{"sshLocalPort":5}"#);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.ends_with(r#"{"sshLocalPort":5}"#));
        assert!(respond("POST /v1/info HTTP/1.1", "").starts_with("HTTP/1.1 405"));
        assert!(respond("GET /v2/x HTTP/1.1", "").starts_with("HTTP/1.1 404"));
        // Only served with a forwarder, which `serve` routes before this.
        assert!(respond("POST /v1/ports HTTP/1.1", "").starts_with("HTTP/1.1 503"));
    }

    #[tokio::test]
    async fn answers_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(layout::HOST_AGENT_SOCK);
        std::fs::write(&sock, b"stale").unwrap();
        let listener = bind(&sock).unwrap();
        let server = tokio::spawn(serve(
            listener,
            Info {
                ssh_local_port: 41234,
                ..Default::default()
            },
        ));
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: lima-hostagent\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut resp)
            .await
            .unwrap();
        assert!(resp.contains(r#"{"sshLocalPort":41234}"#), "{resp}");
        server.abort();
    }
}

//! The host agent's REST API on `ha.sock`: HTTP/1.1 over a unix socket,
//! `GET /v1/info` answering `{"sshLocalPort": N}` so that `limactl list`
//! and our own store see the instance as Running.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::vm::store::Info;

/// Binds `ha.sock`, replacing a stale socket file left by a crashed agent.
pub fn bind(sock: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(sock)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: UnixListener, info: Info) {
    let body = serde_json::to_string(&info).unwrap_or_else(|_| "{}".into());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
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
            let response = respond(&request_line, &body);
            let _ = write.write_all(response.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
}

fn respond(request_line: &str, info_body: &str) -> String {
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let (code, reason, body) = match (method, path) {
        ("GET", "/v1/info") => (200, "OK", info_body.to_string()),
        (_, "/v1/info") => (
            405,
            "Method Not Allowed",
            r#"{"message":"method not allowed"}"#.to_string(),
        ),
        _ => (404, "Not Found", r#"{"message":"not found"}"#.to_string()),
    };
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

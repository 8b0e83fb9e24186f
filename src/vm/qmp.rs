//! A small blocking QMP client (QEMU Machine Protocol over `$D/qmp.sock`):
//! greeting, capability negotiation, then `execute` calls matched by id.
//! Asynchronous events interleave with replies and are skipped. Blocking
//! I/O keeps it usable from plain threads and from `spawn_blocking`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub(crate) enum QmpError {
    #[error("cannot connect to the QMP socket {path}: {source} (is QEMU running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP I/O failed: {0} (QEMU may have exited)")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed by QEMU")]
    Closed,
    #[error("QMP sent something that is not valid: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities. `timeout`
    /// bounds every later read and write too, so a wedged QEMU cannot hang
    /// the caller.
    pub(crate) fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 0,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected a greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = args {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(format!(
                    "reply for another command: {reply}"
                )));
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// The ACPI power button: the guest shuts down cleanly if it listens.
    pub(crate) fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// The reset button: the guest starts again from its firmware.
    pub(crate) fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).map(drop)
    }

    /// The run state, e.g. "running", "paused", "prelaunch", "shutdown".
    pub(crate) fn query_status(&mut self) -> Result<String, QmpError> {
        let ret = self.execute("query-status", None)?;
        ret.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {ret}")))
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {}", line.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout;
    use std::os::unix::net::UnixListener;

    /// Serves one client: sends the greeting, then answers each request with
    /// `answer(request)`, which may return several lines (events first).
    fn fake_server(
        path: &Path,
        answer: impl Fn(&Value) -> Vec<Value> + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<Value>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(stream).lines() {
                let req: Value = serde_json::from_str(&line.unwrap()).unwrap();
                for reply in answer(&req) {
                    writeln!(w, "{reply}").unwrap();
                }
                seen.push(req);
            }
            seen
        })
    }

    #[test]
    fn negotiates_skips_events_and_maps_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(layout::QMP_SOCK);
        let server = fake_server(&sock, |req| {
            let id = req["id"].clone();
            match req["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![json!({"return": {}, "id": id})],
                "query-status" => vec![
                    json!({"event": "RESUME", "timestamp": {}}),
                    json!({"return": {"status": "running", "running": true}, "id": id}),
                ],
                _ => vec![json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": id})],
            }
        });
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.query_status().unwrap(), "running");
        let err = qmp.execute("bogus", Some(json!({"a": 1}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command bogus failed: CommandNotFound: nope"
        );
        drop(qmp);
        let seen = server.join().unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[2]["arguments"], json!({"a": 1}));
        assert_eq!(seen[2]["id"], 3);
    }

    #[test]
    fn missing_socket_says_what_to_check() {
        let err = Qmp::connect(Path::new("/nonexistent/qmp.sock"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/qmp.sock"), "{err}");
    }
}

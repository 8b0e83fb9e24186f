//! `connect`: how the host's published ports reach a port on an
//! environment's own loopback. The socket is made by a thread that joins
//! the environment's network namespace for that alone (a socket stays in
//! the namespace it was made in); then bytes are copied both ways between
//! it and the host's stream.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use llima_box_proto::message::{self, Reply};
use llima_box_proto::names::valid_env_name;

use crate::{ensure, list};

/// A server that accepts nothing within this is as good as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers a `connect` request on `stream` and, when connected, carries
/// the connection until both sides have ended. `early` is what the host
/// sent after its request.
pub fn serve(mut stream: UnixStream, early: &[u8], name: &str, port: u16) -> io::Result<()> {
    let tcp = match connect(name, port) {
        Ok(tcp) => tcp,
        Err(message) => return stream.write_all(&message::encode_reply(&Reply::Error { message })),
    };
    stream.write_all(&message::encode_reply(&Reply::Connected))?;
    carry(stream, tcp, early)
}

/// Copies both ways, `early` first, until both directions have ended.
fn carry(stream: UnixStream, tcp: TcpStream, early: &[u8]) -> io::Result<()> {
    (&tcp).write_all(early)?;
    let (host_in, tcp_in) = (stream.try_clone()?, tcp.try_clone()?);
    let upstream = std::thread::spawn(move || pump(host_in, tcp_in));
    let down = pump(tcp, stream);
    let up = upstream
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("copy panicked")));
    down.and(up)
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side
/// (the other direction may still be talking).
fn pump<F, T>(mut from: F, mut to: T) -> io::Result<()>
where
    F: Read + Half,
    T: Write + Half,
{
    let mut buf = vec![0u8; 256 << 10];
    let copied = loop {
        match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    // The receiver is gone: stop the sender too.
                    from.close_read();
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    to.close_write();
    copied
}

/// The two socket types' half-closes.
trait Half {
    fn close_read(&self);
    fn close_write(&self);
}

impl Half for TcpStream {
    fn close_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Half for UnixStream {
    fn close_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// A connection to `port` on the loopback of environment `name`, IPv4
/// first, then IPv6; the error says why for a person.
fn connect(name: &str, port: u16) -> Result<TcpStream, String> {
    if !valid_env_name(name) {
        return Err(format!("{name:?} is not an environment name"));
    }
    let pid = list::holder_pid(&ensure::env_dir(name)).ok_or_else(|| {
        format!("environment {name} is not running; a `llima-box shell` in its project starts it")
    })?;
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("cannot open environment {name}'s network namespace: {e}"))?;
    let made = std::thread::spawn(move || {
        // SAFETY: a network namespace descriptor; only this thread joins it.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e| {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)
        })
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the connecting thread panicked")));
    made.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on port {port} in environment {name} (127.0.0.1 or ::1)")
        }
        _ => format!("cannot connect to port {port} in environment {name}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn bytes_go_both_ways_and_each_end_reaches_the_other_side() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (mut host, agent) = UnixStream::pair().unwrap();
        let carried = std::thread::spawn(move || carry(agent, tcp, b"early "));

        host.write_all(b"request").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(got, "early request");

        // The host has stopped sending; the server's answer still flows.
        server.write_all(b"answer").unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        host.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "answer");
        carried.join().unwrap().unwrap();
    }
}

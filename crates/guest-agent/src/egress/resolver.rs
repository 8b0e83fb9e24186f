//! The resolver of restricted environments: a query for a name the
//! environment may reach goes to the guest's own resolvers, and their
//! answer back as it came; any other query gets "no such name" and a line
//! in the denial log. Over UDP and TCP, as a stub resolver asks.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use super::{Attempt, Environments, Slot, dns};

/// How long one upstream resolver has to answer.
const UPSTREAM_WAIT: Duration = Duration::from_secs(3);
/// The largest DNS message.
const MAX_MESSAGE: usize = 65535;

pub struct Resolver<E> {
    pub envs: E,
    /// The guest's resolvers, asked in order.
    pub upstream: Vec<SocketAddr>,
}

impl<E: Environments> Resolver<E> {
    /// What goes back to `peer` for `query` (over TCP when `tcp`); nothing
    /// for what is not a query, comes from no restricted environment, or
    /// that no upstream resolver answered (the client asks again).
    pub fn answer(&self, peer: SocketAddr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let q = dns::question(query)?;
        let env = self.envs.at(peer.ip())?;
        if !env.policy.names.allows(&q.name) {
            self.envs.denied(
                &env,
                &Attempt {
                    proto: if tcp { "TCP" } else { "UDP" },
                    name: q.name.clone(),
                    dest: None,
                    port: 53,
                    from: peer,
                },
            );
            return Some(dns::no_such_name(query, &q));
        }
        self.upstream.iter().find_map(|server| {
            let asked = if tcp {
                ask_tcp(*server, query)
            } else {
                ask_udp(*server, query)
            };
            asked.ok()
        })
    }
}

/// The addresses of `name` (IPv4 first), as the first of `upstream` that
/// answers gives them; both questions are asked at once.
pub fn addresses(upstream: &[SocketAddr], name: &str) -> dns::Found {
    let ask = |id, qtype| {
        let query = dns::query(id, name, qtype);
        upstream
            .iter()
            .find_map(|s| ask_udp(*s, &query).ok())
            .map_or(dns::Found::NOTHING, |answer| dns::addresses(&answer, id))
    };
    std::thread::scope(|s| {
        let v6 = s.spawn(|| ask(2, dns::TYPE_AAAA));
        let v4 = ask(1, dns::TYPE_A);
        v4.and(v6.join().unwrap_or(dns::Found::NOTHING))
    })
}

fn unspecified(server: &SocketAddr) -> SocketAddr {
    let ip = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// `query` to `server` over UDP: its answer with the same id.
fn ask_udp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(unspecified(&server))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(UPSTREAM_WAIT))?;
    socket.send(query)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buf)?;
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// `query` to `server` over TCP (each message after its length).
fn ask_tcp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect_timeout(&server, UPSTREAM_WAIT)?;
    conn.set_read_timeout(Some(UPSTREAM_WAIT))?;
    write_message(&mut conn, query)?;
    read_message(&mut conn)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

fn write_message(conn: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend(msg);
    conn.write_all(&framed)
}

/// The next message, or `None` at the end of the stream.
fn read_message(conn: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match conn.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        r => r?,
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg)?;
    Ok(Some(msg))
}

/// Answers the queries that reach `socket`, each on a thread of its own
/// (an upstream resolver may take seconds); never returns.
pub fn serve_udp<E: Environments + 'static>(resolver: Arc<Resolver<E>>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(slot) = Slot::take(peer.ip()) else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (resolver, socket) = (resolver.clone(), socket.clone());
        std::thread::spawn(move || {
            let _slot = slot;
            if let Some(answer) = resolver.answer(peer, &query, false) {
                let _ = socket.send_to(&answer, peer);
            }
        });
    }
}

/// Answers the queries of each connection to `listener`, in order; never
/// returns.
pub fn serve_tcp<E: Environments + 'static>(resolver: Arc<Resolver<E>>, listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let Some(slot) = conn.peer_addr().ok().and_then(|p| Slot::take(p.ip())) else {
            continue;
        };
        let resolver = resolver.clone();
        std::thread::spawn(move || -> io::Result<()> {
            let _slot = slot;
            let peer = conn.peer_addr()?;
            conn.set_read_timeout(Some(Duration::from_secs(30)))?;
            while let Some(query) = read_message(&mut conn)? {
                let Some(answer) = resolver.answer(peer, &query, true) else {
                    return Ok(());
                };
                write_message(&mut conn, &answer)?;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Recorder, restricted};
    use super::*;

    /// An upstream resolver on loopback that answers each query with its
    /// id and the address 192.0.2.1, over UDP; its address.
    fn upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let mut a = buf[..n].to_vec();
                a[2] |= 0x80;
                a[7] = 1;
                a.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
                socket.send_to(&a, peer).unwrap();
            }
        });
        addr
    }

    #[test]
    fn forwards_allowed_names_and_refuses_the_rest() {
        let resolver = Resolver {
            envs: Recorder::new(restricted(&["*.example.com"], &["bad.example.com"])),
            upstream: vec![upstream()],
        };
        let env = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 40000);
        let q = dns::query(9, "www.example.com", dns::TYPE_A);
        let a = resolver.answer(env, &q, false).unwrap();
        assert_eq!(
            dns::addresses(&a, 9).addrs,
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(resolver.envs.denials().is_empty());
        let q = dns::query(10, "bad.example.com", dns::TYPE_A);
        let a = resolver.answer(env, &q, false).unwrap();
        assert_eq!(a[3] & 0x0f, 3, "no such name");
        assert_eq!(resolver.envs.denials(), ["UDP bad.example.com:53"]);
        // Not an environment in restricted mode, or not a query: nothing.
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3)), 40000);
        assert!(resolver.answer(other, &q, false).is_none());
        assert!(resolver.answer(env, &a, false).is_none());
    }

    #[test]
    fn looks_names_up_for_the_proxy() {
        let found = addresses(&[upstream()], "www.example.com");
        // The fake upstream answers A for every query type.
        assert_eq!(found.addrs, ["192.0.2.1".parse::<IpAddr>().unwrap(); 2]);
        assert_eq!(found.ttl, 60);
    }

    #[test]
    fn serves_udp_and_tcp_clients() {
        let resolver = Arc::new(Resolver {
            envs: Recorder::new(restricted(&["example.com"], &[])),
            upstream: vec![upstream()],
        });
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = socket.local_addr().unwrap();
        let r = resolver.clone();
        std::thread::spawn(move || serve_udp(r, socket));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_tcp(resolver, listener));

        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(UPSTREAM_WAIT)).unwrap();
        client.connect(udp).unwrap();
        client
            .send(&dns::query(1, "example.com", dns::TYPE_A))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(dns::addresses(&buf[..n], 1).addrs.len(), 1);

        // Two queries on one connection, answered in order; the second is
        // denied. The upstream answers UDP only, as a stub may: over TCP
        // the allowed name gets no answer and the connection ends.
        let mut conn = TcpStream::connect(tcp).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write_message(&mut conn, &dns::query(2, "denied.org", dns::TYPE_A)).unwrap();
        let a = read_message(&mut conn).unwrap().unwrap();
        assert_eq!((a[1], a[3] & 0x0f), (2, 3));
        write_message(&mut conn, &dns::query(3, "example.com", dns::TYPE_A)).unwrap();
        assert!(read_message(&mut conn).unwrap().is_none());
    }
}

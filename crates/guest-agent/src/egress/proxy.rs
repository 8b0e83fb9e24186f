//! The proxy of restricted environments: the guard redirects every TCP
//! connection they open (DNS and allowed host ports aside) here. Its first
//! bytes say which name it is for (a TLS server name, an HTTP Host); when
//! the environment may reach that name, the proxy resolves it itself (the
//! address the environment chose is not trusted), connects to the port the
//! environment asked for and passes the bytes both ways. Anything else is
//! closed and logged.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llima_box_proto::net::NetPolicy;

use super::cache::Cache;
use super::connecting::Connecting;
use super::dns::Found;
use super::peek::{self, Peeked};
use super::{Attempt, Environments, Slot};

/// How long a client has to say which name it wants, and a server to
/// accept the connection.
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(10);
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The addresses of a name.
pub type Resolve = Box<dyn Fn(&str) -> Found + Send + Sync>;
/// Where a redirected connection was going (`SO_ORIGINAL_DST`).
pub type Original = Box<dyn Fn(&TcpStream) -> io::Result<SocketAddr> + Send + Sync>;

pub struct Proxy<E> {
    pub envs: E,
    pub resolve: Resolve,
    pub cache: Cache,
    pub original: Original,
    /// Whether the proxy may connect to an address and port for an
    /// environment with this policy.
    pub reachable: fn(IpAddr, u16, &NetPolicy) -> bool,
}

impl<E: Environments> Proxy<E> {
    /// Serves one redirected connection until both sides are done.
    pub fn handle(&self, mut client: TcpStream) -> io::Result<()> {
        let peer = client.peer_addr()?;
        let Some(env) = self.envs.at(peer.ip()) else {
            return Ok(());
        };
        let asked = (self.original)(&client)?;
        // The client is most likely going where it went before: to an
        // address an allowed name of this environment resolved to. Then the
        // proxy connects there while the client composes its first bytes,
        // and uses that connection only if the name they give leads there
        // too. Never anywhere else before the check: a SYN to an address of
        // the environment's choosing would itself be a way out.
        let early = (self
            .cache
            .holds(&env.name, asked.ip(), Instant::now(), |n| {
                env.policy.names.allows(n)
            })
            && (self.reachable)(asked.ip(), asked.port(), &env.policy))
        .then(|| Connecting::begin(asked).ok())
        .flatten();
        client.set_read_timeout(Some(HELLO_WAIT))?;
        let (first, name) = read_name(&mut client, asked.port())?;
        let refuse = |name: String, dest: Option<IpAddr>| {
            self.envs.denied(
                &env,
                &Attempt {
                    proto: "TCP",
                    name,
                    dest: dest.or(Some(asked.ip())),
                    port: asked.port(),
                    from: peer,
                },
            );
        };
        let Some(name) = name.filter(|n| env.policy.names.allows(n)) else {
            refuse(name_of(&first, asked.port()), None);
            return Ok(());
        };
        let addrs = self
            .cache
            .lookup(&env.name, &name, Instant::now(), &self.resolve);
        let early = early
            .filter(|_| addrs.contains(&asked.ip()))
            .and_then(|connecting| connecting.finish(CONNECT_WAIT).ok());
        let Some(server) = early.or_else(|| {
            addrs
                .iter()
                .filter(|a| (self.reachable)(**a, asked.port(), &env.policy))
                .find_map(|a| {
                    TcpStream::connect_timeout(&SocketAddr::new(*a, asked.port()), CONNECT_WAIT)
                        .ok()
                })
        }) else {
            refuse(name, addrs.first().copied());
            return Ok(());
        };
        client.set_read_timeout(None)?;
        // The proxy passes on what each side wrote as it comes: with Nagle's
        // rule a small write waits for the peer's delayed ACK (40 ms), at
        // each turn of a TLS handshake.
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        (&server).write_all(&first)?;
        super::relay::relay(client, server)
    }
}

/// Reads until the first bytes name where the connection is for: TLS on
/// 443 and wherever they begin as a TLS record, HTTP elsewhere. Returns
/// what was read and the name, if any.
fn read_name(client: &mut TcpStream, port: u16) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let peeked = if buf.is_empty() {
            Peeked::More
        } else {
            peek_at(&buf, port)
        };
        match peeked {
            Peeked::Name(n) => return Ok((buf, Some(n))),
            Peeked::Nameless => return Ok((buf, None)),
            Peeked::More if buf.len() >= peek::MAX_PEEK => return Ok((buf, None)),
            Peeked::More => {}
        }
        let n = match client.read(&mut chunk) {
            // A protocol whose server speaks first names nothing.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                0
            }
            r => r?,
        };
        if n == 0 {
            return Ok((buf, None));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The name a refused connection gave, for the log (none: empty).
pub(super) fn name_of(first: &[u8], port: u16) -> String {
    match peek_at(first, port) {
        Peeked::Name(n) => n,
        _ => String::new(),
    }
}

/// What the first bytes `buf` of a connection to `port` say: TLS on 443
/// and wherever they begin as a TLS record, HTTP elsewhere.
pub(super) fn peek_at(buf: &[u8], port: u16) -> Peeked {
    if port == 443 || buf.first() == Some(&22) {
        peek::tls(buf)
    } else {
        peek::http(buf)
    }
}

/// Serves each connection to `listener` (see `accepters`); never returns.
pub fn serve<E: Environments + 'static>(proxy: Arc<Proxy<E>>, listener: TcpListener) {
    crate::accepters::serve(listener, move |(conn, peer): (TcpStream, SocketAddr)| {
        if let Some(_slot) = Slot::take(peer.ip()) {
            let _ = proxy.handle(conn);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::peek::tests::hello;
    use super::super::tests::{Recorder, restricted};
    use super::*;

    /// A server on loopback that answers each connection with `reply`
    /// once it has read something, then closes it; its port.
    fn server(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply);
            }
        });
        port
    }

    /// A proxy on loopback for `Recorder`'s environment, whose connections
    /// were all going to `port` of 192.0.2.1.
    fn proxy(policy: NetPolicy, port: u16) -> (Arc<Proxy<Recorder>>, SocketAddr) {
        proxy_to(policy, SocketAddr::new("192.0.2.1".parse().unwrap(), port))
    }

    /// The same, with connections going to `original`; names resolve to
    /// 127.0.0.1 (`other.example.com` to 127.0.0.2, `nowhere.example.com`
    /// to nothing).
    fn proxy_to(policy: NetPolicy, original: SocketAddr) -> (Arc<Proxy<Recorder>>, SocketAddr) {
        let proxy = Arc::new(Proxy {
            envs: Recorder::new(policy),
            resolve: Box::new(|name| match name {
                "nowhere.example.com" => Found::NOTHING,
                _ => Found {
                    addrs: vec![if name == "other.example.com" {
                        "127.0.0.2".parse().unwrap()
                    } else {
                        "127.0.0.1".parse().unwrap()
                    }],
                    ttl: 60,
                },
            }),
            cache: Cache::default(),
            original: Box::new(move |_| Ok(original)),
            reachable: |_, _, _| true,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let p = proxy.clone();
        std::thread::spawn(move || serve(p, listener));
        (proxy, addr)
    }

    /// Sends `first` through the proxy at `addr`; all that comes back.
    fn exchange(addr: SocketAddr, first: &[u8]) -> Vec<u8> {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(first).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        out
    }

    #[test]
    fn passes_allowed_hosts_and_closes_the_rest() {
        let port = server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let (p, addr) = proxy(restricted(&["*.example.com"], &["bad.example.com"]), port);
        let get = |host: &str| {
            exchange(
                addr,
                format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            )
        };
        assert!(get("www.example.com").ends_with(b"\r\n\r\nok"));
        assert!(get("bad.example.com").is_empty());
        assert!(get("nowhere.example.com").is_empty());
        assert!(exchange(addr, b"SSH-2.0-OpenSSH_9.9\r\n\r\n").is_empty());
        assert_eq!(
            p.envs.denials(),
            [
                format!("TCP bad.example.com:{port}"),
                format!("TCP nowhere.example.com:{port}"),
                format!("TCP :{port}"),
            ]
        );
    }

    #[test]
    fn a_connection_begun_early_serves_only_a_name_that_leads_there() {
        // Answers with the address each connection was made to; counts them.
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = made.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut conn = conn.unwrap();
                    let to = conn.local_addr().unwrap().ip().to_string();
                    let mut buf = [0u8; 4096];
                    if conn.read(&mut buf).unwrap_or(0) > 0 {
                        let _ = conn.write_all(to.as_bytes());
                    }
                });
            }
        });
        // The count once it has reached `n` (an early connection that was
        // not used may still be on its way when the answer is back).
        let made = |n: usize| {
            let until = Instant::now() + Duration::from_secs(5);
            let count = || made.load(std::sync::atomic::Ordering::SeqCst);
            while count() < n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            count()
        };
        let asked = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
        let (p, addr) = proxy_to(restricted(&["*.example.com"], &["bad.example.com"]), asked);
        // Not known yet: connected to after the name, once.
        assert_eq!(exchange(addr, &hello("www.example.com")), b"127.0.0.1");
        assert_eq!(made(1), 1);
        // Known now: connected to early, and that connection serves it.
        assert_eq!(exchange(addr, &hello("www.example.com")), b"127.0.0.1");
        assert_eq!(made(2), 2);
        // Begun early, but the name leads elsewhere: that is where it goes.
        assert_eq!(exchange(addr, &hello("other.example.com")), b"127.0.0.2");
        assert_eq!(made(4), 4);
        // A refused name gets nothing through, early or not.
        assert!(exchange(addr, &hello("bad.example.com")).is_empty());
        assert_eq!(p.envs.denials(), [format!("TCP bad.example.com:{port}")]);
    }

    #[test]
    fn connections_that_keep_silent_do_not_hold_up_the_next() {
        let port = server(b"ok");
        let (_, addr) = proxy(restricted(&["a.example.com"], &[]), port);
        // Each waits in the proxy for its first bytes, up to HELLO_WAIT.
        let silent: Vec<TcpStream> = (0..2 * crate::accepters::WAITING + 1)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let t0 = Instant::now();
        assert_eq!(exchange(addr, &hello("a.example.com")), b"ok");
        assert!(t0.elapsed() < HELLO_WAIT, "{:?}", t0.elapsed());
        drop(silent);
    }

    #[test]
    fn reads_the_server_name_of_tls_on_any_port() {
        let port = server(b"tls-ok");
        let (p, addr) = proxy(restricted(&["a.example.com"], &[]), port);
        assert_eq!(exchange(addr, &hello("a.example.com")), b"tls-ok");
        assert!(exchange(addr, &hello("b.example.com")).is_empty());
        assert_eq!(p.envs.denials(), [format!("TCP b.example.com:{port}")]);
    }
}

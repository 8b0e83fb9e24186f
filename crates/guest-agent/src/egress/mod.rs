//! Restricted mode's way out, started by the agent's service: a
//! resolver that answers only for allowed names and a proxy that connects
//! only to them. The guard redirects a restricted environment's DNS to
//! [`RESOLVER_PORT`] and its other TCP to [`PROXY_PORT`] (see
//! `guard::policy`), on the guest's side of its veth; both find the
//! environment by the address a query or connection comes from. A
//! connection to where an allowed name already led goes straight there
//! instead, checked in the kernel's packet queue ([`check`]).

mod cache;
pub mod check;
mod connecting;
mod dns;
mod nfqueue;
mod owner;
mod peek;
mod proxy;
mod records;
mod relay;
mod resolver;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use llima_box_proto::net::NetPolicy;

use crate::guard::{CLOSED, SLIRP_GATEWAY_ADDR};

/// Where the resolver listens (UDP and TCP), on every address of the guest.
pub const RESOLVER_PORT: u16 = 10053;
/// Where the proxy listens.
pub const PROXY_PORT: u16 = 10080;

/// At most this many queries and connections of one environment are
/// served at once: each takes a thread of the agent, which no
/// environment's task limit counts. Beyond it, new ones are closed (TCP)
/// or dropped (UDP, which clients send again), that environment's alone.
const MAX_ACTIVE: usize = 128;
static ACTIVE: Mutex<Option<HashMap<IpAddr, usize>>> = Mutex::new(None);

/// One of an environment's [`MAX_ACTIVE`] places, given back when dropped.
pub struct Slot(IpAddr);

impl Slot {
    pub fn take(peer: IpAddr) -> Option<Slot> {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        let n = active
            .get_or_insert_with(HashMap::new)
            .entry(peer)
            .or_default();
        (*n < MAX_ACTIVE).then(|| {
            *n += 1;
            Slot(peer)
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        let counts = active.get_or_insert_with(HashMap::new);
        if let Some(n) = counts.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.0);
            }
        }
    }
}

/// Starts the resolver and the proxy, each listening on all of the
/// guest's addresses (the guard lets only redirected connections in).
pub fn start() -> io::Result<()> {
    let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let udp = UdpSocket::bind(any(RESOLVER_PORT))?;
    let tcp = TcpListener::bind(any(RESOLVER_PORT))?;
    let proxy_listener = TcpListener::bind(any(PROXY_PORT))?;
    let upstream = resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let resolver = Arc::new(resolver::Resolver {
        envs: records::Records,
        upstream: upstream.clone(),
    });
    let r = resolver.clone();
    raised(move || resolver::serve_udp(r, udp));
    raised(move || resolver::serve_tcp(resolver, tcp));
    let proxy = Arc::new(proxy::Proxy {
        envs: records::Records,
        resolve: Box::new(move |name| resolver::addresses(&upstream, name)),
        cache: cache::Cache::default(),
        original: Box::new(original_destination),
        reachable,
    });
    let checker = check::Checker::new(proxy.clone());
    raised(move || proxy::serve(proxy, proxy_listener));
    raised(move || check::serve(checker));
    Ok(())
}

/// The scheduling priority of the resolver and the proxy (the guest's
/// services run at 0).
const SERVICE_NICE: libc::c_int = -10;

/// Runs `serve` on a thread of its own at [`SERVICE_NICE`], as are the
/// threads it starts (they inherit it). The resolver and the proxy wake
/// for each turn of a conversation; at an equal share with the
/// environments' work on every CPU, each turn can wait for a time slice.
/// Their own work is small. Without the privilege they only run slower.
fn raised(serve: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: setpriority(2) of the calling thread only (Linux).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SERVICE_NICE) };
        serve()
    });
}

/// The guest's own resolvers (its loopback stub included: it knows the
/// guest's /etc/hosts), else QEMU's.
fn resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    let found: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect();
    if found.is_empty() {
        let qemu: IpAddr = crate::guard::SLIRP_DNS.parse().expect("an address");
        return vec![SocketAddr::new(qemu, 53)];
    }
    found
}

/// Where a connection the guard redirected was going.
fn original_destination(conn: &TcpStream) -> io::Result<SocketAddr> {
    // SAFETY: a zeroed sockaddr_in for the kernel to fill, and its size.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: as above, on a socket this process owns.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(addr.sin_port)))
}

/// Whether the proxy may connect to `addr`, `port` for an environment with
/// `policy`: what the guard lets environments reach (the host's loopback
/// only at its allowed ports), and never the guest itself.
pub fn reachable(addr: IpAddr, port: u16, policy: &NetPolicy) -> bool {
    // ::ffff:127.0.0.1 is 127.0.0.1.
    let addr = addr.to_canonical();
    if addr == IpAddr::V4(SLIRP_GATEWAY_ADDR) {
        return policy.open_host_ports().contains(&port);
    }
    let special = addr.is_loopback() || addr.is_unspecified() || addr.is_multicast();
    let broadcast = matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    !special && !broadcast && !CLOSED.iter().any(|net| within(addr, net))
}

/// Whether `addr` is in `net` (`ADDRESS/BITS`).
fn within(addr: IpAddr, net: &str) -> bool {
    let Some((base, bits)) = net.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(bits)) = (base.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (addr, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// An environment in restricted mode.
#[derive(Debug, Clone)]
pub struct Env {
    pub name: String,
    pub uid: u32,
    pub policy: NetPolicy,
}

/// Something an environment tried and was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub proto: &'static str,
    /// The name it asked for (empty when it gave none).
    pub name: String,
    /// The address it connected to, for a connection.
    pub dest: Option<IpAddr>,
    pub port: u16,
    /// Where it came from: its socket's address in the environment.
    pub from: SocketAddr,
}

/// The seam between the resolver and proxy and the guest's records.
pub trait Environments: Send + Sync {
    /// The environment in restricted mode at `peer`, if any.
    fn at(&self, peer: IpAddr) -> Option<Env>;
    /// Records a refusal.
    fn denied(&self, env: &Env, attempt: &Attempt);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use llima_box_proto::net::Mode;

    use super::*;

    #[test]
    fn each_environment_has_its_own_places() {
        let (a, b) = ("100.64.9.1".parse().unwrap(), "100.64.9.3".parse().unwrap());
        let mut held: Vec<Slot> = (0..MAX_ACTIVE).map(|_| Slot::take(a).unwrap()).collect();
        assert!(Slot::take(a).is_none());
        assert!(
            Slot::take(b).is_some(),
            "another environment is not starved"
        );
        held.pop();
        assert!(Slot::take(a).is_some());
    }

    #[test]
    fn resolvers_come_from_resolv_conf_stub_included() {
        let conf =
            "# x\nnameserver 127.0.0.53\noptions edns0\nnameserver fd00::3\nnameserver bad\n";
        let want: Vec<SocketAddr> = vec![
            "127.0.0.53:53".parse().unwrap(),
            "[fd00::3]:53".parse().unwrap(),
        ];
        assert_eq!(resolvers(conf), want);
        assert_eq!(
            resolvers(""),
            ["192.168.5.3:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn the_proxy_reaches_what_the_guard_lets_through() {
        let mut p = restricted(&["a.com"], &[]);
        p.host_ports = vec![5432];
        let ok = |a: &str, port| reachable(a.parse().unwrap(), port, &p);
        assert!(ok("192.0.2.7", 443) && ok("2001:db8::1", 443) && ok("198.18.0.1", 80));
        assert!(ok("192.168.5.2", 5432) && !ok("192.168.5.2", 5433));
        for closed in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "fd00::3",
            "fec0::2",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!ok(closed, 443), "{closed}");
        }
    }

    /// A policy in restricted mode with these names.
    pub fn restricted(allow: &[&str], deny: &[&str]) -> NetPolicy {
        let mut p = NetPolicy {
            mode: Mode::Restricted,
            ..NetPolicy::default()
        };
        for a in allow {
            p.names.allow(a).unwrap();
        }
        for d in deny {
            p.names.deny(d).unwrap();
        }
        p
    }

    /// One environment, at 100.64.0.1 or loopback; its refusals as
    /// `PROTO NAME:PORT`.
    pub struct Recorder {
        policy: NetPolicy,
        denied: Mutex<Vec<String>>,
    }

    impl Recorder {
        pub fn new(policy: NetPolicy) -> Recorder {
            Recorder {
                policy,
                denied: Mutex::new(Vec::new()),
            }
        }

        pub fn denials(&self) -> Vec<String> {
            self.denied.lock().unwrap().clone()
        }
    }

    impl Environments for Recorder {
        fn at(&self, peer: IpAddr) -> Option<Env> {
            (peer == IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)) || peer.is_loopback()).then(|| Env {
                name: "proj".into(),
                uid: 100_000,
                policy: self.policy.clone(),
            })
        }

        fn denied(&self, _: &Env, a: &Attempt) {
            let what = format!("{} {}:{}", a.proto, a.name, a.port);
            self.denied.lock().unwrap().push(what);
        }
    }
}

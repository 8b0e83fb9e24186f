//! Restricted environments' connections that need no proxy in their way.
//! An HTTPS connection to an address that an allowed name of the
//! environment resolved to (in the proxy's [`Cache`](super::cache::Cache))
//! goes straight to its server; the guard queues its packets to the agent
//! until the first bytes it sends have said which name it is for (the TLS
//! server name), read as the proxy reads them. Nothing it sends gets past
//! the guest before that: an allowed name lets the whole connection
//! through, in the kernel; anything else resets it at both ends and is
//! logged. Other connections go to the proxy as before. Through the proxy,
//! every byte crossed TCP twice more, which under emulation made each
//! HTTPS request take a fifth longer.
//!
//! The handshake's last ACK is held too, so that the server has not yet
//! accepted the connection when it is refused: that ACK, turned into a
//! reset, ends it there.
//!
//! The verdict is kept in the connection's mark (see `guard::policy`):
//! [`DIRECT`] from its SYN on, then [`CHECKED`] or [`REFUSED`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dns::u16_at;
use super::peek::{MAX_PEEK, Peeked};
use super::proxy::{HELLO_WAIT, Proxy, name_of, peek_at};
use super::{Attempt, Environments, MAX_ACTIVE};

/// The only port connected to directly (see [`Checker::direct`]).
pub const HTTPS: u16 = 443;
/// The queue the guard sends the packets to check to.
pub const QUEUE: u16 = 10080;
/// The bits of packet and connection marks that hold a verdict.
pub const MARK_MASK: u32 = 0x0c00_0000;
/// Goes straight to its server; its first bytes are still to be checked.
pub const DIRECT: u32 = 0x0400_0000;
/// Named an allowed name: let through without further checks.
pub const CHECKED: u32 = 0x0800_0000;
/// Refused: reset.
pub const REFUSED: u32 = 0x0c00_0000;
/// Connections held at once, at most, of all environments. Beyond it (or
/// beyond an environment's [`MAX_ACTIVE`]), a new one is refused.
const MAX_HELD: usize = 1024;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What becomes of a packet (`T` names it).
#[derive(Debug, PartialEq, Eq)]
pub enum Action<T> {
    /// On its way.
    Pass(T),
    Drop(T),
    /// On its way again through the guard, which keeps the verdict.
    Mark(T, u32),
    /// Replaced by these bytes (a reset for the server), then as `Mark`
    /// with [`REFUSED`].
    Reset(T, Vec<u8>),
}

/// A connection, as the environment sees it.
type Flow = (SocketAddrV4, SocketAddrV4);

/// What a connection sent before its first bytes said enough.
struct Held<T> {
    /// The handshake's last ACK, and the packet.
    ack: Option<(T, Vec<u8>)>,
    /// The sequence number of the byte after `data`.
    next: u32,
    data: Vec<u8>,
    packets: Vec<T>,
    since: Instant,
}

/// The parts of an IPv4 TCP packet that the checks read.
#[derive(Debug, PartialEq, Eq)]
struct Segment<'a> {
    from: SocketAddrV4,
    to: SocketAddrV4,
    flags: u8,
    seq: u32,
    payload: &'a [u8],
}

impl Segment<'_> {
    /// A SYN without ACK: a connection's first packet.
    fn opening(&self) -> bool {
        self.flags & (SYN | ACK) == SYN
    }
}

/// The TCP segment in the IPv4 packet `ip`, if it is one.
fn segment(ip: &[u8]) -> Option<Segment<'_>> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != libc::IPPROTO_TCP as u8 {
        return None;
    }
    let total = usize::from(u16_at(ip, 2)?);
    let ip = ip.get(..total.max(ihl))?;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(
            <[u8; 4]>::try_from(ip.get(at..at + 4)?).ok()?,
        ))
    };
    let tcp = ip.get(ihl..)?;
    let offset = usize::from(*tcp.get(12)? >> 4) * 4;
    Some(Segment {
        from: SocketAddrV4::new(addr(12)?, u16_at(tcp, 0)?),
        to: SocketAddrV4::new(addr(16)?, u16_at(tcp, 2)?),
        flags: *tcp.get(13)?,
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        payload: tcp.get(offset.max(20)..)?,
    })
}

/// The pure ACK `ip` (IPv4, TCP, no payload) turned into a reset of its
/// connection, its TCP checksum computed whole (the kernel may have left
/// it to the network card).
fn reset_of(ip: &[u8]) -> Option<Vec<u8>> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let mut p = ip.get(..usize::from(u16_at(ip, 2)?))?.to_vec();
    let tcp_len = p.len().checked_sub(ihl)?;
    p.get_mut(ihl + 13).map(|f| *f = RST | ACK)?;
    p.get_mut(ihl + 16..ihl + 18)?.fill(0);
    let sum = tcp_sum(&p, ihl, tcp_len);
    p[ihl + 16..ihl + 18].copy_from_slice(&(!sum).to_be_bytes());
    Some(p)
}

/// The ones' complement sum of the TCP segment of `p` (from `ihl`,
/// `tcp_len` bytes) and its pseudo-header: the checksum is its complement,
/// and a segment with the right checksum sums to `0xffff`.
fn tcp_sum(p: &[u8], ihl: usize, tcp_len: usize) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for pair in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&p[12..20]);
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(&(tcp_len as u16).to_be_bytes());
    add(&p[ihl..ihl + tcp_len]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Decides on the packets the guard queues.
pub struct Checker<E> {
    proxy: Arc<Proxy<E>>,
    held: HashMap<Flow, Held<u32>>,
}

impl<E: Environments> Checker<E> {
    pub fn new(proxy: Arc<Proxy<E>>) -> Checker<E> {
        Checker {
            proxy,
            held: HashMap::new(),
        }
    }

    /// What becomes of the queued packet `id`, the IPv4 packet `ip`, and of
    /// packets held before it.
    pub fn packet(&mut self, id: u32, ip: &[u8], now: Instant) -> Vec<Action<u32>> {
        // The guard queues TCP over IPv4 only: anything else is not let by.
        let Some(s) = segment(ip) else {
            return vec![Action::Drop(id)];
        };
        if s.opening() {
            if !s.payload.is_empty() {
                // Data in a SYN (TCP Fast Open) would pass before any
                // check. Dropped, the client sends the SYN again without.
                return vec![Action::Drop(id)];
            }
            let env = self.proxy.envs.at(IpAddr::V4(*s.from.ip()));
            return vec![match env {
                Some(env) if self.direct(&env, s.to, now) => Action::Mark(id, DIRECT),
                // The proxy's: it finds out itself what to do.
                _ => Action::Pass(id),
            }];
        }
        let flow = (s.from, s.to);
        let held = match self.held.remove(&flow) {
            Some(held) => held,
            None if !self.room_for(s.from) => return vec![Action::Mark(id, REFUSED)],
            None => Held {
                ack: None,
                next: s.seq,
                data: Vec::new(),
                packets: Vec::new(),
                since: now,
            },
        };
        self.add(flow, held, id, ip, &s)
    }

    /// Whether a connection of `env` to `to` may go straight there: HTTPS
    /// to an address an allowed name of it resolved to (where the proxy
    /// would connect early). Only HTTPS: a TLS client writes its hello at
    /// once, while an HTTP client may write a request in pieces, and
    /// without TCP_NODELAY its kernel holds back the next piece until the
    /// server has acknowledged the first, which the check holds: that
    /// connection would wait until refused. The proxy acknowledges.
    fn direct(&self, env: &super::Env, to: SocketAddrV4, now: Instant) -> bool {
        let addr = IpAddr::V4(*to.ip());
        to.port() == HTTPS
            && self
                .proxy
                .cache
                .holds(&env.name, addr, now, |n| env.policy.names.allows(n))
            && (self.proxy.reachable)(addr, to.port(), &env.policy)
    }

    /// Whether another connection from `from`'s address (an environment)
    /// may be held: each environment has [`MAX_ACTIVE`] places, as in the
    /// proxy, out of [`MAX_HELD`].
    fn room_for(&self, from: SocketAddrV4) -> bool {
        self.held.len() < MAX_HELD
            && self
                .held
                .keys()
                .filter(|(f, _)| f.ip() == from.ip())
                .count()
                < MAX_ACTIVE
    }

    /// `s` (packet `id`, `ip`) adds to what `flow` sent: decides if that
    /// says enough, else holds it.
    fn add(
        &mut self,
        flow: Flow,
        mut held: Held<u32>,
        id: u32,
        ip: &[u8],
        s: &Segment,
    ) -> Vec<Action<u32>> {
        if s.payload.is_empty() {
            let first_ack = s.flags & (ACK | FIN | RST) == ACK;
            if first_ack && held.ack.is_none() && held.packets.is_empty() {
                held.ack = Some((id, ip.to_vec()));
                held.next = s.seq;
                self.held.insert(flow, held);
                return Vec::new();
            }
            // Another ACK, or the client giving up: nothing for the server
            // to read.
            if held.ack.is_some() || !held.packets.is_empty() {
                self.held.insert(flow, held);
            }
            return vec![Action::Pass(id)];
        }
        // In order, as a veth delivers. A segment sent again adds only
        // what it has beyond the bytes already read (TCP may send more
        // with it); one after a gap adds nothing until the gap is filled.
        let known = held.next.wrapping_sub(s.seq) as usize;
        if let Some(new) = s.payload.get(known..) {
            held.data.extend_from_slice(new);
            held.next = held.next.wrapping_add(new.len() as u32);
        }
        held.packets.push(id);
        let peeked = peek_at(&held.data, flow.1.port());
        let more = matches!(peeked, Peeked::More) && held.data.len() < MAX_PEEK;
        let env = self.proxy.envs.at(IpAddr::V4(*flow.0.ip()));
        match (peeked, env) {
            (_, Some(_)) if more => {
                self.held.insert(flow, held);
                Vec::new()
            }
            (Peeked::Name(n), Some(env)) if env.policy.names.allows(&n) => {
                let last = held.packets.pop().expect("this packet");
                let first = held.ack.map(|(id, _)| id).into_iter();
                let mut out: Vec<Action<u32>> =
                    first.chain(held.packets).map(Action::Pass).collect();
                out.push(Action::Mark(last, CHECKED));
                out
            }
            (peeked, env) => {
                let name = match peeked {
                    Peeked::Name(n) => n,
                    _ => String::new(),
                };
                // No environment: no longer restricted, or gone, so
                // nothing to check against (nor to log for).
                if let Some(env) = env {
                    self.log(&env, flow, name);
                }
                refused(held)
            }
        }
    }

    fn log(&self, env: &super::Env, flow: Flow, name: String) {
        self.proxy.envs.denied(
            env,
            &Attempt {
                proto: "TCP",
                name,
                dest: Some(IpAddr::V4(*flow.1.ip())),
                port: flow.1.port(),
                from: SocketAddr::V4(flow.0),
            },
        );
    }

    /// Refuses the connections that said too little for [`HELLO_WAIT`].
    pub fn expire(&mut self, now: Instant) -> Vec<Action<u32>> {
        let late: Vec<Flow> = self
            .held
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= HELLO_WAIT)
            .map(|(f, _)| *f)
            .collect();
        let mut out = Vec::new();
        for flow in late {
            if let Some(held) = self.held.remove(&flow) {
                if let Some(env) = self.proxy.envs.at(IpAddr::V4(*flow.0.ip())) {
                    self.log(&env, flow, name_of(&held.data, flow.1.port()));
                }
                out.extend(refused(held));
            }
        }
        out
    }
}

/// What becomes of a refused connection's held packets: its ACK resets it
/// at the server, its last packet (through the guard) at the client, the
/// rest go nowhere.
fn refused(mut held: Held<u32>) -> Vec<Action<u32>> {
    let last = held.packets.pop();
    let mut out = Vec::new();
    if let Some((id, ack)) = held.ack {
        out.push(match reset_of(&ack) {
            Some(rst) => Action::Reset(id, rst),
            None => Action::Drop(id),
        });
    }
    out.extend(held.packets.into_iter().map(Action::Drop));
    out.extend(last.map(|id| Action::Mark(id, REFUSED)));
    out
}

/// How often held connections are looked at for [`Checker::expire`].
const TICK: Duration = Duration::from_secs(1);

/// Serves the queue until it fails; without it, the guard sends every
/// connection to the proxy (and drops those it had sent straight on).
pub fn serve<E: Environments>(mut checker: Checker<E>) {
    use super::nfqueue::{Queue, Verdict};
    let mut queue = match Queue::bind(QUEUE) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("llima-box agent: restricted mode goes through the proxy only: {e}");
            return;
        }
    };
    loop {
        let packets = match queue.recv(TICK.as_millis() as i32) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("llima-box agent: the packet queue failed: {e}");
                return;
            }
        };
        let now = Instant::now();
        let mut actions = checker.expire(now);
        for p in packets {
            actions.extend(checker.packet(p.id, &p.data, now));
        }
        for a in actions {
            let (id, v, bytes) = match a {
                Action::Pass(id) => (id, Verdict::Accept, None),
                Action::Drop(id) => (id, Verdict::Drop, None),
                Action::Mark(id, mark) => (id, Verdict::Repeat(mark), None),
                Action::Reset(id, rst) => (id, Verdict::Repeat(REFUSED), Some(rst)),
            };
            if let Err(e) = queue.verdict(id, v, bytes.as_deref()) {
                eprintln!("llima-box agent: a verdict was not taken: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cache::Cache;
    use super::super::dns::Found;
    use super::super::peek::tests::hello;
    use super::super::tests::{Recorder, restricted};
    use super::*;

    /// An IPv4 TCP packet from the test environment (100.64.0.1:40000) to
    /// `to`, port `port`.
    fn tcp(to: [u8; 4], port: u16, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0];
        p.extend(((40 + payload.len()) as u16).to_be_bytes());
        p.extend([0, 0, 0x40, 0, 64, 6, 0, 0, 100, 64, 0, 1]);
        p.extend(to);
        p.extend(40000u16.to_be_bytes());
        p.extend(port.to_be_bytes());
        p.extend(seq.to_be_bytes());
        p.extend([0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend(payload);
        p
    }
    const PSH_ACK: u8 = 0x18;
    const KNOWN: [u8; 4] = [192, 0, 2, 1];
    const OTHER: [u8; 4] = [192, 0, 2, 9];

    /// A checker for `Recorder`'s environment, allowed `*.example.com`
    /// but `bad.example.com`, which has looked up `www.example.com`
    /// (192.0.2.1).
    fn checker() -> Checker<Recorder> {
        let proxy = Arc::new(Proxy {
            envs: Recorder::new(restricted(&["*.example.com"], &["bad.example.com"])),
            resolve: Box::new(|_| Found {
                addrs: vec![IpAddr::from(KNOWN)],
                ttl: 60,
            }),
            cache: Cache::default(),
            original: Box::new(|_| Err(std::io::Error::other("not redirected"))),
            reachable: |a, _, _| a != IpAddr::from([192, 0, 2, 66]),
        });
        proxy
            .cache
            .lookup("proj", "www.example.com", Instant::now(), &proxy.resolve);
        Checker::new(proxy)
    }

    #[test]
    fn reads_tcp_in_ipv4_only() {
        let p = tcp(KNOWN, 443, PSH_ACK, 7, b"hi");
        let s = segment(&p).unwrap();
        assert_eq!(s.from, "100.64.0.1:40000".parse().unwrap());
        assert_eq!(s.to, "192.0.2.1:443".parse().unwrap());
        assert_eq!((s.opening(), s.seq, s.payload), (false, 7, &b"hi"[..]));
        assert!(segment(&tcp(KNOWN, 443, SYN, 0, b"")).unwrap().opening());
        let syn_ack = tcp(KNOWN, 443, SYN | ACK, 0, b"");
        assert!(!segment(&syn_ack).unwrap().opening());
        // Bytes beyond the IP length are not the payload's.
        let mut padded = p.clone();
        padded.extend([0; 6]);
        assert_eq!(segment(&padded).unwrap().payload, b"hi");
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(segment(&udp), None);
        for cut in 0..40 {
            assert_eq!(segment(&p[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn only_addresses_of_allowed_names_are_connected_to_directly() {
        let mut c = checker();
        let now = Instant::now();
        assert_eq!(
            c.packet(1, &tcp(KNOWN, 443, SYN, 0, b""), now),
            [Action::Mark(1, DIRECT)]
        );
        // An address no allowed name led to, and one the guard keeps
        // closed: the proxy's to handle (and refuse).
        assert_eq!(
            c.packet(2, &tcp(OTHER, 443, SYN, 0, b""), now),
            [Action::Pass(2)]
        );
        // Nor plain HTTP: the proxy's too.
        assert_eq!(
            c.packet(5, &tcp(KNOWN, 80, SYN, 0, b""), now),
            [Action::Pass(5)]
        );
        c.proxy
            .cache
            .lookup("proj", "closed.example.com", now, |_| Found {
                addrs: vec![IpAddr::from([192, 0, 2, 66])],
                ttl: 60,
            });
        let closed = tcp([192, 0, 2, 66], 443, SYN, 0, b"");
        assert_eq!(c.packet(3, &closed, now), [Action::Pass(3)]);
        // Data in a SYN (TCP Fast Open): not let by, not even to the
        // proxy, as it might be a SYN of a connection already going straight.
        let fast_open = tcp(KNOWN, 443, SYN, 0, &hello("bad.example.com"));
        assert_eq!(c.packet(6, &fast_open, now), [Action::Drop(6)]);
        // Not a TCP packet: not let by.
        assert_eq!(c.packet(4, &[0x60; 60], now), [Action::Drop(4)]);
    }

    #[test]
    fn an_ack_becomes_a_reset_of_the_same_connection() {
        let mut ack = tcp(KNOWN, 443, ACK, 77, b"");
        // As a stack that leaves the checksum to the card sends it.
        ack[36..38].copy_from_slice(&[0x12, 0x34]);
        let rst = reset_of(&ack).unwrap();
        assert_eq!(rst.len(), ack.len());
        assert_eq!(segment(&rst).unwrap().flags, RST | ACK);
        // Addresses, ports, sequence and acknowledgement numbers kept.
        assert_eq!(&rst[..33], &ack[..33]);
        assert_eq!(tcp_sum(&rst, 20, rst.len() - 20), 0xffff, "{rst:?}");
        // As computed apart from this code, over the pseudo-header too.
        assert_eq!(&rst[36..38], &[0xeb, 0x45]);
        assert_eq!(reset_of(&ack[..30]), None);
    }

    #[test]
    fn an_allowed_name_lets_the_connection_through_and_others_reset_it() {
        let mut c = checker();
        let now = Instant::now();
        // The handshake's last ACK waits for the first bytes, then passes
        // before them.
        assert_eq!(c.packet(1, &tcp(KNOWN, 443, ACK, 1, b""), now), []);
        let ok = tcp(KNOWN, 443, PSH_ACK, 1, &hello("www.example.com"));
        assert_eq!(
            c.packet(2, &ok, now),
            [Action::Pass(1), Action::Mark(2, CHECKED)]
        );
        // Refused: that ACK resets the connection at the server.
        let ack = tcp(KNOWN, 443, ACK, 1, b"");
        assert_eq!(c.packet(7, &ack, now), []);
        let bad = tcp(KNOWN, 443, PSH_ACK, 1, &hello("bad.example.com"));
        assert_eq!(
            c.packet(8, &bad, now),
            [
                Action::Reset(7, reset_of(&ack).unwrap()),
                Action::Mark(8, REFUSED)
            ]
        );
        let get = b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
        let http = tcp(KNOWN, 80, PSH_ACK, 1, get);
        assert_eq!(c.packet(3, &http, now), [Action::Mark(3, CHECKED)]);
        // A denied name, at an address an allowed one led to; no name.
        let bad = tcp(KNOWN, 443, PSH_ACK, 1, &hello("bad.example.com"));
        assert_eq!(c.packet(4, &bad, now), [Action::Mark(4, REFUSED)]);
        let bare = tcp(KNOWN, 443, PSH_ACK, 1, &hello(""));
        assert_eq!(c.packet(5, &bare, now), [Action::Mark(5, REFUSED)]);
        // Not HTTP, once it could tell (a bare banner waits for HELLO_WAIT).
        let ssh = tcp(KNOWN, 22, PSH_ACK, 1, b"SSH-2.0-OpenSSH_9.9\r\n\r\n");
        assert_eq!(c.packet(6, &ssh, now), [Action::Mark(6, REFUSED)]);
        assert_eq!(
            c.proxy.envs.denials(),
            [
                "TCP bad.example.com:443",
                "TCP bad.example.com:443",
                "TCP :443",
                "TCP :22"
            ]
        );
    }

    #[test]
    fn a_name_sent_in_pieces_is_read_whole_before_anything_passes() {
        let mut c = checker();
        let now = Instant::now();
        let whole = hello("www.example.com");
        let (a, b) = whole.split_at(20);
        assert_eq!(c.packet(1, &tcp(KNOWN, 443, PSH_ACK, 100, a), now), []);
        // The same piece again (sent again), and an ACK after data: held,
        // passed.
        assert_eq!(c.packet(2, &tcp(KNOWN, 443, PSH_ACK, 100, a), now), []);
        assert_eq!(
            c.packet(3, &tcp(KNOWN, 443, ACK, 120, b""), now),
            [Action::Pass(3)]
        );
        assert_eq!(
            c.packet(4, &tcp(KNOWN, 443, PSH_ACK, 120, b), now),
            [Action::Pass(1), Action::Pass(2), Action::Mark(4, CHECKED)]
        );
        // Refused in pieces: what was held never passes.
        let bad = hello("bad.example.com");
        let (a, b) = bad.split_at(30);
        assert_eq!(c.packet(5, &tcp(KNOWN, 443, PSH_ACK, 100, a), now), []);
        assert_eq!(
            c.packet(6, &tcp(KNOWN, 443, PSH_ACK, 130, b), now),
            [Action::Drop(5), Action::Mark(6, REFUSED)]
        );
    }

    #[test]
    fn a_segment_sent_again_with_more_adds_what_is_new() {
        let mut c = checker();
        let now = Instant::now();
        let whole = hello("www.example.com");
        assert_eq!(
            c.packet(1, &tcp(KNOWN, 443, PSH_ACK, 100, &whole[..20]), now),
            []
        );
        // After a gap: held, read once the gap is filled.
        assert_eq!(
            c.packet(2, &tcp(KNOWN, 443, PSH_ACK, 130, &whole[30..40]), now),
            []
        );
        assert_eq!(
            c.packet(3, &tcp(KNOWN, 443, PSH_ACK, 100, &whole[..30]), now),
            []
        );
        assert_eq!(
            c.packet(4, &tcp(KNOWN, 443, PSH_ACK, 100, &whole), now),
            [
                Action::Pass(1),
                Action::Pass(2),
                Action::Pass(3),
                Action::Mark(4, CHECKED)
            ]
        );
    }

    #[test]
    fn an_environment_holds_its_share_of_connections_only() {
        let mut c = checker();
        let now = Instant::now();
        let part = &hello("www.example.com")[..20];
        let from = |port: u16| {
            let mut p = tcp(KNOWN, 443, PSH_ACK, 1, part);
            p[20..22].copy_from_slice(&port.to_be_bytes());
            p
        };
        for i in 0..MAX_ACTIVE as u16 {
            assert_eq!(c.packet(u32::from(i), &from(1000 + i), now), []);
        }
        assert_eq!(
            c.packet(9999, &from(9999), now),
            [Action::Mark(9999, REFUSED)]
        );
    }

    #[test]
    fn a_connection_that_says_too_little_in_time_is_refused() {
        let mut c = checker();
        let t0 = Instant::now();
        let part = &hello("www.example.com")[..20];
        assert_eq!(c.packet(1, &tcp(KNOWN, 443, PSH_ACK, 1, part), t0), []);
        assert_eq!(c.expire(t0 + HELLO_WAIT / 2), []);
        assert_eq!(c.expire(t0 + HELLO_WAIT), [Action::Mark(1, REFUSED)]);
        // One that said nothing at all: reset at the server.
        let ack = tcp(KNOWN, 80, ACK, 1, b"");
        assert_eq!(c.packet(2, &ack, t0), []);
        assert_eq!(
            c.expire(t0 + HELLO_WAIT),
            [Action::Reset(2, reset_of(&ack).unwrap())]
        );
        assert_eq!(c.proxy.envs.denials(), ["TCP :443", "TCP :80"]);
        assert!(c.held.is_empty());
        // A client's FIN or RST with nothing held is nothing to hold.
        let fin = tcp(KNOWN, 443, FIN | ACK, 1, b"");
        assert_eq!(c.packet(3, &fin, t0), [Action::Pass(3)]);
        assert!(c.held.is_empty());
    }
}

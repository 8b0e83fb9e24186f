//! Which program of an environment tried a refused query or connection,
//! for the log. The address the resolver or proxy saw it come from is its
//! socket's own address in the environment's network namespace, so that
//! namespace's socket table gives the socket, and the descriptors of the
//! environment's processes give its holder.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::list;

/// The command name of the process of `uid` that holds the socket `from`
/// (`proto` is `TCP` or `UDP`) in the network namespace of process `ns`.
/// Only IPv4 is looked up: environments reach the agent over IPv4 alone.
pub fn program(ns: u32, uid: u32, proto: &str, from: SocketAddr) -> Option<String> {
    let table = match proto {
        "TCP" => "tcp",
        "UDP" => "udp",
        _ => return None,
    };
    let text = fs::read_to_string(format!("/proc/{ns}/net/{table}")).ok()?;
    let socket = format!("socket:[{}]", inode(&text, from)?);
    list::processes()
        .into_iter()
        .filter(|p| p.uid == uid)
        .find(|p| {
            fs::read_dir(format!("/proc/{}/fd", p.pid)).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())
                })
            })
        })
        .and_then(|p| fs::read_to_string(format!("/proc/{}/comm", p.pid)).ok())
        .map(|comm| comm.trim_end_matches('\n').to_owned())
}

/// The inode of the socket bound at `from` in a `/proc/net/tcp` or `udp`
/// table; a socket bound to the wildcard address (an unconnected UDP
/// socket) matches by port.
fn inode(table: &str, from: SocketAddr) -> Option<u64> {
    let IpAddr::V4(want) = from.ip().to_canonical() else {
        return None;
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (addr, port) = fields.get(1)?.split_once(':')?;
        // The kernel prints the address's four bytes as one number in the
        // host's byte order, and the port as a number.
        let addr = Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes());
        let port = u16::from_str_radix(port, 16).ok()?;
        let bound = addr == want || addr.is_unspecified();
        (port == from.port() && bound)
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn finds_the_socket_by_its_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n\
            \x20  1: 01004064:9C40 010012C6:01BB 01 00000000:00000000 00:00000000 00000000  2001        0 2222 1 0 20 4 30 10 -1\n\
            \x20  2: 00000000:A000 00000000:0000 07 00000000:00000000 00:00000000 00000000  2001        0 3333 2 0 0 0 0 0 0\n";
        let at = |s: &str| inode(table, s.parse().unwrap());
        assert_eq!(at("100.64.0.1:40000"), Some(2222));
        assert_eq!(at("127.0.0.1:53"), Some(1111));
        assert_eq!(at("100.64.0.1:40960"), Some(3333), "wildcard bound");
        assert_eq!(at("100.64.0.3:40000"), None);
        assert_eq!(at("[::1]:53"), None);
    }

    /// This test's own sockets, found through its own namespace.
    #[test]
    fn names_the_program_that_holds_a_socket() {
        let me = std::process::id();
        let uid = fs::metadata(format!("/proc/{me}")).unwrap().uid();
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        let comm = comm.trim_end();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let from = conn.local_addr().unwrap();
        assert_eq!(program(me, uid, "TCP", from).as_deref(), Some(comm));
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = udp.local_addr().unwrap();
        assert_eq!(program(me, uid, "UDP", from).as_deref(), Some(comm));
        assert_eq!(program(me, uid + 1, "UDP", from), None, "another user's");
        drop(udp);
        assert_eq!(program(me, uid, "UDP", from), None, "closed");
    }
}

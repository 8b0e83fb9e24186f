//! A TCP connection begun without waiting for it: the SYN leaves at once
//! and the caller goes on (reading what the client says) until it knows
//! whether it wants the connection. A thread per early connection cost
//! more than the connection itself under emulation.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A connection on its way; dropping it abandons it.
pub struct Connecting(OwnedFd);

impl Connecting {
    /// Sends the SYN to `to` and returns without waiting for the answer.
    pub fn begin(to: SocketAddr) -> io::Result<Connecting> {
        let family = match to {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: socket(2) with constant arguments; the descriptor is owned
        // at once.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = sockaddr(to);
        // SAFETY: `addr` holds a sockaddr of `len` bytes for `to`'s family.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(Connecting(fd))
    }

    /// Waits at most `wait` for the connection; then it blocks as any.
    pub fn finish(self, wait: Duration) -> io::Result<TcpStream> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = wait.as_millis().try_into().unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: one pollfd for a descriptor this value owns.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                0 => return Err(io::ErrorKind::TimedOut.into()),
                n if n > 0 => break,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        let stream = TcpStream::from(self.0);
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

/// `to` as the kernel takes it, and its length.
fn sockaddr(to: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for any
            // sockaddr.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn connects_over_both_families_and_reports_refusal() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(any) else {
                continue; // no IPv6 on this machine
            };
            let to = listener.local_addr().unwrap();
            let connecting = Connecting::begin(to).unwrap();
            let (mut accepted, _) = listener.accept().unwrap();
            let mut stream = connecting.finish(Duration::from_secs(5)).unwrap();
            stream.write_all(b"hi").unwrap();
            let mut got = [0u8; 2];
            accepted.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hi");
            assert_eq!(stream.local_addr().unwrap(), accepted.peer_addr().unwrap());
        }
        // A port nothing listens on (just freed): refused, not connected.
        let to = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = Connecting::begin(to).and_then(|c| c.finish(Duration::from_secs(5)));
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
    }
}

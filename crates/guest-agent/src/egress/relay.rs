//! Passing an allowed connection's bytes both ways, in the thread that
//! checked it: one poll(2) loop for both directions, the bytes moved with
//! splice(2) through a pipe per direction so that they stay in the kernel
//! (each copy up to the proxy and back is costly under emulation). One
//! thread per connection, not one per direction: an environment's
//! `MAX_ACTIVE` connections take as many of the agent's threads, and no
//! connection waits for a thread to start.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// How much one splice(2) moves at most, and the pipe's size.
const CHUNK: usize = 1 << 20;

/// One direction: what `from` sends goes to `to`, through a pipe holding
/// `held` bytes read but not yet written.
struct Way<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    rd: OwnedFd,
    wr: OwnedFd,
    held: usize,
    done: bool,
}

impl<'a> Way<'a> {
    fn new(from: &'a TcpStream, to: &'a TcpStream) -> io::Result<Way<'a>> {
        let (rd, wr) = crate::sys::pipe()?;
        // A larger pipe takes more of a burst per call; the default size
        // (64 KiB) still works when the guest caps it lower.
        // SAFETY: fcntl on a pipe this function owns.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Way {
            from,
            to,
            rd,
            wr,
            held: 0,
            done: false,
        })
    }

    /// What to wait for: the sender's bytes when the pipe is empty, room
    /// at the receiver otherwise.
    fn waits_for(&self) -> (RawFd, libc::c_short) {
        if self.held == 0 {
            (self.from.as_raw_fd(), libc::POLLIN)
        } else {
            (self.to.as_raw_fd(), libc::POLLOUT)
        }
    }

    /// Moves what it can without waiting. At the sender's end (or an
    /// error) the receiver is told that nothing more comes, and this way
    /// is done.
    fn step(&mut self) {
        if let Err(e) = self.moved() {
            if e.kind() == io::ErrorKind::WouldBlock {
                return;
            }
            self.done = true;
        }
        if self.done {
            let _ = self.to.shutdown(Shutdown::Write);
        }
    }

    fn moved(&mut self) -> io::Result<()> {
        loop {
            if self.held == 0 {
                self.held = splice(self.from.as_raw_fd(), self.wr.as_raw_fd(), CHUNK)?;
                if self.held == 0 {
                    self.done = true;
                    return Ok(());
                }
            }
            self.held -= splice(self.rd.as_raw_fd(), self.to.as_raw_fd(), self.held)?;
        }
    }
}

/// Copies each way until each side has said all it will.
pub fn relay(client: TcpStream, server: TcpStream) -> io::Result<()> {
    client.set_nonblocking(true)?;
    server.set_nonblocking(true)?;
    let mut ways = [Way::new(&client, &server)?, Way::new(&server, &client)?];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
        let mut waiting = Vec::with_capacity(2);
        for (i, way) in ways.iter().enumerate().filter(|(_, w)| !w.done) {
            let (fd, events) = way.waits_for();
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            waiting.push(i);
        }
        if fds.is_empty() {
            return Ok(());
        }
        // SAFETY: an array of valid pollfd entries of this length.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        for (pfd, i) in fds.iter().zip(waiting) {
            // Any event, errors and hang-ups included, is found out by
            // trying: splice says which.
            if pfd.revents != 0 {
                ways[i].step();
            }
        }
    }
}

/// splice(2) of at most `len` bytes without waiting, again when a signal
/// interrupts it.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain descriptors this process owns; no offsets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A connected pair of TCP sockets on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    }

    #[test]
    fn passes_both_ways_at_once_and_each_end_on_its_own() {
        // client <-> (c_near | relay | s_near) <-> server
        let (client, c_near) = pair();
        let (s_near, server) = pair();
        let relayed = std::thread::spawn(move || relay(c_near, s_near));
        let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        // Both send more than every buffer on the way holds before
        // reading: one direction stuck behind the other would hang.
        let send = |mut s: TcpStream, data: Vec<u8>| {
            std::thread::spawn(move || {
                s.write_all(&data).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            })
        };
        let (mut client_r, mut server_r) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        let up = send(client, big.clone());
        let down = send(server, big[..3 << 20].to_vec());
        let mut at_server = Vec::new();
        server_r.read_to_end(&mut at_server).unwrap();
        let mut at_client = Vec::new();
        client_r.read_to_end(&mut at_client).unwrap();
        up.join().unwrap();
        down.join().unwrap();
        assert!(
            at_server == big,
            "{} bytes reached the server",
            at_server.len()
        );
        assert!(
            at_client == big[..3 << 20],
            "{} bytes reached the client",
            at_client.len()
        );
        relayed.join().unwrap().unwrap();
    }

    #[test]
    fn one_side_done_leaves_the_other_way_open() {
        let (mut client, c_near) = pair();
        let (s_near, mut server) = pair();
        let relayed = std::thread::spawn(move || relay(c_near, s_near));
        // The client says all it will; the server still answers after.
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut asked = Vec::new();
        server.read_to_end(&mut asked).unwrap();
        assert_eq!(asked, b"request");
        server.write_all(b"answer").unwrap();
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"answer");
        relayed.join().unwrap().unwrap();
    }
}

//! Serving a listening socket with threads that wait in `accept` and
//! serve the connection they get, a new one taking their place whenever
//! none is left waiting. Starting a thread for each connection made every
//! client wait for that thread: 1.5-3 ms under emulation, and 12 ms for the
//! first thread a process starts (a spare's claim, the first shell of a
//! new project, was that first one).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many threads wait for connections from the start, and at most
/// once they are done with theirs.
pub const WAITING: usize = 2;

/// A listening socket.
pub trait Listener: Send + Sync + 'static {
    type Conn;
    fn next(&self) -> io::Result<Self::Conn>;
}

impl Listener for TcpListener {
    type Conn = (TcpStream, SocketAddr);
    fn next(&self) -> io::Result<Self::Conn> {
        self.accept()
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn next(&self) -> io::Result<Self::Conn> {
        self.accept().map(|(conn, _)| conn)
    }
}

struct Pool<L, H> {
    listener: L,
    handle: H,
    /// Threads in `accept` now.
    waiting: AtomicUsize,
}

/// Hands each connection to `listener` to `handle` on a thread that was
/// waiting for it; never returns.
pub fn serve<L, H>(listener: L, handle: H)
where
    L: Listener,
    H: Fn(L::Conn) + Send + Sync + 'static,
{
    let pool = Arc::new(Pool {
        listener,
        handle,
        waiting: AtomicUsize::new(0),
    });
    for _ in 1..WAITING {
        start(&pool);
    }
    loop {
        accept_and_serve(&pool);
    }
}

/// Another thread for `pool`; without it the others (and each, once done
/// with its connection) still accept.
fn start<L: Listener, H: Fn(L::Conn) + Send + Sync + 'static>(pool: &Arc<Pool<L, H>>) {
    let pool = pool.clone();
    let _ = std::thread::Builder::new().spawn(move || accept_and_serve(&pool));
}

/// Accepts and serves connections until enough other threads wait for
/// the next ones.
fn accept_and_serve<L: Listener, H: Fn(L::Conn) + Send + Sync + 'static>(pool: &Arc<Pool<L, H>>) {
    loop {
        pool.waiting.fetch_add(1, Ordering::SeqCst);
        let conn = pool.listener.next();
        if pool.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            start(pool);
        }
        if let Ok(conn) = conn {
            (pool.handle)(conn);
        }
        if pool.waiting.load(Ordering::SeqCst) >= WAITING {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn connections_that_stay_open_do_not_hold_up_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Echoes one read of each connection, after which it stays open
        // until its client closes it.
        std::thread::spawn(move || {
            serve(listener, |(mut conn, _): (TcpStream, SocketAddr)| {
                let mut buf = [0u8; 16];
                let n = conn.read(&mut buf).unwrap_or(0);
                let _ = conn.write_all(&buf[..n]);
                while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
            })
        });
        let ask = |what: &[u8]| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(what).unwrap();
            let mut got = vec![0u8; what.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, what);
            c
        };
        let t0 = Instant::now();
        let open: Vec<TcpStream> = (0..3 * WAITING).map(|_| ask(b"held")).collect();
        drop(ask(b"next"));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        drop(open);
    }
}

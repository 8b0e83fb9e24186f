//! The kernel's packet queue (nfnetlink_queue), spoken over netlink: the
//! guard queues packets of restricted environments' connections here (see
//! `check`), and the agent tells the kernel what becomes of each. Only
//! the few fixed messages this needs: bind a queue, receive its packets,
//! give verdicts.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: libc::c_int = 12;
/// nfnetlink's subsystem of the queue, in the high byte of a message type.
const SUBSYS_QUEUE: u16 = 3 << 8;
const MSG_PACKET: u16 = SUBSYS_QUEUE;
const MSG_VERDICT: u16 = SUBSYS_QUEUE | 1;
const MSG_CONFIG: u16 = SUBSYS_QUEUE | 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
/// nfgenmsg: family, version, the queue's number.
const NFGEN_LEN: usize = 4;

const CFG_CMD: u16 = 1;
const CFG_PARAMS: u16 = 2;
const CFG_QUEUE_MAXLEN: u16 = 3;
const CFG_MASK: u16 = 4;
const CFG_FLAGS: u16 = 5;
const CMD_BIND: u8 = 1;
const COPY_PACKET: u8 = 2;
/// Packets the kernel would segment arrive whole: fewer verdicts.
const F_GSO: u32 = 1 << 2;

const ATTR_PACKET_HDR: u16 = 1;
const ATTR_VERDICT_HDR: u16 = 2;
const ATTR_MARK: u16 = 3;
const ATTR_PAYLOAD: u16 = 10;
/// The type bits of an attribute's type (the rest are flags).
const ATTR_TYPE: u16 = 0x3fff;

/// Bytes of a packet copied to the agent, at most.
const COPY_RANGE: u32 = 0xffff;
/// Packets the kernel keeps waiting for verdicts before it drops more.
const MAX_WAITING: u32 = 4096;

/// A queued packet: its id for the verdict, and the IP packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet {
    pub id: u32,
    pub data: Vec<u8>,
}

/// What becomes of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// On its way, past the rest of the queueing rule's chain.
    Accept,
    /// Through the same hook again, with this mark.
    Repeat(u32),
}

/// One bound queue.
pub struct Queue {
    fd: OwnedFd,
    num: u16,
    buf: Vec<u8>,
    /// Packets that came while a request waited for its answer.
    early: Vec<Packet>,
}

impl Queue {
    /// Binds queue `num`, with whole packets copied.
    pub fn bind(num: u16) -> io::Result<Queue> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) returned a descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = kernel();
        // SAFETY: a valid socket and a sockaddr_nl of the right size.
        crate::sys::check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        // A queue that overflows drops packets (TCP sends them again);
        // the agent has nothing to do about it but go on.
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option.
        crate::sys::check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_NO_ENOBUFS,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        let mut q = Queue {
            fd,
            num,
            buf: vec![0; COPY_RANGE as usize + 4096],
            early: Vec::new(),
        };
        q.configure(&[(CFG_CMD, &[CMD_BIND, 0, 0, 0])])?;
        let mut params = COPY_RANGE.to_be_bytes().to_vec();
        params.push(COPY_PACKET);
        q.configure(&[(CFG_PARAMS, &params)])?;
        q.configure(&[(CFG_QUEUE_MAXLEN, &MAX_WAITING.to_be_bytes())])?;
        q.configure(&[
            (CFG_MASK, &F_GSO.to_be_bytes()),
            (CFG_FLAGS, &F_GSO.to_be_bytes()),
        ])?;
        Ok(q)
    }

    /// Sends a configuration message and waits for the kernel's answer.
    fn configure(&mut self, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        self.send(&message(MSG_CONFIG, NLM_F_ACK, self.num, attrs))?;
        loop {
            let n = self.recv_into(-1)?;
            let mut answer = None;
            for m in messages(&self.buf[..n]) {
                match m {
                    Message::Ack(errno) => answer = Some(errno),
                    Message::Packet(p) => self.early.push(p),
                }
            }
            match answer {
                Some(0) => return Ok(()),
                Some(e) => return Err(io::Error::from_raw_os_error(e)),
                None => {}
            }
        }
    }

    /// The packets queued, waiting up to `timeout_ms` for the first
    /// (none: the time passed).
    pub fn recv(&mut self, timeout_ms: i32) -> io::Result<Vec<Packet>> {
        if !self.early.is_empty() {
            return Ok(std::mem::take(&mut self.early));
        }
        let n = self.recv_into(timeout_ms)?;
        Ok(messages(&self.buf[..n])
            .filter_map(|m| match m {
                Message::Packet(p) => Some(p),
                Message::Ack(_) => None,
            })
            .collect())
    }

    fn recv_into(&mut self, timeout_ms: i32) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        match unsafe { libc::poll(&mut pfd, 1, timeout_ms) } {
            0 => return Ok(0),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::Interrupted => Ok(0),
                    _ => Err(e),
                };
            }
            _ => {}
        }
        // SAFETY: a valid socket and a buffer of this length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// Says what becomes of packet `id`, replaced by `bytes` if given.
    pub fn verdict(&self, id: u32, verdict: Verdict, bytes: Option<&[u8]>) -> io::Result<()> {
        let (code, mark): (u32, Option<u32>) = match verdict {
            Verdict::Drop => (0, None),
            Verdict::Accept => (1, None),
            Verdict::Repeat(mark) => (4, Some(mark)),
        };
        let mut hdr = code.to_be_bytes().to_vec();
        hdr.extend(id.to_be_bytes());
        let mark = mark.map(u32::to_be_bytes);
        let mut attrs: Vec<(u16, &[u8])> = vec![(ATTR_VERDICT_HDR, &hdr)];
        if let Some(m) = &mark {
            attrs.push((ATTR_MARK, m));
        }
        if let Some(b) = bytes {
            attrs.push((ATTR_PAYLOAD, b));
        }
        self.send(&message(MSG_VERDICT, 0, self.num, &attrs))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let addr = kernel();
        // SAFETY: a valid socket, the message's bytes and a sockaddr_nl.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The kernel's netlink address.
fn kernel() -> libc::sockaddr_nl {
    // SAFETY: all zero is a valid sockaddr_nl.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// A request of `kind` to queue `num` with `attrs`.
fn message(kind: u16, flags: u16, num: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, version 0, the queue.
    m.extend([0, 0]);
    m.extend(num.to_be_bytes());
    for (kind, value) in attrs {
        m.extend(((4 + value.len()) as u16).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(*value);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// What the kernel sent.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Packet(Packet),
    /// The answer to a request: 0 or an errno.
    Ack(i32),
}

fn ne16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages in what one recv(2) gave; what cannot be read ends them.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message> + '_ {
    std::iter::from_fn(move || {
        loop {
            let len = ne32(buf, 0)? as usize;
            let kind = ne16(buf, 4)?;
            if len < NLMSG_HDRLEN || len > buf.len() {
                return None;
            }
            let body = &buf[NLMSG_HDRLEN..len];
            buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
            match kind {
                NLMSG_ERROR => return Some(Message::Ack(-(ne32(body, 0)? as i32))),
                MSG_PACKET => {
                    if let Some(p) = packet(body) {
                        return Some(Message::Packet(p));
                    }
                }
                _ => {}
            }
        }
    })
}

/// The packet in a packet message's body (after the netlink header).
fn packet(body: &[u8]) -> Option<Packet> {
    let mut at = NFGEN_LEN;
    let (mut id, mut data) = (None, None);
    while at + 4 <= body.len() {
        let len = usize::from(ne16(body, at)?);
        let kind = ne16(body, at + 2)? & ATTR_TYPE;
        let value = body.get(at + 4..at + len)?;
        match kind {
            ATTR_PACKET_HDR => id = Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?)),
            ATTR_PAYLOAD => data = Some(value.to_vec()),
            _ => {}
        }
        at += len.max(4).next_multiple_of(4);
    }
    Some(Packet {
        id: id?,
        data: data?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_netlink_wants() {
        let m = message(
            MSG_CONFIG,
            NLM_F_ACK,
            10080,
            &[(CFG_PARAMS, &[0, 0, 0xff, 0xff, 2])],
        );
        // Header, nfgenmsg, one attribute of 9 bytes padded to 12.
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(ne32(&m, 0), Some(32));
        assert_eq!(ne16(&m, 4), Some(0x302));
        assert_eq!(ne16(&m, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(&m[16..20], &[0, 0, 0x27, 0x60]);
        assert_eq!(ne16(&m, 20), Some(9));
        assert_eq!(ne16(&m, 22), Some(CFG_PARAMS));
        assert_eq!(&m[24..32], &[0, 0, 0xff, 0xff, 2, 0, 0, 0]);
    }

    /// A packet message as the kernel sends it: id 7, a mark before the
    /// payload (attributes the agent skips), `data`.
    fn queued(id: u32, data: &[u8]) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend([8, 0, 1]); // IPv4, hook 1
        let mark = 5u32.to_be_bytes();
        let mut m = message(
            MSG_PACKET,
            0,
            10080,
            &[
                (ATTR_PACKET_HDR, &hdr),
                (ATTR_MARK, &mark),
                (ATTR_PAYLOAD, data),
            ],
        );
        // The kernel sends no request flag; the reader ignores flags.
        m[6..8].copy_from_slice(&0u16.to_ne_bytes());
        m
    }

    #[test]
    fn reads_each_packet_and_answer_in_a_batch() {
        let mut batch = queued(7, b"abcde");
        batch.extend(queued(8, b"xy"));
        let mut err = message(NLMSG_ERROR, 0, 0, &[]);
        err.truncate(16);
        err.extend((-1i32 as u32).to_ne_bytes());
        err[..4].copy_from_slice(&20u32.to_ne_bytes());
        batch.extend(&err);
        let got: Vec<Message> = messages(&batch).collect();
        assert_eq!(
            got,
            [
                Message::Packet(Packet {
                    id: 7,
                    data: b"abcde".to_vec()
                }),
                Message::Packet(Packet {
                    id: 8,
                    data: b"xy".to_vec()
                }),
                Message::Ack(1),
            ]
        );
        // Cut anywhere: what is whole is read, the rest is not made up.
        for cut in 0..batch.len() {
            assert!(messages(&batch[..cut]).count() <= 3);
        }
        let one = queued(7, b"abcde");
        assert_eq!(messages(&one[..one.len() - 1]).count(), 0);
    }
}

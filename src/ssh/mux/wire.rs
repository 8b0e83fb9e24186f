//! Length-prefixed JSON frames on a unix stream, with file descriptors
//! passed alongside (SCM_RIGHTS).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// No message comes near this; a larger length means a confused peer.
const MAX_FRAME: usize = 1 << 20;
/// stdin, stdout, stderr.
const MAX_FDS: usize = 3;

pub(super) fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend(body);
    Ok(frame)
}

/// Removes and returns the first complete frame's body from `buf`.
pub(super) fn take_frame(buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let Some(head) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*head) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte message is too large"),
        ));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let body = buf[4..4 + len].to_vec();
    buf.drain(..4 + len);
    Ok(Some(body))
}

/// One end of a mux connection.
pub(super) struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    pub(super) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The next message, `None` at a clean end of the stream. Cancel-safe:
    /// bytes read so far stay buffered.
    pub(super) async fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        loop {
            if let Some(body) = take_frame(&mut self.buf)? {
                return serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.stream.readable().await?;
            let mut chunk = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let (stream, fds) = (&self.stream, &mut self.fds);
            let read = stream.try_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut control,
                    recv_flags(),
                )?;
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                Ok(msg.bytes)
            });
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptors received so far.
    pub(super) fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    pub(super) async fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.stream.write_all(&encode(msg)?).await
    }

    /// Sends `msg` with `fds` attached to its first byte.
    pub(super) async fn send_with_fds<T: Serialize>(
        &mut self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let frame = encode(msg)?;
        let sent = loop {
            self.stream.writable().await?;
            let stream = &self.stream;
            let result = stream.try_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other("too many descriptors to pass"));
                }
                Ok(sendmsg(
                    stream,
                    &[IoSlice::new(&frame)],
                    &mut control,
                    SendFlags::empty(),
                )?)
            });
            match result {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        self.stream.write_all(&frame[sent..]).await
    }
}

/// Received descriptors must not leak into processes the agent starts.
fn recv_flags() -> RecvFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return RecvFlags::CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return RecvFlags::empty();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let mut stream = encode(&"first").unwrap();
        stream.extend(encode(&vec![1, 2, 3]).unwrap());
        let mut buf = Vec::new();
        let mut bodies = Vec::new();
        for byte in stream {
            buf.push(byte);
            if let Some(body) = take_frame(&mut buf).unwrap() {
                bodies.push(String::from_utf8(body).unwrap());
            }
        }
        assert_eq!(bodies, ["\"first\"", "[1,2,3]"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_lengths_are_refused() {
        let mut buf = u32::MAX.to_be_bytes().to_vec();
        assert_eq!(
            take_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn descriptors_travel_with_the_message() {
        use std::io::{Read, Write};
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a), Conn::new(b));
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        a.send_with_fds(&"hello", &[w.as_fd()]).await.unwrap();
        a.send(&"again").await.unwrap();
        drop(w);
        assert_eq!(b.recv::<String>().await.unwrap().unwrap(), "hello");
        assert_eq!(b.recv::<String>().await.unwrap().unwrap(), "again");
        let fds = b.take_fds();
        assert_eq!(fds.len(), 1);
        let mut passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"via fd").unwrap();
        drop(passed);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "via fd");
        drop(a);
        assert!(b.recv::<String>().await.unwrap().is_none());
    }
}

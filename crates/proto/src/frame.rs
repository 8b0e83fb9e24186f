//! Frames on a byte stream: a kind byte, a 4-byte big-endian payload length,
//! the payload. A [`Decoder`] takes the bytes in whatever pieces the stream
//! delivers them and hands out whole frames.

/// The largest payload either side accepts: a request or reply is JSON of a
/// few KiB, data frames are written in chunks far below this.
pub const MAX_PAYLOAD: usize = 16 << 20;

const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(
        "a frame of {len} bytes is larger than the {MAX_PAYLOAD} allowed: the peer speaks another protocol"
    )]
    TooLarge { len: usize },
    #[error("the stream ended inside a frame ({have} of {want} bytes)")]
    Truncated { have: usize, want: usize },
}

/// The bytes of one frame.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_PAYLOAD, "frame payload too large");
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reassembles frames from a stream's pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` until one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[1..HEADER_LEN].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge { len });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { kind, payload }))
    }

    /// The bytes after the last whole frame: where a stream stops carrying
    /// frames, they belong to what follows.
    pub fn into_rest(self) -> Vec<u8> {
        self.buf
    }

    /// At the end of the stream: an error when a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            HEADER_LEN + u32::from_be_bytes(self.buf[1..HEADER_LEN].try_into().unwrap()) as usize
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            want,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> (Vec<u8>, Vec<Frame>) {
        let frames = vec![
            Frame {
                kind: 0,
                payload: b"{\"a\":1}".to_vec(),
            },
            Frame {
                kind: 7,
                payload: vec![],
            },
            Frame {
                kind: 255,
                payload: (0..=255u8).collect(),
            },
        ];
        let bytes = frames
            .iter()
            .flat_map(|f| encode(f.kind, &f.payload))
            .collect();
        (bytes, frames)
    }

    fn decode_in(pieces: &[&[u8]]) -> Vec<Frame> {
        let mut d = Decoder::new();
        let mut out = vec![];
        for p in pieces {
            d.push(p);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        d.finish().unwrap();
        out
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let (bytes, frames) = stream();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let got = decode_in(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, frames, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn what_follows_the_last_frame_is_handed_back() {
        let mut d = Decoder::new();
        let mut bytes = encode(b'R', b"{}");
        bytes.extend_from_slice(b"raw");
        d.push(&bytes);
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"{}");
        assert_eq!(d.into_rest(), b"raw");
    }

    #[test]
    fn byte_by_byte() {
        let (bytes, frames) = stream();
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_in(&pieces), frames);
    }

    #[test]
    fn a_cut_frame_is_an_error_at_the_end() {
        let (bytes, _) = stream();
        for cut in 1..bytes.len() {
            let mut d = Decoder::new();
            d.push(&bytes[..cut]);
            while d.next_frame().unwrap().is_some() {}
            let at_boundary = [0usize, 12, 17, 278].contains(&cut);
            assert_eq!(d.finish().is_ok(), at_boundary, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut d = Decoder::new();
        d.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 0xffff_ffff })
        );
    }
}

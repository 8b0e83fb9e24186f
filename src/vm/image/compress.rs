//! Decompression of downloaded images, chosen as Lima does: by the file
//! extension of the location, else by the magic bytes at the start.

use std::io::{self, BufRead, BufReader, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    None,
}

impl Compression {
    pub(super) fn from_extension(location: &str) -> Option<Compression> {
        // Ignore a query string or fragment on URLs.
        let path = location.split(['?', '#']).next().unwrap_or(location);
        [
            (".gz", Compression::Gzip),
            (".bz2", Compression::Bzip2),
            (".xz", Compression::Xz),
            (".zst", Compression::Zstd),
        ]
        .into_iter()
        .find(|(ext, _)| path.ends_with(ext))
        .map(|(_, c)| c)
    }

    pub(super) fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(b"BZ") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `input` in the decoder for `location`'s format.
pub(super) fn decoder<'a>(location: &str, input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let kind = match Compression::from_extension(location) {
        Some(k) => k,
        None => Compression::from_magic(input.fill_buf()?),
    };
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(input, true)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        ),
        Compression::None => Box::new(input),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// `printf 'hello xz\n' | xz`: lzma-rust2 is built without its encoder.
    pub(crate) const XZ_HELLO: &[u8] = &[
        0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00, 0x04, 0xe6, 0xd6, 0xb4, 0x46, 0x02, 0x00, 0x21,
        0x01, 0x16, 0x00, 0x00, 0x00, 0x74, 0x2f, 0xe5, 0xa3, 0x01, 0x00, 0x08, 0x68, 0x65, 0x6c,
        0x6c, 0x6f, 0x20, 0x78, 0x7a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0xc1, 0x49, 0x3a, 0xfa, 0x63,
        0x52, 0x14, 0x5a, 0x00, 0x01, 0x21, 0x09, 0x6c, 0x18, 0xc5, 0xd5, 0x1f, 0xb6, 0xf3, 0x7d,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x04, 0x59, 0x5a,
    ];

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unpack(location: &str, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(location, data)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn every_format_by_extension_and_by_magic() {
        let text = b"a disk image, more or less\n".repeat(100);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&text).unwrap();
        let bz = bz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for (ext, packed) in [("gz", gzip(&text)), ("bz2", bz), ("zst", zst)] {
            assert_eq!(
                unpack(&format!("https://x/img.{ext}?sig=1"), &packed),
                text,
                "{ext}"
            );
            assert_eq!(unpack("https://x/img", &packed), text, "{ext} by magic");
        }
        assert_eq!(unpack("/i.xz", XZ_HELLO), b"hello xz\n");
        assert_eq!(unpack("/i.img", XZ_HELLO), b"hello xz\n");
        assert_eq!(unpack("/i.qcow2", b"QFI\xfbplain"), b"QFI\xfbplain");
        assert!(
            decoder("/i.gz", &b"not gzip"[..])
                .unwrap()
                .read_to_end(&mut Vec::new())
                .is_err()
        );
    }
}

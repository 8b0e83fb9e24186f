//! Expected digests in Lima's `algo:hex` form and hashing while streaming.

use sha2::{Digest as _, Sha256, Sha512};

use super::ImageError;

/// A parsed `sha256:<hex>` / `sha512:<hex>` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Expected {
    pub algo: &'static str,
    /// The string as given (lowercased hex), compared with cached digest files.
    pub text: String,
}

impl Expected {
    pub(super) fn parse(s: &str) -> Result<Expected, ImageError> {
        let bad = || ImageError::BadDigest(s.to_string());
        let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
        let (algo, len) = match algo {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Expected {
            algo,
            text: format!("{algo}:{}", hex.to_ascii_lowercase()),
        })
    }

    pub(super) fn hasher(&self) -> Hasher {
        match self.algo {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }

    /// Compares with a finished hash: "expected digest X, got Y" on mismatch.
    pub(super) fn check(&self, h: Hasher, what: &str) -> Result<(), ImageError> {
        let got = h.finish();
        if got == self.text {
            Ok(())
        } else {
            Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: self.text.clone(),
                got,
            })
        }
    }
}

pub(super) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// `algo:hex` of everything fed in.
    pub(super) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// sha256 hex of a string: the per-URL cache directory name.
pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_hash_and_compare() {
        let abc = "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let e = Expected::parse(abc).unwrap();
        let mut h = e.hasher();
        h.update(b"abc");
        e.check(h, "x").unwrap();
        let mut h = e.hasher();
        h.update(b"abd");
        let err = e.check(h, "https://x/img").unwrap_err().to_string();
        assert!(err.contains("expected digest sha256:ba7816bf"), "{err}");
        assert!(err.contains(", got sha256:"), "{err}");
        let e = Expected::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert_eq!(e.algo, "sha512");
        for bad in ["md5:00", "sha256:zz", "sha256", "sha256:abcd"] {
            assert!(Expected::parse(bad).is_err(), "{bad}");
        }
    }
}

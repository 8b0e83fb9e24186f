//! The guest's SSH host key. The host generates it at create time and injects
//! it through cloud-init, so it can pin the key instead of trusting on first use.

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use super::CidataError;

/// An ed25519 host key pair in OpenSSH text form.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HostKey {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` ...
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA...` (what goes into known_hosts).
    pub public_openssh: String,
}

// The private half stays out of logs and panic messages.
impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

/// Generates a fresh ed25519 host key pair.
pub(crate) fn generate_host_key() -> Result<HostKey, CidataError> {
    let fail = |e: russh::keys::ssh_key::Error| CidataError::HostKey(e.to_string());
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(fail)?;
    Ok(HostKey {
        private_openssh: key.to_openssh(LineEnding::LF).map_err(fail)?.to_string(),
        public_openssh: key.public_key().to_openssh().map_err(fail)?,
    })
}

impl HostKey {
    /// Checks that both halves parse, are ed25519 and belong together: the
    /// user-data names them `ed25519_private`/`ed25519_public`.
    pub(super) fn check(&self) -> Result<(), CidataError> {
        let bad = |m: String| CidataError::HostKey(m);
        let private = PrivateKey::from_openssh(&self.private_openssh)
            .map_err(|e| bad(format!("private key does not parse: {e}")))?;
        let public = PublicKey::from_openssh(self.public_openssh.trim())
            .map_err(|e| bad(format!("public key does not parse: {e}")))?;
        if private.algorithm() != Algorithm::Ed25519 {
            return Err(bad(format!("{} is not ed25519", private.algorithm())));
        }
        if private.public_key().key_data() != public.key_data() {
            return Err(bad("public key does not match the private key".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_valid_ed25519_pairs() {
        let a = generate_host_key().unwrap();
        let b = generate_host_key().unwrap();
        assert_ne!(a, b);
        a.check().unwrap();
        assert!(a.public_openssh.starts_with("ssh-ed25519 "));
        assert!(
            a.private_openssh
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn mismatched_or_garbage_keys_are_rejected() {
        let a = generate_host_key().unwrap();
        let b = generate_host_key().unwrap();
        let mixed = HostKey {
            private_openssh: a.private_openssh.clone(),
            public_openssh: b.public_openssh,
        };
        assert!(
            mixed
                .check()
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        let garbage = HostKey {
            private_openssh: "nope".into(),
            public_openssh: a.public_openssh,
        };
        assert!(
            garbage
                .check()
                .unwrap_err()
                .to_string()
                .contains("does not parse")
        );
    }
}

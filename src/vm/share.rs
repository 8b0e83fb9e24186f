//! How the host's directories reach the guest, 9p or virtiofs, and which
//! of the two a start uses.

use crate::vm::qemu::virtiofsd::{Virtiofsd, VirtiofsdError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShareType {
    NineP,
    Virtiofs,
}

impl ShareType {
    /// The name lima.yaml's `mountType` and the guest's fstab use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ShareType::NineP => "9p",
            ShareType::Virtiofs => "virtiofs",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ShareError {
    #[error(
        "mountType {0:?} is not supported by llima-box's QEMU driver: use 9p or virtiofs (or leave it unset)"
    )]
    Unsupported(String),
    #[error("mountType virtiofs needs QEMU on a Linux host; use 9p here (or leave it unset)")]
    NotLinux,
    #[error("mountType virtiofs: {0}")]
    NoDaemon(#[from] VirtiofsdError),
}

/// The choice for one start.
#[derive(Debug)]
pub(crate) struct Chosen {
    pub share: ShareType,
    /// The daemon, for virtiofs.
    pub virtiofsd: Option<Virtiofsd>,
    /// Why virtiofs was not chosen when nothing asked for 9p.
    pub not_virtiofs: Option<String>,
}

/// `configured` is lima.yaml's `mountType`. Unset means llima-box's
/// default: virtiofs when this is a Linux host with a suitable virtiofsd
/// (`find`), else 9p (Lima's QEMU default).
pub(crate) fn choose(
    configured: Option<&str>,
    linux: bool,
    find: impl FnOnce() -> Result<Virtiofsd, VirtiofsdError>,
) -> Result<Chosen, ShareError> {
    let nine_p = |why: Option<String>| Chosen {
        share: ShareType::NineP,
        virtiofsd: None,
        not_virtiofs: why,
    };
    match configured {
        Some("9p") => Ok(nine_p(None)),
        Some("virtiofs") if !linux => Err(ShareError::NotLinux),
        Some("virtiofs") => Ok(Chosen {
            share: ShareType::Virtiofs,
            virtiofsd: Some(find()?),
            not_virtiofs: None,
        }),
        Some(other) => Err(ShareError::Unsupported(other.to_string())),
        None if !linux => Ok(nine_p(Some("virtiofs needs a Linux host".into()))),
        None => Ok(match find() {
            Ok(v) => Chosen {
                share: ShareType::Virtiofs,
                virtiofsd: Some(v),
                not_virtiofs: None,
            },
            Err(e) => nine_p(Some(e.to_string())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn good() -> Result<Virtiofsd, VirtiofsdError> {
        Ok(Virtiofsd {
            path: PathBuf::from("/usr/libexec/virtiofsd"),
            version: "1.14.0".into(),
        })
    }

    fn none() -> Result<Virtiofsd, VirtiofsdError> {
        Err(VirtiofsdError::NotFound)
    }

    #[test]
    fn unset_takes_virtiofs_when_a_good_daemon_is_there_and_says_why_not() {
        let c = choose(None, true, good).unwrap();
        assert_eq!(c.share, ShareType::Virtiofs);
        assert_eq!(c.virtiofsd.unwrap().version, "1.14.0");
        let c = choose(None, true, none).unwrap();
        assert_eq!(c.share, ShareType::NineP);
        assert!(c.not_virtiofs.unwrap().contains("no virtiofsd found"));
        let c = choose(None, false, good).unwrap();
        assert_eq!(c.share, ShareType::NineP);
    }

    #[test]
    fn an_explicit_type_is_kept_or_refused_with_the_reason() {
        let c = choose(Some("9p"), true, good).unwrap();
        assert_eq!((c.share, c.not_virtiofs), (ShareType::NineP, None));
        assert_eq!(
            choose(Some("virtiofs"), true, good).unwrap().share,
            ShareType::Virtiofs
        );
        let e = choose(Some("virtiofs"), true, none)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mountType virtiofs: no virtiofsd found"),
            "{e}"
        );
        assert!(matches!(
            choose(Some("virtiofs"), false, good),
            Err(ShareError::NotLinux)
        ));
        assert!(matches!(
            choose(Some("reverse-sshfs"), true, good),
            Err(ShareError::Unsupported(_))
        ));
    }
}

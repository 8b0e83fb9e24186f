//! The host's shares mounted in the guest, read from the mount table:
//! Lima's 9p, virtiofs and reverse-sshfs mounts.

/// How the host's files reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 9p, whose writes the guest may hold back (see
    /// `env_server::nine_p_shares`) and which no ID mapping can cover.
    NineP,
    /// virtiofs: it may be bound through an ID mapping.
    Virtiofs,
    Sshfs,
}

impl Kind {
    fn of(fstype: &str) -> Option<Kind> {
        match fstype {
            "9p" => Some(Kind::NineP),
            "virtiofs" => Some(Kind::Virtiofs),
            "fuse.sshfs" => Some(Kind::Sshfs),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Share {
    /// Where the guest has it.
    pub target: String,
    pub writable: bool,
    pub kind: Kind,
}

/// The shares in the text of a `/proc/PID/mountinfo`, in its order.
pub fn parse(mountinfo: &str) -> Vec<Share> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // ID PARENT DEV ROOT TARGET OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            let (target, options) = (fields.get(4)?, fields.get(5)?);
            let kind = Kind::of(fs.split(' ').next()?)?;
            Some(Share {
                target: unescape(target),
                writable: options.split(',').any(|o| o == "rw"),
                kind,
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\NNN`
/// (octal).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lima_shares_with_their_access() {
        let text = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /home/u ro,relatime shared:12 - 9p mount0 ro,access=client,trans=virtio
31 22 0:27 / /tmp/lima rw,relatime shared:13 - 9p mount1 rw,access=client,trans=virtio
32 22 0:28 / /data/my\\040proj rw,relatime - virtiofs mount2 rw
33 22 0:29 / /mnt/s rw,nosuid,nodev shared:2 master:3 - fuse.sshfs host:/s rw,user_id=0
34 22 0:30 / /run/x rw - fuse.bindfs bindfs rw
";
        assert_eq!(
            parse(text),
            [
                Share {
                    target: "/home/u".into(),
                    writable: false,
                    kind: Kind::NineP,
                },
                Share {
                    target: "/tmp/lima".into(),
                    writable: true,
                    kind: Kind::NineP,
                },
                Share {
                    target: "/data/my proj".into(),
                    writable: true,
                    kind: Kind::Virtiofs,
                },
                Share {
                    target: "/mnt/s".into(),
                    writable: true,
                    kind: Kind::Sshfs,
                },
            ]
        );
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape(r"/a\040b\134c\011"), "/a b\\c\t");
        assert_eq!(unescape(r"/a\x\0"), r"/a\x\0");
    }
}

//! `$D/ssh.config`, so that `ssh -F $D/ssh.config lima-NAME` reaches the VM
//! with plain OpenSSH. Unlike Lima we pin the host key we injected instead
//! of turning host-key checking off.

use std::path::Path;

pub(crate) struct SshConfig<'a> {
    pub host: &'a str,
    pub user: &'a str,
    pub identity: &'a Path,
    pub known_hosts: &'a Path,
    pub control_path: &'a Path,
    pub forward_agent: bool,
    pub port: u16,
}

impl SshConfig<'_> {
    pub(crate) fn render(&self) -> String {
        let mut s = String::from(
            "# This SSH config file can be passed to 'ssh -F'.\n\
             # It is written by llima-box at every start and overwritten on restart.\n\
             # llima-box itself does not read it except for the Port line.\n",
        );
        s.push_str(&format!("Host {}\n", self.host));
        let mut opt = |k: &str, v: String| s.push_str(&format!("  {k} {v}\n"));
        opt("IdentityFile", format!("\"{}\"", self.identity.display()));
        opt("StrictHostKeyChecking", "yes".into());
        opt(
            "UserKnownHostsFile",
            format!("\"{}\"", self.known_hosts.display()),
        );
        opt("HostKeyAlias", self.host.to_string());
        opt("PreferredAuthentications", "publickey".into());
        opt("Compression", "no".into());
        opt("BatchMode", "yes".into());
        opt("IdentitiesOnly", "yes".into());
        opt("User", self.user.to_string());
        opt("ControlMaster", "auto".into());
        opt(
            "ControlPath",
            format!("\"{}\"", self.control_path.display()),
        );
        opt("ControlPersist", "yes".into());
        if self.forward_agent {
            opt("ForwardAgent", "yes".into());
        }
        opt("Hostname", "127.0.0.1".into());
        opt("Port", self.port.to_string());
        s
    }
}

/// The `known_hosts` line that pins the instance's host key under its
/// alias, so OpenSSH checks it strictly.
pub(crate) fn known_hosts_line(host: &str, public_key_openssh: &str) -> String {
    format!("{host} {}\n", public_key_openssh.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_with_hostname_and_port() {
        let c = SshConfig {
            host: "lima-llima-box",
            user: "alice",
            identity: Path::new("/h/.lima/_config/user"),
            known_hosts: Path::new("/h/.lima/llima-box/known_hosts"),
            control_path: Path::new("/h/.lima/llima-box/ssh.sock"),
            forward_agent: true,
            port: 41000,
        };
        let text = c.render();
        assert!(text.contains("Host lima-llima-box\n"));
        assert!(text.contains("  IdentityFile \"/h/.lima/_config/user\"\n"));
        assert!(text.contains("  ForwardAgent yes\n"));
        assert!(text.ends_with("  Hostname 127.0.0.1\n  Port 41000\n"));
    }
}

//! A project's network policy: what its environment may reach beyond its
//! own loopback. Kept on the host with the project's other settings and
//! enforced by the guest's firewall, outside the environment's reach.

use serde::{Deserialize, Serialize};

use crate::domains::NameLists;

/// At most this many host ports per project: each is a firewall rule.
pub const MAX_HOST_PORTS: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Public addresses; the host, link-local, LAN ranges and the other
    /// environments stay closed.
    #[default]
    Open,
    /// Allowed names only: DNS answers for them alone, TCP through the
    /// guest agent's proxy, which connects only to a name the connection
    /// asks for (TLS server name, HTTP Host) when it is allowed.
    Restricted,
    /// Loopback only: no DNS, nothing out, whatever else is allowed.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Restricted => "restricted",
            Mode::None => "none",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetPolicy {
    #[serde(default, skip_serializing_if = "is_open")]
    pub mode: Mode,
    /// Ports of the host's 127.0.0.1 this environment (only) may reach,
    /// through QEMU's gateway; sorted, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
    /// The names restricted mode allows and denies.
    #[serde(flatten)]
    pub names: NameLists,
}

fn is_open(m: &Mode) -> bool {
    *m == Mode::Open
}

impl NetPolicy {
    pub fn is_default(&self) -> bool {
        *self == NetPolicy::default()
    }

    /// Adds `port` to the allowed host ports, keeping them sorted.
    pub fn allow_host_port(&mut self, port: u16) {
        if let Err(i) = self.host_ports.binary_search(&port) {
            self.host_ports.insert(i, port);
        }
    }

    /// Whether `port` was allowed.
    pub fn remove_host_port(&mut self, port: u16) -> bool {
        let before = self.host_ports.len();
        self.host_ports.retain(|p| *p != port);
        before != self.host_ports.len()
    }

    /// The host ports that take effect: none in `none` mode.
    pub fn open_host_ports(&self) -> &[u16] {
        match self.mode {
            Mode::Open | Mode::Restricted => &self.host_ports,
            Mode::None => &[],
        }
    }

    /// What is out of bounds, said for a person.
    pub fn check(&self) -> Result<(), String> {
        self.names.check()?;
        if self.host_ports.contains(&0) {
            return Err("host port 0 is not a port".into());
        }
        if !self.host_ports.is_sorted() || self.host_ports.windows(2).any(|w| w[0] == w[1]) {
            return Err("the host ports must be sorted, each once".into());
        }
        if self.host_ports.len() > MAX_HOST_PORTS {
            return Err(format!(
                "{} host ports allowed; at most {MAX_HOST_PORTS} are",
                self.host_ports.len()
            ));
        }
        Ok(())
    }
}

/// One connection attempt the guest's firewall refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// RFC 3339, UTC.
    pub time: String,
    /// `TCP`, `UDP`, `ICMP`...
    pub proto: String,
    /// The address it was for.
    pub dest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The name it asked for, when restricted mode's resolver or proxy
    /// refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The command name of the program that tried, when known (restricted
    /// mode's refusals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_open_and_serialises_to_nothing() {
        let d = NetPolicy::default();
        assert!(d.is_default() && d.check().is_ok());
        assert_eq!(serde_json::to_string(&d).unwrap(), "{}");
        let p = NetPolicy {
            mode: Mode::None,
            host_ports: vec![5432, 6379],
            ..NetPolicy::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"mode":"none","hostPorts":[5432,6379]}"#);
        assert_eq!(serde_json::from_str::<NetPolicy>(&json).unwrap(), p);
        assert!(serde_json::from_str::<NetPolicy>(r#"{"mode":"wide"}"#).is_err());
    }

    #[test]
    fn restricted_mode_keeps_its_names_beside_the_rest() {
        let mut p = NetPolicy {
            mode: Mode::Restricted,
            host_ports: vec![5432],
            ..NetPolicy::default()
        };
        p.names.allow("*.github.com").unwrap();
        p.names.deny("gist.github.com").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"mode":"restricted","hostPorts":[5432],"allow":["*.github.com"],"deny":["gist.github.com"]}"#
        );
        assert_eq!(serde_json::from_str::<NetPolicy>(&json).unwrap(), p);
        assert_eq!(p.open_host_ports(), [5432]);
        assert!(p.check().is_ok());
        p.names.allow.push("*.a.com".into());
        assert!(p.check().is_err(), "unsorted names");
    }

    #[test]
    fn host_ports_stay_sorted_and_none_mode_opens_none() {
        let mut p = NetPolicy::default();
        for port in [8080, 22, 8080, 5432] {
            p.allow_host_port(port);
        }
        assert_eq!(p.host_ports, [22, 5432, 8080]);
        assert_eq!(p.open_host_ports(), [22, 5432, 8080]);
        assert!(p.remove_host_port(22));
        assert!(!p.remove_host_port(22));
        assert_eq!(p.host_ports, [5432, 8080]);
        p.mode = Mode::None;
        assert!(p.open_host_ports().is_empty());
        assert!(p.check().is_ok());
    }

    #[test]
    fn bad_policies_are_refused() {
        for ports in [vec![0], vec![9, 3], vec![3, 3], (1..=65).collect()] {
            let p = NetPolicy {
                mode: Mode::Open,
                host_ports: ports,
                ..NetPolicy::default()
            };
            assert!(p.check().is_err(), "{p:?}");
        }
    }
}

//! Restricted mode's way out (work in progress: nothing starts it yet): a
//! resolver that answers only for allowed names and a proxy that connects
//! only to them. The guard redirects a restricted environment's DNS to
//! [`RESOLVER_PORT`] and its other TCP to [`PROXY_PORT`] (see
//! `guard::policy`), on the guest's side of its veth; both find the
//! environment by the address a query or connection comes from.
#![allow(dead_code)]

mod dns;
mod peek;
mod records;
mod resolver;

use std::net::IpAddr;

use llima_box_proto::net::NetPolicy;

/// Where the resolver listens (UDP and TCP), on every address of the guest.
pub const RESOLVER_PORT: u16 = 10053;
/// Where the proxy listens.
pub const PROXY_PORT: u16 = 10080;

/// An environment in restricted mode.
#[derive(Debug, Clone)]
pub struct Env {
    pub name: String,
    pub policy: NetPolicy,
}

/// Something an environment tried and was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub proto: &'static str,
    /// The name it asked for (empty when it gave none).
    pub name: String,
    /// The address it connected to, for a connection.
    pub dest: Option<IpAddr>,
    pub port: u16,
}

/// The seam between the resolver and proxy and the guest's records.
pub trait Environments: Send + Sync {
    /// The environment in restricted mode at `peer`, if any.
    fn at(&self, peer: IpAddr) -> Option<Env>;
    /// Records a refusal.
    fn denied(&self, env: &Env, attempt: &Attempt);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use llima_box_proto::net::Mode;

    use super::*;

    /// A policy in restricted mode with these names.
    pub fn restricted(allow: &[&str], deny: &[&str]) -> NetPolicy {
        let mut p = NetPolicy {
            mode: Mode::Restricted,
            ..NetPolicy::default()
        };
        for a in allow {
            p.names.allow(a).unwrap();
        }
        for d in deny {
            p.names.deny(d).unwrap();
        }
        p
    }

    /// One environment, at 100.64.0.1 or loopback; its refusals as
    /// `PROTO NAME:PORT`.
    pub struct Recorder {
        policy: NetPolicy,
        denied: Mutex<Vec<String>>,
    }

    impl Recorder {
        pub fn new(policy: NetPolicy) -> Recorder {
            Recorder {
                policy,
                denied: Mutex::new(Vec::new()),
            }
        }

        pub fn denials(&self) -> Vec<String> {
            self.denied.lock().unwrap().clone()
        }
    }

    impl Environments for Recorder {
        fn at(&self, peer: IpAddr) -> Option<Env> {
            (peer == IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)) || peer.is_loopback()).then(|| Env {
                name: "proj".into(),
                policy: self.policy.clone(),
            })
        }

        fn denied(&self, _: &Env, a: &Attempt) {
            let what = format!("{} {}:{}", a.proto, a.name, a.port);
            self.denied.lock().unwrap().push(what);
        }
    }
}

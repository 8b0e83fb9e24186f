//! An environment's way out: a veth pair between its network namespace and
//! the guest's (`lbxN` in the guest, `eth0` inside), a /31 of the
//! environments' network per uid (so two environments never share one, in
//! either uid range), and a default route through the guest, whose
//! firewall (`guard`) decides what passes, the environment's own policy
//! first. Interfaces and routes are the
//! kernel's netlink business; `ip` speaks it, so the agent hands it a batch.

use std::net::Ipv4Addr;
use std::process::Command;

use llima_box_proto::paths::{ENV_UIDS, LEGACY_ENV_UIDS};

use llima_box_proto::net::NetPolicy;

use crate::guard::{GuardError, VETH_PREFIX, policy};
use crate::tools;

/// The guest's side of an environment's pair, its address (the
/// environment's gateway) and the environment's own address.
#[derive(Debug, PartialEq, Eq)]
pub struct Link {
    pub veth: String,
    pub gateway: Ipv4Addr,
    pub addr: Ipv4Addr,
}

/// The link of the environment user `uid`: the index counts the current
/// range first, then the legacy one; 100.64.0.0/10 holds 2^21 pairs.
pub fn link(uid: u32) -> Option<Link> {
    let index = if ENV_UIDS.contains(&uid) {
        uid - ENV_UIDS.start()
    } else if LEGACY_ENV_UIDS.contains(&uid) {
        ENV_UIDS.end() - ENV_UIDS.start() + 1 + uid - LEGACY_ENV_UIDS.start()
    } else {
        return None;
    };
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    Some(Link {
        veth: format!("{VETH_PREFIX}{index}"),
        gateway: Ipv4Addr::from(base + 2 * index),
        addr: Ipv4Addr::from(base + 2 * index + 1),
    })
}

/// The environment user whose environment has the address `addr` (its
/// end of its pair): the inverse of [`link`].
pub fn uid_at(addr: Ipv4Addr) -> Option<u32> {
    let offset = u32::from(addr).checked_sub(u32::from(Ipv4Addr::new(100, 64, 0, 0)))?;
    if offset % 2 == 0 {
        return None;
    }
    let index = offset / 2;
    let current = ENV_UIDS.end() - ENV_UIDS.start() + 1;
    let uid = if index < current {
        ENV_UIDS.start() + index
    } else {
        LEGACY_ENV_UIDS.start().checked_add(index - current)?
    };
    (ENV_UIDS.contains(&uid) || LEGACY_ENV_UIDS.contains(&uid)).then_some(uid)
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("uid {0} is not an environment user's")]
    NotEnvUid(u32),
    #[error("cannot apply the environment's network policy: {0}")]
    Policy(#[from] GuardError),
    #[error("cannot give the environment of uid {uid} its network ({what}): {detail}")]
    Ip {
        uid: u32,
        what: &'static str,
        detail: String,
    },
}

/// Joins the network namespace of `holder` (the environment user `uid`'s)
/// to the guest's, under `policy`. A pair left by a holder that died goes
/// first.
pub fn connect(holder: u32, uid: u32, policy: &NetPolicy) -> Result<(), NetError> {
    let l = link(uid).ok_or(NetError::NotEnvUid(uid))?;
    let err = |what| move |detail| NetError::Ip { uid, what, detail };
    // Before the pair exists, so that nothing passes without it.
    if !policy.is_default() {
        policy::apply(&l.veth, policy)?;
    }
    if std::path::Path::new("/sys/class/net")
        .join(&l.veth)
        .exists()
    {
        let _ = batch(&format!("link del {}\n", l.veth), None);
    }
    let outside = format!(
        "link add {v} type veth peer name eth0 netns {holder}\n\
         addr add {g}/31 dev {v}\n\
         link set {v} up\n",
        v = l.veth,
        g = l.gateway
    );
    batch(&outside, None).map_err(err("the guest's side"))?;
    let ns = std::fs::File::open(format!("/proc/{holder}/ns/net"))
        .map_err(|e| err("its namespace")(e.to_string()))?;
    let inside = format!(
        "link set lo up\n\
         addr add {a}/31 dev eth0\n\
         link set eth0 up\n\
         route add default via {g}\n",
        a = l.addr,
        g = l.gateway
    );
    batch(&inside, Some(&ns)).map_err(err("inside"))
}

/// Gives the environment user `uid` `policy` in the guest's firewall (it
/// takes effect whether its holder runs or not).
pub fn set_policy(uid: u32, policy: &NetPolicy) -> Result<(), NetError> {
    let l = link(uid).ok_or(NetError::NotEnvUid(uid))?;
    Ok(policy::apply(&l.veth, policy)?)
}

/// Runs `ip -batch -` on `commands`, in the network namespace `netns` when
/// given; what it said when it failed.
fn batch(commands: &str, netns: Option<&std::fs::File>) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(["-batch", "-"]);
    if let Some(ns) = netns {
        tools::in_namespace(&mut cmd, ns, libc::CLONE_NEWNET);
    }
    tools::run(&mut cmd, Some(commands)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uid_of_either_range_has_its_own_pair() {
        let first = link(70000).unwrap();
        assert_eq!(first.veth, "lbx0");
        assert_eq!(first.gateway, Ipv4Addr::new(100, 64, 0, 0));
        assert_eq!(first.addr, Ipv4Addr::new(100, 64, 0, 1));
        let l = link(70300).unwrap();
        assert_eq!(
            (l.gateway, l.addr),
            (Ipv4Addr::new(100, 64, 2, 88), Ipv4Addr::new(100, 64, 2, 89))
        );
        // The legacy range follows the current one, without overlap.
        let last = link(99999).unwrap();
        let legacy = link(60001).unwrap();
        assert_eq!(legacy.veth, "lbx30000");
        assert_eq!(u32::from(legacy.gateway), u32::from(last.addr) + 1);
        let end = link(64999).unwrap();
        assert!(end.addr < Ipv4Addr::new(100, 128, 0, 0), "{end:?}");
        // Interface names stay within the kernel's 15 characters.
        assert!(end.veth.len() <= 15);
        for uid in [70000, 70300, 99999, 60001, 64999] {
            assert_eq!(uid_at(link(uid).unwrap().addr), Some(uid));
            assert_eq!(uid_at(link(uid).unwrap().gateway), None);
        }
        let past = u32::from(link(64999).unwrap().addr) + 2;
        assert_eq!(uid_at(Ipv4Addr::from(past)), None);
        assert_eq!(uid_at(Ipv4Addr::new(100, 63, 255, 255)), None);
        assert_eq!(link(1000), None);
        assert_eq!(link(65534), None);
    }
}

//! Each environment's own network policy, on top of what every environment
//! has: a chain of the guest's filter table named after its veth, jumped to
//! from `LLIMA-BOX-POL` for what comes out of that veth. Only a policy that
//! differs from the default has one, so an environment with the default
//! costs no firewall call when it starts. The chain follows the recorded
//! policy whether or not the environment runs, so a holder that starts
//! later finds it right; the rules go with the boot, and the next holder
//! start puts them back before its veth exists.

use std::process::Command;

use llima_box_proto::net::{Mode, NetPolicy};

use super::{DENY, GuardError, POLICIES, SLIRP_GATEWAY, load};
use crate::tools;

/// The chain of the environment whose guest-side veth is `veth`.
fn chain(veth: &str) -> String {
    format!("{POLICIES}-{veth}")
}

/// The rules for `iptables-restore --noflush` that make `chain` say
/// `policy`: what it accepts ends the packet's way through the firewall,
/// what it rejects too, the rest goes on to the rules every environment has.
fn rules(chain: &str, policy: &NetPolicy) -> String {
    let mut r = format!("*filter\n:{chain} - [0:0]\n");
    for port in policy.open_host_ports() {
        r += &format!("-A {chain} -d {SLIRP_GATEWAY}/32 -p tcp --dport {port} -j ACCEPT\n");
    }
    if policy.mode == Mode::None {
        r += &format!("-A {chain} -j {DENY}\n");
    }
    r + "COMMIT\n"
}

/// Gives the environment whose veth is `veth` `policy`, at once for what
/// it sends from then on (established connections included).
pub fn apply(veth: &str, policy: &NetPolicy) -> Result<(), GuardError> {
    let chain = chain(veth);
    if policy.is_default() {
        return forget_chain(veth, &chain);
    }
    // One transaction replaces the chain; then the jump, once.
    load("iptables-restore", &rules(&chain, policy))?;
    let jump = ["-i", veth, "-j", &chain];
    if !tools::quiet(&mut iptables_cmd(&[&["-C", POLICIES][..], &jump].concat())) {
        iptables(&[&["-A", POLICIES][..], &jump].concat())?;
    }
    Ok(())
}

/// Removes the policy of the environment whose veth is `veth` (back to the
/// default), if it has one.
pub fn forget(veth: &str) -> Result<(), GuardError> {
    forget_chain(veth, &chain(veth))
}

fn forget_chain(veth: &str, chain: &str) -> Result<(), GuardError> {
    if !exists(chain) {
        return Ok(());
    }
    while tools::quiet(&mut iptables_cmd(&[
        "-D", POLICIES, "-i", veth, "-j", chain,
    ])) {}
    iptables(&["-F", chain])?;
    iptables(&["-X", chain])
}

/// Whether the filter table has `chain`.
pub(super) fn exists(chain: &str) -> bool {
    tools::quiet(&mut iptables_cmd(&["-n", "-L", chain]))
}

fn iptables_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("iptables");
    c.arg("-w").args(args);
    c
}

/// Runs `iptables -w ARGS`; what it said when it failed.
pub(super) fn iptables(args: &[&str]) -> Result<(), GuardError> {
    tools::run(&mut iptables_cmd(args), None).map_err(|e| match e {
        tools::Failure::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound => {
            GuardError::NoTool("iptables")
        }
        e => GuardError::Rules {
            what: format!("iptables {}", args.join(" ")),
            detail: e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_are_accepted_and_none_rejects_the_rest() {
        let c = chain("lbx7");
        assert_eq!(c, "LLIMA-BOX-POL-lbx7");
        // The longest veth name still fits iptables' 28 characters.
        assert!(chain("lbx2097151").len() <= 28);
        let open = NetPolicy {
            mode: Mode::Open,
            host_ports: vec![5432, 8080],
        };
        assert_eq!(
            rules(&c, &open),
            "*filter\n:LLIMA-BOX-POL-lbx7 - [0:0]\n\
             -A LLIMA-BOX-POL-lbx7 -d 192.168.5.2/32 -p tcp --dport 5432 -j ACCEPT\n\
             -A LLIMA-BOX-POL-lbx7 -d 192.168.5.2/32 -p tcp --dport 8080 -j ACCEPT\n\
             COMMIT\n"
        );
        // Nothing passes in `none` mode, allowed host ports neither.
        let none = NetPolicy {
            mode: Mode::None,
            ..open
        };
        assert_eq!(
            rules(&c, &none),
            "*filter\n:LLIMA-BOX-POL-lbx7 - [0:0]\n\
             -A LLIMA-BOX-POL-lbx7 -j LLIMA-BOX-DENY\n\
             COMMIT\n"
        );
    }
}

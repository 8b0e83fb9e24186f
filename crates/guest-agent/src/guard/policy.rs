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

use super::{DENY, GuardError, POLICIES, REDIRECTS, SLIRP_GATEWAY, load};
use crate::egress::{PROXY_PORT, RESOLVER_PORT};
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
    // Restricted: what is not redirected to the resolver or the proxy
    // (see `redirects`) goes no further.
    if policy.mode != Mode::Open {
        r += &format!("-A {chain} -j {DENY}\n");
    }
    r + "COMMIT\n"
}

/// The rules for `iptables-restore --noflush` that make the nat chain
/// `chain` send a restricted environment's DNS to the resolver and its
/// other TCP to the proxy; allowed host ports go their own way, as in open
/// mode. Empty in the other modes.
fn redirects(chain: &str, policy: &NetPolicy) -> String {
    let mut r = format!("*nat\n:{chain} - [0:0]\n");
    if policy.mode == Mode::Restricted {
        for port in policy.open_host_ports() {
            r += &format!("-A {chain} -d {SLIRP_GATEWAY}/32 -p tcp --dport {port} -j RETURN\n");
        }
        for proto in ["udp", "tcp"] {
            r += &format!(
                "-A {chain} -p {proto} --dport 53 -j REDIRECT --to-ports {RESOLVER_PORT}\n"
            );
        }
        r += &format!("-A {chain} -p tcp -j REDIRECT --to-ports {PROXY_PORT}\n");
    }
    r + "COMMIT\n"
}

/// Where one table keeps an environment's rules: its chain, and the chain
/// of every environment's that jumps to it for what comes from its veth.
struct Place {
    table: &'static str,
    parent: &'static str,
    chain: String,
}

/// The environment's filter chain, then its nat chain.
fn places(veth: &str) -> [Place; 2] {
    [
        Place {
            table: "filter",
            parent: POLICIES,
            chain: chain(veth),
        },
        Place {
            table: "nat",
            parent: REDIRECTS,
            chain: format!("{REDIRECTS}-{veth}"),
        },
    ]
}

/// Gives the environment whose veth is `veth` `policy`, at once for what
/// it sends from then on (established connections included).
pub fn apply(veth: &str, policy: &NetPolicy) -> Result<(), GuardError> {
    if policy.is_default() {
        return forget(veth);
    }
    let [filter, nat] = places(veth);
    install(&filter, veth, &rules(&filter.chain, policy))?;
    match policy.mode {
        Mode::Restricted => install(&nat, veth, &redirects(&nat.chain, policy)),
        _ => remove(&nat, veth),
    }
}

/// Replaces `p`'s chain with `rules` in one transaction; then the jump,
/// once.
fn install(p: &Place, veth: &str, rules: &str) -> Result<(), GuardError> {
    load("iptables-restore", rules)?;
    let jump = ["-t", p.table, "-C", p.parent, "-i", veth, "-j", &p.chain];
    if !tools::quiet(&mut iptables_cmd(&jump)) {
        let mut append = jump;
        append[2] = "-A";
        iptables(&append)?;
    }
    Ok(())
}

/// Removes the policy of the environment whose veth is `veth` (back to the
/// default), if it has one.
pub fn forget(veth: &str) -> Result<(), GuardError> {
    places(veth).iter().try_for_each(|p| remove(p, veth))
}

fn remove(p: &Place, veth: &str) -> Result<(), GuardError> {
    if !exists(p.table, &p.chain) {
        return Ok(());
    }
    let t = ["-t", p.table];
    while tools::quiet(&mut iptables_cmd(&[
        "-t", p.table, "-D", p.parent, "-i", veth, "-j", &p.chain,
    ])) {}
    iptables(&[&t[..], &["-F", &p.chain]].concat())?;
    iptables(&[&t[..], &["-X", &p.chain]].concat())
}

/// Whether `table` has `chain`.
pub(super) fn exists(table: &str, chain: &str) -> bool {
    tools::quiet(&mut iptables_cmd(&["-t", table, "-n", "-L", chain]))
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
            ..NetPolicy::default()
        };
        assert_eq!(
            rules(&c, &open),
            "*filter\n:LLIMA-BOX-POL-lbx7 - [0:0]\n\
             -A LLIMA-BOX-POL-lbx7 -d 192.168.5.2/32 -p tcp --dport 5432 -j ACCEPT\n\
             -A LLIMA-BOX-POL-lbx7 -d 192.168.5.2/32 -p tcp --dport 8080 -j ACCEPT\n\
             COMMIT\n"
        );
        assert_eq!(redirects("R", &open), "*nat\n:R - [0:0]\nCOMMIT\n");
        // Restricted: the host ports as in open mode, DNS to the resolver,
        // other TCP to the proxy, the rest denied.
        let restricted = NetPolicy {
            mode: Mode::Restricted,
            ..open.clone()
        };
        assert!(rules(&c, &restricted).ends_with(
            "--dport 8080 -j ACCEPT\n-A LLIMA-BOX-POL-lbx7 -j LLIMA-BOX-DENY\nCOMMIT\n"
        ));
        assert_eq!(
            redirects("R", &restricted),
            "*nat\n:R - [0:0]\n\
             -A R -d 192.168.5.2/32 -p tcp --dport 5432 -j RETURN\n\
             -A R -d 192.168.5.2/32 -p tcp --dport 8080 -j RETURN\n\
             -A R -p udp --dport 53 -j REDIRECT --to-ports 10053\n\
             -A R -p tcp --dport 53 -j REDIRECT --to-ports 10053\n\
             -A R -p tcp -j REDIRECT --to-ports 10080\n\
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

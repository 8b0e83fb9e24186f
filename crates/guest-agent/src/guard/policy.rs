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

use super::{CHECKS, DENY, GuardError, POLICIES, REDIRECTS, SLIRP_GATEWAY, load};
use crate::egress::check::{CHECKED, DIRECT, HTTPS, MARK_MASK, QUEUE, REFUSED};
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
    // Restricted: what goes straight to its server is let by while its
    // first bytes are checked and after they passed; once they failed, the
    // check's own reset goes on to the server and the rest is reset (see
    // `checks`). What is not redirected to the resolver or the proxy (see
    // `redirects`) goes no further.
    if policy.mode == Mode::Restricted {
        for state in [DIRECT, CHECKED] {
            r += &format!("-A {chain} {} -j RETURN\n", connmark(state));
        }
        let refused = connmark(REFUSED);
        r += &format!(
            "-A {chain} -p tcp --tcp-flags RST RST {refused} -j RETURN\n\
             -A {chain} -p tcp {refused} -j REJECT --reject-with tcp-reset\n"
        );
    }
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
        r += &host_ports_return(chain, policy);
        for proto in ["udp", "tcp"] {
            r += &format!(
                "-A {chain} -p {proto} --dport 53 -j REDIRECT --to-ports {RESOLVER_PORT}\n"
            );
        }
        r += &format!("-A {chain} {} -j RETURN\n", connmark(DIRECT));
        r += &format!("-A {chain} -p tcp -j REDIRECT --to-ports {PROXY_PORT}\n");
    }
    r + "COMMIT\n"
}

/// Rules that send the policy's allowed host ports out of `chain`: they
/// go their own way, as in open mode.
fn host_ports_return(chain: &str, policy: &NetPolicy) -> String {
    policy
        .open_host_ports()
        .iter()
        .map(|port| format!("-A {chain} -d {SLIRP_GATEWAY}/32 -p tcp --dport {port} -j RETURN\n"))
        .collect()
}

/// Matches connections marked `state` (see `egress::check`).
fn connmark(state: u32) -> String {
    format!("-m connmark --mark {state:#x}/{MARK_MASK:#x}")
}

/// The rules for `iptables-restore --noflush` that make the mangle chain
/// `chain` queue a restricted environment's TCP to the agent's check
/// (`egress::check`): each HTTPS connection's SYN, which the check marks for
/// going straight to its server or (unmarked) to the proxy, then every
/// packet of a connection going straight there until its first bytes are
/// checked. The check's verdict comes back as the packet's mark, and is
/// kept as the connection's. Without the agent, a SYN goes on unmarked
/// (to the proxy); the rest waits. DNS and allowed host ports are not
/// queued.
fn checks(chain: &str, policy: &NetPolicy) -> String {
    let mut r = format!("*mangle\n:{chain} - [0:0]\n");
    r += &host_ports_return(chain, policy);
    let marked = format!("-m mark ! --mark 0x0/{MARK_MASK:#x}");
    r += &format!(
        "-A {chain} -p tcp --dport 53 -j RETURN\n\
         -A {chain} {marked} -j CONNMARK --save-mark --nfmask {MARK_MASK:#x} --ctmask {MARK_MASK:#x}\n\
         -A {chain} {marked} -j RETURN\n\
         -A {chain} -p tcp --syn --dport {HTTPS} {} -j NFQUEUE --queue-num {QUEUE} --queue-bypass\n\
         -A {chain} -p tcp {} -j NFQUEUE --queue-num {QUEUE}\n",
        connmark(0),
        connmark(DIRECT),
    );
    r + "COMMIT\n"
}

/// Where one table keeps an environment's rules: its chain, and the chain
/// of every environment's that jumps to it for what comes from its veth.
struct Place {
    table: &'static str,
    parent: &'static str,
    chain: String,
}

/// The environment's filter chain, its nat chain, its mangle chain.
fn places(veth: &str) -> [Place; 3] {
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
        Place {
            table: "mangle",
            parent: CHECKS,
            chain: format!("{CHECKS}-{veth}"),
        },
    ]
}

/// Gives the environment whose veth is `veth` `policy`, at once for what
/// it sends from then on (established connections included).
pub fn apply(veth: &str, policy: &NetPolicy) -> Result<(), GuardError> {
    if policy.is_default() {
        return forget(veth);
    }
    let [filter, nat, mangle] = places(veth);
    install(&filter, veth, &rules(&filter.chain, policy))?;
    match policy.mode {
        Mode::Restricted => {
            install(&nat, veth, &redirects(&nat.chain, policy))?;
            install(&mangle, veth, &checks(&mangle.chain, policy))
        }
        _ => remove(&mangle, veth).and_then(|()| remove(&nat, veth)),
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
            "--dport 8080 -j ACCEPT\n\
             -A LLIMA-BOX-POL-lbx7 -m connmark --mark 0x4000000/0xc000000 -j RETURN\n\
             -A LLIMA-BOX-POL-lbx7 -m connmark --mark 0x8000000/0xc000000 -j RETURN\n\
             -A LLIMA-BOX-POL-lbx7 -p tcp --tcp-flags RST RST \
             -m connmark --mark 0xc000000/0xc000000 -j RETURN\n\
             -A LLIMA-BOX-POL-lbx7 -p tcp -m connmark --mark 0xc000000/0xc000000 \
             -j REJECT --reject-with tcp-reset\n\
             -A LLIMA-BOX-POL-lbx7 -j LLIMA-BOX-DENY\nCOMMIT\n"
        ));
        assert_eq!(
            redirects("R", &restricted),
            "*nat\n:R - [0:0]\n\
             -A R -d 192.168.5.2/32 -p tcp --dport 5432 -j RETURN\n\
             -A R -d 192.168.5.2/32 -p tcp --dport 8080 -j RETURN\n\
             -A R -p udp --dport 53 -j REDIRECT --to-ports 10053\n\
             -A R -p tcp --dport 53 -j REDIRECT --to-ports 10053\n\
             -A R -m connmark --mark 0x4000000/0xc000000 -j RETURN\n\
             -A R -p tcp -j REDIRECT --to-ports 10080\n\
             COMMIT\n"
        );
        // Queued to the check: SYNs (let by without the agent), then what
        // goes straight on until checked; verdicts kept as the mark.
        assert_eq!(
            checks("C", &restricted),
            "*mangle\n:C - [0:0]\n\
             -A C -d 192.168.5.2/32 -p tcp --dport 5432 -j RETURN\n\
             -A C -d 192.168.5.2/32 -p tcp --dport 8080 -j RETURN\n\
             -A C -p tcp --dport 53 -j RETURN\n\
             -A C -m mark ! --mark 0x0/0xc000000 -j CONNMARK --save-mark \
             --nfmask 0xc000000 --ctmask 0xc000000\n\
             -A C -m mark ! --mark 0x0/0xc000000 -j RETURN\n\
             -A C -p tcp --syn --dport 443 -m connmark --mark 0x0/0xc000000 \
             -j NFQUEUE --queue-num 10080 --queue-bypass\n\
             -A C -p tcp -m connmark --mark 0x4000000/0xc000000 -j NFQUEUE --queue-num 10080\n\
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

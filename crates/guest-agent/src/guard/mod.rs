//! What closes the ways out of an environment that its namespaces leave
//! open, for every uid of the environments' ranges at once (present and
//! future environments, spares):
//! - sshd lets in the admin user only: an environment user could otherwise
//!   plant a key in its own `~/.ssh` and log in to the guest outside its
//!   namespaces.
//! - the firewall rejects what environments send to the host (QEMU maps
//!   the gateway to the host's own 127.0.0.1), to link-local addresses, to
//!   the private ranges (the LAN, the guest's own address) and to each
//!   other, DNS to their resolvers excepted, whether from their network
//!   namespaces (forwarded) or from an environment user's process in the
//!   guest's (OUTPUT); and anything to the guest's own services. Their
//!   traffic leaves with NAT. A project's own network policy narrows or
//!   widens this for its environment alone ([`policy`]).
//!
//! Rejected rather than dropped so that tools fail at once, as
//! "administratively prohibited" (which tells them apart from other
//! refusals). The sshd file persists; the rules do not outlive a boot, so
//! [`ensure`] runs before any holder starts, and at most once per boot,
//! agent and admin unless forced. The firewall and sshd are the system's:
//! the agent asks their tools, as an administrator would.

pub mod policy;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use llima_box_proto::paths::{AGENT_VERSION_PATH, ENV_UIDS, LEGACY_ENV_UIDS};

use crate::egress::{PROXY_PORT, RESOLVER_PORT};
use crate::tools::{self, Failure, quiet};
use crate::{accounts, lock};

const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/00-llima-box.conf";
/// "AGENT_VERSION ADMIN_UID" of the guard installed in this boot.
const MARK: &str = "/run/llima-box/guard";
const CHAIN: &str = "LLIMA-BOX-ENV";
const FORWARD: &str = "LLIMA-BOX-FWD";
const INPUT: &str = "LLIMA-BOX-IN";
const NAT: &str = "LLIMA-BOX-NAT";
/// Jumps to the environments' own policies (see [`policy`]).
const POLICIES: &str = "LLIMA-BOX-POL";
/// In the nat table, jumps to the redirects of restricted environments.
const REDIRECTS: &str = "LLIMA-BOX-RDR";
/// In the mangle table, jumps to the checks of restricted environments.
const CHECKS: &str = "LLIMA-BOX-CHK";
/// Logs, then refuses.
pub const DENY: &str = "LLIMA-BOX-DENY";
/// What starts each refusal's line in the kernel's log.
pub const LOG_PREFIX: &str = "llima-box deny: ";
const LOG_RATE: &str = "20/second";
const LOG_BURST: u32 = 100;
/// The guest's side of each environment's veth pair is `lbxN`.
pub const VETH_PREFIX: &str = "lbx";
/// The environments' addresses (shared address space, clear of LANs): a
/// /31 per environment, the rest is the other environments'.
pub const ENV_NET: &str = "100.64.0.0/10";
/// QEMU's user network: the gateway is the host's own loopback, the DNS
/// server forwards to the host's resolver.
const SLIRP_GATEWAY: &str = "192.168.5.2";
pub const SLIRP_GATEWAY_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 5, 2);
/// What environments may not reach besides the gateway: link-local
/// (metadata) addresses, the private ranges (the LAN, the guest's own
/// address), the other environments; fec0::/10 is QEMU's IPv6 user
/// network, whose fec0::2 is the host.
pub const CLOSED: [&str; 8] = [
    "169.254.0.0/16",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    ENV_NET,
    "fe80::/10",
    "fc00::/7",
    "fec0::/10",
];
pub const SLIRP_DNS: &str = "192.168.5.3";
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// What systemd-resolved forwards to, when RESOLV_CONF names its stub.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot tell the VM's admin user (uid {0} is not in /etc/passwd)")]
    NoAdmin(u32),
    #[error("unexpected admin user name {0:?}")]
    AdminName(String),
    #[error(
        "sshd does not read {SSHD_DROPIN} (it needs 'Include /etc/ssh/sshd_config.d/*.conf' at the top of /etc/ssh/sshd_config): {0}"
    )]
    SshdIgnores(String),
    #[error("could not reload sshd after writing {SSHD_DROPIN}")]
    SshdReload,
    #[error(
        "the guest has no {0}, which keeps environments away from the host's and the LAN's addresses; install it (apt-get install iptables)"
    )]
    NoTool(&'static str),
    #[error("could not install the environments' firewall rules ({what}): {detail}")]
    Rules { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> GuardError {
    move |source| GuardError::Io { what, source }
}

/// The resolvers environments use, and whether they differ from the
/// guest's own list: the guest's (`resolv`), unless one is on its
/// loopback (a local stub, out of an environment's reach), then what the
/// stub forwards to (`upstream`), else QEMU's.
pub fn nameservers(resolv: Option<&str>, upstream: Option<&str>) -> (Vec<String>, bool) {
    let parse = |text: &str| {
        let mut stub = false;
        let mut found = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                continue;
            }
            let Some(addr) = words.next() else { continue };
            if addr.starts_with("127.") || addr == "::1" {
                stub = true;
            } else {
                found.push(addr.to_owned());
            }
        }
        (found, stub)
    };
    let mut own = false;
    for text in [resolv, upstream].into_iter().flatten() {
        let (found, stub) = parse(text);
        if !stub && !found.is_empty() {
            return (found, own);
        }
        own = true;
        if !stub {
            break;
        }
    }
    (vec![SLIRP_DNS.to_owned()], true)
}

/// The guest's current [`nameservers`].
pub fn guest_nameservers() -> (Vec<String>, bool) {
    let read = |p| fs::read_to_string(p).ok();
    nameservers(
        read(RESOLV_CONF).as_deref(),
        read(RESOLVED_UPSTREAM).as_deref(),
    )
}

/// The rules for `iptables-restore --noflush` (IPv4) or, with `v6`,
/// `ip6tables-restore`: declaring a chain flushes it, so applying them
/// again replaces them in one transaction.
fn rules(nameservers: &[String], v6: bool) -> String {
    let (suffix, reject) = match v6 {
        false => ("/32", "icmp-admin-prohibited"),
        true => ("/128", "icmp6-adm-prohibited"),
    };
    // Every refusal goes through DENY, which logs it for `net log` (a
    // flood, beyond the limit, is refused unlogged). TCP to the guest
    // itself is reset as a closed port would be.
    let mut r = format!(
        "*filter\n:{CHAIN} - [0:0]\n:{DENY} - [0:0]\n\
         -A {DENY} -m limit --limit {LOG_RATE} --limit-burst {LOG_BURST} \
         -j LOG --log-prefix \"{LOG_PREFIX}\" --log-uid\n\
         -A {DENY} -p tcp -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset\n\
         -A {DENY} -j REJECT --reject-with {reject}\n"
    );
    let family = |ns: &&String| {
        ns.parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_ipv6() == v6)
    };
    for ns in nameservers.iter().filter(family) {
        for proto in ["udp", "tcp"] {
            r += &format!("-A {CHAIN} -d {ns}{suffix} -p {proto} --dport 53 -j RETURN\n");
        }
    }
    r += &format!("-A {CHAIN} -p tcp --dport 22 -m addrtype --dst-type LOCAL -j {DENY}\n");
    let gateway = format!("{SLIRP_GATEWAY}/32");
    let family = |net: &&&str| net.contains(':') == v6;
    for d in std::iter::once(gateway.as_str())
        .filter(|_| !v6)
        .chain(CLOSED.iter().filter(family).copied())
    {
        r += &format!("-A {CHAIN} -d {d} -j {DENY}\n");
    }
    if !v6 {
        // The environments' namespaces: what they send out of their veth
        // goes through the same chain, then out with NAT; nothing of
        // theirs reaches the guest's own services. Multicast and broadcast
        // to the guest are dropped unlogged: no connection follows them,
        // and the guest's own (systemd-resolved's LLMNR probes on each new
        // link) loops back in through the veth, where it would be counted
        // as the environment's.
        let v = format!("{VETH_PREFIX}+");
        r += &format!(
            ":{FORWARD} - [0:0]\n\
             -A {FORWARD} -i {v} -j {POLICIES}\n\
             -A {FORWARD} -i {v} -j {CHAIN}\n\
             -A {FORWARD} -i {v} -j ACCEPT\n\
             -A {FORWARD} -o {v} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             :{INPUT} - [0:0]\n\
             -A {INPUT} -i {v} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A {INPUT} -i {v} -m addrtype --dst-type MULTICAST -j DROP\n\
             -A {INPUT} -i {v} -m addrtype --dst-type BROADCAST -j DROP\n\
             -A {INPUT} -i {v} -p udp --dport {RESOLVER_PORT} -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A {INPUT} -i {v} -p tcp --dport {RESOLVER_PORT} -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A {INPUT} -i {v} -p tcp --dport {PROXY_PORT} -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A {INPUT} -i {v} -j {DENY}\n\
             COMMIT\n\
             *nat\n\
             :{NAT} - [0:0]\n\
             -A {NAT} -s {ENV_NET} ! -d {ENV_NET} -j MASQUERADE\n"
        );
    }
    r + "COMMIT\n"
}

/// The sshd drop-in that lets in `admin` only.
fn sshd_dropin(admin: &str) -> String {
    format!(
        "# Written by llima-box: only the admin user may log in, never an environment\n\
         # user (uids {}-{} and {}-{}). Read before the other files of this directory.\n\
         AllowUsers {admin}\n",
        ENV_UIDS.start(),
        ENV_UIDS.end(),
        LEGACY_ENV_UIDS.start(),
        LEGACY_ENV_UIDS.end()
    )
}

/// Installs the guard unless this boot has it already for this agent and
/// `admin` (always with `force`).
pub fn ensure(admin: u32, force: bool) -> Result<(), GuardError> {
    let version = fs::read_to_string(AGENT_VERSION_PATH).unwrap_or_default();
    let mark = format!("{} {admin}\n", version.trim());
    if !force && fs::read_to_string(MARK).is_ok_and(|m| m == mark) {
        return Ok(());
    }
    let _guard = lock::flock(".guard.lock").map_err(io("cannot lock the guard"))?;
    sshd(admin)?;
    firewall()?;
    let dir = Path::new(MARK).parent().expect("the mark has a directory");
    fs::create_dir_all(dir).map_err(io("cannot make the run directory"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
        .map_err(io("cannot make the run directory"))?;
    fs::write(MARK, mark).map_err(io("cannot record the guard"))
}

fn sshd(admin: u32) -> Result<(), GuardError> {
    if admin == 0 {
        return Err(GuardError::NoAdmin(admin));
    }
    let (passwd, _) = accounts::local_files().map_err(|e| GuardError::Io {
        what: "cannot read the accounts",
        source: std::io::Error::other(e),
    })?;
    let name = accounts::users(&passwd)
        .find(|u| u.uid == admin)
        .ok_or(GuardError::NoAdmin(admin))?
        .name;
    // sshd would read other characters as patterns or user@host.
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.is_empty() || name.starts_with(['.', '-']) || !name.chars().all(plain) {
        return Err(GuardError::AdminName(name.to_owned()));
    }
    let want = sshd_dropin(name);
    if fs::read_to_string(SSHD_DROPIN).is_ok_and(|have| have == want) {
        return Ok(());
    }
    let dir = Path::new(SSHD_DROPIN).parent().expect("a directory");
    fs::create_dir_all(dir).map_err(io("cannot make sshd's drop-in directory"))?;
    let tmp = format!("{SSHD_DROPIN}.new");
    fs::write(&tmp, &want).map_err(io("cannot write sshd's drop-in"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
        .map_err(io("cannot write sshd's drop-in"))?;
    fs::rename(&tmp, SSHD_DROPIN).map_err(io("cannot write sshd's drop-in"))?;
    // Removed again on failure, so that the next run retries the reload.
    let fail = |e| {
        let _ = fs::remove_file(SSHD_DROPIN);
        Err(e)
    };
    let effective = output(
        Command::new("sshd")
            .args(["-T", "-C"])
            .arg(format!("user={name},host=localhost,addr=127.0.0.1")),
    );
    if !effective.lines().any(|l| l == format!("allowusers {name}")) {
        let head: String = effective.chars().take(300).collect();
        return fail(GuardError::SshdIgnores(head));
    }
    let reloaded = ["ssh.service", "sshd.service"]
        .iter()
        .any(|unit| quiet(Command::new("systemctl").args(["try-reload-or-restart", unit])));
    if !reloaded {
        return fail(GuardError::SshdReload);
    }
    Ok(())
}

fn firewall() -> Result<(), GuardError> {
    let (ns, _) = guest_nameservers();
    // The resolvers environments use stay reachable, and so does QEMU's.
    let mut allowed = vec![SLIRP_DNS.to_owned()];
    allowed.extend(ns.into_iter().filter(|n| n != SLIRP_DNS));
    // Created once per boot, never declared by the rules: loading them
    // again keeps each environment's own policy.
    for (table, chain) in [("filter", POLICIES), ("nat", REDIRECTS), ("mangle", CHECKS)] {
        if !policy::exists(table, chain) {
            policy::iptables(&["-t", table, "-N", chain])?;
        }
    }
    restore("iptables", &rules(&allowed, false))?;
    for (table, builtin, chain) in [
        ("filter", "FORWARD", FORWARD),
        ("filter", "INPUT", INPUT),
        ("nat", "POSTROUTING", NAT),
        ("nat", "PREROUTING", REDIRECTS),
        ("mangle", "PREROUTING", CHECKS),
    ] {
        jump("iptables", &["-t", table, builtin, "-j", chain])?;
    }
    fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(io("cannot turn on forwarding"))?;
    // Without IPv6 in the kernel there is nothing to filter.
    if Path::new("/proc/net/if_inet6").exists() {
        restore("ip6tables", &rules(&allowed, true))?;
    }
    Ok(())
}

/// Replaces `tool`'s chains with `rules`, then sends the environment
/// users' own traffic through the chain ahead of every other OUTPUT rule.
fn restore(tool: &'static str, rules: &str) -> Result<(), GuardError> {
    load(
        match tool {
            "iptables" => "iptables-restore",
            _ => "ip6tables-restore",
        },
        rules,
    )?;
    for range in [&ENV_UIDS, &LEGACY_ENV_UIDS] {
        let owner = format!("{}-{}", range.start(), range.end());
        jump(
            tool,
            &["OUTPUT", "-m", "owner", "--uid-owner", &owner, "-j", CHAIN],
        )?;
    }
    Ok(())
}

/// Loads `rules` with `restore` (`iptables-restore` or `ip6tables-restore`)
/// without flushing what they do not declare.
fn load(restore: &'static str, rules: &str) -> Result<(), GuardError> {
    let applied = tools::run(Command::new(restore).args(["-w", "--noflush"]), Some(rules));
    match applied {
        Ok(()) => Ok(()),
        Err(Failure::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(GuardError::NoTool(restore))
        }
        Err(e) => Err(GuardError::Rules {
            what: restore.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// Inserts the rule `spec` (a built-in chain, then the match) first in its
/// chain, unless it is there.
fn jump(tool: &'static str, spec: &[&str]) -> Result<(), GuardError> {
    // The table, when given, goes before the chain either way.
    let (table, rule) = match spec {
        ["-t", t, rest @ ..] => (vec!["-t", *t], rest),
        rest => (vec![], rest),
    };
    let run = |verb: &[&str]| {
        let mut c = Command::new(tool);
        c.arg("-w").args(&table).args(verb);
        c
    };
    if quiet(run(&["-C"]).args(rule)) {
        return Ok(());
    }
    let mut insert = run(&["-I", rule[0], "1"]);
    insert.args(&rule[1..]);
    if quiet(&mut insert) {
        return Ok(());
    }
    Err(GuardError::Rules {
        what: tool.to_owned(),
        detail: format!("cannot insert {}", rule.join(" ")),
    })
}

/// `cmd`'s stdout and stderr together, whatever its status.
fn output(cmd: &mut Command) -> String {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        }
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nameservers_skip_a_loopback_stub() {
        let plain = "search lan\nnameserver 10.0.2.3\nnameserver fd00::1\n";
        assert_eq!(
            nameservers(Some(plain), None),
            (v(&["10.0.2.3", "fd00::1"]), false)
        );
        let stub = "nameserver 127.0.0.53\noptions edns0\n";
        let upstream = "nameserver 192.168.5.3\n";
        assert_eq!(
            nameservers(Some(stub), Some(upstream)),
            (v(&["192.168.5.3"]), true)
        );
        // A stub and nothing it forwards to: QEMU's.
        assert_eq!(nameservers(Some(stub), None), (v(&[SLIRP_DNS]), true));
        assert_eq!(nameservers(Some(stub), Some(stub)), (v(&[SLIRP_DNS]), true));
        assert_eq!(nameservers(None, None), (v(&[SLIRP_DNS]), true));
        // An empty list is not the guest's either.
        assert_eq!(
            nameservers(Some("# none\n"), Some(upstream)),
            (v(&[SLIRP_DNS]), true)
        );
    }

    #[test]
    fn rules_close_the_host_lan_and_other_environments() {
        let r4 = rules(&v(&["192.168.5.3", "fd00::3", "bad;-j ACCEPT"]), false);
        assert!(
            r4.starts_with("*filter\n:LLIMA-BOX-ENV - [0:0]\n:LLIMA-BOX-DENY - [0:0]\n"),
            "{r4}"
        );
        // Refusals are logged (at a bounded rate), then rejected.
        assert!(r4.contains(
            "-A LLIMA-BOX-DENY -m limit --limit 20/second --limit-burst 100 \
             -j LOG --log-prefix \"llima-box deny: \" --log-uid\n"
        ));
        assert!(r4.contains("-A LLIMA-BOX-DENY -j REJECT --reject-with icmp-admin-prohibited\n"));
        assert!(r4.contains(
            "-A LLIMA-BOX-IN -i lbx+ -m addrtype --dst-type MULTICAST -j DROP\n\
             -A LLIMA-BOX-IN -i lbx+ -m addrtype --dst-type BROADCAST -j DROP\n\
             -A LLIMA-BOX-IN -i lbx+ -p udp --dport 10053 -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A LLIMA-BOX-IN -i lbx+ -p tcp --dport 10053 -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A LLIMA-BOX-IN -i lbx+ -p tcp --dport 10080 -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A LLIMA-BOX-IN -i lbx+ -j LLIMA-BOX-DENY\n"
        ));
        assert!(r4.contains("-A LLIMA-BOX-ENV -d 192.168.5.3/32 -p udp --dport 53 -j RETURN\n"));
        assert!(!r4.contains("fd00") && !r4.contains("bad"), "{r4}");
        for d in [
            "192.168.5.2/32",
            "169.254.0.0/16",
            "10.0.0.0/8",
            "100.64.0.0/10",
        ] {
            assert!(
                r4.contains(&format!("-d {d} -j LLIMA-BOX-DENY\n")),
                "{d}: {r4}"
            );
        }
        // DNS is let through before the private ranges close.
        assert!(r4.find("--dport 53").unwrap() < r4.find("192.168.0.0/16").unwrap());
        // Each environment's own policy comes first.
        assert!(r4.contains(
            "-A LLIMA-BOX-FWD -i lbx+ -j LLIMA-BOX-POL\n-A LLIMA-BOX-FWD -i lbx+ -j LLIMA-BOX-ENV\n"
        ));
        assert!(!r4.contains(":LLIMA-BOX-POL"), "{r4}");
        assert!(r4.contains("*nat\n:LLIMA-BOX-NAT - [0:0]\n"));
        assert_eq!(r4.matches("COMMIT\n").count(), 2);
        assert!(r4.ends_with("COMMIT\n"));
        let r6 = rules(&v(&["192.168.5.3", "fd00::3"]), true);
        assert!(
            r6.contains("-d fd00::3/128 -p tcp --dport 53 -j RETURN\n"),
            "{r6}"
        );
        assert!(r6.contains("-d fec0::/10 -j LLIMA-BOX-DENY\n"));
        assert!(r6.contains("-A LLIMA-BOX-DENY -j REJECT --reject-with icmp6-adm-prohibited\n"));
        assert!(!r6.contains("nat") && !r6.contains("192.168"), "{r6}");
        assert_eq!(r6.matches("COMMIT\n").count(), 1);
    }

    #[test]
    fn sshd_lets_in_the_admin_only() {
        let d = sshd_dropin("lima");
        assert!(d.ends_with("\nAllowUsers lima\n"), "{d}");
        assert!(
            d.lines().filter(|l| !l.starts_with('#')).count() == 1,
            "{d}"
        );
    }
}

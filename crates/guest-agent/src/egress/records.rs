//! The environments as the guest records them, for the resolver and the
//! proxy: the one at an address (its user by [`uid_at`], its settings in
//! its records), and its refusals written to the kernel's log beside the
//! firewall's, in the same form, so `net log` and `list` read both alike.

use std::io::Write;
use std::net::IpAddr;

use llima_box_proto::net::Mode;

use super::{Attempt, Env, Environments, owner};
use crate::ensure::net::{link, uid_at};
use crate::ensure::{env_dir, recorded_settings};
use crate::guard::LOG_PREFIX;
use crate::{accounts, list};

pub struct Records;

impl Environments for Records {
    fn at(&self, peer: IpAddr) -> Option<Env> {
        let IpAddr::V4(addr) = peer else {
            return None;
        };
        let uid = uid_at(addr)?;
        let name = accounts::local_name(uid)?;
        let policy = recorded_settings(&env_dir(&name)).net;
        (policy.mode == Mode::Restricted).then_some(Env { name, uid, policy })
    }

    fn denied(&self, env: &Env, attempt: &Attempt) {
        let Some(link) = link(env.uid) else { return };
        let program = list::holder_pid(&env_dir(&env.name))
            .and_then(|ns| owner::program(ns, env.uid, attempt.proto, attempt.from));
        let line = log_line(&link.veth, attempt, program.as_deref());
        // One record per write; a failure loses one line of the log.
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = kmsg.write_all(line.as_bytes());
        }
    }
}

/// The kernel log record of `attempt`, made by `program`, from the
/// environment whose veth is `veth` (priority 4, warning, as the firewall's
/// LOG target writes).
fn log_line(veth: &str, attempt: &Attempt, program: Option<&str>) -> String {
    let name = word(&attempt.name);
    let dest = attempt.dest.map_or(name.clone(), |a| a.to_string());
    let program = word(program.unwrap_or_default());
    format!(
        "<4>{LOG_PREFIX}IN={veth} DST={dest} PROTO={} DPT={} NAME={name} PROG={program}\n",
        attempt.proto, attempt.port
    )
}

/// `text` as one word of the record (`-` when empty): the environment chose
/// it, so only a name's characters go in.
fn word(text: &str) -> String {
    if text.is_empty() {
        return "-".to_owned();
    }
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_back_as_the_firewall_writes_them() {
        let attempt = Attempt {
            proto: "TCP",
            name: "evil.example DST=1.2.3.4".into(),
            dest: Some("192.0.2.9".parse().unwrap()),
            port: 443,
            from: "100.64.0.7:40000".parse().unwrap(),
        };
        let line = log_line("lbx3", &attempt, Some("curl x=1"));
        assert_eq!(
            line,
            "<4>llima-box deny: IN=lbx3 DST=192.0.2.9 PROTO=TCP DPT=443 NAME=evil.example?DST?1.2.3.4 PROG=curl?x?1\n"
        );
        // As /dev/kmsg hands the record back.
        let record = format!("4,77,1000,-;{}", &line[3..]);
        let (_, logged) = crate::netlog::parse(&record).unwrap();
        let logged = logged.unwrap();
        assert_eq!(
            (logged.iface.as_str(), logged.dest.as_str(), logged.port),
            ("lbx3", "192.0.2.9", Some(443))
        );
        assert_eq!(logged.program.as_deref(), Some("curl?x?1"));
        let dns = Attempt {
            proto: "UDP",
            name: "tracker.example".into(),
            dest: None,
            port: 53,
            from: "100.64.0.7:40001".parse().unwrap(),
        };
        let line = log_line("lbx3", &dns, None);
        assert!(
            line.contains(" DST=tracker.example PROTO=UDP DPT=53 NAME=tracker.example PROG=-\n")
        );
        let (_, logged) = crate::netlog::parse(&format!("4,78,1001,-;{}", &line[3..])).unwrap();
        assert_eq!(logged.unwrap().program, None);
    }
}

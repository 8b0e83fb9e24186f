//! The connection attempts the guard refused (see `guard::DENY`), read back
//! from the kernel's log for `net log` and `list`. The log keeps them with
//! the interface they came in on (an environment's veth) or, for a process
//! of the guest's own namespace, its uid, so no process of the agent has to
//! run to collect them. The kernel's buffer is a ring: a flood or a long
//! uptime pushes the oldest out (journald keeps a copy).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime};

use llima_box_proto::names::valid_env_name;
use llima_box_proto::net::Denial;
use llima_box_proto::paths::is_env_uid;
use llima_box_proto::time::rfc3339_secs;

use crate::accounts;
use crate::ensure::net::link;
use crate::guard::LOG_PREFIX;

/// One refusal as the kernel logged it.
#[derive(Debug, PartialEq, Eq)]
pub struct Logged {
    /// The record's sequence number in the kernel's log.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The interface it came in on (empty: made in the guest's namespace).
    pub iface: String,
    pub uid: Option<u32>,
    pub proto: String,
    pub dest: String,
    pub port: Option<u16>,
    /// The name asked for (restricted mode's refusals).
    pub name: Option<String>,
    /// The program that tried, when known (restricted mode's refusals).
    pub program: Option<String>,
}

impl Logged {
    /// Whether it came from the environment whose veth is `veth` and whose
    /// user is `uid`.
    pub fn of(&self, veth: &str, uid: u32) -> bool {
        self.iface == veth || (self.iface.is_empty() && self.uid == Some(uid))
    }

    /// As reported, its time from `now` (wall clock) and `now_usec` (the
    /// log's clock).
    pub fn denial(&self, now: SystemTime, now_usec: u64) -> Denial {
        let ago = Duration::from_micros(now_usec.saturating_sub(self.usec));
        Denial {
            time: rfc3339_secs(now.checked_sub(ago).unwrap_or(now)),
            proto: self.proto.clone(),
            dest: self.dest.clone(),
            port: self.port,
            name: self.name.clone(),
            program: self.program.clone(),
        }
    }
}

/// A record of `/dev/kmsg` ("PRIO,SEQ,USEC,FLAGS;MESSAGE", then continuation
/// lines) when it is a refusal of the guard's.
pub fn parse(record: &str) -> Option<(u64, Option<Logged>)> {
    let (header, rest) = record.split_once(';')?;
    let mut h = header.split(',');
    let seq = h.nth(1)?.parse().ok()?;
    let usec = h.next()?.parse().ok()?;
    let message = rest.lines().next().unwrap_or_default();
    let Some(fields) = message.strip_prefix(LOG_PREFIX) else {
        return Some((seq, None));
    };
    let field = |key: &str| {
        fields
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let logged = Logged {
        seq,
        usec,
        iface: field("IN").unwrap_or_default().to_owned(),
        uid: field("UID").and_then(|u| u.parse().ok()),
        proto: field("PROTO").unwrap_or("?").to_owned(),
        dest: field("DST")?.to_owned(),
        port: field("DPT").and_then(|p| p.parse().ok()),
        name: field("NAME").filter(|n| *n != "-").map(str::to_owned),
        program: field("PROG").filter(|n| *n != "-").map(str::to_owned),
    };
    Some((seq, Some(logged)))
}

/// The refusals the kernel's log holds after record `after`, and the last
/// record's sequence number (or `after`).
pub fn read(after: u64) -> std::io::Result<(Vec<Logged>, u64)> {
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut found = Vec::new();
    let mut last = after;
    // One record per read; a record is at most 8 KiB with its dictionary.
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // Records were overwritten while reading: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some((seq, logged)) = parse(&String::from_utf8_lossy(&buf[..n])) else {
            continue;
        };
        if seq <= after {
            continue;
        }
        last = last.max(seq);
        found.extend(logged);
    }
    Ok((found, last))
}

/// The refusals of the environment `name` logged after record `after`,
/// and the `after` for what comes next.
pub fn of_env(name: &str, after: u64) -> Result<(Vec<Denial>, u64), String> {
    if !valid_env_name(name) {
        return Err(format!("invalid environment name {name:?}"));
    }
    let uid = accounts::local_uid(name)
        .filter(|u| is_env_uid(*u))
        .ok_or_else(|| format!("there is no environment {name}"))?;
    let veth = link(uid)
        .ok_or_else(|| format!("uid {uid} has no network"))?
        .veth;
    let (logged, next) = read(after).map_err(|e| format!("cannot read the kernel's log: {e}"))?;
    let (now, usec) = (SystemTime::now(), now_usec());
    let denials = logged
        .iter()
        .filter(|l| l.of(&veth, uid))
        .map(|l| l.denial(now, usec))
        .collect();
    Ok((denials, next))
}

/// How many of `logged` came from the environment user `uid`.
pub fn count_of(logged: &[Logged], uid: u32) -> u32 {
    let Some(veth) = link(uid).map(|l| l.veth) else {
        return 0;
    };
    logged.iter().filter(|l| l.of(&veth, uid)).count() as u32
}

/// Microseconds since boot on the log's clock.
pub fn now_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORWARDED: &str = "4,1207,93122334,-;llima-box deny: IN=lbx3 OUT=eth0 \
        MAC=aa:bb SRC=100.64.0.7 DST=192.168.5.2 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF \
        PROTO=TCP SPT=41234 DPT=5432 WINDOW=64240 RES=0x00 SYN URGP=0 \n SUBSYSTEM=x\n";
    const LOCAL: &str = "4,1208,93500000,-;llima-box deny: IN= OUT=eth0 SRC=10.0.2.15 \
        DST=169.254.169.254 LEN=28 PROTO=UDP SPT=5 DPT=80 LEN=8 UID=70004 GID=70004 \n";

    #[test]
    fn refusals_are_read_from_kernel_records() {
        let (seq, l) = parse(FORWARDED).unwrap();
        let l = l.unwrap();
        assert_eq!(seq, 1207);
        assert_eq!(
            (l.usec, l.iface.as_str(), l.uid, l.proto.as_str()),
            (93122334, "lbx3", None, "TCP")
        );
        assert_eq!((l.dest.as_str(), l.port), ("192.168.5.2", Some(5432)));
        assert!(l.of("lbx3", 70003) && !l.of("lbx30", 70003));

        let (_, local) = parse(LOCAL).unwrap();
        let local = local.unwrap();
        assert_eq!((local.iface.as_str(), local.uid), ("", Some(70004)));
        assert!(local.of("lbx4", 70004) && !local.of("lbx3", 70003));

        // Other records count for the sequence only; broken ones not at all.
        assert_eq!(
            parse("6,1209,93600000,-;eth0: link up\n"),
            Some((1209, None))
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("4,x,1,-;llima-box deny: DST=1.1.1.1"), None);
        // No destination: not one of ours after all.
        assert_eq!(parse("4,5,1,-;llima-box deny: IN=lbx1"), None);
    }

    #[test]
    fn times_count_back_from_now() {
        let (_, l) = parse(FORWARDED).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_568_800);
        let d = l.unwrap().denial(now, 93122334 + 61_000_000);
        assert_eq!(d.time, "2025-12-01T05:58:59Z");
        assert_eq!((d.proto.as_str(), d.port), ("TCP", Some(5432)));
    }
}

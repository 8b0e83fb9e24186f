//! `list`: every environment's records and live state, read from the
//! records directory and `/proc` without starting a process.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use llima_box_proto::message::EnvInfo;
use llima_box_proto::names::valid_env_name;
use llima_box_proto::paths::ENVS_DIR;

use llima_box_proto::time::rfc3339_secs;

use crate::accounts;

/// Every environment under `ENVS_DIR`, sorted by name. A directory without
/// a valid name or a `project` record is not an environment (a half-made
/// one, or something else) and is left out. The account file and the
/// process table are read once for all of them.
pub fn list() -> std::io::Result<Vec<EnvInfo>> {
    let mut envs = vec![];
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let procs = processes();
    // Without the kernel's log (not readable), no counts.
    let logged = crate::netlog::read(0).map(|(l, _)| l).unwrap_or_default();
    let entries = match fs::read_dir(ENVS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(envs),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let dir = entry.path();
        if !valid_env_name(&name) {
            continue;
        }
        let Ok(project) = read_record(&dir.join("project")) else {
            continue;
        };
        let uid = accounts::uid_of(&passwd, &name);
        let mut env = info(&name, &dir, project, uid, &procs);
        env.denied = uid.map_or(0, |u| crate::netlog::count_of(&logged, u));
        envs.push(env);
    }
    envs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(envs)
}

fn info(name: &str, dir: &Path, project: String, uid: Option<u32>, procs: &[Proc]) -> EnvInfo {
    let holder = holder_pid(dir);
    let processes = match (holder, uid) {
        (Some(pid), Some(uid)) => processes_in_namespace_of(pid, uid, procs),
        _ => 0,
    };
    let last_used = fs::metadata(dir.join("last_used"))
        .and_then(|m| m.modified())
        .map(rfc3339_secs)
        .unwrap_or_default();
    EnvInfo {
        name: name.to_owned(),
        project,
        created: read_record(&dir.join("created")).unwrap_or_default(),
        last_used,
        running: holder.is_some(),
        active: processes > 0,
        processes,
        // A capped home's quota says at once what a walk would add up.
        home_bytes: uid
            .and_then(|u| crate::homes::usage(name, u))
            .unwrap_or_else(|| apparent_size(&crate::homes::data_dir(name))),
        denied: 0,
    }
}

/// A record file's text without its trailing newlines.
fn read_record(path: &Path) -> std::io::Result<String> {
    Ok(fs::read_to_string(path)?.trim_end_matches('\n').to_owned())
}

/// The holder's pid when the process recorded in `DIR/holder` ("BOOT_ID PID
/// STARTTIME") still runs: the three together survive pid reuse and reboots.
pub fn holder_pid(dir: &Path) -> Option<u32> {
    let rec = fs::read_to_string(dir.join("holder")).ok()?;
    let [boot, pid, start] = rec.split_whitespace().collect::<Vec<_>>()[..] else {
        return None;
    };
    let pid: u32 = pid.parse().ok()?;
    let now_boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (now_boot.trim() == boot && start_time(&stat)? == start).then_some(pid)
}

/// The record [`holder_pid`] reads for the live process `pid`.
pub fn identity(pid: u32) -> Option<String> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(format!("{} {pid} {}", boot.trim(), start_time(&stat)?))
}

/// The oldest child of `parent`, from one read of /proc.
pub fn first_child(parent: u32) -> Option<u32> {
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            let start: u64 = start_time(&stat)?.parse().ok()?;
            (ppid == parent).then_some((start, pid))
        })
        .min()
        .map(|(_, pid)| pid)
}

/// Field 22 of `/proc/PID/stat` (start time), counted after the command
/// name, which may itself contain spaces and parentheses.
fn start_time(stat: &str) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)
}

/// Processes of `uid` in the PID namespace of `holder` (the holder itself
/// runs as root and is not counted).
fn processes_in_namespace_of(holder: u32, uid: u32, procs: &[Proc]) -> u32 {
    let Ok(ns) = fs::read_link(format!("/proc/{holder}/ns/pid")) else {
        return 0;
    };
    procs
        .iter()
        .filter(|p| p.uid == uid)
        .filter(|p| fs::read_link(format!("/proc/{}/ns/pid", p.pid)).is_ok_and(|l| l == ns))
        .count() as u32
}

/// A running process and its effective uid (the owner of its /proc
/// directory).
pub struct Proc {
    pub pid: u32,
    pub uid: u32,
}

/// Every running process, from one read of /proc.
pub fn processes() -> Vec<Proc> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_str()?.parse().ok()?;
            let uid = p.metadata().ok()?.uid();
            Some(Proc { pid, uid })
        })
        .collect()
}

/// What `du -sb --one-file-system` reports: the apparent sizes of
/// everything under `root`, hard links once, not crossing into other
/// filesystems. 0 when `root` is missing.
fn apparent_size(root: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = top.size();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total += m.size();
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 2";
        assert_eq!(start_time(stat), Some("98765"));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn own_identity_is_a_live_holder_record_and_children_are_found() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("holder"),
            identity(std::process::id()).unwrap(),
        )
        .unwrap();
        assert_eq!(holder_pid(d.path()), Some(std::process::id()));
        // Other tests start children of this process: a shell's own child.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(first_child(sh.id()), line.trim().parse().ok());
        assert_eq!(first_child(line.trim().parse().unwrap()), None);
        sh.kill().unwrap();
        sh.wait().unwrap();
    }

    #[test]
    fn own_start_time_is_readable() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(start_time(&stat).unwrap().parse::<u64>().is_ok());
    }

    #[test]
    fn the_process_table_has_this_process_as_its_user() {
        let me = std::process::id();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert!(processes().iter().any(|p| p.pid == me && p.uid == uid));
    }

    #[test]
    fn apparent_size_counts_hard_links_once() {
        let d = std::env::temp_dir().join(format!("llb-size-{}", std::process::id()));
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a"), vec![0u8; 1000]).unwrap();
        fs::write(d.join("sub/b"), vec![0u8; 300]).unwrap();
        fs::hard_link(d.join("a"), d.join("sub/a2")).unwrap();
        std::os::unix::fs::symlink("a", d.join("link")).unwrap();
        let dirs: u64 = [&d, &d.join("sub")]
            .iter()
            .map(|p| fs::metadata(p).unwrap().size())
            .sum();
        let link = fs::symlink_metadata(d.join("link")).unwrap().size();
        assert_eq!(apparent_size(&d), dirs + 1000 + 300 + link);
        assert_eq!(apparent_size(&d.join("missing")), 0);
        fs::remove_dir_all(&d).unwrap();
    }
}

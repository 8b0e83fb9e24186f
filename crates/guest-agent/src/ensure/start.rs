//! Starting an environment's holder: a transient systemd unit (whose
//! cgroup carries the environment's limits) running `env-holder`, waited
//! for until its spawn server listens, then joined to the guest's network.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use llima_box_proto::paths::{AGENT_PATH, AGENT_VERSION_PATH, SOCKETS_DIR};
use llima_box_proto::settings::Settings;

use super::{EnsureError, io};
use crate::delete::stop_units;
use crate::{guard, list, tools};

/// Each environment's share of the guest: so that one that forks without
/// end or fills its memory hits its own limits, not the others'. Memory
/// counts its tmpfs pages; its scratch tmpfs (/tmp, /var/tmp, /dev/shm,
/// /run/lock) is capped too, so filling it ends in "no space" rather than
/// in the OOM killer.
const TASKS_MAX: u32 = 4096;
const MEMORY_PERCENT: u64 = 50;
/// Set rather than left out, so that CPU and IO are shared per
/// environment rather than per thread.
const DEFAULT_WEIGHT: u32 = 100;
const SCRATCH_PERCENT: u64 = 25;
/// Under TCG the namespace setup takes seconds.
const READY_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// The guest's memory in KiB, from the text of /proc/meminfo.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The guest's memory in KiB.
pub fn guest_memory_kib() -> Result<u64, EnsureError> {
    let meminfo = fs::read_to_string("/proc/meminfo").map_err(io("cannot read /proc/meminfo"))?;
    mem_total_kib(&meminfo).ok_or_else(|| {
        io("cannot read the guest's memory size")(std::io::Error::other("no MemTotal"))
    })
}

/// The unit properties of the limits in `settings`, each its default
/// when not set (`total_kib`: the guest's memory).
pub fn limit_properties(settings: &Settings, total_kib: u64) -> Vec<String> {
    Settings {
        memory_max: Some(
            settings
                .memory_max
                .unwrap_or(total_kib * 1024 * MEMORY_PERCENT / 100),
        ),
        tasks_max: Some(settings.tasks_max.unwrap_or(TASKS_MAX)),
        cpu_weight: Some(settings.cpu_weight.unwrap_or(DEFAULT_WEIGHT)),
        io_weight: Some(settings.io_weight.unwrap_or(DEFAULT_WEIGHT)),
        ..Default::default()
    }
    .unit_properties()
}

/// The systemd-run argv that starts the holder of the environment `name`
/// recorded in `dir` as `unit`, with `settings`.
fn unit_argv(
    dir: &Path,
    unit: &str,
    name: &str,
    admin: u32,
    total_kib: u64,
    settings: &Settings,
) -> Vec<String> {
    let version = fs::read_to_string(AGENT_VERSION_PATH).unwrap_or_default();
    let (resolvers, own) = guard::guest_nameservers();
    let mut argv: Vec<String> = [
        "--quiet",
        "--collect",
        &format!("--unit={unit}"),
        &format!("--description=llima-box environment {name}"),
        "-p",
        "StandardOutput=null",
        "-p",
        &format!("StandardError=file:{}/holder.log", dir.display()),
        "-p",
        "MemorySwapMax=0",
        // The kernel kills what outgrew the limit, not the whole
        // environment.
        "-p",
        "OOMPolicy=continue",
    ]
    .map(String::from)
    .to_vec();
    for p in limit_properties(settings, total_kib) {
        argv.extend(["-p".to_string(), p]);
    }
    argv.extend(
        [
            "--",
            AGENT_PATH,
            "env-holder",
            &dir.display().to_string(),
            name,
            &admin.to_string(),
            version.trim(),
            &(total_kib * SCRATCH_PERCENT / 100).to_string(),
        ]
        .map(String::from),
    );
    // Their own resolver list when the guest's is a stub on its loopback,
    // which is not theirs.
    if own {
        argv.extend(resolvers);
    }
    argv
}

/// Starts the holder of the environment (or spare) `name` recorded in
/// `dir` as the unit `unit`, its socket owned by `admin`, and returns the
/// pid of its namespace's first process once that serves and has its
/// network.
pub fn start_holder(dir: &Path, unit: &str, name: &str, admin: u32) -> Result<u32, EnsureError> {
    // Nothing of the environment may run before the guard is up.
    guard::ensure(admin, false)?;
    let settings = super::recorded_settings(dir);
    let uid = crate::accounts::local_uid(name);
    if let Some(uid) = uid {
        crate::homes::set_cap(name, uid, settings.disk_max)?;
    }
    // Leftovers of a holder that died; a claimed spare's unit has the
    // spare's name.
    stop_units(dir, unit);
    for f in ["holder", "holder_parent"] {
        match fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot clear the holder's records")(e));
            }
            _ => {}
        }
    }
    fs::write(dir.join("ready"), "").map_err(io("cannot write the records"))?;
    fs::write(dir.join("unit"), unit).map_err(io("cannot write the records"))?;
    // Traversable, so that the admin reaches its own socket directory.
    let run = Path::new(SOCKETS_DIR).parent().expect("a directory");
    fs::create_dir_all(SOCKETS_DIR).map_err(io("cannot make the sockets' directory"))?;
    fs::set_permissions(run, fs::Permissions::from_mode(0o711))
        .map_err(io("cannot make the sockets' directory"))?;
    fs::set_permissions(SOCKETS_DIR, fs::Permissions::from_mode(0o700))
        .map_err(io("cannot make the sockets' directory"))?;
    std::os::unix::fs::chown(SOCKETS_DIR, Some(admin), None)
        .map_err(io("cannot make the sockets' directory"))?;
    let total = guest_memory_kib()?;
    let failed = |why: String| EnsureError::Holder {
        name: name.to_owned(),
        why,
        log: log_tail(dir),
    };
    let started = tools::run(
        Command::new("systemd-run").args(unit_argv(dir, unit, name, admin, total, &settings)),
        None,
    );
    started.map_err(|e| failed(format!("systemd-run: {e}")))?;
    let started = Instant::now();
    let mut parent: Option<u32> = None;
    let mut checked_unit = Instant::now();
    loop {
        let ready = fs::metadata(dir.join("ready")).is_ok_and(|m| m.len() > 0);
        if parent.is_none() {
            parent = fs::read_to_string(dir.join("holder_parent"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
        }
        if ready {
            let pid = parent
                .and_then(list::first_child)
                .ok_or_else(|| failed("it reported ready but has no namespace process".into()))?;
            // Before it counts as running: no command runs without its network.
            super::net::connect(pid, uid.unwrap_or_default(), &settings.net)?;
            let record =
                list::identity(pid).ok_or_else(|| failed("its namespace process ended".into()))?;
            fs::write(dir.join("holder"), record).map_err(io("cannot record the holder"))?;
            return Ok(pid);
        }
        // Gone: its process, or (before it wrote its pid) its unit.
        let gone = match parent {
            // SAFETY: signal 0 only checks that the process exists.
            Some(p) => (unsafe { libc::kill(p as i32, 0) }) != 0,
            None if checked_unit.elapsed() >= Duration::from_secs(1) => {
                checked_unit = Instant::now();
                !unit_active(unit)
            }
            None => false,
        };
        if gone {
            std::thread::sleep(Duration::from_millis(200));
            if fs::metadata(dir.join("ready")).is_ok_and(|m| m.len() > 0) {
                continue;
            }
            return Err(failed("it failed".into()));
        }
        if started.elapsed() >= READY_WITHIN {
            stop_units(dir, unit);
            return Err(failed(format!(
                "it did not become ready within {} s",
                READY_WITHIN.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

pub fn unit_active(unit: &str) -> bool {
    tools::quiet(Command::new("systemctl").args([
        "is-active",
        "--quiet",
        &format!("{unit}.service"),
    ]))
}

/// The last lines of the holder's log, where it says why it failed.
fn log_tail(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("holder.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_guests_memory() {
        let meminfo = "MemTotal:        4026512 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(4026512));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        let dir = Path::new("/s/envs/app");
        let defaults = Settings::default();
        let argv = unit_argv(dir, "llima-box-env-app", "app", 1000, 4000000, &defaults);
        let joined = argv.join(" ");
        assert!(joined.contains("-p MemoryMax=2048000000"), "{joined}");
        assert!(joined.contains("-p TasksMax=4096"), "{joined}");
        assert!(
            joined.contains("-p CPUWeight=100 -p IOWeight=100"),
            "{joined}"
        );
        // A project's own limits replace the defaults they name.
        let own = Settings {
            memory_max: Some(1 << 30),
            io_weight: Some(10),
            ..Default::default()
        };
        let own = unit_argv(dir, "u", "app", 1000, 4000000, &own).join(" ");
        assert!(
            own.contains(
                "-p MemoryMax=1073741824 -p TasksMax=4096 -p CPUWeight=100 -p IOWeight=10"
            ),
            "{own}"
        );
        assert!(joined.contains("StandardError=file:/s/envs/app/holder.log"));
        let holder = argv.iter().position(|a| a == "env-holder").unwrap();
        assert_eq!(argv[holder - 2], "--");
        assert_eq!(
            &argv[holder + 1..holder + 4],
            ["/s/envs/app", "app", "1000"]
        );
        assert_eq!(argv[holder + 5], "1000000", "the scratch size in KiB");
    }
}

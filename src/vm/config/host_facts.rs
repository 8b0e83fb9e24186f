//! What the loading host contributes to the filled config (Lima recomputes
//! these at every load and never stores them). A plain struct, so tests fill
//! it by hand and the merge logic stays pure.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostFacts {
    /// Lima's name for the host architecture: `x86_64`, `aarch64`, ...
    pub arch: String,
    pub is_macos: bool,
    pub ncpu: u32,
    pub memory_bytes: u64,
    pub user: String,
    pub uid: u32,
    /// The GECOS full name.
    pub comment: String,
    pub home: PathBuf,
    /// "" when it cannot be determined (Lima then leaves the guest's alone).
    pub timezone: String,
}

impl HostFacts {
    /// Reads the real host.
    pub(crate) fn current() -> HostFacts {
        let uid = rustix::process::getuid().as_raw();
        let (user, comment, pw_home) = passwd_entry(uid);
        let home = crate::vm::dirs::home_dir()
            .ok()
            .or(pw_home)
            .unwrap_or_else(|| PathBuf::from("/"));
        HostFacts {
            arch: crate::vm::sys::host_arch().to_string(),
            is_macos: cfg!(target_os = "macos"),
            ncpu: host_cpus(),
            memory_bytes: physical_memory(),
            user: user.unwrap_or_else(|| uid.to_string()),
            uid,
            comment: comment.unwrap_or_default(),
            home,
            timezone: host_timezone(Path::new("/etc")),
        }
    }
}

/// CPUs this process may run on, as Go's `runtime.NumCPU` counts them
/// (the affinity mask; cgroup quotas do not count, unlike Rust's
/// `available_parallelism`).
#[cfg(target_os = "linux")]
fn host_cpus() -> u32 {
    // SAFETY: a zeroed cpu_set_t is valid, and the kernel fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as u32;
            }
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(not(target_os = "linux"))]
fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        0
    }
}

/// Name, GECOS full name and home of `uid` from the passwd database.
fn passwd_entry(uid: u32) -> (Option<String>, Option<String>, Option<PathBuf>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: the buffer outlives every pointer read from `pwd` below.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return (None, None, None);
    }
    let text = |p: *const libc::c_char| {
        if p.is_null() {
            None
        } else {
            // SAFETY: getpwuid_r filled these with NUL-terminated strings in `buf`.
            Some(
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    // Like Go's os/user: the full name is the GECOS field up to the first comma.
    let gecos = text(pwd.pw_gecos).map(|g| g.split(',').next().unwrap_or("").to_string());
    (
        text(pwd.pw_name),
        gecos,
        text(pwd.pw_dir).map(PathBuf::from),
    )
}

/// `/etc/timezone` when it names a zone, else the `/etc/localtime` link
/// target below its zoneinfo root, else "".
pub(crate) fn host_timezone(etc: &Path) -> String {
    if let Ok(tz) = std::fs::read_to_string(etc.join("timezone")) {
        let tz = tz.trim();
        if !tz.is_empty() && !tz.contains("..") && !tz.starts_with('/') {
            return tz.to_string();
        }
    }
    if let Ok(target) = std::fs::read_link(etc.join("localtime")) {
        let s = target.to_string_lossy();
        if let Some((_, zone)) = s.split_once("zoneinfo/") {
            return zone.to_string();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezone_from_file_then_link() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_timezone(dir.path()), "");
        std::os::unix::fs::symlink(
            "/usr/share/zoneinfo/Europe/Paris",
            dir.path().join("localtime"),
        )
        .unwrap();
        assert_eq!(host_timezone(dir.path()), "Europe/Paris");
        std::fs::write(dir.path().join("timezone"), "Asia/Tokyo\n").unwrap();
        assert_eq!(host_timezone(dir.path()), "Asia/Tokyo");
    }

    #[test]
    fn current_host_is_plausible() {
        let h = HostFacts::current();
        assert!(h.ncpu >= 1);
        assert!(h.memory_bytes > 0);
        assert!(!h.user.is_empty());
        assert_eq!(h.uid, rustix::process::getuid().as_raw());
    }
}

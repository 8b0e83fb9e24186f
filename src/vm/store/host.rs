//! Facts about this host in Lima's vocabulary, and the builtin defaults
//! that depend on them.

use crate::vm::config::LimaYaml;
use crate::vm::units::format_bytes;

/// Go's `GOOS` for this host (`linux`, `darwin`), as `HostOS` shows it.
pub fn host_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    }
}

/// Lima's name for this host's architecture (`x86_64`, `aarch64`, …).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7l",
        "powerpc64" => "ppc64le",
        arch => arch,
    }
}

/// Fills the few fields Inspect needs with Lima's builtin defaults where
/// the loaded config left them unset. This exists only until
/// `config::load_instance` fills defaults itself; then every field here is
/// already set and this becomes a no-op to delete.
pub(super) fn fill_unset(y: &mut LimaYaml) {
    y.vm_type.get_or_insert_with(|| "qemu".to_string());
    y.arch.get_or_insert_with(|| host_arch().to_string());
    y.cpus.get_or_insert_with(|| {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        ncpu.min(4) as u32
    });
    y.memory
        .get_or_insert_with(|| format_bytes((total_memory() / 2).min(4 << 30)));
    y.disk.get_or_insert_with(|| "100GiB".to_string());
    y.ssh
        .get_or_insert_with(Default::default)
        .local_port
        .get_or_insert(0);
}

/// Physical memory in bytes (0 if the OS will not say).
fn total_memory() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return 0;
    }
    pages as u64 * page_size as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::units::parse_bytes;

    #[test]
    fn fills_only_unset_fields() {
        let mut y = LimaYaml {
            cpus: Some(7),
            memory: Some("1GiB".into()),
            ..Default::default()
        };
        fill_unset(&mut y);
        assert_eq!(y.vm_type.as_deref(), Some("qemu"));
        assert_eq!(y.arch.as_deref(), Some(host_arch()));
        assert_eq!(y.cpus, Some(7));
        assert_eq!(y.memory.as_deref(), Some("1GiB"));
        assert_eq!(y.disk.as_deref(), Some("100GiB"));
        assert_eq!(y.ssh.unwrap().local_port, Some(0));

        let mut d = LimaYaml::default();
        fill_unset(&mut d);
        assert!((1..=4).contains(&d.cpus.unwrap()));
        let mem = parse_bytes(d.memory.as_deref().unwrap()).unwrap();
        assert!(mem > 0 && mem <= 4 << 30, "{mem}");
    }

    #[test]
    fn lima_arch_names() {
        assert!(
            ["x86_64", "aarch64", "armv7l", "ppc64le", "riscv64", "s390x"].contains(&host_arch())
        );
        assert!(["linux", "darwin"].contains(&host_os()));
    }
}

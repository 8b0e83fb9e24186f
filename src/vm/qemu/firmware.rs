//! UEFI firmware lookup for guests that do not boot a kernel directly,
//! in Lima's search order.

use std::path::{Path, PathBuf};

use crate::vm::layout;

/// Where UEFI code firmware for `arch` may be, best first: the instance's
/// own copy, the user's, the one next to the QEMU binary, then distro paths.
fn candidates(arch: &str, instance_dir: &Path, qemu: &Path, home: &Path) -> Vec<PathBuf> {
    let mut c = vec![instance_dir.join(layout::QEMU_EFI_CODE)];
    let (e, distro): (&str, &[&str]) = match arch {
        "x86_64" => (
            "x86_64",
            &[
                "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/edk2/ovmf/OVMF_CODE.fd",
                "/usr/share/qemu/ovmf-x86_64.bin",
                "/usr/share/qemu/ovmf-x86_64-4m.bin",
            ],
        ),
        "aarch64" => (
            "aarch64",
            &[
                "/usr/share/edk2/aarch64/QEMU_CODE.fd",
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
            ],
        ),
        "armv7l" => (
            "arm",
            &[
                "/usr/share/edk2/arm/QEMU_CODE.fd",
                "/usr/share/AAVMF/AAVMF32_CODE.fd",
            ],
        ),
        "riscv64" => (
            "riscv",
            &[
                "/usr/share/qemu-efi-riscv64/RISCV_VIRT_CODE.fd",
                "/usr/share/edk2/riscv/RISCV_VIRT_CODE.fd",
            ],
        ),
        _ => return c,
    };
    let name = format!("edk2-{e}-code.fd");
    c.push(home.join(".local/share/qemu").join(&name));
    if let Some(bindir) = qemu.parent() {
        if let Some(prefix) = bindir.parent() {
            c.push(prefix.join("share/qemu").join(&name));
        }
        c.push(bindir.join("share").join(&name));
    }
    c.extend(distro.iter().map(PathBuf::from));
    c
}

/// The first firmware file that exists for `arch`. `qemu` is the resolved
/// path of the QEMU binary (its install prefix is searched).
pub(crate) fn find_firmware(
    arch: &str,
    instance_dir: &Path,
    qemu: &Path,
    home: &Path,
) -> Option<PathBuf> {
    candidates(arch, instance_dir, qemu, home)
        .into_iter()
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_prefers_instance_then_user_then_qemu_prefix() {
        let c = candidates(
            "x86_64",
            Path::new("/l/d"),
            Path::new("/opt/q/bin/qemu-system-x86_64"),
            Path::new("/home/u"),
        );
        let s: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            &s[..5],
            [
                "/l/d/qemu-efi-code.fd",
                "/home/u/.local/share/qemu/edk2-x86_64-code.fd",
                "/opt/q/share/qemu/edk2-x86_64-code.fd",
                "/opt/q/bin/share/edk2-x86_64-code.fd",
                "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
            ]
        );
    }

    #[test]
    fn instance_copy_wins() {
        let dir = tempfile::tempdir().unwrap();
        let fw = dir.path().join(layout::QEMU_EFI_CODE);
        std::fs::write(&fw, b"fw").unwrap();
        let q = Path::new("/nonexistent/bin/qemu-system-riscv64");
        assert_eq!(
            find_firmware("riscv64", dir.path(), q, dir.path()).unwrap(),
            fw
        );
        std::fs::remove_file(&fw).unwrap();
        assert_eq!(find_firmware("ppc64le", dir.path(), q, dir.path()), None);
    }
}

//! Lima's `Validate` on a filled config: every problem names its field.

use std::path::Path;

use super::model::*;
use super::{COMPAT_VERSION, ConfigError, parse_version, version_less};
use crate::vm::units::parse_bytes;

pub(crate) const ARCHES: [&str; 6] = ["x86_64", "aarch64", "armv7l", "ppc64le", "riscv64", "s390x"];
const OSES: [&str; 4] = ["Linux", "Darwin", "FreeBSD", "Windows"];
const VM_TYPES: [&str; 4] = ["qemu", "vz", "wsl2", "krunkit"];
const MOUNT_TYPES: [&str; 4] = ["reverse-sshfs", "9p", "virtiofs", "wsl2"];
const PROVISION_MODES: [&str; 7] = [
    "system",
    "user",
    "boot",
    "dependency",
    "data",
    "yq",
    "ansible",
];

/// Checks a filled config. The error names the first problem's field; any
/// further problems are listed in its message, so one run shows them all.
pub(crate) fn validate(y: &LimaYaml, file: &Path) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    check(y, &mut |field: String, message: String| {
        problems.push((field, message))
    });
    let mut problems = problems.into_iter();
    let Some((field, mut message)) = problems.next() else {
        return Ok(());
    };
    for (f, m) in problems {
        message.push_str(&format!("; and field `{f}` {m}"));
    }
    Err(ConfigError::Invalid {
        path: file.to_path_buf(),
        field,
        message,
    })
}

fn one_of(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_abs(p: &str) -> bool {
    p.starts_with('/')
}

fn check_file(f: &File, field: &str, bad: &mut dyn FnMut(String, String)) {
    let arch = f.arch.as_deref().unwrap_or("");
    if !ARCHES.contains(&arch) {
        bad(
            format!("{field}.arch"),
            format!("must be one of {}, got {arch:?}", one_of(&ARCHES)),
        );
    }
    if !f.location.contains("://") && !is_abs(&f.location) && !f.location.starts_with('~') {
        bad(
            format!("{field}.location"),
            format!("must be a URL or an absolute path, got {:?}", f.location),
        );
    }
    if let Some(d) = f.digest.as_deref().filter(|d| !d.is_empty()) {
        let ok = match d.split_once(':') {
            Some(("sha256", h)) => h.len() == 64,
            Some(("sha512", h)) => h.len() == 128,
            Some(("sha384", h)) => h.len() == 96,
            _ => false,
        } && d.split_once(':').is_some_and(|(_, h)| {
            h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !ok {
            bad(
                format!("{field}.digest"),
                format!("must be ALGORITHM:HEX such as sha256:<64 hex digits>, got {d:?}"),
            );
        }
    }
}

fn check(y: &LimaYaml, bad: &mut dyn FnMut(String, String)) {
    let mut bad = |f: &str, m: String| bad(f.to_string(), m);

    if y.base.as_ref().is_some_and(|b| !b.is_null()) {
        bad(
            "base",
            "must be empty: embed the base templates before writing lima.yaml".into(),
        );
    }
    if let Some(v) = &y.minimum_lima_version {
        if parse_version(v).is_none() {
            bad(
                "minimumLimaVersion",
                format!("must be a semantic version, got {v:?}"),
            );
        } else if version_less(COMPAT_VERSION, v) {
            bad(
                "minimumLimaVersion",
                format!(
                    "is {v}: the template requires Lima {v}, but llima-box is compatible with \
                     Lima {COMPAT_VERSION} only"
                ),
            );
        }
    }
    let os = y.os.as_deref().unwrap_or("");
    if !OSES.contains(&os) {
        bad(
            "os",
            format!("must be one of {}, got {os:?}", one_of(&OSES)),
        );
    }
    let arch = y.arch.as_deref().unwrap_or("");
    if !ARCHES.contains(&arch) {
        bad(
            "arch",
            format!("must be one of {}, got {arch:?}", one_of(&ARCHES)),
        );
    }
    let vm_type = y.vm_type.as_deref().unwrap_or("");
    if !VM_TYPES.contains(&vm_type) {
        bad(
            "vmType",
            format!("must be one of {}, got {vm_type:?}", one_of(&VM_TYPES)),
        );
    }
    if os == "Windows" && vm_type != "qemu" {
        bad(
            "vmType",
            format!("must be `qemu` for Windows guests, got {vm_type:?}"),
        );
    }

    let user = y.user.clone().unwrap_or_default();
    if let Some(shell) = &user.shell
        && os != "Windows"
        && !is_abs(shell)
    {
        bad(
            "user.shell",
            format!("must be an absolute path, got {shell:?}"),
        );
    }

    if y.images.is_empty() {
        bad("images", "must have at least one entry".into());
    }
    for (i, img) in y.images.iter().enumerate() {
        let field = format!("images[{i}]");
        check_file(&img.file, &field, &mut |f, m| bad(&f, m));
        if let Some(k) = &img.kernel {
            check_file(&k.file, &format!("{field}.kernel"), &mut |f, m| bad(&f, m));
            if k.file.arch != img.file.arch {
                bad(
                    &format!("{field}.kernel.arch"),
                    "must equal the image's arch".into(),
                );
            }
        }
        if let Some(initrd) = &img.initrd {
            check_file(initrd, &format!("{field}.initrd"), &mut |f, m| bad(&f, m));
            if initrd.arch != img.file.arch {
                bad(
                    &format!("{field}.initrd.arch"),
                    "must equal the image's arch".into(),
                );
            }
        }
    }

    if y.cpus.unwrap_or(0) == 0 {
        bad("cpus", "must be set to a positive number".into());
    }
    for (field, v) in [("memory", &y.memory), ("disk", &y.disk)] {
        let v = v.as_deref().unwrap_or("");
        if parse_bytes(v).is_none() {
            bad(field, format!("must be a size such as \"4GiB\", got {v:?}"));
        }
    }
    for (i, d) in y.additional_disks.iter().enumerate() {
        if !super::valid_identifier(d.name()) {
            bad(
                &format!("additionalDisks[{i}].name"),
                format!("must be a valid disk name, got {:?}", d.name()),
            );
        }
    }

    let home = user.home.as_deref().unwrap_or("");
    for (i, m) in y.mounts.iter().enumerate() {
        if !is_abs(&m.location) {
            bad(
                &format!("mounts[{i}].location"),
                format!("must be an absolute path, got {:?}", m.location),
            );
        } else if let Ok(st) = std::fs::metadata(&m.location)
            && !st.is_dir()
        {
            bad(
                &format!("mounts[{i}].location"),
                format!("refers to a non-directory path {:?}", m.location),
            );
        }
        let mp = m.mount_point.as_deref().unwrap_or("");
        let field = format!("mounts[{i}].mountPoint");
        if matches!(
            mp,
            "/" | "/bin" | "/dev" | "/etc" | "/home" | "/opt" | "/sbin" | "/tmp" | "/usr" | "/var"
        ) {
            bad(
                &field,
                format!("must not be a system path such as /etc or /usr, got {mp:?}"),
            );
        } else if mp == home {
            bad(
                &field,
                format!("must not be the guest user's home {home:?}"),
            );
        } else if mp.starts_with('~') {
            bad(&field, "must not start with `~`".into());
        } else if !is_abs(mp) {
            bad(&field, format!("must be an absolute path, got {mp:?}"));
        }
        if let Some(ms) = m.nine_p.as_ref().and_then(|p| p.msize.as_deref())
            && parse_bytes(ms).is_none()
        {
            bad(
                &format!("mounts[{i}].9p.msize"),
                format!("must be a size such as \"128KiB\", got {ms:?}"),
            );
        }
    }

    if let Some(port) = y.ssh.as_ref().and_then(|s| s.local_port)
        && port == 22
    {
        bad(
            "ssh.localPort",
            "must not be 22 (the guest's own sshd port)".into(),
        );
    }
    if let Some(mt) = &y.mount_type {
        if !MOUNT_TYPES.contains(&mt.as_str()) {
            bad(
                "mountType",
                format!("must be one of {}, got {mt:?}", one_of(&MOUNT_TYPES)),
            );
        }
        if y.mount_types_unsupported.contains(mt) {
            bad(
                "mountType",
                format!("must not be one of `mountTypesUnsupported`, got {mt:?}"),
            );
        }
    }

    for (i, p) in y.provision.iter().enumerate() {
        check_provision(i, p, os, &mut bad);
    }
    for (i, p) in y.probes.iter().enumerate() {
        if p.file.as_ref().is_some_and(|f| !f.is_null()) {
            bad(
                &format!("probes[{i}].file"),
                "must be inlined as `script`".into(),
            );
        }
        if p.script.as_deref().is_some_and(|s| !s.starts_with("#!")) {
            bad(
                &format!("probes[{i}].script"),
                "must start with a `#!` line".into(),
            );
        }
        if p.mode.as_deref().unwrap_or("readiness") != "readiness" {
            bad(&format!("probes[{i}].mode"), "must be `readiness`".into());
        }
    }

    let hr_enabled = y
        .host_resolver
        .as_ref()
        .and_then(|h| h.enabled)
        .unwrap_or(true);
    if hr_enabled && !y.dns.is_empty() {
        bad(
            "dns",
            "must be empty while `hostResolver.enabled` is true".into(),
        );
    }

    let mut seen_if: Vec<&str> = Vec::new();
    for (i, nw) in y.networks.iter().enumerate() {
        let field = format!("networks[{i}]");
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        let kinds = [set(&nw.lima), set(&nw.socket), nw.vz_nat == Some(true)];
        match kinds.iter().filter(|k| **k).count() {
            0 => bad(&field, "must set one of `lima`, `socket` or `vzNAT`".into()),
            1 => {}
            _ => bad(
                &field,
                "`lima`, `socket` and `vzNAT` are mutually exclusive".into(),
            ),
        }
        let iface = nw.interface.as_deref().unwrap_or("");
        if iface.len() >= 16 {
            bad(
                &format!("{field}.interface"),
                format!("must be shorter than 16 bytes, got {iface:?}"),
            );
        }
        if iface.contains([' ', '\t', '\n', '/']) {
            bad(
                &format!("{field}.interface"),
                "must not contain whitespace or slashes".into(),
            );
        }
        if iface == "eth0" {
            bad(
                &format!("{field}.interface"),
                "must not be `eth0` (reserved for user-mode networking)".into(),
            );
        }
        if seen_if.contains(&iface) {
            bad(
                &format!("{field}.interface"),
                format!("{iface:?} is used twice"),
            );
        }
        seen_if.push(iface);
    }

    for (k, v) in y.param.iter().flatten() {
        let mut chars = k.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            bad(
                "param",
                format!("key {k:?} must match ^[a-zA-Z][a-zA-Z0-9_]*$"),
            );
        }
        if v.chars().any(|c| c.is_control() && c != '\t') {
            bad(
                &format!("param.{k}"),
                "must not contain unprintable characters".into(),
            );
        }
    }

    let plain = y.plain == Some(true);
    match user.passwordless_sudo {
        Some(true) if os == "Darwin" => bad(
            "user.passwordlessSudo",
            "must be false for macOS guests".into(),
        ),
        Some(false) if os != "Darwin" && !plain => bad(
            "user.passwordlessSudo",
            "can be false only together with `plain: true`".into(),
        ),
        _ => {}
    }
}

fn check_provision(i: usize, p: &Provision, os: &str, bad: &mut dyn FnMut(&str, String)) {
    let field = |f: &str| format!("provision[{i}].{f}");
    let mode = p.mode();
    if p.file.as_ref().is_some_and(|f| !f.is_null()) {
        bad(
            &field("file"),
            "must be inlined as `script` before validation".into(),
        );
    }
    if !PROVISION_MODES.contains(&mode) {
        bad(
            &field("mode"),
            format!("must be one of {}, got {mode:?}", one_of(&PROVISION_MODES)),
        );
        return;
    }
    if mode != "dependency" && p.skip_default_dependency_resolution.is_some() {
        bad(
            &field("skipDefaultDependencyResolution"),
            "can only be set when mode is `dependency`".into(),
        );
    }
    if os == "Windows" && matches!(mode, "ansible" | "boot" | "yq") {
        bad(
            &field("mode"),
            format!("`{mode}` is not supported for Windows guests"),
        );
    }
    if matches!(mode, "data" | "yq") {
        match &p.path {
            None => bad(&field("path"), format!("must be set when mode is `{mode}`")),
            Some(path) if !is_abs(path) => bad(&field("path"), "must be an absolute path".into()),
            _ => {}
        }
        if mode == "data" && p.content.is_none() {
            bad(&field("content"), "must be set when mode is `data`".into());
        }
        if mode == "yq" && p.expression.is_none() {
            bad(&field("expression"), "must be set when mode is `yq`".into());
        }
        if let Some(perm) = &p.permissions
            && u32::from_str_radix(perm, 8).is_err()
        {
            bad(
                &field("permissions"),
                format!("must be an octal number, got {perm:?}"),
            );
        }
        return;
    }
    if mode != "ansible" && p.script.as_deref().unwrap_or("").is_empty() {
        bad(&field("script"), "must not be empty".into());
    }
    for (name, set) in [
        ("content", p.content.is_some()),
        ("overwrite", p.overwrite.is_some()),
        ("owner", p.owner.is_some()),
        ("path", p.path.is_some()),
        ("permissions", p.permissions.is_some()),
        ("format", p.format.is_some()),
    ] {
        if set {
            bad(&field(name), format!("cannot be set when mode is `{mode}`"));
        }
    }
    if p.playbook.as_deref().is_some_and(|s| !s.is_empty()) && mode != "ansible" {
        bad(
            &field("playbook"),
            "can only be set when mode is `ansible`".into(),
        );
    }
}

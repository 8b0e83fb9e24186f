//! `lima.env`, `param.env` and `etc_environment`: KEY=VALUE files that
//! boot.sh exports (values are taken verbatim up to the end of the line).

use std::fmt::Write;

use super::network::{SLIRP_DNS, SLIRP_GATEWAY, SLIRP_GUEST_IP};
use super::{CidataError, CidataInput, Provision, provision_index};

/// Env and param keys must be shell variable names, since boot.sh exports them.
pub(super) fn check_key(field: &str, key: &str) -> Result<(), CidataError> {
    let mut chars = key.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CidataError::Invalid {
            field: field.into(),
            reason: "must be a shell variable name ([A-Za-z_][A-Za-z0-9_]*)".into(),
        })
    }
}

/// The `LIMA_CIDATA_*` keys that apply to a QEMU guest with 9p mounts, in
/// Lima's order, so Lima's own guest scripts would also find what they read.
pub(super) fn lima_env(input: &CidataInput) -> String {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| vars.push((k.to_string(), v.to_string()));
    let u = &input.user;
    set("DEBUG", if input.debug { "true" } else { "false" });
    set("IID", &input.instance_id.to_string());
    set("NAME", &input.name);
    set("USER", &u.name);
    set("UID", &u.uid.to_string());
    let comment: String = u.comment.chars().filter(|c| !c.is_control()).collect();
    set("COMMENT", &comment);
    set("HOME", &u.home);
    set("SHELL", &u.shell);
    let host_home = input
        .mounts
        .iter()
        .find(|m| m.location == input.host_home)
        .map(|m| m.mount_point.as_str())
        .unwrap_or("");
    set("HOSTHOME_MOUNTPOINT", host_home);
    set("MOUNTS", &input.mounts.len().to_string());
    for (i, m) in input.mounts.iter().enumerate() {
        set(&format!("MOUNTS_{i}_MOUNTPOINT"), &m.mount_point);
    }
    set("MOUNTTYPE", input.share.as_str());
    set("DISKS", "0");
    for (i, p) in input.provisions.iter().enumerate() {
        if let Provision::Data(d) = p {
            let prefix = format!("DATAFILE_{}", provision_index(i));
            set(&format!("{prefix}_OVERWRITE"), &d.overwrite.to_string());
            set(&format!("{prefix}_OWNER"), &d.owner);
            set(&format!("{prefix}_PATH"), &d.path);
            set(
                &format!("{prefix}_PERMISSIONS"),
                &format!("{:o}", d.permissions),
            );
        }
    }
    set("GUEST_INSTALL_PREFIX", "/usr/local");
    set("UPGRADE_PACKAGES", "");
    set("CONTAINERD_USER", "");
    set("CONTAINERD_SYSTEM", "");
    set("SLIRP_DNS", SLIRP_DNS);
    set("SLIRP_GATEWAY", SLIRP_GATEWAY);
    set("SLIRP_IP_ADDRESS", SLIRP_GUEST_IP);
    // No host-side DNS forwarder: the guest uses slirp's own DNS.
    set("UDP_DNS_LOCAL_PORT", "0");
    set("TCP_DNS_LOCAL_PORT", "0");
    set("ROSETTA_ENABLED", "false");
    set("ROSETTA_BINFMT", "false");
    set("SKIP_DEFAULT_DEPENDENCY_RESOLUTION", "");
    set("VMTYPE", "qemu");
    set("VSOCK_PORT", "0");
    set("VIRTIO_PORT", "");
    set("PLAIN", "");
    set("NO_CLOUD_INIT", "");
    set("PASSWORDLESS_SUDO", "1");
    vars.iter().fold(String::new(), |mut out, (k, v)| {
        let _ = writeln!(out, "LIMA_CIDATA_{k}={v}");
        out
    })
}

/// `PARAM_<key>=<value>`, sorted by key.
pub(super) fn param_env(input: &CidataInput) -> String {
    input.params.iter().fold(String::new(), |mut out, (k, v)| {
        let _ = writeln!(out, "PARAM_{k}={v}");
        out
    })
}

/// The managed block of `/etc/environment`: sorted, empty values dropped.
pub(super) fn etc_environment(input: &CidataInput) -> String {
    let mut out = String::from("#LIMA-START\n");
    for (k, v) in input.env.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = writeln!(out, "{k}={v}");
    }
    out.push_str("#LIMA-END\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::cidata::tests::sample;

    fn parse(text: &str) -> Vec<(&str, &str)> {
        text.lines().map(|l| l.split_once('=').unwrap()).collect()
    }

    #[test]
    fn lima_env_has_the_applicable_keys_in_order() {
        let text = lima_env(&sample());
        let vars = parse(&text);
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| *key == format!("LIMA_CIDATA_{k}"))
                .unwrap_or_else(|| panic!("{k} missing from\n{text}"))
                .1
        };
        assert_eq!(vars[0], ("LIMA_CIDATA_DEBUG", "false"));
        assert_eq!(vars[1], ("LIMA_CIDATA_IID", "iid-1764000000"));
        assert_eq!(get("NAME"), "default");
        assert_eq!(get("USER"), "alice");
        assert_eq!(get("UID"), "501");
        assert_eq!(get("COMMENT"), "Alice \"A\"Example");
        assert_eq!(get("HOME"), "/home/alice.guest");
        assert_eq!(get("SHELL"), "/bin/bash");
        assert_eq!(get("HOSTHOME_MOUNTPOINT"), "/home/alice");
        assert_eq!(get("MOUNTS"), "2");
        assert_eq!(get("MOUNTS_0_MOUNTPOINT"), "/home/alice");
        assert_eq!(get("MOUNTS_1_MOUNTPOINT"), "/tmp/lima");
        assert_eq!(get("MOUNTTYPE"), "9p");
        assert_eq!(get("DATAFILE_00000003_OVERWRITE"), "false");
        assert_eq!(get("DATAFILE_00000003_OWNER"), "root:root");
        assert_eq!(get("DATAFILE_00000003_PATH"), "/etc/example.conf");
        assert_eq!(get("DATAFILE_00000003_PERMISSIONS"), "640");
        assert_eq!(get("SLIRP_DNS"), "192.168.5.3");
        assert_eq!(get("SLIRP_GATEWAY"), "192.168.5.2");
        assert_eq!(get("SLIRP_IP_ADDRESS"), "192.168.5.15");
        assert_eq!(get("VMTYPE"), "qemu");
        assert_eq!(vars.last(), Some(&("LIMA_CIDATA_PASSWORDLESS_SUDO", "1")));
        let pos = |k: &str| vars.iter().position(|(key, _)| key.ends_with(k)).unwrap();
        assert!(pos("_SHELL") < pos("_HOSTHOME_MOUNTPOINT"));
        assert!(pos("_MOUNTTYPE") < pos("_DATAFILE_00000003_OVERWRITE"));
        assert!(pos("_SLIRP_DNS") < pos("_VMTYPE"));
    }

    #[test]
    fn param_and_etc_environment_files() {
        let input = sample();
        assert_eq!(param_env(&input), "PARAM_GREETING=hello world's\n");
        assert_eq!(
            etc_environment(&input),
            "#LIMA-START\nEDITOR=vim\n#LIMA-END\n"
        );
    }

    #[test]
    fn keys_must_be_shell_names() {
        for good in ["A", "_x", "PATH_2"] {
            check_key("k", good).unwrap();
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(check_key("k", bad).is_err(), "{bad:?}");
        }
    }
}

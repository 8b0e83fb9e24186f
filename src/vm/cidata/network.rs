//! eth0's MAC address and the netplan `network-config`.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::CidataInput;
use super::yaml::{self, Yaml};

/// QEMU user-mode network (192.168.5.0/24) addresses, as Lima sets them up.
pub(crate) const SLIRP_GATEWAY: &str = "192.168.5.2";
pub(crate) const SLIRP_DNS: &str = "192.168.5.3";
pub(crate) const SLIRP_GUEST_IP: &str = "192.168.5.15";

/// Lima's MAC scheme: `52:55:55` then the first 3 bytes of
/// sha256(machine_id + unique_id).
pub(crate) fn mac_address(machine_id: &str, unique_id: &str) -> String {
    let digest = Sha256::digest(format!("{machine_id}{unique_id}").as_bytes());
    let bytes = [0x52, 0x55, 0x55, digest[0], digest[1], digest[2]];
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// eth0's MAC for the instance in `instance_dir` ($D) on this host; QEMU's
/// `-device virtio-net-pci,mac=` must use the same value.
pub(crate) fn instance_mac_address(instance_dir: &Path) -> String {
    mac_address(&host_machine_id(), &instance_dir.to_string_lossy())
}

/// The host's machine id as Lima reads it: the IOPlatformUUID on macOS,
/// `/etc/machine-id` or `/var/lib/dbus/machine-id` elsewhere, else the hostname.
pub(crate) fn host_machine_id() -> String {
    #[cfg(target_os = "macos")]
    if let Some(id) = macos_platform_uuid() {
        return id;
    }
    for file in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(text) = std::fs::read_to_string(file)
            && !text.trim().is_empty()
        {
            return text.trim().to_string();
        }
    }
    hostname()
}

#[cfg(target_os = "macos")]
fn macos_platform_uuid() -> Option<String> {
    let out = std::process::Command::new("/usr/sbin/ioreg")
        .args(["-rd1", "-c", "IOPlatformExpertDevice"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("\"IOPlatformUUID\""))
        .and_then(|l| l.rsplit('"').nth(1))
        .map(str::to_string)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The `param:` that makes eth0 optional in netplan (Lima's name).
const NETPLAN_OPTIONAL: &str = "internal_netplanOptional";

/// netplan v2: eth0 matched by MAC, DHCP, route metric 200 like Lima.
pub(super) fn network_config(input: &CidataInput) -> String {
    let mut eth0 = vec![
        (
            "match",
            Yaml::Map(vec![("macaddress", input.mac_address.as_str().into())]),
        ),
        ("dhcp4", Yaml::Bool(true)),
        ("set-name", "eth0".into()),
        (
            "dhcp4-overrides",
            Yaml::Map(vec![("route-metric", Yaml::Int(200))]),
        ),
        ("dhcp-identifier", "mac".into()),
    ];
    // Lima's template for Ubuntu 26.04 sets this param: the NIC's first-boot
    // rename fails there (the bootcmd renames it instead), and a required
    // NIC would hold the boot in systemd-networkd-wait-online for 120 s.
    // Only then: other distributions read it as "not required for online".
    if input.params.get(NETPLAN_OPTIONAL).map(String::as_str) == Some("true") {
        eth0.push(("optional", Yaml::Bool(true)));
    }
    if !input.dns.is_empty() {
        let addresses = input.dns.iter().map(|a| a.as_str().into()).collect();
        eth0.push((
            "nameservers",
            Yaml::Map(vec![("addresses", Yaml::Seq(addresses))]),
        ));
    }
    yaml::to_string(&Yaml::Map(vec![
        ("version", Yaml::Int(2)),
        ("ethernets", Yaml::Map(vec![("eth0", Yaml::Map(eth0))])),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::cidata::tests::sample;
    use serde_yaml::Value;

    #[test]
    fn mac_is_deterministic_lima_prefixed_and_input_dependent() {
        let a = mac_address("0123456789abcdef", "/home/u/.lima/default");
        assert_eq!(a, mac_address("0123456789abcdef", "/home/u/.lima/default"));
        assert_ne!(a, mac_address("0123456789abcdef", "/home/u/.lima/other"));
        assert_ne!(a, mac_address("fedcba9876543210", "/home/u/.lima/default"));
        // `printf %s 0123456789abcdef/home/u/.lima/default | sha256sum`
        let digest = Sha256::digest(b"0123456789abcdef/home/u/.lima/default");
        assert_eq!(
            a,
            format!(
                "52:55:55:{:02x}:{:02x}:{:02x}",
                digest[0], digest[1], digest[2]
            )
        );
        assert_eq!(mac_address("", "x"), "52:55:55:2d:71:16");
    }

    #[test]
    fn instance_mac_uses_this_hosts_machine_id() {
        let dir = Path::new("/home/u/.lima/default");
        let id = host_machine_id();
        assert!(!id.is_empty() && !id.contains('\n'));
        assert_eq!(
            instance_mac_address(dir),
            mac_address(&id, "/home/u/.lima/default")
        );
    }

    #[test]
    fn network_config_matches_eth0_by_mac() {
        let input = sample();
        let v: Value = serde_yaml::from_str(&network_config(&input)).unwrap();
        let eth0 = &v["ethernets"]["eth0"];
        assert_eq!(v["version"], Value::from(2));
        assert_eq!(
            eth0["match"]["macaddress"].as_str(),
            Some(input.mac_address.as_str())
        );
        assert_eq!(eth0["dhcp4"], Value::from(true));
        assert_eq!(eth0["set-name"].as_str(), Some("eth0"));
        assert_eq!(eth0["dhcp4-overrides"]["route-metric"], Value::from(200));
        assert_eq!(eth0["dhcp-identifier"].as_str(), Some("mac"));
        assert!(eth0.get("optional").is_none());
        assert_eq!(
            eth0["nameservers"]["addresses"][0].as_str(),
            Some(SLIRP_DNS)
        );

        let mut optional = input.clone();
        optional
            .params
            .insert(NETPLAN_OPTIONAL.into(), "true".into());
        let v: Value = serde_yaml::from_str(&network_config(&optional)).unwrap();
        assert_eq!(v["ethernets"]["eth0"]["optional"], Value::from(true));

        let mut no_dns = input.clone();
        no_dns.dns.clear();
        let v: Value = serde_yaml::from_str(&network_config(&no_dns)).unwrap();
        assert!(v["ethernets"]["eth0"].get("nameservers").is_none());
    }
}

//! `user-data` (#cloud-config) and `meta-data`.

use super::yaml::{self, Yaml};
use super::{CidataError, CidataInput, Provision, provision_index};
use crate::vm::share::ShareType;

/// Mounts the cidata volume and execs our boot.sh; cloud-init runs it as
/// root on every boot.
const PER_BOOT_SH: &str = include_str!("../../../assets/cidata/00-lima.boot.sh");
const PER_BOOT_PATH: &str = "/var/lib/cloud/scripts/per-boot/00-lima.boot.sh";
/// First bootcmd item: makes sure the NIC with our MAC is eth0 and waits for its address.
const ETH0_SH: &str = include_str!("../../../assets/cidata/bootcmd-eth0.sh");
/// Here-doc terminator for boot provision scripts embedded in bootcmd.
const BOOT_SCRIPT_EOF: &str = "__LIMA_BOOT_PROVISION_EOF__";

/// The cloud-config; `write_files` (the per-boot hook) only goes into the
/// ISO, not into `$D/cloud-config.yaml`.
pub(super) fn user_data(
    input: &CidataInput,
    with_write_files: bool,
) -> Result<String, CidataError> {
    let u = &input.user;
    let strings =
        |items: &[String]| Yaml::Seq(items.iter().map(|s| Yaml::from(s.as_str())).collect());
    let mut doc = vec![(
        "growpart",
        Yaml::Map(vec![
            ("mode", "auto".into()),
            ("devices", Yaml::Seq(vec!["/".into()])),
        ]),
    )];
    if let Some(tz) = input.timezone.as_deref().filter(|tz| !tz.is_empty()) {
        doc.push(("timezone", tz.into()));
    }
    doc.push((
        "users",
        Yaml::Seq(vec![Yaml::Map(vec![
            ("name", u.name.as_str().into()),
            ("uid", u.uid.to_string().into()),
            ("gecos", gecos(&u.comment).into()),
            ("homedir", u.home.as_str().into()),
            ("shell", u.shell.as_str().into()),
            ("sudo", "ALL=(ALL) NOPASSWD:ALL".into()),
            ("lock_passwd", Yaml::Bool(true)),
            // The underscore spelling: cloud-init's schema rejects the
            // hyphenated one that Lima writes (it still works at runtime).
            ("ssh_authorized_keys", strings(&input.ssh_authorized_keys)),
        ])]),
    ));
    if !input.mounts.is_empty() {
        let rows = input.mounts.iter().map(|m| {
            let access = if m.writable { "rw" } else { "ro" };
            let o = &m.nine_p;
            let options = match input.share {
                ShareType::NineP => format!(
                    "{access},trans=virtio,version={},msize={},cache={},nofail",
                    o.protocol_version, o.msize, o.cache
                ),
                ShareType::Virtiofs => format!("{access},nofail"),
            };
            strings(&[
                m.tag(),
                m.mount_point.clone(),
                input.share.as_str().into(),
                options,
                "0".into(),
                "0".into(),
            ])
        });
        doc.push(("mounts", Yaml::Seq(rows.collect())));
    }
    // Replace the image's host keys with the one the host generated and
    // pinned. cloud-init generates only missing keys of the listed types, so
    // listing ed25519 (the schema wants a non-empty list) generates nothing.
    doc.push(("ssh_deletekeys", Yaml::Bool(true)));
    doc.push(("ssh_genkeytypes", Yaml::Seq(vec!["ed25519".into()])));
    doc.push((
        "ssh_keys",
        Yaml::Map(vec![
            (
                "ed25519_private",
                input.host_key.private_openssh.as_str().into(),
            ),
            (
                "ed25519_public",
                input.host_key.public_openssh.trim().into(),
            ),
        ]),
    ));
    if !input.dns.is_empty() {
        doc.push(("manage_resolv_conf", Yaml::Bool(true)));
        doc.push((
            "resolv_conf",
            Yaml::Map(vec![("nameservers", strings(&input.dns))]),
        ));
    }
    if with_write_files {
        doc.push((
            "write_files",
            Yaml::Seq(vec![Yaml::Map(vec![
                ("path", PER_BOOT_PATH.into()),
                ("owner", "root:root".into()),
                ("permissions", "0755".into()),
                ("content", PER_BOOT_SH.into()),
            ])]),
        ));
    }
    doc.push((
        "bootcmd",
        Yaml::Seq(bootcmd(input)?.into_iter().map(Yaml::Str).collect()),
    ));
    Ok(format!(
        "#cloud-config\n{}",
        yaml::to_string(&Yaml::Map(doc))
    ))
}

/// The comment as useradd accepts it: it refuses control characters and
/// the passwd/GECOS separators `:`, `,` and `=`, and then creates no user.
fn gecos(comment: &str) -> String {
    comment
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, ':' | ',' | '='))
        .collect()
}

fn bootcmd(input: &CidataInput) -> Result<Vec<String>, CidataError> {
    let quote = |s: &str| {
        shlex::try_quote(s)
            .map(|q| q.into_owned())
            .map_err(|e| CidataError::Invalid {
                field: "param".into(),
                reason: e.to_string(),
            })
    };
    let mut items = vec![format!("mac={}\n{ETH0_SH}", quote(&input.mac_address)?)];
    let mut exports = String::new();
    for (k, v) in &input.params {
        exports.push_str(&format!("export PARAM_{k}={}\n", quote(v)?));
    }
    for (i, p) in input.provisions.iter().enumerate() {
        let Provision::Boot { script } = p else {
            continue;
        };
        if script.lines().any(|l| l == BOOT_SCRIPT_EOF) {
            return Err(CidataError::Invalid {
                field: format!("provision[{i}].script"),
                reason: format!("must not contain the line {BOOT_SCRIPT_EOF}"),
            });
        }
        // A subshell keeps one script's exports and `exit` from leaking into
        // the next item. /run is often noexec, so the script's interpreter is
        // started by hand: its shebang line, else /bin/sh.
        let file = format!("/run/lima-boot-provision-{}", provision_index(i));
        let newline = if script.ends_with('\n') { "" } else { "\n" };
        items.push(format!(
            "(\numask 077\n{exports}cat > {file} <<'{BOOT_SCRIPT_EOF}'\n{script}{newline}{BOOT_SCRIPT_EOF}\n\
             read -r first < {file} || :\n\
             case $first in\n'#!'*) ${{first#??}} {file} ;;\n*) /bin/sh {file} ;;\nesac\n)\n"
        ));
    }
    Ok(items)
}

/// NoCloud meta-data: the per-boot instance id and the hostname.
pub(super) fn meta_data(input: &CidataInput) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        input.instance_id,
        input.hostname()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::cidata::tests::sample;
    use serde_yaml::Value;

    fn parsed(with_write_files: bool) -> (String, Value) {
        let text = user_data(&sample(), with_write_files).unwrap();
        let value = serde_yaml::from_str(&text).unwrap();
        (text, value)
    }

    #[test]
    fn user_data_is_a_cloud_config_with_our_user() {
        let (text, v) = parsed(true);
        assert!(text.starts_with("#cloud-config\n"));
        assert_eq!(v["growpart"]["mode"].as_str(), Some("auto"));
        assert_eq!(v["growpart"]["devices"][0].as_str(), Some("/"));
        assert_eq!(v["timezone"].as_str(), Some("Europe/Paris"));
        let users = v["users"].as_sequence().unwrap();
        assert_eq!(users.len(), 1);
        let u = &users[0];
        assert_eq!(u["name"].as_str(), Some("alice"));
        // Quoted: cloud-init wants the uid as a string.
        assert_eq!(u["uid"], Value::from("501"));
        assert_eq!(u["gecos"].as_str(), Some("Alice \"A\"Example"));
        assert_eq!(gecos("A, B: C=D\u{7}"), "A B CD");
        assert_eq!(u["homedir"].as_str(), Some("/home/alice.guest"));
        assert_eq!(u["shell"].as_str(), Some("/bin/bash"));
        assert_eq!(u["sudo"].as_str(), Some("ALL=(ALL) NOPASSWD:ALL"));
        assert_eq!(u["lock_passwd"], Value::from(true));
        let keys: Vec<&str> = u["ssh_authorized_keys"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, sample().ssh_authorized_keys);
    }

    #[test]
    fn user_data_injects_the_host_key() {
        let (_, v) = parsed(true);
        let input = sample();
        assert_eq!(v["ssh_deletekeys"], Value::from(true));
        let genkeytypes = v["ssh_genkeytypes"].as_sequence().unwrap();
        assert_eq!(genkeytypes, &[Value::from("ed25519")]);
        assert_eq!(
            v["ssh_keys"]["ed25519_private"].as_str(),
            Some(input.host_key.private_openssh.as_str())
        );
        assert_eq!(
            v["ssh_keys"]["ed25519_public"].as_str(),
            Some(input.host_key.public_openssh.trim())
        );
    }

    #[test]
    fn mounts_are_fstab_entries_of_the_share_type() {
        let (_, v) = parsed(true);
        let row = |i: usize| -> Vec<String> {
            v["mounts"][i]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            row(0),
            [
                "lima-37f3810809d0851e",
                "/home/alice",
                "9p",
                "ro,trans=virtio,version=9p2000.L,msize=131072,cache=fscache,nofail",
                "0",
                "0"
            ]
        );
        assert_eq!(
            row(1)[3],
            "rw,trans=virtio,version=9p2000.L,msize=131072,cache=mmap,nofail"
        );

        let mut input = sample();
        input.share = ShareType::Virtiofs;
        let v: Value = serde_yaml::from_str(&user_data(&input, true).unwrap()).unwrap();
        let virtiofs: Vec<&str> = v["mounts"][0]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(
            virtiofs,
            [
                "lima-37f3810809d0851e",
                "/home/alice",
                "virtiofs",
                "ro,nofail",
                "0",
                "0"
            ]
        );
        assert_eq!(v["mounts"][1][3].as_str(), Some("rw,nofail"));

        input.mounts.clear();
        input.timezone = None;
        let v: Value = serde_yaml::from_str(&user_data(&input, true).unwrap()).unwrap();
        assert!(v.get("mounts").is_none());
        assert!(v.get("timezone").is_none());
    }

    #[test]
    fn write_files_holds_the_per_boot_hook_only_in_the_iso_variant() {
        let (_, v) = parsed(true);
        let files = v["write_files"].as_sequence().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0]["path"].as_str(), Some(PER_BOOT_PATH));
        assert_eq!(files[0]["permissions"].as_str(), Some("0755"));
        assert_eq!(files[0]["owner"].as_str(), Some("root:root"));
        let content = files[0]["content"].as_str().unwrap();
        assert!(content.contains("/dev/disk/by-label/cidata"));
        assert!(content.contains("boot.sh"));

        let (_, without) = parsed(false);
        assert!(without.get("write_files").is_none());
        let mut with = v.clone();
        with.as_mapping_mut().unwrap().remove("write_files");
        assert_eq!(with, without);
    }

    #[test]
    fn resolv_conf_lists_the_dns_servers() {
        let (_, v) = parsed(true);
        assert_eq!(v["manage_resolv_conf"], Value::from(true));
        assert_eq!(
            v["resolv_conf"]["nameservers"][0].as_str(),
            Some("192.168.5.3")
        );
    }

    #[test]
    fn bootcmd_heals_eth0_then_runs_boot_provisions_with_params() {
        let (_, v) = parsed(true);
        let items: Vec<&str> = v["bootcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].starts_with(&format!("mac={}\n", sample().mac_address)));
        assert!(
            items[1].contains("export PARAM_GREETING=\"hello world's\"\n"),
            "{}",
            items[1]
        );
        assert!(items[1].contains("/run/lima-boot-provision-00000001"));
        assert!(items[1].contains("echo boot \"$PARAM_GREETING\"\n"));
    }

    #[test]
    fn bootcmd_items_run_in_a_real_shell() {
        let mut input = sample();
        input.mac_address = "00:00:00:00:00:00".into();
        let tricky = "a $(echo no) `echo no` \\ \" ' $HOME";
        input.params.insert("TRICKY".into(), tricky.into());
        input.provisions.push(Provision::Boot {
            script: "printf '%s\\n' \"$PARAM_TRICKY\"".into(),
        });
        let cmds = bootcmd(&input).unwrap();
        // The boot provision writes to /run, which tests cannot use; run it
        // with the path redirected to a temporary directory instead.
        let dir = tempfile::tempdir().unwrap();
        let item = cmds[1].replace("/run/", &format!("{}/", dir.path().display()));
        let out = std::process::Command::new("sh")
            .args(["-c", &item])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "boot hello world's\n");
        let item = cmds[2].replace("/run/", &format!("{}/", dir.path().display()));
        let out = std::process::Command::new("sh")
            .args(["-c", &item])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{tricky}\n"));
        for item in &cmds {
            let check = std::process::Command::new("sh")
                .args(["-n", "-c", item])
                .status()
                .unwrap();
            assert!(check.success(), "syntax error in\n{item}");
        }
    }

    #[test]
    fn boot_scripts_cannot_break_out_of_their_here_doc() {
        let mut input = sample();
        input.provisions = vec![Provision::Boot {
            script: format!("echo a\n{BOOT_SCRIPT_EOF}\nreboot\n"),
        }];
        assert!(bootcmd(&input).is_err());
    }

    #[test]
    fn meta_data_names_this_boot_and_host() {
        let v: Value = serde_yaml::from_str(&meta_data(&sample())).unwrap();
        assert_eq!(v["instance-id"].as_str(), Some("iid-1764000000"));
        assert_eq!(v["local-hostname"].as_str(), Some("lima-default"));
    }
}

//! Lima's `FillDefault`: merges `_config/default.yaml` (d) and
//! `_config/override.yaml` (o) into lima.yaml (y) and fills the builtin
//! defaults for this host. Scalars: o > y > d > builtin. Lists: o + y + d.
//! Mounts and networks: merged in d, y, o order by key. Maps: d, y, o with
//! later keys winning.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use super::host_facts::HostFacts;
use super::model::*;
use super::template::{self, Vars};
use super::{COMPAT_VERSION, ConfigError, version_less};
use crate::vm::layout;
use crate::vm::units::format_bytes;

/// Where the config being filled lives, for templates and versioned defaults.
pub(crate) struct FillContext<'a> {
    pub host: &'a HostFacts,
    /// The instance directory (`{{.Dir}}`; its base name is `{{.Name}}`).
    pub instance_dir: &'a Path,
    /// The file being filled, named in error messages.
    pub file: &'a Path,
    /// `lima-version` of an existing instance ("" when missing), or our own
    /// compat version for a new one.
    pub existing_version: String,
}

/// nerdctl-full archives Lima uses when containerd is wanted and none are
/// listed (Lima's `pkg/limayaml/containerd.yaml`).
const DEFAULT_CONTAINERD_ARCHIVES: [(&str, &str, &str); 2] = [
    (
        "https://github.com/containerd/nerdctl/releases/download/v2.3.5/nerdctl-full-2.3.5-linux-amd64.tar.gz",
        "x86_64",
        "sha256:b697295c623639734aaab737523c808fd3cc8d3046039fd94fff1744e4c317aa",
    ),
    (
        "https://github.com/containerd/nerdctl/releases/download/v2.3.5/nerdctl-full-2.3.5-linux-arm64.tar.gz",
        "aarch64",
        "sha256:6e4b687f1d138e750a3c8372abc0f81d3d7490b6359c48c0562fc7dfe98859b2",
    ),
];

/// o > y > d.
fn pick<T: Clone>(y: &mut Option<T>, d: &Option<T>, o: &Option<T>) {
    if y.is_none() {
        y.clone_from(d);
    }
    if o.is_some() {
        y.clone_from(o);
    }
}

/// o > y > d > builtin.
fn pick_or<T: Clone>(y: &mut Option<T>, d: &Option<T>, o: &Option<T>, builtin: T) {
    pick(y, d, o);
    y.get_or_insert(builtin);
}

fn concat<T: Clone>(o: &[T], y: &[T], d: &[T]) -> Vec<T> {
    o.iter().chain(y).chain(d).cloned().collect()
}

fn merge_maps(
    d: &Option<BTreeMap<String, String>>,
    y: &Option<BTreeMap<String, String>>,
    o: &Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for layer in [d, y, o].into_iter().flatten() {
        m.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Some(m)
}

/// `vmOpts`/`osOpts`: merged at the top key only.
fn merge_opts(
    d: &Option<serde_yaml::Mapping>,
    y: &Option<serde_yaml::Mapping>,
    o: &Option<serde_yaml::Mapping>,
) -> Option<serde_yaml::Mapping> {
    let mut m = serde_yaml::Mapping::new();
    for layer in [d, y, o].into_iter().flatten() {
        for (k, v) in layer {
            m.insert(k.clone(), v.clone());
        }
    }
    Some(m)
}

fn username_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Go's `filepath.Clean`, lexically.
pub(crate) fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or("")),
            Component::ParentDir => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let joined = parts.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `~` and `~/x` as the host home; other `~user` forms are left for
/// validation to reject.
fn expand_tilde(p: &str, home: &Path) -> String {
    if p == "~" {
        home.to_string_lossy().into_owned()
    } else if let Some(rest) = p.strip_prefix("~/") {
        home.join(rest).to_string_lossy().into_owned()
    } else {
        p.to_string()
    }
}

pub(crate) fn fill_default(
    y: &mut LimaYaml,
    d: &LimaYaml,
    o: &LimaYaml,
    cx: &FillContext,
) -> Result<(), ConfigError> {
    let host = cx.host;
    let invalid = |field: String, message: String| ConfigError::Invalid {
        path: cx.file.to_path_buf(),
        field,
        message,
    };

    pick(&mut y.os, &d.os, &o.os);
    if matches!(y.os.as_deref(), None | Some("") | Some("default")) {
        y.os = Some("Linux".into());
    }
    let os = y.os.clone().unwrap_or_default();

    let (du, ou) = (
        d.user.clone().unwrap_or_default(),
        o.user.clone().unwrap_or_default(),
    );
    let user = y.user.get_or_insert_with(User::default);
    pick(&mut user.name, &du.name, &ou.name);
    pick(&mut user.comment, &du.comment, &ou.comment);
    pick(&mut user.home, &du.home, &ou.home);
    pick(&mut user.shell, &du.shell, &ou.shell);
    pick(&mut user.uid, &du.uid, &ou.uid);
    pick(
        &mut user.passwordless_sudo,
        &du.passwordless_sudo,
        &ou.passwordless_sudo,
    );
    let version = cx.existing_version.as_str();
    user.name.get_or_insert_with(|| {
        let name = if username_ok(&host.user) {
            host.user.clone()
        } else {
            "lima".to_string()
        };
        // Instances made by Lima >= 1.0 never use `admin`.
        if name == "admin" && !version_less(version, "1.0.0") {
            "lima".to_string()
        } else {
            name
        }
    });
    user.comment.get_or_insert_with(|| host.comment.clone());
    user.home.get_or_insert_with(|| {
        if os == "Darwin" {
            "/Users/{{.User}}.guest".into()
        } else if version_less(version, "2.1.0") {
            "/home/{{.User}}.linux".into()
        } else {
            "/home/{{.User}}.guest".into()
        }
    });
    user.shell.get_or_insert_with(|| {
        match os.as_str() {
            "FreeBSD" => "/bin/sh",
            "Darwin" => "/bin/zsh",
            "Windows" => "cmd.exe",
            _ => "/bin/bash",
        }
        .into()
    });
    user.uid.get_or_insert(host.uid);
    user.passwordless_sudo.get_or_insert(os != "Darwin");

    let param = merge_maps(&d.param, &y.param, &o.param).unwrap_or_default();
    let name = cx
        .instance_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let guest_vars = |user: &User| Vars {
        vars: [
            ("Name", name.clone()),
            (
                "Hostname",
                format!("lima-{}", name.replace(['.', '_'], "-")),
            ),
            ("UID", user.uid.unwrap_or_default().to_string()),
            ("User", user.name.clone().unwrap_or_default()),
            ("Home", user.home.clone().unwrap_or_default()),
        ]
        .into(),
        param: &param,
    };
    let home = user.home.clone().unwrap_or_default();
    user.home = Some(
        template::expand(&home, &guest_vars(user)).map_err(|m| invalid("user.home".into(), m))?,
    );
    let user = user.clone();

    pick(&mut y.vm_type, &d.vm_type, &o.vm_type);
    pick(&mut y.arch, &d.arch, &o.arch);
    if matches!(y.arch.as_deref(), None | Some("") | Some("default")) {
        y.arch = Some(host.arch.clone());
    }
    let arch = y.arch.clone().unwrap_or_default();

    y.images = concat(&o.images, &y.images, &d.images);
    for img in &mut y.images {
        if img.file.arch.as_deref().unwrap_or("").is_empty() {
            img.file.arch = Some(arch.clone());
        }
        let img_arch = img.file.arch.clone();
        if let Some(k) = &mut img.kernel
            && k.file.arch.as_deref().unwrap_or("").is_empty()
        {
            k.file.arch.clone_from(&img_arch);
        }
        if let Some(i) = &mut img.initrd
            && i.arch.as_deref().unwrap_or("").is_empty()
        {
            i.arch.clone_from(&img_arch);
        }
    }

    pick(&mut y.cpus, &d.cpus, &o.cpus);
    if y.cpus.unwrap_or(0) == 0 {
        y.cpus = Some(host.ncpu.min(4));
    }
    pick(&mut y.memory, &d.memory, &o.memory);
    if y.memory.as_deref().unwrap_or("").is_empty() {
        y.memory = Some(format_bytes((4u64 << 30).min(host.memory_bytes / 2)));
    }
    pick(&mut y.disk, &d.disk, &o.disk);
    if y.disk.as_deref().unwrap_or("").is_empty() {
        y.disk = Some("100GiB".into());
    }
    y.additional_disks = concat(
        &o.additional_disks,
        &y.additional_disks,
        &d.additional_disks,
    );

    let (dv, ov) = (
        d.video.clone().unwrap_or_default(),
        o.video.clone().unwrap_or_default(),
    );
    let video = y.video.get_or_insert_with(Video::default);
    pick(&mut video.display, &dv.display, &ov.display);
    if video.display.as_deref().unwrap_or("").is_empty() {
        video.display = Some("none".into());
    }

    let (df, of) = (
        d.firmware.clone().unwrap_or_default(),
        o.firmware.clone().unwrap_or_default(),
    );
    let fw = y.firmware.get_or_insert_with(Firmware::default);
    pick_or(&mut fw.legacy_bios, &df.legacy_bios, &of.legacy_bios, false);
    fw.images = concat(&of.images, &fw.images, &df.images);
    for f in &mut fw.images {
        if f.file.arch.as_deref().unwrap_or("").is_empty() {
            f.file.arch = Some(arch.clone());
        }
    }

    pick_or(
        &mut y.timezone,
        &d.timezone,
        &o.timezone,
        host.timezone.clone(),
    );

    let (ds, os_) = (
        d.ssh.clone().unwrap_or_default(),
        o.ssh.clone().unwrap_or_default(),
    );
    let ssh = y.ssh.get_or_insert_with(Ssh::default);
    pick_or(&mut ssh.local_port, &ds.local_port, &os_.local_port, 0);
    pick_or(
        &mut ssh.load_dot_ssh_pub_keys,
        &ds.load_dot_ssh_pub_keys,
        &os_.load_dot_ssh_pub_keys,
        false,
    );
    pick_or(
        &mut ssh.forward_agent,
        &ds.forward_agent,
        &os_.forward_agent,
        false,
    );
    pick_or(
        &mut ssh.forward_x11,
        &ds.forward_x11,
        &os_.forward_x11,
        false,
    );
    pick_or(
        &mut ssh.forward_x11_trusted,
        &ds.forward_x11_trusted,
        &os_.forward_x11_trusted,
        false,
    );
    // overVsock's default belongs to the driver (QEMU ignores it).
    pick(&mut ssh.over_vsock, &ds.over_vsock, &os_.over_vsock);

    y.provision = concat(&o.provision, &y.provision, &d.provision);
    for p in &mut y.provision {
        let mode = p.mode.get_or_insert_with(|| "system".into()).clone();
        if mode == "dependency" {
            p.skip_default_dependency_resolution.get_or_insert(false);
        }
        if mode == "data" {
            p.content.get_or_insert_with(String::new);
            p.overwrite.get_or_insert(true);
        }
        if mode == "yq" {
            p.format.get_or_insert_with(|| "auto".into());
        }
        if mode == "data" || mode == "yq" {
            p.owner.get_or_insert_with(|| {
                match os.as_str() {
                    "Darwin" | "FreeBSD" => "root:wheel",
                    _ => "root:root",
                }
                .into()
            });
            p.permissions.get_or_insert_with(|| "644".into());
        }
        p.script.get_or_insert_with(String::new);
        for text in [
            &mut p.script,
            &mut p.content,
            &mut p.expression,
            &mut p.owner,
            &mut p.path,
        ]
        .into_iter()
        .flatten()
        {
            expand_script(text, &guest_vars(&user));
        }
    }

    pick_or(
        &mut y.guest_install_prefix,
        &d.guest_install_prefix,
        &o.guest_install_prefix,
        "/usr/local".into(),
    );
    pick_or(
        &mut y.upgrade_packages,
        &d.upgrade_packages,
        &o.upgrade_packages,
        false,
    );

    let (dc, oc) = (
        d.containerd.clone().unwrap_or_default(),
        o.containerd.clone().unwrap_or_default(),
    );
    let ctrd = y.containerd.get_or_insert_with(Containerd::default);
    pick_or(&mut ctrd.system, &dc.system, &oc.system, false);
    pick_or(
        &mut ctrd.user,
        &dc.user,
        &oc.user,
        os == "Linux" && (arch == "x86_64" || arch == "aarch64"),
    );
    ctrd.archives = concat(&oc.archives, &ctrd.archives, &dc.archives);
    if ctrd.archives.is_empty() {
        ctrd.archives = DEFAULT_CONTAINERD_ARCHIVES
            .iter()
            .map(|(location, arch, digest)| File {
                location: (*location).into(),
                arch: Some((*arch).into()),
                digest: Some((*digest).into()),
            })
            .collect();
    }
    for f in &mut ctrd.archives {
        if f.arch.as_deref().unwrap_or("").is_empty() {
            f.arch = Some(arch.clone());
        }
    }

    y.probes = concat(&o.probes, &y.probes, &d.probes);
    let nprobes = y.probes.len();
    for (i, p) in y.probes.iter_mut().enumerate() {
        p.mode.get_or_insert_with(|| "readiness".into());
        if p.description.as_deref().unwrap_or("").is_empty() {
            p.description = Some(format!("user probe {}/{nprobes}", i + 1));
        }
        expand_script(p.script.get_or_insert_with(String::new), &guest_vars(&user));
    }
    y.port_forwards = concat(&o.port_forwards, &y.port_forwards, &d.port_forwards);
    y.copy_to_host = concat(&o.copy_to_host, &y.copy_to_host, &d.copy_to_host);

    let (dh, oh) = (
        d.host_resolver.clone().unwrap_or_default(),
        o.host_resolver.clone().unwrap_or_default(),
    );
    let hr = y.host_resolver.get_or_insert_with(HostResolver::default);
    hr.hosts = merge_maps(&dh.hosts, &hr.hosts, &oh.hosts);
    pick_or(&mut hr.enabled, &dh.enabled, &oh.enabled, true);
    pick_or(&mut hr.ipv6, &dh.ipv6, &oh.ipv6, false);
    pick_or(
        &mut y.propagate_proxy_env,
        &d.propagate_proxy_env,
        &o.propagate_proxy_env,
        true,
    );

    let mut networks: Vec<Network> = Vec::new();
    for nw in concat(&d.networks, &y.networks, &o.networks) {
        let same = nw
            .interface
            .as_deref()
            .filter(|i| !i.is_empty())
            .and_then(|i| {
                networks
                    .iter()
                    .position(|n| n.interface.as_deref() == Some(i))
            });
        match same {
            Some(i) => {
                let prev = &mut networks[i];
                if nw.socket.is_some() {
                    prev.socket.clone_from(&nw.socket);
                    prev.lima = None;
                }
                if nw.lima.is_some() {
                    prev.lima.clone_from(&nw.lima);
                    prev.socket = None;
                }
                if nw.mac_address.is_some() {
                    prev.mac_address.clone_from(&nw.mac_address);
                }
                if nw.metric.is_some() {
                    prev.metric = nw.metric;
                }
            }
            None => networks.push(nw),
        }
    }
    for (i, nw) in networks.iter_mut().enumerate() {
        if nw.interface.as_deref().unwrap_or("").is_empty() {
            nw.interface = Some(format!("lima{i}"));
        }
        nw.metric.get_or_insert(100);
    }
    y.networks = networks;

    y.mount_types_unsupported = concat(
        &o.mount_types_unsupported,
        &y.mount_types_unsupported,
        &d.mount_types_unsupported,
    );
    pick(&mut y.mount_type, &d.mount_type, &o.mount_type);
    pick_or(
        &mut y.mount_inotify,
        &d.mount_inotify,
        &o.mount_inotify,
        false,
    );

    let host_vars = Vars {
        vars: [
            ("Dir", cx.instance_dir.to_string_lossy().into_owned()),
            ("Name", name.clone()),
            ("UID", host.uid.to_string()),
            ("User", host.user.clone()),
            ("Home", host.home.to_string_lossy().into_owned()),
            ("GlobalTempDir", "/tmp".to_string()),
            (
                "TempDir",
                std::env::temp_dir().to_string_lossy().into_owned(),
            ),
        ]
        .into(),
        param: &param,
    };
    let mut mounts: Vec<Mount> = Vec::new();
    let all = concat(&d.mounts, &y.mounts, &o.mounts);
    for (i, mut m) in all.into_iter().enumerate() {
        let loc = template::expand(&m.location, &host_vars)
            .map_err(|e| invalid(format!("mounts[{i}].location"), e))?;
        m.location = expand_tilde(&clean_path(&loc), &host.home);
        m.mount_point = Some(match &m.mount_point {
            None => m.location.clone(),
            Some(mp) => template::expand(mp, &guest_vars(&user))
                .map_err(|e| invalid(format!("mounts[{i}].mountPoint"), e))?,
        });
        match mounts.iter_mut().find(|p| p.mount_point == m.mount_point) {
            Some(prev) => overlay_mount(prev, m),
            None => mounts.push(m),
        }
    }
    for m in &mut mounts {
        let writable = *m.writable.get_or_insert(false);
        let sshfs = m.sshfs.get_or_insert_with(Sshfs::default);
        sshfs.cache.get_or_insert(true);
        sshfs.follow_symlinks.get_or_insert(false);
        sshfs.sftp_driver.get_or_insert_with(String::new);
        let p9 = m.nine_p.get_or_insert_with(NineP::default);
        p9.security_model.get_or_insert_with(|| "none".into());
        p9.protocol_version.get_or_insert_with(|| "9p2000.L".into());
        p9.msize.get_or_insert_with(|| "128KiB".into());
        p9.cache
            .get_or_insert_with(|| if writable { "mmap" } else { "fscache" }.into());
    }
    y.mounts = mounts;

    if y.dns.is_empty() {
        y.dns.clone_from(&d.dns);
    }
    if !o.dns.is_empty() {
        y.dns.clone_from(&o.dns);
    }
    y.env = merge_maps(&d.env, &y.env, &o.env);
    y.param = Some(param.clone());
    y.vm_opts = merge_opts(&d.vm_opts, &y.vm_opts, &o.vm_opts);
    y.os_opts = merge_opts(&d.os_opts, &y.os_opts, &o.os_opts);

    let (dca, oca) = (
        d.ca_certs.clone().unwrap_or_default(),
        o.ca_certs.clone().unwrap_or_default(),
    );
    let ca = y.ca_certs.get_or_insert_with(CaCerts::default);
    pick_or(
        &mut ca.remove_defaults,
        &dca.remove_defaults,
        &oca.remove_defaults,
        false,
    );
    ca.files = unique(concat(&dca.files, &ca.files, &oca.files));
    ca.certs = unique(concat(&dca.certs, &ca.certs, &oca.certs));

    pick_or(
        &mut y.nested_virtualization,
        &d.nested_virtualization,
        &o.nested_virtualization,
        false,
    );
    pick_or(&mut y.plain, &d.plain, &o.plain, false);
    if y.plain == Some(true) {
        y.port_forwards.retain(|r| {
            r.get("static")
                .and_then(serde_yaml::Value::as_bool)
                .unwrap_or(false)
        });
        y.mounts.clear();
        let c = y.containerd.get_or_insert_with(Containerd::default);
        c.system = Some(false);
        c.user = Some(false);
        y.timezone = Some(String::new());
    }

    // ResolveVMType: vz only for native guests on macOS.
    if y.vm_type.as_deref().unwrap_or("").is_empty() {
        let native = arch == host.arch;
        y.vm_type = Some(
            if host.is_macos && native {
                "vz"
            } else {
                "qemu"
            }
            .into(),
        );
    }
    Ok(())
}

/// Scripts may use full Go templates (`{{if}}`, `{{range}}`) that only
/// Lima's template engine runs; those stay as written, as Lima leaves a
/// script it cannot expand. Simple `{{.Var}}` forms are expanded here.
fn expand_script(text: &mut String, vars: &Vars) {
    if let Ok(out) = template::expand(text, vars) {
        *text = out;
    }
}

/// A later mount with the same mount point overrides these fields only.
fn overlay_mount(prev: &mut Mount, m: Mount) {
    if m.writable.is_some() {
        prev.writable = m.writable;
    }
    if let Some(s) = m.sshfs {
        let p = prev.sshfs.get_or_insert_with(Sshfs::default);
        p.cache = s.cache.or(p.cache);
        p.follow_symlinks = s.follow_symlinks.or(p.follow_symlinks);
        if s.sftp_driver.is_some() {
            p.sftp_driver = s.sftp_driver;
        }
    }
    if let Some(n) = m.nine_p {
        let p = prev.nine_p.get_or_insert_with(NineP::default);
        for (dst, src) in [
            (&mut p.security_model, n.security_model),
            (&mut p.protocol_version, n.protocol_version),
            (&mut p.msize, n.msize),
            (&mut p.cache, n.cache),
        ] {
            if src.is_some() {
                *dst = src;
            }
        }
    }
    if let Some(q) = m.virtiofs.and_then(|v| v.queue_size) {
        prev.virtiofs
            .get_or_insert_with(Virtiofs::default)
            .queue_size = Some(q);
    }
}

fn unique(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The version whose defaults apply to the instance in `dir`: `lima-version`
/// of an instance that already has runtime files ("" when that file is
/// missing), otherwise ours (a new instance).
pub(crate) fn existing_version(dir: &Path) -> String {
    let exists = crate::vm::store::is_existing_instance_dir(dir);
    if !exists {
        return COMPAT_VERSION.to_string();
    }
    std::fs::read_to_string(dir.join(layout::LIMA_VERSION))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) fn test_host() -> HostFacts {
    HostFacts {
        arch: "x86_64".into(),
        is_macos: false,
        ncpu: 2,
        memory_bytes: 6 << 30,
        user: "alice".into(),
        uid: 1234,
        comment: "Alice A".into(),
        home: std::path::PathBuf::from("/home/alice"),
        timezone: "Europe/Paris".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_go() {
        assert_eq!(clean_path("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(clean_path("~"), "~");
        assert_eq!(clean_path("~/x/../y"), "~/y");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(clean_path("a/../.."), "..");
    }

    #[test]
    fn usernames() {
        assert!(username_ok("alice"));
        assert!(username_ok("_x-1"));
        assert!(!username_ok("Alice"));
        assert!(!username_ok("1a"));
        assert!(!username_ok("a.b"));
    }

    #[test]
    fn existing_version_of_new_and_old_instances() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing_version(dir.path()), COMPAT_VERSION);
        std::fs::write(dir.path().join(layout::DISK), "").unwrap();
        assert_eq!(existing_version(dir.path()), "");
        std::fs::write(dir.path().join(layout::LIMA_VERSION), "v2.0.3\n").unwrap();
        assert_eq!(existing_version(dir.path()), "v2.0.3");
    }
}

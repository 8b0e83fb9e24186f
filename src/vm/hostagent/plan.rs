//! One boot's plan, derived from the filled config: the cidata seed, the
//! QEMU spec and the SSH identity. Kept pure apart from `write_files` so
//! the mapping from lima.yaml to guest is unit-testable.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::HostAgentError;
use super::ssh_config::{SshConfig, known_hosts_line};
use crate::vm::cidata::{self, CidataInput, GuestUser, HostKey, InstanceId, NinePOptions};
use crate::vm::config::LimaYaml;
use crate::vm::layout;
use crate::vm::qemu::{self, MountSpec, QemuSpec};
use crate::vm::share::ShareType;
use crate::vm::units::parse_bytes;

pub(super) struct Plan {
    pub dir: PathBuf,
    pub lima_home: PathBuf,
    pub hostname: String,
    pub user: String,
    pub forward_agent: bool,
    pub host_key_public: String,
    pub cidata: CidataInput,
    pub qemu: QemuSpec,
}

impl Plan {
    pub(super) fn new(
        name: &str,
        dir: &Path,
        lima_home: &Path,
        cfg: &LimaYaml,
        iid: InstanceId,
        port: u16,
        share: ShareType,
    ) -> Result<Plan, HostAgentError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| HostAgentError::Io {
                what: "read",
                path,
                source,
            })
        };
        let host_key = HostKey {
            private_openssh: read(layout::HOST_KEY)?,
            public_openssh: read(layout::HOST_KEY_PUB)?.trim().to_string(),
        };
        let user_pub = crate::ssh::keys::ensure_user_key(lima_home)?
            .public_key()
            .to_openssh()
            .map_err(|e| HostAgentError::Io {
                what: "encode the public key of",
                path: crate::vm::dirs::config_dir(lima_home).join("user"),
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut authorized = vec![user_pub];
        let ssh = cfg.ssh.clone().unwrap_or_default();
        if ssh.load_dot_ssh_pub_keys == Some(true) {
            authorized.extend(dot_ssh_pub_keys());
        }
        let u = cfg.user.clone().unwrap_or_default();
        let user = GuestUser {
            name: u.name.clone().unwrap_or_else(|| "lima".into()),
            uid: u.uid.unwrap_or(1000),
            comment: u.comment.clone().unwrap_or_default(),
            home: u.home.clone().unwrap_or_default(),
            shell: u.shell.clone().unwrap_or_else(|| "/bin/bash".into()),
        };
        let queue_sizes: Vec<u32> = cfg
            .mounts
            .iter()
            .map(|m| {
                m.virtiofs
                    .as_ref()
                    .and_then(|v| v.queue_size)
                    .unwrap_or(1024)
            })
            .collect();
        let mounts: Vec<cidata::Mount> = cfg
            .mounts
            .iter()
            .map(|m| {
                let writable = m.writable.unwrap_or(false);
                let mut nine_p = NinePOptions::lima_default(writable);
                if let Some(p) = &m.nine_p {
                    if let Some(v) = &p.protocol_version {
                        nine_p.protocol_version = v.clone();
                    }
                    if let Some(size) = p.msize.as_deref().and_then(parse_bytes) {
                        nine_p.msize = size;
                    }
                    if let Some(c) = &p.cache {
                        nine_p.cache = c.clone();
                    }
                }
                cidata::Mount {
                    location: m.location.clone(),
                    mount_point: m.mount_point.clone().unwrap_or_else(|| m.location.clone()),
                    writable,
                    nine_p,
                }
            })
            .collect();
        let provisions = cfg
            .provision
            .iter()
            .map(provision)
            .collect::<Result<_, _>>()?;
        let mac = cidata::instance_mac_address(dir);
        let home = crate::vm::dirs::home_dir().unwrap_or_default();
        let cidata = CidataInput {
            name: name.to_string(),
            instance_id: iid,
            user: user.clone(),
            ssh_authorized_keys: authorized,
            host_home: home.display().to_string(),
            mounts: mounts.clone(),
            share,
            provisions,
            timezone: cfg.timezone.clone().filter(|t| !t.is_empty()),
            env: cfg.env.clone().unwrap_or_default(),
            params: cfg.param.clone().unwrap_or_default(),
            host_key: host_key.clone(),
            mac_address: mac.clone(),
            dns: vec![cidata::SLIRP_DNS.to_string()],
            debug: false,
        };
        let arch = cfg
            .arch
            .clone()
            .unwrap_or_else(|| crate::vm::sys::host_arch().to_string());
        let accel = qemu::detect_accel(&arch)?;
        let qemu = QemuSpec {
            name: name.to_string(),
            arch,
            accel,
            cpu_type: None,
            cpus: cfg.cpus.unwrap_or(1),
            memory_bytes: cfg
                .memory
                .as_deref()
                .and_then(parse_bytes)
                .unwrap_or(4 << 30),
            instance_dir: dir.to_path_buf(),
            firmware: None,
            iso: None,
            cidata_iso: None,
            kernel: None,
            initrd: None,
            kernel_cmdline: None,
            ssh_local_port: port,
            mac,
            mounts: mounts
                .iter()
                .zip(queue_sizes)
                .map(|(m, queue_size)| MountSpec {
                    tag: m.tag(),
                    host_path: PathBuf::from(&m.location),
                    readonly: !m.writable,
                    queue_size,
                })
                .collect(),
            share,
        };
        Ok(Plan {
            dir: dir.to_path_buf(),
            lima_home: lima_home.to_path_buf(),
            hostname: crate::vm::store::hostname(name),
            user: user.name,
            forward_agent: ssh.forward_agent == Some(true),
            host_key_public: host_key.public_openssh,
            cidata,
            qemu,
        })
    }

    /// Writes this boot's seed, `cloud-config.yaml`, `ssh.config` and the
    /// `known_hosts` it pins, then completes the QEMU spec from the files
    /// now present.
    pub(super) fn write_files(&mut self) -> Result<(), HostAgentError> {
        let d = &self.dir;
        cidata::write_cidata_iso(&d.join(layout::CIDATA_ISO), &self.cidata)?;
        let cc = d.join(layout::CLOUD_CONFIG);
        let _ = std::fs::remove_file(&cc);
        write(&cc, &cidata::cloud_config_yaml(&self.cidata)?, 0o444)?;
        let known_hosts = d.join(layout::KNOWN_HOSTS);
        write(
            &known_hosts,
            &known_hosts_line(&self.hostname, &self.host_key_public),
            0o644,
        )?;
        let config = SshConfig {
            host: &self.hostname,
            user: &self.user,
            identity: &crate::vm::dirs::config_dir(&self.lima_home).join("user"),
            known_hosts: &known_hosts,
            control_path: &d.join(layout::SSH_SOCK),
            forward_agent: self.forward_agent,
            port: self.qemu.ssh_local_port,
        };
        write(&d.join(layout::SSH_CONFIG), &config.render(), 0o600)?;
        self.qemu =
            self.qemu
                .clone()
                .with_instance_files()
                .map_err(|source| HostAgentError::Io {
                    what: "read the boot files in",
                    path: d.clone(),
                    source,
                })?;
        Ok(())
    }
}

fn provision(p: &crate::vm::config::Provision) -> Result<cidata::Provision, HostAgentError> {
    let script = || p.script.clone().unwrap_or_default();
    Ok(match p.mode.as_deref().unwrap_or("system") {
        "system" => cidata::Provision::System { script: script() },
        "user" => cidata::Provision::User { script: script() },
        "boot" => cidata::Provision::Boot { script: script() },
        "dependency" => cidata::Provision::Dependency { script: script() },
        "data" => cidata::Provision::Data(cidata::DataFile {
            path: p.path.clone().unwrap_or_default(),
            content: p.content.clone().unwrap_or_default(),
            owner: p.owner.clone().unwrap_or_else(|| "root:root".into()),
            permissions: p
                .permissions
                .as_deref()
                .and_then(|s| u32::from_str_radix(s, 8).ok())
                .unwrap_or(0o644),
            overwrite: p.overwrite.unwrap_or(true),
        }),
        other => {
            return Err(HostAgentError::UnsupportedProvision {
                mode: other.to_string(),
            });
        }
    })
}

/// `~/.ssh/*.pub`, for `ssh.loadDotSSHPubKeys`.
fn dot_ssh_pub_keys() -> Vec<String> {
    let Ok(home) = crate::vm::dirs::home_dir() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(home.join(".ssh")) else {
        return Vec::new();
    };
    let mut keys: Vec<(String, String)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pub"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                text.trim().to_string(),
            ))
        })
        .filter(|(_, k)| k.starts_with("ssh-") || k.starts_with("ecdsa-"))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), HostAgentError> {
    let io = |source| HostAgentError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, text).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

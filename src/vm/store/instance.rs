//! `Inspect`: one instance's config, status, pids and files, computed in
//! Lima's order so both tools agree on every status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::format::Globals;
use super::message::{self, Rendered};
use super::{StoreError, hostname, instance_dir, pidfile, unix_http};
use crate::errors;
use crate::vm::config::{self, ConfigError, LimaYaml};
use crate::vm::layout;
use crate::vm::units::parse_bytes;

/// Lima's instance states. `Unknown` (shown as an empty string) means
/// the config could not be loaded or validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Unknown,
    Broken,
    Stopped,
    Running,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "",
            Status::Broken => "Broken",
            Status::Stopped => "Stopped",
            Status::Running => "Running",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which generation of disk files the instance has (§5.5 of the notes):
/// Lima ≥ 2.1 writes `disk` (+ `iso`); older ones `basedisk` + `diffdisk`.
/// Migrated instances have `disk` as a symlink and count as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskLayout {
    /// No disk yet (created but never prepared, or half deleted).
    None,
    Current,
    Legacy,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    /// `lima-<name>`; empty for a directory without `lima.yaml`.
    pub hostname: String,
    pub status: Status,
    /// Absolute, under the symlink-resolved `$LIMA_HOME`.
    pub dir: PathBuf,
    pub vm_type: String,
    pub arch: String,
    pub cpus: u32,
    /// Bytes; 0 when unset or unparsable, as in Lima.
    pub memory: u64,
    pub disk: u64,
    /// The rendered `message:`.
    pub message: String,
    /// `additionalDisks` and `networks` in limactl's JSON shape.
    pub additional_disks: Vec<Value>,
    pub networks: Vec<Value>,
    /// From the host agent, else `ssh.config`, else `ssh.localPort`; 0 if unknown.
    pub ssh_local_port: u16,
    /// `$D/ssh.config` once the config loaded.
    pub ssh_config_file: Option<PathBuf>,
    /// `127.0.0.1` once the config loaded, else empty.
    pub ssh_address: String,
    pub host_agent_pid: Option<u32>,
    pub driver_pid: Option<u32>,
    /// Why the status is what it is, one message per problem.
    pub errors: Vec<String>,
    /// The loaded, defaults-filled config; `None` if it did not load.
    pub config: Option<LimaYaml>,
    pub protected: bool,
    /// Contents of `lima-version`, trimmed; empty when missing.
    pub lima_version: String,
    pub param: BTreeMap<String, String>,
    pub auto_started_identifier: String,
    pub disk_layout: DiskLayout,
}

impl Instance {
    pub(super) fn new(name: &str, dir: PathBuf) -> Self {
        Instance {
            name: name.to_string(),
            hostname: String::new(),
            status: Status::Unknown,
            dir,
            vm_type: String::new(),
            arch: String::new(),
            cpus: 0,
            memory: 0,
            disk: 0,
            message: String::new(),
            additional_disks: Vec::new(),
            networks: Vec::new(),
            ssh_local_port: 0,
            ssh_config_file: None,
            ssh_address: String::new(),
            host_agent_pid: None,
            driver_pid: None,
            errors: Vec::new(),
            config: None,
            protected: false,
            lima_version: String::new(),
            param: BTreeMap::new(),
            auto_started_identifier: String::new(),
            disk_layout: DiskLayout::None,
        }
    }

    /// The VM's root disk: `$D/disk` (possibly a symlink to `diffdisk`) in
    /// the current layout, `$D/diffdisk` in the legacy one, and where the
    /// current layout would put it when there is none yet.
    pub fn disk_path(&self) -> PathBuf {
        match self.disk_layout {
            DiskLayout::Legacy => self.dir.join(layout::DIFF_DISK),
            DiskLayout::Current | DiskLayout::None => self.dir.join(layout::DISK),
        }
    }

    /// The installer CD or legacy base image, if the instance has one.
    pub fn iso_path(&self) -> Option<PathBuf> {
        let name = match self.disk_layout {
            DiskLayout::Legacy => layout::BASE_DISK,
            DiskLayout::Current | DiskLayout::None => layout::ISO,
        };
        let p = self.dir.join(name);
        exists_lstat(&p).then_some(p)
    }

    /// `$D/ha.sock`, the host agent's API socket.
    pub fn ha_sock(&self) -> PathBuf {
        self.dir.join(layout::HOST_AGENT_SOCK)
    }

    fn broken(&mut self, error: String) {
        self.status = Status::Broken;
        self.errors.push(error);
    }
}

/// Inspects instance `name` under `lima_home`, in Lima's order (§2.2).
/// Only an invalid name or a missing `lima.yaml` is an `Err`; every other
/// problem is recorded in `errors` and reflected in `status`. Reading a
/// pid file of an exited process deletes it, as Lima does.
pub fn inspect(lima_home: &Path, name: &str) -> Result<Instance, StoreError> {
    let dir = instance_dir(lima_home, name)?;
    let mut inst = Instance::new(name, dir.clone());
    inst.hostname = hostname(name);
    let y = match config::load_instance(&dir, lima_home) {
        Ok(y) => y,
        Err(source @ ConfigError::Read { .. }) if is_not_found(&source) => {
            return Err(StoreError::NotFound {
                name: name.to_string(),
                dir,
                source,
            });
        }
        Err(e) => {
            inst.errors.push(errors::one_line(&e));
            return Ok(inst);
        }
    };
    let vm_type = y.vm_type.clone().unwrap_or_default();
    inst.vm_type = vm_type.clone();
    inst.arch = y.arch.clone().unwrap_or_default();
    inst.ssh_address = "127.0.0.1".to_string();
    inst.ssh_local_port = y.ssh.as_ref().and_then(|s| s.local_port).unwrap_or(0);
    let ssh_config = dir.join(layout::SSH_CONFIG);
    inst.ssh_config_file = Some(ssh_config.clone());

    match pidfile::read_pid_file(&dir.join(layout::HOST_AGENT_PID)) {
        Ok(pid) => inst.host_agent_pid = pid,
        Err(e) => inst.broken(errors::one_line(&e)),
    }
    if inst.host_agent_pid.is_some() {
        let sock = inst.ha_sock();
        if !exists_lstat(&sock) {
            inst.broken(format!(
                "host agent is running but its socket {} does not exist (it may still be starting)",
                sock.display()
            ));
        } else {
            match unix_http::hostagent_info(&sock) {
                Ok(info) => {
                    inst.ssh_local_port = info.ssh_local_port;
                    inst.auto_started_identifier = info.auto_started_identifier;
                }
                Err(e) => inst.broken(format!(
                    "cannot get info from the host agent: {}",
                    errors::one_line(&e)
                )),
            }
        }
    }
    if inst.ssh_local_port == 0 {
        match ssh_port_from_config(&ssh_config) {
            Ok(Some(port)) => inst.ssh_local_port = port,
            Ok(None) => {}
            Err(e) => inst.errors.push(e),
        }
    }

    inst.cpus = y.cpus.unwrap_or(0);
    inst.memory = y.memory.as_deref().and_then(parse_bytes).unwrap_or(0);
    inst.disk = y.disk.as_deref().and_then(parse_bytes).unwrap_or(0);
    let (disks, networks) = disks_and_networks(&y);
    inst.additional_disks = disks;
    inst.networks = networks;
    if vm_type == "wsl2" {
        (inst.cpus, inst.memory, inst.disk) = (0, 0, 0);
    }
    // Any answer but "not found" (even a permission error) means protected.
    inst.protected = !matches!(
        std::fs::symlink_metadata(dir.join(layout::PROTECTED)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    );

    inspect_driver_status(&mut inst, &vm_type);

    let param = y.param.clone().unwrap_or_default();
    if let Some(template) = y.message.as_deref() {
        let globals = Globals::new(lima_home);
        let lookup = |path: &str| template_field(&inst, &param, &globals, path);
        match message::render(template, &lookup) {
            Ok(Rendered::Text(text)) => inst.message = text,
            Ok(Rendered::Unsupported) => inst.message = template.to_string(),
            Err(e) => inst.broken(e.to_string()),
        }
    }

    match std::fs::read_to_string(dir.join(layout::LIMA_VERSION)) {
        Ok(v) => inst.lima_version = v.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => inst.errors.push(format!(
            "cannot read {}: {e}",
            dir.join(layout::LIMA_VERSION).display()
        )),
    }
    inst.param = param;
    inst.disk_layout = disk_layout(&dir);
    inst.config = Some(y);
    Ok(inst)
}

/// What `limactl list` shows: like [`inspect`], except that a directory
/// without `lima.yaml` becomes a Broken entry carrying that error.
pub(crate) fn inspect_for_list(lima_home: &Path, name: &str) -> Result<Instance, StoreError> {
    match inspect(lima_home, name) {
        Err(e @ StoreError::NotFound { .. }) if lima_home.join(name).is_dir() => {
            let mut inst = Instance::new(name, lima_home.join(name));
            inst.broken(e.to_string());
            Ok(inst)
        }
        other => other,
    }
}

/// Only QEMU has a driver here; any other vmType (e.g. `vz` made on a Mac)
/// is Broken, as Lima reports drivers it does not have.
fn inspect_driver_status(inst: &mut Instance, vm_type: &str) {
    if vm_type != "qemu" {
        inst.broken(format!(
            "failed to inspect status: unknown or unsupported VM type {vm_type:?} (only qemu is supported)"
        ));
        return;
    }
    match pidfile::read_pid_file(&inst.dir.join(layout::driver_pid(vm_type))) {
        Ok(pid) => inst.driver_pid = pid,
        Err(e) => inst.broken(errors::one_line(&e)),
    }
    if inst.status != Status::Unknown {
        return;
    }
    match (inst.host_agent_pid, inst.driver_pid) {
        (Some(_), Some(_)) => inst.status = Status::Running,
        (None, None) => inst.status = Status::Stopped,
        (Some(_), None) => inst.broken("host agent is running but driver is not".to_string()),
        (None, Some(_)) => {
            inst.broken(format!("{vm_type} driver is running but host agent is not"))
        }
    }
}

/// The `Port` of `ssh.config`, which survives a stop. A missing file is
/// `Ok(None)`; a file without a usable Port line is an error message.
fn ssh_port_from_config(path: &Path) -> Result<Option<u16>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let port_line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Port "))
        .ok_or_else(|| format!("no Port line in {}", path.display()))?;
    port_line
        .parse()
        .map(Some)
        .map_err(|_| format!("bad Port {port_line:?} in {}", path.display()))
}

/// `additionalDisks` (a bare string is a disk name) and `networks`, keyed
/// and ordered as limactl prints them. Read from the serialised config so
/// it does not matter whether the model types them yet.
fn disks_and_networks(y: &LimaYaml) -> (Vec<Value>, Vec<Value>) {
    let Ok(Value::Object(cfg)) = serde_json::to_value(y) else {
        return (Vec::new(), Vec::new());
    };
    let list = |key: &str, fields: &[&str]| -> Vec<Value> {
        let Some(Value::Array(items)) = cfg.get(key) else {
            return Vec::new();
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => serde_json::json!({ "name": s }),
                Value::Object(o) => Value::Object(
                    fields
                        .iter()
                        .filter_map(|f| o.get(*f).map(|v| (f.to_string(), v.clone())))
                        .collect(),
                ),
                other => other.clone(),
            })
            .collect()
    };
    (
        list("additionalDisks", &["name", "format", "fsType", "fsArgs"]),
        list(
            "networks",
            &[
                "lima",
                "socket",
                "vzNAT",
                "macAddress",
                "interface",
                "metric",
            ],
        ),
    )
}

/// Go field paths a message template may use, rendered as Go prints them.
fn template_field(
    inst: &Instance,
    param: &BTreeMap<String, String>,
    g: &Globals,
    path: &str,
) -> Option<String> {
    if let Some(key) = path.strip_prefix("Param.") {
        return Some(
            param
                .get(key)
                .cloned()
                .unwrap_or_else(|| "<no value>".into()),
        );
    }
    let pid = |p: Option<u32>| p.unwrap_or(0).to_string();
    Some(match path {
        "Name" => inst.name.clone(),
        "Hostname" => inst.hostname.clone(),
        "Status" => inst.status.to_string(),
        "Dir" => inst.dir.display().to_string(),
        "VMType" => inst.vm_type.clone(),
        "Arch" => inst.arch.clone(),
        "CPUs" => inst.cpus.to_string(),
        "Memory" => inst.memory.to_string(),
        "Disk" => inst.disk.to_string(),
        "SSHLocalPort" => inst.ssh_local_port.to_string(),
        "SSHConfigFile" => inst
            .ssh_config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        "SSHAddress" => inst.ssh_address.clone(),
        "HostAgentPID" => pid(inst.host_agent_pid),
        "DriverPID" => pid(inst.driver_pid),
        "Protected" => inst.protected.to_string(),
        "LimaVersion" => inst.lima_version.clone(),
        "AutoStartedIdentifier" => inst.auto_started_identifier.clone(),
        "HostOS" => g.host_os.clone(),
        "HostArch" => g.host_arch.clone(),
        "LimaHome" => g.lima_home.display().to_string(),
        "IdentityFile" => g.identity_file.display().to_string(),
        _ => return None,
    })
}

fn disk_layout(dir: &Path) -> DiskLayout {
    if exists_lstat(&dir.join(layout::DISK)) {
        DiskLayout::Current
    } else if exists_lstat(&dir.join(layout::DIFF_DISK)) {
        DiskLayout::Legacy
    } else {
        DiskLayout::None
    }
}

fn exists_lstat(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn is_not_found(e: &ConfigError) -> bool {
    matches!(e, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

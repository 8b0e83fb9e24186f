//! `limactl list` output as pure functions: the JSON Lines object with
//! limactl's keys, order, types and omissions, and the padded table.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::instance::Instance;
use crate::vm::sys::{host_arch, host_os};
use crate::vm::units::format_bytes;

/// The deprecated host-wide fields limactl still adds to every entry.
#[derive(Debug, Clone)]
pub(crate) struct Globals {
    pub host_os: String,
    pub host_arch: String,
    pub lima_home: PathBuf,
    pub identity_file: PathBuf,
}

impl Globals {
    pub(crate) fn new(lima_home: &Path) -> Self {
        Globals {
            host_os: host_os().to_string(),
            host_arch: host_arch().to_string(),
            lima_home: lima_home.to_path_buf(),
            identity_file: crate::vm::dirs::config_dir(lima_home).join("user"),
        }
    }
}

/// One `limactl list --json` object. Zero numbers, empty strings and
/// lists are omitted where Go's `omitempty` omits them; then every empty
/// object is removed, repeatedly, as limactl's yq pass does.
pub(crate) fn list_json(inst: &Instance, g: &Globals) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    let path = |p: &Path| Value::String(p.display().to_string());
    put("name", inst.name.clone().into());
    put("hostname", inst.hostname.clone().into());
    put("status", inst.status.as_str().into());
    put("dir", path(&inst.dir));
    put("vmType", inst.vm_type.clone().into());
    put("arch", inst.arch.clone().into());
    if inst.cpus != 0 {
        put("cpus", inst.cpus.into());
    }
    if inst.memory != 0 {
        put("memory", inst.memory.into());
    }
    if inst.disk != 0 {
        put("disk", inst.disk.into());
    }
    // limactl trims one trailing newline from the rendered message.
    let message = inst.message.strip_suffix('\n').unwrap_or(&inst.message);
    if !message.is_empty() {
        put("message", message.into());
    }
    if !inst.additional_disks.is_empty() {
        put("additionalDisks", inst.additional_disks.clone().into());
    }
    if !inst.networks.is_empty() {
        put("network", inst.networks.clone().into());
    }
    if inst.ssh_local_port != 0 {
        put("sshLocalPort", inst.ssh_local_port.into());
    }
    if let Some(p) = &inst.ssh_config_file {
        put("sshConfigFile", path(p));
    }
    if let Some(pid) = inst.host_agent_pid {
        put("hostAgentPID", pid.into());
    }
    if let Some(pid) = inst.driver_pid {
        put("driverPID", pid.into());
    }
    if !inst.errors.is_empty() {
        put("errors", inst.errors.clone().into());
    }
    if let Some(config) = inst
        .config
        .as_ref()
        .and_then(|c| serde_json::to_value(c).ok())
    {
        put("config", config);
    }
    if !inst.ssh_address.is_empty() {
        put("sshAddress", inst.ssh_address.clone().into());
    }
    put("protected", inst.protected.into());
    put("limaVersion", inst.lima_version.clone().into());
    if !inst.param.is_empty() {
        put(
            "param",
            serde_json::to_value(&inst.param).unwrap_or_default(),
        );
    }
    if !inst.auto_started_identifier.is_empty() {
        put(
            "autoStartedIdentifier",
            inst.auto_started_identifier.clone().into(),
        );
    }
    put("HostOS", g.host_os.clone().into());
    put("HostArch", g.host_arch.clone().into());
    put("LimaHome", path(&g.lima_home));
    put("IdentityFile", path(&g.identity_file));
    let mut v = Value::Object(m);
    prune_empty_objects(&mut v);
    v
}

/// Removes `{}` from objects and arrays, bottom-up, so that an object left
/// empty by the removal goes too.
fn prune_empty_objects(v: &mut Value) {
    let is_empty_obj = |v: &Value| matches!(v, Value::Object(o) if o.is_empty());
    match v {
        Value::Object(o) => {
            o.values_mut().for_each(prune_empty_objects);
            o.retain(|_, v| !is_empty_obj(v));
        }
        Value::Array(a) => {
            a.iter_mut().for_each(prune_empty_objects);
            a.retain(|v| !is_empty_obj(v));
        }
        _ => {}
    }
}

/// The `limactl list` table. `home` is replaced by `~` in DIR. `width` is
/// the terminal's, when stdout is one: narrow terminals lose the VMTYPE,
/// ARCH and DIR columns by limactl's rules; `None` never hides any.
pub(crate) fn table(instances: &[Instance], home: Option<&Path>, width: Option<usize>) -> String {
    const COL: usize = 8;
    let width = width.filter(|w| *w > 0);
    let narrower = |cols: usize| width.is_some_and(|w| cols * COL > w);
    let all_same = |f: fn(&Instance) -> &str| instances.windows(2).all(|w| f(&w[0]) == f(&w[1]));
    let mut columns = 5; // NAME, STATUS and SSH, the last two counted double
    let hide_type = narrower(columns + 7) && all_same(|i| &i.vm_type);
    if !hide_type {
        columns += 1;
    }
    let hide_arch = narrower(columns + 6)
        && all_same(|i| &i.arch)
        && instances.first().is_some_and(|i| i.arch == host_arch());
    if !hide_arch {
        columns += 1;
    }
    columns += 3;
    let hide_dir = narrower(columns + 2);

    let header = |name: &'static str, shown: bool| shown.then(|| name.to_string());
    let mut rows: Vec<Vec<String>> = vec![
        [
            header("NAME", true),
            header("STATUS", true),
            header("SSH", true),
            header("VMTYPE", !hide_type),
            header("ARCH", !hide_arch),
            header("CPUS", true),
            header("MEMORY", true),
            header("DISK", true),
            header("DIR", !hide_dir),
        ]
        .into_iter()
        .flatten()
        .collect(),
    ];
    for i in instances {
        let mut row = vec![
            i.name.clone(),
            i.status.to_string(),
            format!("{}:{}", i.ssh_address, i.ssh_local_port),
        ];
        if !hide_type {
            row.push(i.vm_type.clone());
        }
        if !hide_arch {
            row.push(i.arch.clone());
        }
        row.push(i.cpus.to_string());
        row.push(format_bytes(i.memory));
        row.push(format_bytes(i.disk));
        if !hide_dir {
            row.push(tilde(&i.dir, home));
        }
        rows.push(row);
    }
    tabwrite(&rows)
}

/// `dir` with a leading `home` shown as `~` (whole path components only).
fn tilde(dir: &Path, home: Option<&Path>) -> String {
    match home.and_then(|h| dir.strip_prefix(h).ok()) {
        Some(rest) if rest.as_os_str().is_empty() => "~".to_string(),
        Some(rest) => format!("~/{}", rest.display()),
        None => dir.display().to_string(),
    }
}

/// Go's tabwriter with minwidth 4, padding 4, spaces, no flags: every
/// cell but the last of a line is padded to its column's widest cell + 4
/// (at least 4), counting characters.
fn tabwrite(rows: &[Vec<String>]) -> String {
    const MIN_WIDTH: usize = 4;
    const PADDING: usize = 4;
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count() + PADDING)
                .max()
                .unwrap_or(0)
                .max(MIN_WIDTH)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_nested_empties() {
        let mut v = serde_json::json!({"a": {"b": {}}, "c": [{}, 1, {"d": {}}], "e": 0});
        prune_empty_objects(&mut v);
        assert_eq!(v, serde_json::json!({"c": [1], "e": 0}));
    }

    #[test]
    fn tabwriter_pads_all_but_last_cell() {
        let rows = vec![
            vec!["NAME".into(), "X".into(), "DIR".into()],
            vec!["a-long-name".into(), "".into(), "~/x".into()],
        ];
        assert_eq!(
            tabwrite(&rows),
            "NAME           X    DIR\na-long-name         ~/x\n"
        );
    }

    fn inst(name: &str, vm_type: &str, arch: &str) -> Instance {
        let mut i = Instance::new(name, PathBuf::from("/h/.lima").join(name));
        i.vm_type = vm_type.into();
        i.arch = arch.into();
        i
    }

    fn header(t: &str) -> Vec<&str> {
        t.lines().next().unwrap().split_whitespace().collect()
    }

    #[test]
    fn narrow_terminals_hide_columns_like_limactl() {
        let same = [
            inst("a", "qemu", host_arch()),
            inst("b", "qemu", host_arch()),
        ];
        let all = [
            "NAME", "STATUS", "SSH", "VMTYPE", "ARCH", "CPUS", "MEMORY", "DISK", "DIR",
        ];
        assert_eq!(header(&table(&same, None, None)), all);
        assert_eq!(header(&table(&same, None, Some(200))), all);
        // (5 + 7) * 8 = 96: VMTYPE goes; (5 + 6) * 8 = 88: ARCH; (5 + 5) * 8 = 80: DIR.
        assert_eq!(
            header(&table(&same, None, Some(95))),
            [
                "NAME", "STATUS", "SSH", "ARCH", "CPUS", "MEMORY", "DISK", "DIR"
            ]
        );
        assert_eq!(
            header(&table(&same, None, Some(87))),
            ["NAME", "STATUS", "SSH", "CPUS", "MEMORY", "DISK", "DIR"]
        );
        assert_eq!(
            header(&table(&same, None, Some(79))),
            ["NAME", "STATUS", "SSH", "CPUS", "MEMORY", "DISK"]
        );
        // Differing types or a foreign arch stay visible however narrow.
        let mixed = [inst("a", "qemu", "riscv64"), inst("b", "vz", "riscv64")];
        assert_eq!(
            header(&table(&mixed, None, Some(40))),
            [
                "NAME", "STATUS", "SSH", "VMTYPE", "ARCH", "CPUS", "MEMORY", "DISK"
            ]
        );
    }

    #[test]
    fn json_omits_what_limactl_omits() {
        let mut i = inst("a", "qemu", "x86_64");
        i.message = "hi\n".into();
        i.host_agent_pid = Some(7);
        let g = Globals::new(Path::new("/h/.lima"));
        let v = list_json(&i, &g);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "name",
                "hostname",
                "status",
                "dir",
                "vmType",
                "arch",
                "message",
                "hostAgentPID",
                "protected",
                "limaVersion",
                "HostOS",
                "HostArch",
                "LimaHome",
                "IdentityFile"
            ]
        );
        assert_eq!(v["message"], "hi");
        assert_eq!(v["IdentityFile"], "/h/.lima/_config/user");
    }

    #[test]
    fn tilde_only_on_component_boundary() {
        let home = Path::new("/home/u");
        assert_eq!(tilde(Path::new("/home/u/.lima/x"), Some(home)), "~/.lima/x");
        assert_eq!(tilde(Path::new("/home/u2/x"), Some(home)), "/home/u2/x");
        assert_eq!(tilde(Path::new("/srv/x"), None), "/srv/x");
    }
}

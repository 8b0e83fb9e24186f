//! `vm list` and the instance store on fake instance directories: status
//! rules with live processes and a real `ha.sock` server, stale pid file
//! cleanup, limactl's JSON keys and the table.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use llima_box::testing::vm::layout;
use llima_box::testing::vm::store::{self, DiskLayout, Status};
use serde_json::Value;

use crate::common::*;

/// limactl's keys, in its order, with their JSON types.
const KEYS: &[(&str, &str)] = &[
    ("name", "string"),
    ("hostname", "string"),
    ("status", "string"),
    ("dir", "string"),
    ("vmType", "string"),
    ("arch", "string"),
    ("cpus", "number"),
    ("memory", "number"),
    ("disk", "number"),
    ("message", "string"),
    ("additionalDisks", "array"),
    ("network", "array"),
    ("sshLocalPort", "number"),
    ("sshConfigFile", "string"),
    ("hostAgentPID", "number"),
    ("driverPID", "number"),
    ("errors", "array"),
    ("config", "object"),
    ("sshAddress", "string"),
    ("protected", "bool"),
    ("limaVersion", "string"),
    ("param", "object"),
    ("autoStartedIdentifier", "string"),
    ("HostOS", "string"),
    ("HostArch", "string"),
    ("LimaHome", "string"),
    ("IdentityFile", "string"),
];

/// Keys limactl always prints, even for a directory without lima.yaml.
const ALWAYS: &[&str] = &[
    "name",
    "hostname",
    "status",
    "dir",
    "vmType",
    "arch",
    "protected",
    "limaVersion",
    "HostOS",
    "HostArch",
    "LimaHome",
    "IdentityFile",
];

const SIZED: &str = "images:\n- location: /images/guest.img\ncpus: 2\nmemory: 2GiB\ndisk: 10GiB\n";

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Keys in limactl's order and with its types; errors are strings.
fn assert_limactl_shape(obj: &Value) {
    let map = obj.as_object().expect("each line is an object");
    let order: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let mut last = None;
    for (k, v) in map {
        let pos = order
            .iter()
            .position(|o| o == k)
            .unwrap_or_else(|| panic!("unexpected key {k} in {obj}"));
        assert!(last < Some(pos), "key {k} out of order in {obj}");
        last = Some(pos);
        assert_eq!(json_type(v), KEYS[pos].1, "type of {k} in {obj}");
    }
    for k in ALWAYS {
        assert!(map.contains_key(*k), "missing {k} in {obj}");
    }
    if let Some(errors) = map.get("errors") {
        assert!(
            errors.as_array().unwrap().iter().all(Value::is_string),
            "{obj}"
        );
    }
}

/// A LIMA_HOME with helpers to lay out instance directories.
struct Home {
    dir: TestDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: TestDir::new(),
        }
    }

    fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    fn inst(&self, name: &str, yaml: &str) -> PathBuf {
        self.dir.write(&format!("{name}/lima.yaml"), yaml);
        self.path().join(name)
    }

    fn file(&self, rel: &str, contents: &str) -> PathBuf {
        self.dir.write(rel, contents)
    }

    fn list(&self, args: &[&str]) -> (std::process::Output, String, String) {
        let out = llima_box(self.dir.path())
            .args(["vm", "list"])
            .args(args)
            .output()
            .unwrap();
        let (o, e) = text(&out);
        (out, o, e)
    }

    /// `vm list --json NAME…`, each line checked against limactl's shape.
    fn json(&self, names: &[&str]) -> Vec<Value> {
        let mut args = vec!["--json"];
        args.extend_from_slice(names);
        let (out, stdout, stderr) = self.list(&args);
        assert!(out.status.success(), "{stderr}");
        stdout
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                assert_limactl_shape(&v);
                v
            })
            .collect()
    }

    fn one(&self, name: &str) -> Value {
        let mut v = self.json(&[name]);
        assert_eq!(v.len(), 1);
        v.pop().unwrap()
    }
}

/// A live process whose pid goes into pid files; killed on drop.
struct Proc(Child);

impl Proc {
    fn sleep() -> Self {
        Proc(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exited_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A host agent stand-in on `sock` answering `GET /v1/info` like Lima's;
/// the test user must be able to connect, so the socket is opened up.
fn serve_info(sock: &Path, body: &'static str) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(sock).unwrap();
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    chown(sock);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            let req = String::from_utf8_lossy(&req);
            let resp = if req.starts_with("GET /v1/info ") && req.contains("Host: lima-hostagent") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            let _ = conn.write_all(resp.as_bytes());
        }
    })
}

fn errors(v: &Value) -> String {
    v["errors"].to_string()
}

#[test]
fn stopped_instance_with_no_pid_files() {
    let home = Home::new();
    home.inst("vm1", SIZED);
    let v = home.one("vm1");
    assert_eq!(v["status"], "Stopped");
    assert_eq!(v["hostname"], "lima-vm1");
    assert_eq!(v["cpus"], 2);
    assert_eq!(v["memory"], 2u64 << 30);
    assert_eq!(v["disk"], 10u64 << 30);
    assert_eq!(v["sshAddress"], "127.0.0.1");
    assert!(v.get("errors").is_none(), "{v}");
    assert!(v.get("hostAgentPID").is_none() && v.get("sshLocalPort").is_none());
}

#[test]
fn running_instance_reports_the_host_agents_port() {
    let home = Home::new();
    let dir = home.inst("run", SIZED);
    let (ha, qemu) = (Proc::sleep(), Proc::sleep());
    home.file("run/ha.pid", &format!("{}\n", ha.pid()));
    home.file("run/qemu.pid", &format!("{}\n", qemu.pid()));
    // ssh.config says otherwise: the host agent wins.
    home.file("run/ssh.config", "Host lima-run\n  Port 1111\n");
    let _srv = serve_info(
        &dir.join(layout::HOST_AGENT_SOCK),
        r#"{"autoStartedIdentifier":"io.lima-vm.run","sshLocalPort":45022}"#,
    );
    let v = home.one("run");
    assert_eq!(v["status"], "Running", "{v}");
    assert_eq!(v["sshLocalPort"], 45022);
    assert_eq!(v["hostAgentPID"], ha.pid());
    assert_eq!(v["driverPID"], qemu.pid());
    assert_eq!(v["autoStartedIdentifier"], "io.lima-vm.run");
    assert!(v.get("errors").is_none(), "{v}");

    let (out, table, _) = home.list(&["run"]);
    assert!(out.status.success());
    assert!(table.contains("Running    127.0.0.1:45022"), "{table}");
}

#[test]
fn host_agent_without_socket_is_broken() {
    let home = Home::new();
    home.inst("nosock", SIZED);
    let (ha, qemu) = (Proc::sleep(), Proc::sleep());
    home.file("nosock/ha.pid", &ha.pid().to_string());
    home.file("nosock/qemu.pid", &qemu.pid().to_string());
    let v = home.one("nosock");
    assert_eq!(v["status"], "Broken");
    assert!(errors(&v).contains(layout::HOST_AGENT_SOCK), "{v}");
    assert_eq!(v["hostAgentPID"], ha.pid());
}

#[test]
fn host_agent_socket_that_never_answers_is_broken_after_3s() {
    let home = Home::new();
    let dir = home.inst("hung", SIZED);
    let (ha, qemu) = (Proc::sleep(), Proc::sleep());
    home.file("hung/ha.pid", &ha.pid().to_string());
    home.file("hung/qemu.pid", &qemu.pid().to_string());
    let sock = dir.join(layout::HOST_AGENT_SOCK);
    let _listener = UnixListener::bind(&sock).unwrap(); // never accepts
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let start = std::time::Instant::now();
    let v = home.one("hung");
    let took = start.elapsed();
    assert_eq!(v["status"], "Broken");
    assert!(errors(&v).contains("3s"), "{v}");
    assert!(took >= std::time::Duration::from_secs(3), "{took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}

#[test]
fn host_agent_without_driver_is_broken() {
    let home = Home::new();
    let dir = home.inst("nodrv", SIZED);
    let ha = Proc::sleep();
    home.file("nodrv/ha.pid", &ha.pid().to_string());
    let _srv = serve_info(
        &dir.join(layout::HOST_AGENT_SOCK),
        r#"{"sshLocalPort":2222}"#,
    );
    let v = home.one("nodrv");
    assert_eq!(v["status"], "Broken");
    assert!(
        errors(&v).contains("host agent is running but driver is not"),
        "{v}"
    );
    assert_eq!(v["sshLocalPort"], 2222);
}

#[test]
fn driver_without_host_agent_is_broken() {
    let home = Home::new();
    home.inst("noha", SIZED);
    let qemu = Proc::sleep();
    home.file("noha/qemu.pid", &qemu.pid().to_string());
    let v = home.one("noha");
    assert_eq!(v["status"], "Broken");
    assert!(
        errors(&v).contains("qemu driver is running but host agent is not"),
        "{v}"
    );
    assert_eq!(v["driverPID"], qemu.pid());
}

#[test]
fn unparsable_pid_file_is_broken() {
    let home = Home::new();
    home.inst("garbage", SIZED);
    home.file("garbage/ha.pid", "twelve\n");
    let v = home.one("garbage");
    assert_eq!(v["status"], "Broken");
    assert!(errors(&v).contains(layout::HOST_AGENT_PID), "{v}");
}

#[test]
fn foreign_vm_type_is_broken() {
    let home = Home::new();
    home.inst("mac", &format!("vmType: vz\n{SIZED}"));
    let v = home.one("mac");
    assert_eq!(v["status"], "Broken");
    assert_eq!(v["vmType"], "vz");
    assert!(errors(&v).contains("unsupported VM type"), "{v}");
}

#[test]
fn stale_pid_files_are_removed() {
    let home = Home::new();
    let dir = home.inst("stale", SIZED);
    home.file("stale/ha.pid", &format!("{}\n", exited_pid()));
    home.file("stale/qemu.pid", &format!("{}\n", exited_pid()));
    let v = home.one("stale");
    assert_eq!(v["status"], "Stopped", "{v}");
    assert!(
        !dir.join(layout::HOST_AGENT_PID).exists(),
        "stale ha.pid kept"
    );
    assert!(!dir.join(layout::QEMU_PID).exists(), "stale qemu.pid kept");
}

#[test]
fn reserved_hidden_and_non_directories_are_skipped() {
    let home = Home::new();
    home.inst("b", SIZED);
    home.inst("a", SIZED);
    home.dir.mkdir("_config");
    home.dir.mkdir("_disks/data");
    home.dir.mkdir(".hidden");
    home.file("notadir", "");
    std::os::unix::fs::symlink(home.path().join("a"), home.path().join("link")).unwrap();
    let (out, stdout, stderr) = home.list(&["--names-only"]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "a\nb\n");
    let names: Vec<Value> = home.json(&[]).iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn directory_without_lima_yaml_is_listed_broken() {
    let home = Home::new();
    home.dir.mkdir("empty");
    let v = home.one("empty");
    assert_eq!(v["status"], "Broken");
    assert_eq!(v["hostname"], "");
    assert!(errors(&v).contains(layout::LIMA_YAML), "{v}");
    assert!(
        v.get("config").is_none() && v.get("sshAddress").is_none(),
        "{v}"
    );
}

#[test]
fn invalid_directory_name_aborts_like_limactl() {
    let home = Home::new();
    home.inst("ok", SIZED);
    home.inst("bad name", SIZED);
    let (out, stdout, stderr) = home.list(&[]);
    assert!(!out.status.success());
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("unable to load instance \"bad name\""),
        "{stderr}"
    );
    assert!(stderr.contains("invalid instance name"), "{stderr}");
    // Names only needs no inspection, so it still works.
    let (out, stdout, _) = home.list(&["--names-only"]);
    assert!(out.status.success());
    assert_eq!(stdout, "bad name\nok\n");
}

#[test]
fn unloadable_config_has_empty_status_and_no_pids() {
    let home = Home::new();
    home.inst("bad", "cpus: [\n");
    let ha = Proc::sleep();
    home.file("bad/ha.pid", &ha.pid().to_string());
    let v = home.one("bad");
    assert_eq!(v["status"], "");
    assert!(!errors(&v).is_empty());
    assert!(v.get("hostAgentPID").is_none(), "{v}");
}

#[test]
fn ssh_config_port_is_the_fallback() {
    let home = Home::new();
    home.inst("port", SIZED);
    home.file(
        "port/ssh.config",
        "Host lima-port\n  User u\n  Port 60022\n",
    );
    let v = home.one("port");
    assert_eq!(v["status"], "Stopped");
    assert_eq!(v["sshLocalPort"], 60022);

    home.inst("noport", SIZED);
    home.file("noport/ssh.config", "Host lima-noport\n");
    let v = home.one("noport");
    assert_eq!(v["status"], "Stopped");
    assert!(errors(&v).contains("Port"), "{v}");
}

#[test]
fn protected_marker_and_lima_version() {
    let home = Home::new();
    home.inst("keep", SIZED);
    home.file("keep/protected", "");
    home.file("keep/lima-version", "v2.2.0");
    home.inst("free", SIZED);
    let v = home.json(&["keep", "free"]);
    assert_eq!(v[0]["protected"], true);
    assert_eq!(v[0]["limaVersion"], "v2.2.0");
    assert_eq!(v[1]["protected"], false);
    assert_eq!(v[1]["limaVersion"], "");
}

#[test]
fn both_disk_layouts_are_recognised() {
    let home = Home::new();
    let legacy = home.inst("old", SIZED);
    home.file("old/basedisk", "");
    home.file("old/diffdisk", "");
    let current = home.inst("new", SIZED);
    home.file("new/disk", "");
    home.file("new/iso", "");
    let migrated = home.inst("moved", SIZED);
    home.file("moved/diffdisk", "");
    std::os::unix::fs::symlink(layout::DIFF_DISK, migrated.join(layout::DISK)).unwrap();
    home.inst("fresh", SIZED);

    let inspect = |n| store::inspect(&home.path(), n).unwrap();
    let old = inspect("old");
    assert_eq!(old.disk_layout, DiskLayout::Legacy);
    assert_eq!(old.disk_path(), legacy.join(layout::DIFF_DISK));
    assert_eq!(old.iso_path(), Some(legacy.join(layout::BASE_DISK)));
    assert_eq!(old.status, Status::Stopped);
    let new = inspect("new");
    assert_eq!(new.disk_layout, DiskLayout::Current);
    assert_eq!(new.disk_path(), current.join(layout::DISK));
    assert_eq!(new.iso_path(), Some(current.join(layout::ISO)));
    assert_eq!(inspect("moved").disk_layout, DiskLayout::Current);
    assert_eq!(inspect("fresh").disk_layout, DiskLayout::None);
    assert!(store::is_existing_instance_dir(&legacy));
    assert!(!store::is_existing_instance_dir(&home.path().join("fresh")));
}

#[test]
fn named_instances_in_order_and_unknown_names_fail() {
    let home = Home::new();
    home.inst("a", SIZED);
    home.inst("b", SIZED);
    let names: Vec<Value> = home
        .json(&["b", "a"])
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, ["b", "a"]);

    let (out, stdout, stderr) = home.list(&["--names-only", "a", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout, "a\n");
    assert!(
        stderr.contains("No instance matching nope found."),
        "{stderr}"
    );

    let (out, stdout, _) = home.list(&["--json", "nope", "b"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn no_instances_warns_and_succeeds() {
    let home = Home::new();
    let (out, stdout, stderr) = home.list(&[]);
    assert!(out.status.success());
    assert_eq!(stdout, "");
    assert!(stderr.contains("no instance found"), "{stderr}");

    // A LIMA_HOME that does not exist is just empty.
    let out = llima_box(&home.path().join("missing"))
        .args(["vm", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn vm_list_runs_as_root_too() {
    if !is_root() {
        return;
    }
    let home = Home::new();
    home.inst("vm", SIZED);
    let out = Command::new(bin())
        .args(["vm", "list", "--names-only"])
        .env("LIMA_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(out.stdout, b"vm\n");
}

/// The snapshot fixture: every kind of entry limactl prints, with
/// machine-specific values as placeholders.
fn snapshot_home(home: &Home) {
    home.inst(
        "alpha",
        "images:\n- location: /images/guest.img\n\
         vmType: qemu\narch: x86_64\ncpus: 2\nmemory: 2GiB\ndisk: 10GiB\n\
         provision:\n- script: \"#!/bin/sh\\necho $PARAM_b $PARAM_greeting\"\n\
         additionalDisks:\n- data\n- name: scratch\n  format: false\n  fsType: ext4\n\
         networks:\n- lima: user-v2\n- socket: /var/run/x.sock\n  macAddress: \"52:55:55:00:00:01\"\n\
         param:\n  greeting: hi\n  b: \"2\"\n\
         message: |\n  Hello from {{.Name}} ({{.Param.greeting}}) on {{.HostOS}}\n",
    );
    home.file("alpha/lima-version", "v2.2.0");
    home.file("alpha/protected", "");
    home.file("alpha/disk", "");
    home.file("alpha/ssh.config", "Host lima-alpha\n  Port 60022\n");
    home.inst(
        "plain",
        "images:\n- location: /images/guest.img\ncpus: 1\nmemory: 1536MiB\ndisk: 5GiB\n",
    );
    home.dir.mkdir("noyaml");
    home.inst(
        "z.vz",
        "images:\n- location: /images/guest.img\nvmType: vz\narch: aarch64\ncpus: 4\nmemory: 4GiB\ndisk: 100GiB\n",
    );
}

#[test]
fn json_matches_the_limactl_snapshot() {
    let home = Home::new();
    snapshot_home(&home);
    let lines = home.json(&[]);
    let lima_home = home.path();
    let expected = include_str!("../fixtures/store/list.jsonl")
        .replace("@LIMA_HOME@", lima_home.to_str().unwrap())
        .replace("@HOST_ARCH@", store::host_arch())
        .replace("@HOST_OS@", store::host_os());
    let expected: Vec<String> = expected
        .lines()
        .map(|l| serde_json::to_string(&serde_json::from_str::<Value>(l).unwrap()).unwrap())
        .collect();
    let actual: Vec<String> = lines
        .iter()
        .map(|v| {
            let mut v = v.clone();
            let (vm_type, arch) = (v["vmType"].clone(), v["arch"].clone());
            // The config's content belongs to the config loader; here only
            // that it is the filled object matching the top-level fields.
            if let Some(cfg) = v.get_mut("config") {
                assert_eq!((&cfg["vmType"], &cfg["arch"]), (&vm_type, &arch));
                *cfg = Value::String("@CONFIG@".into());
            }
            serde_json::to_string(&v).unwrap()
        })
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn table_matches_limactl() {
    let home = Home::new();
    home.dir.mkdir("h");
    let lima = home.dir.mkdir("h/.lima");
    home.file(
        "h/.lima/alpha/lima.yaml",
        "images:\n- location: /images/guest.img\narch: x86_64\ncpus: 2\nmemory: 2GiB\ndisk: 10GiB\n",
    );
    home.file("h/.lima/alpha/ssh.config", "Port 60022\n");
    home.file(
        "h/.lima/b/lima.yaml",
        "images:\n- location: /images/guest.img\nvmType: vz\narch: aarch64\ncpus: 4\nmemory: 4096000000\ndisk: 100GiB\n",
    );
    home.dir.mkdir("h/.lima/c");
    let out = llima_box(&lima)
        .env("HOME", home.path().join("h"))
        .args(["vm", "list"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "NAME     STATUS     SSH                VMTYPE    ARCH       CPUS    MEMORY      DISK      DIR\n\
         alpha    Stopped    127.0.0.1:60022    qemu      x86_64     2       2GiB        10GiB     ~/.lima/alpha\n\
         b        Broken     127.0.0.1:0        vz        aarch64    4       3.815GiB    100GiB    ~/.lima/b\n\
         c        Broken     :0                                      0       0B          0B        ~/.lima/c\n"
    );
    assert!(stderr.contains("instance \"c\" has errors"), "{stderr}");
}

//! `llima-box vm validate [--fill]` run as a user would: Lima's own
//! templates, the filled values, the three config layers, and failures.

use std::path::{Path, PathBuf};

use llima_box::testing::{fixture_templates, require_lima_template_corpus};
use serde_yaml::Value;

use crate::common::*;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// `vm validate ARGS` with `templates` as the template search path.
fn validate_in(
    templates: &Path,
    home: &TestDir,
    args: &[&std::ffi::OsStr],
) -> std::process::Output {
    llima_box(home.path())
        .args(["vm", "validate"])
        .args(args)
        .env("LIMA_TEMPLATES_PATH", templates)
        .output()
        .unwrap()
}

fn validate(home: &TestDir, args: &[&std::ffi::OsStr]) -> std::process::Output {
    validate_in(&fixture_templates(), home, args)
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |cur, k| match k.parse::<usize>() {
        Ok(i) => &cur[i],
        Err(_) => &cur[k],
    })
}

/// One `vm validate` over every template of a tree prints an OK line each.
fn every_template_validates(dir: &Path) {
    let home = TestDir::new();
    let mut files = yaml_files(dir);
    files.extend(yaml_files(&dir.join("_images")));
    let args: Vec<_> = files.iter().map(|f| f.as_os_str()).collect();
    let out = validate_in(dir, &home, &args);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for f in &files {
        assert!(
            stderr.contains(&format!("{}: OK", f.display())),
            "no OK line for {}:\n{stderr}",
            f.display()
        );
    }
}

#[test]
fn every_fixture_template_validates() {
    every_template_validates(&fixture_templates());
}

#[test]
#[ignore = "needs Lima's template corpus; tests/run runs it when present"]
fn corpus_every_lima_template_validates() {
    every_template_validates(&require_lima_template_corpus());
}

/// CPUs as Go's runtime.NumCPU counts them (the affinity mask on Linux).
#[cfg(target_os = "linux")]
fn host_cpus() -> u64 {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        libc::CPU_COUNT(&set) as u64
    }
}

#[cfg(not(target_os = "linux"))]
fn host_cpus() -> u64 {
    std::thread::available_parallelism().unwrap().get() as u64
}

/// `--fill` of a tree's default template gives Lima's defaults for this host.
fn fill_gives_limas_defaults(dir: &Path) {
    let home = TestDir::new();
    let default = dir.join("default.yaml");
    let out = validate_in(dir, &home, &["--fill".as_ref(), default.as_os_str()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let y: Value = serde_yaml::from_str(&stdout).unwrap();

    let u = user();
    let ncpu = host_cpus();
    // SAFETY: sysconf reads constants.
    let ram = unsafe {
        libc::sysconf(libc::_SC_PHYS_PAGES) as u64 * libc::sysconf(libc::_SC_PAGESIZE) as u64
    };
    let memory = llima_box::testing::vm::units::format_bytes((4u64 << 30).min(ram / 2));
    let passwd = std::process::Command::new("getent")
        .args(["passwd", &u.name])
        .output()
        .unwrap();
    let passwd = String::from_utf8(passwd.stdout).unwrap();
    let gecos = passwd
        .split(':')
        .nth(4)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let home_dir = u.home.to_string_lossy().into_owned();
    let guest_home = format!("/home/{}.guest", u.name);

    let want: Vec<(&str, Value)> = vec![
        ("cpus", ncpu.min(4).into()),
        ("memory", memory.into()),
        ("disk", "100GiB".into()),
        (
            "vmType",
            if cfg!(target_os = "macos") {
                "vz"
            } else {
                "qemu"
            }
            .into(),
        ),
        ("arch", std::env::consts::ARCH.into()),
        ("os", "Linux".into()),
        ("minimumLimaVersion", "2.0.0".into()),
        ("user.name", u.name.clone().into()),
        ("user.uid", u64::from(u.uid).into()),
        ("user.comment", gecos.into()),
        ("user.home", guest_home.into()),
        ("user.shell", "/bin/bash".into()),
        ("user.passwordlessSudo", true.into()),
        ("ssh.localPort", 0u64.into()),
        ("ssh.loadDotSSHPubKeys", false.into()),
        ("ssh.forwardAgent", false.into()),
        ("ssh.forwardX11", false.into()),
        ("ssh.forwardX11Trusted", false.into()),
        ("mounts.0.location", home_dir.clone().into()),
        ("mounts.0.mountPoint", home_dir.into()),
        ("mounts.0.writable", false.into()),
        ("mounts.0.9p.securityModel", "none".into()),
        ("mounts.0.9p.protocolVersion", "9p2000.L".into()),
        ("mounts.0.9p.msize", "128KiB".into()),
        ("mounts.0.9p.cache", "fscache".into()),
        ("containerd.system", false.into()),
        ("containerd.user", true.into()),
        ("hostResolver.enabled", true.into()),
        ("hostResolver.ipv6", false.into()),
        ("video.display", "none".into()),
        ("propagateProxyEnv", true.into()),
        ("guestInstallPrefix", "/usr/local".into()),
        ("upgradePackages", false.into()),
        ("mountInotify", false.into()),
        ("plain", false.into()),
        ("nestedVirtualization", false.into()),
    ];
    for (path, value) in want {
        assert_eq!(get(&y, path), &value, "field {path}");
    }
    assert!(get(&y, "base").is_null(), "base must be embedded away");
    assert!(
        get(&y, "images")
            .as_sequence()
            .is_some_and(|s| !s.is_empty())
    );
}

#[test]
fn fill_of_the_fixture_default_gives_limas_defaults() {
    fill_gives_limas_defaults(&fixture_templates());
}

#[test]
#[ignore = "needs Lima's template corpus; tests/run runs it when present"]
fn corpus_fill_of_limas_default_gives_limas_defaults() {
    fill_gives_limas_defaults(&require_lima_template_corpus());
}

#[test]
fn default_instance_and_override_layers_resolve_like_lima() {
    let home = TestDir::new();
    home.write(
        "_config/default.yaml",
        "cpus: 1\ndisk: 10GiB\nprovision: [{script: d}]\n\
         mounts: [{location: /srv/shared, writable: false}]\nenv: {A: d, B: d}\n",
    );
    home.write(
        "_config/override.yaml",
        "cpus: 3\nprovision: [{script: o}]\nmounts: [{location: /srv/shared, 9p: {cache: none}}]\n\
         env: {C: o}\n",
    );
    let file = home.write(
        "t.yaml",
        "images: [{location: /x.img}]\ncpus: 2\nmemory: 2GiB\nprovision: [{script: y}]\n\
         mounts: [{location: /srv/shared, writable: true}]\nenv: {B: y, C: y}\n",
    );
    let out = validate(&home, &["--fill".as_ref(), file.as_os_str()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let y: Value = serde_yaml::from_str(&stdout).unwrap();
    assert_eq!(y["cpus"], Value::from(3u64), "override wins");
    assert_eq!(y["memory"], Value::from("2GiB"), "instance beats default");
    assert_eq!(y["disk"], Value::from("10GiB"), "default beats builtin");
    let scripts: Vec<_> = y["provision"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["script"].as_str().unwrap())
        .collect();
    assert_eq!(scripts, ["o", "y", "d"]);
    let mounts = y["mounts"].as_sequence().unwrap();
    assert_eq!(mounts.len(), 1, "same mount point merges");
    assert_eq!(mounts[0]["writable"], Value::from(true));
    assert_eq!(mounts[0]["9p"]["cache"], Value::from("none"));
    let env: serde_yaml::Mapping = serde_yaml::from_str("{A: d, B: y, C: o}").unwrap();
    assert_eq!(y["env"], Value::Mapping(env));
}

#[test]
fn a_broken_file_fails_naming_file_and_field() {
    let home = TestDir::new();
    let good = home.write("good.yaml", "images: [{location: /x.img}]\n");
    let bad = home.write(
        "bad.yaml",
        "images: [{location: /x.img}]\nssh:\n  localPort: 22\n",
    );
    let out = validate(&home, &[good.as_os_str(), bad.as_os_str()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}: OK", good.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: field `ssh.localPort` must not be 22",
            bad.display()
        )),
        "{stderr}"
    );
}

#[test]
fn malformed_yaml_reports_line_and_column_and_writes_nothing() {
    let home = TestDir::new();
    let bad = home.write("bad.yaml", "cpus: 2\nmemory: 4GiB\nmounts: [\n  - x\n");
    let before = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -printf '%p %m %s %T@\\n' | sort; find . -type f -exec sha256sum {} + | sort")
        .current_dir(home.path())
        .output()
        .unwrap()
        .stdout;
    let out = validate(&home, &[bad.as_os_str()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:4:3: invalid YAML", bad.display())),
        "{stderr}"
    );
    let after = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -printf '%p %m %s %T@\\n' | sort; find . -type f -exec sha256sum {} + | sort")
        .current_dir(home.path())
        .output()
        .unwrap()
        .stdout;
    assert_eq!(before, after, "validate must not write");
}

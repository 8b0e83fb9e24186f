//! Whole-pipeline tests: Lima's own templates, precedence of the three
//! layers, filled values, errors.

use std::path::{Path, PathBuf};

use crate::testing::{fixture_templates, require_lima_template_corpus};

use super::fill::test_host;
use super::*;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Embed (bases found in `templates`), load against `lima_home`, fill for
/// `host`, validate: what `vm validate` does.
fn check_template(
    templates: &Path,
    file: &Path,
    lima_home: &Path,
    host: &HostFacts,
) -> Result<LimaYaml, ConfigError> {
    let search = TemplateSearch {
        dirs: vec![templates.to_path_buf()],
    };
    let y = from_mapping(embed_file(file, &search, None)?, file)?;
    let cx = FillContext {
        host,
        instance_dir: &lima_home.join("t"),
        file,
        existing_version: COMPAT_VERSION.into(),
    };
    let y = load(y, lima_home, &cx)?;
    validate(&y, file)?;
    Ok(y)
}

fn fill_str(text: &str, lima_home: &Path, host: &HostFacts) -> Result<LimaYaml, ConfigError> {
    let file = lima_home.join("t/lima.yaml");
    let cx = FillContext {
        host,
        instance_dir: &lima_home.join("t"),
        file: &file,
        existing_version: COMPAT_VERSION.into(),
    };
    let y = load(parse(text, &file)?, lima_home, &cx)?;
    validate(&y, &file)?;
    Ok(y)
}

const MINIMAL: &str = "images: [{location: /img.qcow2}]\n";

/// Every template of a tree, `_images` included, validates for a made-up
/// host and this one; a lone mounts fragment fails as in Lima.
fn every_template_validates(dir: &Path, at_least: usize) {
    let home = tempfile::tempdir().unwrap();
    let mut files = yaml_files(dir);
    files.extend(yaml_files(&dir.join("_images")));
    assert!(
        files.len() >= at_least,
        "only {} templates found",
        files.len()
    );
    for host in [test_host(), HostFacts::current()] {
        for f in &files {
            if let Err(e) = check_template(dir, f, home.path(), &host) {
                panic!("{}: {e}", f.display());
            }
        }
    }
    // A lone mounts fragment has no images, in Lima too.
    let mounts = dir.join("_default/mounts.yaml");
    let e = check_template(dir, &mounts, home.path(), &test_host()).unwrap_err();
    assert!(e.to_string().contains("field `images`"), "{e}");
}

#[test]
fn every_fixture_template_validates() {
    every_template_validates(&fixture_templates(), 4);
}

#[test]
#[ignore = "needs Lima's template corpus; tests/run runs it when present"]
fn corpus_every_lima_template_validates() {
    every_template_validates(&require_lima_template_corpus(), 90);
}

/// The default template of a tree, filled for the made-up host, has Lima's
/// values; its images come from a base (`distro` names them).
fn default_template_fills_like_lima(dir: &Path, distro: &str) {
    let home = tempfile::tempdir().unwrap();
    let default = dir.join("default.yaml");
    let y = check_template(dir, &default, home.path(), &test_host()).unwrap();
    assert_eq!(y.cpus, Some(2));
    assert_eq!(y.memory.as_deref(), Some("3GiB"));
    assert_eq!(y.disk.as_deref(), Some("100GiB"));
    assert_eq!(y.vm_type.as_deref(), Some("qemu"));
    assert_eq!(y.arch.as_deref(), Some("x86_64"));
    assert_eq!(y.os.as_deref(), Some("Linux"));
    assert_eq!(y.minimum_lima_version.as_deref(), Some("2.0.0"));
    assert!(y.base.is_none());
    let u = y.user.clone().unwrap();
    assert_eq!(u.name.as_deref(), Some("alice"));
    assert_eq!(u.comment.as_deref(), Some("Alice A"));
    assert_eq!(u.home.as_deref(), Some("/home/alice.guest"));
    assert_eq!(u.shell.as_deref(), Some("/bin/bash"));
    assert_eq!(u.uid, Some(1234));
    assert_eq!(u.passwordless_sudo, Some(true));
    let s = y.ssh.clone().unwrap();
    assert_eq!(s.local_port, Some(0));
    assert_eq!(s.load_dot_ssh_pub_keys, Some(false));
    assert_eq!(s.forward_agent, Some(false));
    assert_eq!(s.forward_x11, Some(false));
    assert_eq!(s.forward_x11_trusted, Some(false));
    assert_eq!(y.mounts.len(), 1);
    let m = &y.mounts[0];
    assert_eq!(m.location, "/home/alice");
    assert_eq!(m.mount_point.as_deref(), Some("/home/alice"));
    assert_eq!(m.writable, Some(false));
    let p9 = m.nine_p.clone().unwrap();
    assert_eq!(p9.security_model.as_deref(), Some("none"));
    assert_eq!(p9.protocol_version.as_deref(), Some("9p2000.L"));
    assert_eq!(p9.msize.as_deref(), Some("128KiB"));
    assert_eq!(p9.cache.as_deref(), Some("fscache"));
    let c = y.containerd.clone().unwrap();
    assert_eq!((c.system, c.user), (Some(false), Some(true)));
    assert_eq!(c.archives.len(), 2);
    assert_eq!(y.host_resolver.clone().unwrap().enabled, Some(true));
    assert_eq!(y.video.clone().unwrap().display.as_deref(), Some("none"));
    assert_eq!(y.timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(y.guest_install_prefix.as_deref(), Some("/usr/local"));
    assert_eq!(y.propagate_proxy_env, Some(true));
    assert_eq!(y.plain, Some(false));
    // Images keep their own arch; the image list comes from the base.
    assert!(y.images.iter().all(|i| i.file.arch.is_some()));
    assert!(y.images[0].file.location.contains(distro));
}

#[test]
fn filled_default_template_has_limas_values() {
    default_template_fills_like_lima(&fixture_templates(), "debian");
}

#[test]
#[ignore = "needs Lima's template corpus; tests/run runs it when present"]
fn corpus_filled_default_template_has_limas_values() {
    default_template_fills_like_lima(&require_lima_template_corpus(), "ubuntu");
}

#[test]
fn host_dependent_defaults() {
    let home = tempfile::tempdir().unwrap();
    let mut big = test_host();
    big.ncpu = 16;
    big.memory_bytes = 64 << 30;
    let y = fill_str(MINIMAL, home.path(), &big).unwrap();
    assert_eq!((y.cpus, y.memory.as_deref()), (Some(4), Some("4GiB")));

    let mut mac = test_host();
    mac.is_macos = true;
    mac.arch = "aarch64".into();
    let y = fill_str(MINIMAL, home.path(), &mac).unwrap();
    assert_eq!(y.vm_type.as_deref(), Some("vz"));
    let y = fill_str(&format!("arch: x86_64\n{MINIMAL}"), home.path(), &mac).unwrap();
    assert_eq!(
        y.vm_type.as_deref(),
        Some("qemu"),
        "non-native arch needs qemu"
    );

    let mut odd = test_host();
    odd.user = "Some.User".into();
    let y = fill_str(MINIMAL, home.path(), &odd).unwrap();
    let u = y.user.unwrap();
    assert_eq!(u.name.as_deref(), Some("lima"));
    assert_eq!(u.home.as_deref(), Some("/home/lima.guest"));

    let y = fill_str(
        &format!("arch: riscv64\n{MINIMAL}"),
        home.path(),
        &test_host(),
    )
    .unwrap();
    assert_eq!(y.containerd.unwrap().user, Some(false));
}

#[test]
fn old_instances_keep_their_old_home() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().join("old");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("lima.yaml"), MINIMAL).unwrap();
    std::fs::write(d.join("disk"), "").unwrap();
    std::fs::write(d.join("lima-version"), "v2.0.3\n").unwrap();
    let y = load_instance(&d, home.path()).unwrap();
    let user = y.user.unwrap();
    assert_eq!(
        user.home,
        Some(format!("/home/{}.linux", user.name.unwrap())),
    );
}

fn write_layers(home: &Path, d: &str, o: &str) {
    let c = home.join("_config");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("default.yaml"), d).unwrap();
    std::fs::write(c.join("override.yaml"), o).unwrap();
}

#[test]
fn precedence_of_default_instance_and_override() {
    let home = tempfile::tempdir().unwrap();
    write_layers(
        home.path(),
        "cpus: 1\nmemory: 1GiB\ndisk: 10GiB\n\
         provision: [{script: '#!/bin/sh d'}]\n\
         mounts: [{location: /d, writable: false}, {location: /shared, writable: false}]\n\
         env: {A: d, B: d}\ndns: [1.1.1.1]\nhostResolver: {enabled: false}\n",
        "cpus: 3\nprovision: [{script: '#!/bin/sh o'}]\n\
         mounts: [{location: /shared, 9p: {cache: none}}]\nenv: {C: o}\n",
    );
    let y = fill_str(
        "cpus: 2\nmemory: 2GiB\nprovision: [{script: '#!/bin/sh y'}]\n\
         mounts: [{location: /shared, writable: true}, {location: /y}]\n\
         env: {B: y, C: y}\nimages: [{location: /y.img}]\n",
        home.path(),
        &test_host(),
    )
    .unwrap();
    // Scalars: o > y > d.
    assert_eq!(y.cpus, Some(3));
    assert_eq!(y.memory.as_deref(), Some("2GiB"));
    assert_eq!(y.disk.as_deref(), Some("10GiB"));
    // Lists: o + y + d.
    let scripts: Vec<_> = y
        .provision
        .iter()
        .map(|p| p.script.clone().unwrap())
        .collect();
    assert_eq!(scripts, ["#!/bin/sh o", "#!/bin/sh y", "#!/bin/sh d"]);
    // Mounts: d, y, o merged by mount point.
    let mounts: Vec<_> = y
        .mounts
        .iter()
        .map(|m| {
            (
                m.location.as_str(),
                m.writable.unwrap(),
                m.nine_p.clone().unwrap().cache.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("/d", false, "fscache".to_string()),
            ("/shared", true, "none".to_string()),
            ("/y", false, "fscache".to_string()),
        ]
    );
    // Maps: d, then y, then o.
    let env = y.env.unwrap();
    assert_eq!(
        env.into_iter().collect::<Vec<_>>(),
        [("A", "d"), ("B", "y"), ("C", "o")].map(|(k, v)| (k.to_string(), v.to_string()))
    );
    // dns: the highest layer with a non-empty list.
    assert_eq!(y.dns, ["1.1.1.1"]);
}

#[test]
fn syntax_errors_have_line_and_column_and_nothing_is_written() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("lima.yaml"),
        "cpus: 2\nmemory: 4GiB\nmounts: [\n  - x\n",
    )
    .unwrap();
    let before = tree_digest(home.path());
    match load_instance(&d, home.path()) {
        Err(ConfigError::Syntax {
            path, line, column, ..
        }) => {
            assert_eq!(path, d.join("lima.yaml"));
            assert_eq!((line, column), (4, 3));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert_eq!(tree_digest(home.path()), before);

    // Type errors carry a position too, also in a base.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.yaml");
    std::fs::write(&base, "images: []\n\ncpus: many\n").unwrap();
    let t = dir.path().join("t.yaml");
    std::fs::write(&t, "base: b.yaml\n").unwrap();
    let e = embed_file(&t, &TemplateSearch::default(), None).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3:7: invalid YAML", base.display())),
        "{e}"
    );
    let e = parse("images: []\ncpus: many\n", Path::new("x.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e:?}");
}

/// Every path, mode, and content under `dir`.
pub(crate) fn tree_digest(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let content = if meta.is_dir() {
            let mut kids: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            kids.sort();
            stack.extend(kids);
            vec![]
        } else {
            std::fs::read(&p).unwrap()
        };
        out.push((p, meta.permissions().mode(), content));
    }
    out
}

#[test]
fn unknown_keys_survive_a_round_trip() {
    let text = "futureField: {a: [1, 2]}\nimages:\n- location: /x\n  variant: server\n\
                mounts:\n- location: /m\n  futureMountOption: 7\nssh:\n  futureSsh: true\n\
                provision:\n- script: s\n  futureProvision: p\n\
                user: {name: u, futureUser: 1}\ncontainerd: {user: false, futureCtr: x}\n\
                networks: [{lima: shared, futureNet: 2}]\n";
    let y = parse(text, Path::new("x.yaml")).unwrap();
    let again = parse(&serde_yaml::to_string(&y).unwrap(), Path::new("x.yaml")).unwrap();
    assert_eq!(y, again);
    let back: serde_yaml::Value = serde_yaml::to_value(&again).unwrap();
    let want: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    assert_eq!(back, want);
}

#[test]
fn validation_names_the_field() {
    let home = tempfile::tempdir().unwrap();
    let cases = [
        ("cpus: 1\n", "field `images` must have at least one entry"),
        ("base: template:x\n", "field `base` must be empty"),
        ("ssh: {localPort: 22}\n", "field `ssh.localPort`"),
        (
            "mounts: [{location: rel/dir}]\n",
            "field `mounts[0].location` must be an absolute path",
        ),
        (
            "mounts: [{location: /m, mountPoint: /etc}]\n",
            "field `mounts[0].mountPoint`",
        ),
        ("memory: lots\n", "field `memory`"),
        ("disk: 1XB\n", "field `disk`"),
        ("arch: mips\n", "field `arch`"),
        ("vmType: vbox\n", "field `vmType`"),
        ("os: Plan9\n", "field `os`"),
        (
            "provision: [{mode: later, script: x}]\n",
            "field `provision[0].mode`",
        ),
        (
            "provision: [{mode: system}]\n",
            "field `provision[0].script`",
        ),
        (
            "provision: [{mode: data, content: x}]\n",
            "field `provision[0].path`",
        ),
        (
            "param: {1bad: x}\nprovision: [{script: '{{.Param.1bad}}'}]\n",
            "field `param`",
        ),
        ("param: {unused: x}\n", "field `param.unused`"),
        ("minimumLimaVersion: 2.3.0\n", "field `minimumLimaVersion`"),
        ("minimumLimaVersion: two\n", "field `minimumLimaVersion`"),
        ("dns: [1.1.1.1]\n", "field `dns`"),
        (
            "user: {passwordlessSudo: false}\n",
            "field `user.passwordlessSudo`",
        ),
        (
            "images: [{location: /x, digest: md5:abc}]\n",
            "field `images[0].digest`",
        ),
        (
            "mounts: [{location: '{{if .Home}}/x{{end}}'}]\n",
            "field `mounts[0].location` uses template syntax",
        ),
        ("user: {home: '{{.Home'}\n", "field `user.home`"),
    ];
    for (text, want) in cases {
        let full = if text.starts_with("cpus") || text.contains("images:") {
            text.to_string()
        } else {
            format!("{MINIMAL}{text}")
        };
        let e = fill_str(&full, home.path(), &test_host())
            .expect_err(text)
            .to_string();
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
    // Every problem is reported, the first one names the error's field.
    let e = fill_str(
        &format!("{MINIMAL}cpus: 0\nmemory: x\n"),
        home.path(),
        &test_host(),
    );
    match e {
        Err(ConfigError::Invalid { field, message, .. }) => {
            assert_eq!(field, "memory");
            assert!(message.contains("got \"x\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let e = fill_str(
        &format!("{MINIMAL}arch: mips\nos: Plan9\n"),
        home.path(),
        &test_host(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("field `os`") && e.contains("and field `arch`"),
        "{e}"
    );
    // The boundaries that must pass.
    for ok in [
        "minimumLimaVersion: 2.2.0\n",
        "ssh: {localPort: 2222}\n",
        "param: {used: x}\nprovision: [{script: 'echo $PARAM_used'}]\n",
        "user: {passwordlessSudo: false}\nplain: true\n",
        "mounts: [{location: '{{.Home}}/p', mountPoint: '{{.Home}}/q'}]\n",
    ] {
        fill_str(&format!("{MINIMAL}{ok}"), home.path(), &test_host())
            .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

#[test]
fn mount_templates_expand_for_host_and_guest() {
    let home = tempfile::tempdir().unwrap();
    let y = fill_str(
        &format!(
            "{MINIMAL}mounts:\n- location: '{{{{.Home}}}}/src/{{{{.User}}}}-{{{{.UID}}}}'\n  \
             mountPoint: '{{{{.Home}}}}/src'\n- location: '~/x/../y'\n- location: '{{{{.Dir}}}}/d'\n"
        ),
        home.path(),
        &test_host(),
    )
    .unwrap();
    assert_eq!(y.mounts[0].location, "/home/alice/src/alice-1234");
    // In a mount point {{.Home}} is the guest's home.
    assert_eq!(
        y.mounts[0].mount_point.as_deref(),
        Some("/home/alice.guest/src")
    );
    assert_eq!(y.mounts[1].location, "/home/alice/y");
    assert_eq!(
        y.mounts[2].location,
        format!("{}/t/d", home.path().display())
    );
}

#[test]
fn the_embedded_instance_config_is_valid_and_as_intended() {
    let home = tempfile::tempdir().unwrap();
    let text = default_instance_yaml();
    let raw = parse(text, Path::new("lima.yaml")).unwrap();
    assert!(raw.base.is_none());
    assert_eq!(raw.cpus, None, "left to the host-capped default");
    assert_eq!(raw.memory, None, "left to the host-capped default");
    let y = fill_str(text, home.path(), &test_host()).unwrap();
    assert_eq!(y.minimum_lima_version.as_deref(), Some("2.0.0"));
    assert_eq!(y.vm_type.as_deref(), Some("qemu"));
    assert_eq!(y.disk.as_deref(), Some("100GiB"));
    let arches: Vec<_> = y
        .images
        .iter()
        .map(|i| i.file.arch.clone().unwrap())
        .collect();
    assert_eq!(arches, ["x86_64", "aarch64"]);
    for img in &y.images {
        assert!(img.file.location.contains("ubuntu-26.04-server-cloudimg"));
        assert!(img.file.digest.as_deref().unwrap().starts_with("sha256:"));
    }
    assert_eq!(y.mounts[0].location, "/home/alice");
    assert_eq!(y.mounts[0].writable, Some(true));
    assert_eq!(
        y.mounts[0].nine_p.clone().unwrap().cache.as_deref(),
        Some("mmap")
    );
    assert_eq!(y.ssh.unwrap().forward_agent, Some(true));
    let c = y.containerd.unwrap();
    assert_eq!((c.system, c.user), (Some(false), Some(false)));
    let script = y.provision[0].script.clone().unwrap();
    for needle in ["fuse3", "bindfs", "util-linux", "user_allow_other"] {
        assert!(script.contains(needle), "provision lacks {needle}");
    }
    assert_eq!(y.user.unwrap().passwordless_sudo, Some(true));
}

#[test]
fn instance_yaml_from_template_embeds_everything() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("_config")).unwrap();
    std::fs::write(
        home.path().join("_config/base.yaml"),
        "provision: [{script: '#!/bin/sh global'}]\n",
    )
    .unwrap();
    let t = home.path().join("t.yaml");
    std::fs::write(
        &t,
        format!(
            "base: {}\ncpus: 1\n",
            fixture_templates().join("debian-13.yaml").display()
        ),
    )
    .unwrap();
    // The template's own `template:` bases resolve through the search path.
    let search = TemplateSearch {
        dirs: vec![fixture_templates()],
    };
    let text = instance_yaml_from_template(&t, home.path(), &search).unwrap();
    let y = parse(&text, &t).unwrap();
    assert!(y.base.is_none());
    assert_eq!(y.cpus, Some(1));
    assert!(!y.images.is_empty());
    assert_eq!(y.mounts[0].location, "~");
    assert_eq!(y.provision[0].script.as_deref(), Some("#!/bin/sh global"));
    fill_str(&text, home.path(), &test_host()).unwrap();
}

#[test]
fn versions() {
    assert!(version_less("2.0.0", "2.2.0"));
    assert!(version_less("v2.1.9", "2.2"));
    assert!(!version_less("2.2.0", "2.2.0"));
    assert!(version_less("", "0.1.0"));
    assert!(!version_less("<unknown>", "2.1.0"));
    assert_eq!(parse_version("v2.2.0-153-g183a60d7"), Some((2, 2, 0)));
    assert_eq!(parse_version("x"), None);
    assert!(valid_identifier("data-1.x_y"));
    assert!(!valid_identifier("a..b"));
    assert!(!valid_identifier(""));
}

#[test]
fn simple_templates_in_scripts_expand_and_complex_ones_stay() {
    let home = tempfile::tempdir().unwrap();
    let y = fill_str(
        &format!(
            "{MINIMAL}param: {{k: v}}\nprovision:\n- script: 'echo {{{{.User}}}} {{{{.Home}}}} {{{{.Param.k}}}}'\n\
             - script: '{{{{if .Param.k}}}}x{{{{end}}}}'\n\
             - {{mode: data, path: '{{{{.Home}}}}/f', content: '{{{{.UID}}}}'}}\n"
        ),
        home.path(),
        &test_host(),
    )
    .unwrap();
    let p = &y.provision;
    assert_eq!(
        p[0].script.as_deref(),
        Some("echo alice /home/alice.guest v")
    );
    assert_eq!(p[1].script.as_deref(), Some("{{if .Param.k}}x{{end}}"));
    assert_eq!(p[2].path.as_deref(), Some("/home/alice.guest/f"));
    assert_eq!(p[2].content.as_deref(), Some("1234"));
}

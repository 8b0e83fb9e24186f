//! The QEMU driver: finding `qemu-system-<arch>`, choosing the accelerator,
//! building the command line (Lima's argument order, see [`cmdline`]),
//! starting QEMU and noticing an accelerator that runs nothing ([`stuck`]).

mod cmdline;
// Guests boot their kernel directly (the plan passes no firmware); the
// real-QEMU tests below boot OVMF, found as Lima finds it.
#[cfg(test)]
mod firmware;
pub(crate) mod stuck;
pub(crate) mod virtiofsd;

use crate::vm::layout;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) use cmdline::{MountSpec, QemuSpec, cmdline};

use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::sys::Sys;

#[derive(Debug, thiserror::Error)]
pub(crate) enum QemuError {
    #[error(
        "unsupported guest architecture {0:?} (QEMU supports x86_64, aarch64, armv7l, ppc64le, riscv64, s390x)"
    )]
    Arch(String),
    #[error(
        "{exe} not found on PATH: install {package} (Debian/Ubuntu: apt-get install {package} qemu-utils), or set {var} to its path"
    )]
    NotFound {
        exe: String,
        package: String,
        var: String,
    },
    #[error("{var}={value:?} cannot be split into words: unbalanced quotes")]
    BadOverride { var: String, value: String },
    #[error("LLIMA_BOX_ACCEL={0:?} is not an accelerator: use kvm, hvf or tcg")]
    BadAccel(String),
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: String, source: io::Error },
    #[error("QEMU did not write {path} within {secs} s; see {log} for why")]
    NoPidFile {
        path: PathBuf,
        secs: u64,
        log: PathBuf,
    },
    #[error("QEMU exited ({status}) before it was up; the end of {log}:\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// QEMU's name for a Lima arch (the suffix of `qemu-system-*`).
pub(crate) fn qemu_arch(arch: &str) -> Result<&'static str, QemuError> {
    Ok(match arch {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "armv7l" => "arm",
        "ppc64le" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        _ => return Err(QemuError::Arch(arch.to_string())),
    })
}

/// The QEMU program, plus extra leading arguments from the
/// `QEMU_SYSTEM_<ARCH>` override (a debugging aid, as in Lima).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QemuExe {
    pub path: PathBuf,
    pub extra_args: Vec<String>,
}

/// Finds `qemu-system-<qarch>`: `$QEMU_SYSTEM_<QARCH>` (shell words: the
/// program then its extra arguments) if set, else a search of `path_var`.
pub(crate) fn find_exe(
    arch: &str,
    override_var: Option<&str>,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<QemuExe, QemuError> {
    let qarch = qemu_arch(arch)?;
    let var = format!("QEMU_SYSTEM_{}", qarch.to_ascii_uppercase());
    let name = format!("qemu-system-{qarch}");
    if let Some(value) = override_var.filter(|v| !v.trim().is_empty()) {
        let mut words = shlex::split(value)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| QemuError::BadOverride {
                var: var.clone(),
                value: value.to_string(),
            })?;
        let program = words.remove(0);
        return Ok(QemuExe {
            path: lookup(&program, path_var).unwrap_or_else(|| PathBuf::from(program)),
            extra_args: words,
        });
    }
    let package = match qarch {
        "x86_64" => "qemu-system-x86",
        "aarch64" | "arm" => "qemu-system-arm",
        "ppc64" => "qemu-system-ppc",
        "riscv64" => "qemu-system-misc",
        _ => "qemu-system-misc",
    };
    lookup(&name, path_var)
        .map(|path| QemuExe {
            path,
            extra_args: Vec::new(),
        })
        .ok_or(QemuError::NotFound {
            exe: name,
            package: package.to_string(),
            var,
        })
}

/// [`find_exe`] with the process environment.
pub(crate) fn find_exe_from_env(arch: &str) -> Result<QemuExe, QemuError> {
    let var = format!("QEMU_SYSTEM_{}", qemu_arch(arch)?.to_ascii_uppercase());
    let value = std::env::var(&var).ok();
    find_exe(arch, value.as_deref(), std::env::var_os("PATH").as_deref())
}

fn lookup(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accel {
    Kvm,
    Hvf,
    Tcg,
}

impl Accel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the accelerator choice depends on, gathered by [`host_facts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostFacts<'a> {
    pub os: &'a str,
    pub arch: &'a str,
    /// Linux: `/dev/kvm` opens read-write for this user.
    pub kvm_usable: bool,
    /// macOS: `sysctl kern.hv_support` is 1.
    pub hvf_supported: bool,
}

/// Lima's rule: hardware acceleration only for the native arch (KVM on
/// Linux, HVF on macOS), TCG otherwise. `LLIMA_BOX_ACCEL` (passed as
/// `forced`) wins, so a host whose KVM hangs guests can be forced to TCG.
pub(crate) fn choose_accel(
    guest_arch: &str,
    host: &HostFacts,
    forced: Option<&str>,
) -> Result<Accel, QemuError> {
    if let Some(f) = forced.filter(|f| !f.is_empty()) {
        return match f {
            "kvm" => Ok(Accel::Kvm),
            "hvf" => Ok(Accel::Hvf),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(QemuError::BadAccel(f.to_string())),
        };
    }
    if guest_arch != host.arch {
        return Ok(Accel::Tcg);
    }
    Ok(match host.os {
        "linux" if host.kvm_usable => Accel::Kvm,
        "macos" if host.hvf_supported => Accel::Hvf,
        _ => Accel::Tcg,
    })
}

/// Looks at this machine for [`choose_accel`].
pub(crate) fn host_facts() -> HostFacts<'static> {
    HostFacts {
        os: std::env::consts::OS,
        arch: crate::vm::sys::host_arch(),
        kvm_usable: cfg!(target_os = "linux")
            && OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
        hvf_supported: cfg!(target_os = "macos")
            && Command::new("sysctl")
                .args(["-n", "kern.hv_support"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
                .unwrap_or(false),
    }
}

/// [`choose_accel`] for this machine and `$LLIMA_BOX_ACCEL`.
pub(crate) fn detect_accel(guest_arch: &str) -> Result<Accel, QemuError> {
    let forced = std::env::var("LLIMA_BOX_ACCEL").ok();
    choose_accel(guest_arch, &host_facts(), forced.as_deref())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0 and
/// close, as Lima does; another process may take it before QEMU does).
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Removes what a previous run left and QEMU would trip over (sockets it
/// must bind, logs that would mislead the stuck detector, a stale pid
/// file), and creates the 9p mount sources as Lima does.
pub(crate) fn prepare_start(spec: &QemuSpec) -> Result<(), QemuError> {
    for name in [
        layout::QMP_SOCK,
        layout::SERIAL_SOCK,
        layout::SERIAL_LOG,
        layout::SERIAL_PCI_SOCK,
        layout::SERIAL_PCI_LOG,
        layout::SERIAL_VIRTIO_SOCK,
        layout::SERIAL_VIRTIO_LOG,
        layout::QEMU_PID,
    ] {
        let p = spec.instance_dir.join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(QemuError::Io { path: p, source: e });
            }
            _ => {}
        }
    }
    for m in &spec.mounts {
        std::fs::create_dir_all(&m.host_path).map_err(|source| QemuError::Io {
            path: m.host_path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Starts QEMU in its own process group (so a Ctrl-C aimed at the CLI does
/// not reach it) with stdout and stderr appended to `log`, under the
/// filter that keeps setuid and setgid files from the guest off the host
/// (its 9p server writes the shared files; see `llima_box_setid_filter`).
pub(crate) fn spawn(exe: &QemuExe, args: &[String], log: &Path) -> Result<Child, QemuError> {
    let io_err = |source| QemuError::Io {
        path: log.to_path_buf(),
        source,
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err)?;
    let err = out.try_clone().map_err(io_err)?;
    llima_box_setid_filter::file_server(&mut Command::new(&exe.path))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| QemuError::Spawn {
            exe: exe.path.display().to_string(),
            source,
        })
}

/// Waits until QEMU has written its pid file and returns the pid. QEMU
/// writes it early, possibly before its sockets listen (see
/// [`connect_qmp`]). Fails early,
/// with the end of `log`, when QEMU exits first (a bad option, a missing
/// file, an accelerator it cannot open).
pub(crate) fn wait_for_pidfile(
    host: &dyn Sys,
    child: &mut Child,
    path: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<u32, QemuError> {
    let deadline = host.now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(exited(status, log));
        }
        if host.now() >= deadline {
            return Err(QemuError::NoPidFile {
                path: path.to_path_buf(),
                secs: timeout.as_secs(),
                log: log.to_path_buf(),
            });
        }
        host.sleep(Duration::from_millis(50));
    }
}

/// Connects to `$D/qmp.sock`, retrying while QEMU is still creating it
/// (the pid file comes first), and failing early if QEMU exits.
pub(crate) fn connect_qmp(
    host: &dyn Sys,
    child: &mut Child,
    instance_dir: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<Qmp, QemuError> {
    let deadline = host.now() + timeout;
    loop {
        match Qmp::connect(&instance_dir.join(layout::QMP_SOCK), Duration::from_secs(5)) {
            Ok(q) => return Ok(q),
            Err(QmpError::Connect { .. }) if host.now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(exited(status, log));
                }
                host.sleep(Duration::from_millis(50));
            }
            Err(e) => {
                // A QEMU that fails after creating the socket (a disk lock
                // held by another process, say) closes it mid-handshake:
                // its own words are worth more than the reset.
                let grace = host.now() + Duration::from_secs(2);
                while host.now() < grace {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(exited(status, log));
                    }
                    host.sleep(Duration::from_millis(50));
                }
                return Err(e.into());
            }
        }
    }
}

fn exited(status: std::process::ExitStatus, log: &Path) -> QemuError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    QemuError::Exited {
        status: status.to_string(),
        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        log: log.to_path_buf(),
    }
}

/// A started QEMU whose QMP socket answers.
pub(crate) struct Running {
    pub child: Child,
    pub pid: u32,
    pub qmp: Qmp,
    /// The accelerator it actually runs with.
    pub accel: Accel,
    /// Why the requested accelerator was given up for TCG, if it was.
    pub fell_back: Option<String>,
}

/// How long QEMU may take to set the machine up and write its pid file.
const PID_TIMEOUT: Duration = Duration::from_secs(30);

/// Cleans up after a previous run, starts QEMU for `spec` (stdout and
/// stderr to `log`), waits for its pid file and connects QMP.
pub(crate) fn launch(
    host: &dyn Sys,
    exe: &QemuExe,
    spec: &QemuSpec,
    log: &Path,
) -> Result<Running, QemuError> {
    prepare_start(spec)?;
    let mut child = spawn(exe, &cmdline(spec, &exe.extra_args), log)?;
    let up = wait_for_pidfile(
        host,
        &mut child,
        &spec.instance_dir.join(layout::QEMU_PID),
        PID_TIMEOUT,
        log,
    )
    .and_then(|pid| {
        let qmp = connect_qmp(host, &mut child, &spec.instance_dir, PID_TIMEOUT, log)?;
        Ok((pid, qmp))
    });
    match up {
        Ok((pid, qmp)) => Ok(Running {
            child,
            pid,
            qmp,
            accel: spec.accel,
            fell_back: None,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// [`launch`], then, under kvm/hvf, watch the first `window` (normally
/// [`stuck::KVM_WINDOW`]) for a guest that runs. When the accelerator turns
/// out not to run guests (see [`stuck`]), or QEMU cannot start with it,
/// QEMU is killed and started again with TCG; `fell_back` says why.
pub(crate) fn launch_with_fallback(
    host: &dyn Sys,
    exe: &QemuExe,
    spec: &QemuSpec,
    log: &Path,
    window: Duration,
) -> Result<Running, QemuError> {
    if spec.accel == Accel::Tcg {
        return launch(host, exe, spec, log);
    }
    let reason = match launch(host, exe, spec, log) {
        Ok(mut r) => {
            let dir = &spec.instance_dir;
            let verdict = stuck::watch(host, r.accel, window, Duration::from_millis(200), || {
                stuck::observe(dir, &mut r.child, Some(&mut r.qmp))
            });
            match verdict {
                stuck::Verdict::Stuck(reason) => {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    reason
                }
                _ => return Ok(r),
            }
        }
        Err(e) => format!("QEMU failed under {}: {e}", spec.accel.as_str()),
    };
    let tcg = QemuSpec {
        accel: Accel::Tcg,
        ..spec.clone()
    };
    let mut r = launch(host, exe, &tcg, log)?;
    r.fell_back = Some(reason);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::firmware::find_firmware;
    use super::*;

    fn facts(os: &'static str, arch: &'static str, kvm: bool, hvf: bool) -> HostFacts<'static> {
        HostFacts {
            os,
            arch,
            kvm_usable: kvm,
            hvf_supported: hvf,
        }
    }

    #[test]
    fn accel_follows_lima_and_the_override() {
        let linux = facts("linux", "x86_64", true, false);
        assert_eq!(choose_accel("x86_64", &linux, None).unwrap(), Accel::Kvm);
        assert_eq!(choose_accel("aarch64", &linux, None).unwrap(), Accel::Tcg);
        let no_kvm = facts("linux", "x86_64", false, false);
        assert_eq!(choose_accel("x86_64", &no_kvm, None).unwrap(), Accel::Tcg);
        let mac = facts("macos", "aarch64", false, true);
        assert_eq!(choose_accel("aarch64", &mac, None).unwrap(), Accel::Hvf);
        assert_eq!(choose_accel("x86_64", &mac, None).unwrap(), Accel::Tcg);
        assert_eq!(
            choose_accel("x86_64", &linux, Some("tcg")).unwrap(),
            Accel::Tcg
        );
        let err = choose_accel("x86_64", &linux, Some("whpx")).unwrap_err();
        assert!(err.to_string().contains("use kvm, hvf or tcg"), "{err}");
    }

    #[test]
    fn exe_lookup_override_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("qemu-system-x86_64");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        let found = find_exe("x86_64", None, Some(&path)).unwrap();
        assert_eq!(found.path, exe);

        let forced = find_exe(
            "x86_64",
            Some("qemu-system-x86_64 -d 'in asm'"),
            Some(&path),
        )
        .unwrap();
        assert_eq!(forced.path, exe);
        assert_eq!(forced.extra_args, ["-d", "in asm"]);

        let err = find_exe("aarch64", None, Some(&path)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("qemu-system-aarch64 not found"), "{msg}");
        assert!(
            msg.contains("apt-get install qemu-system-arm qemu-utils"),
            "{msg}"
        );
        assert!(msg.contains("QEMU_SYSTEM_AARCH64"), "{msg}");
        assert!(matches!(
            find_exe("mips", None, None),
            Err(QemuError::Arch(_))
        ));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert!(port > 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    /// A TCG spec without kernel for a tiny blank disk created in `dir`.
    fn test_spec(dir: &Path, firmware: Option<PathBuf>) -> QemuSpec {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(dir.join(layout::DISK))
            .arg("16M")
            .status()
            .expect("qemu-img must be installed");
        assert!(st.success());
        QemuSpec {
            name: "smoke".into(),
            arch: "x86_64".into(),
            accel: Accel::Tcg,
            cpu_type: None,
            cpus: 1,
            memory_bytes: 256 << 20,
            instance_dir: dir.to_path_buf(),
            firmware,
            iso: None,
            cidata_iso: None,
            kernel: None,
            initrd: None,
            kernel_cmdline: None,
            ssh_local_port: free_port().unwrap(),
            mac: crate::vm::cidata::instance_mac_address(dir),
            mounts: vec![MountSpec {
                tag: "m0".into(),
                host_path: dir.join("share"),
                readonly: true,
                queue_size: 1024,
            }],
            share: crate::vm::share::ShareType::NineP,
        }
        .with_instance_files()
        .unwrap()
    }

    /// Boots a real QEMU from the argv builder; returns it once QMP answers.
    fn boot(dir: &Path, firmware: Option<PathBuf>) -> (Child, Qmp) {
        use crate::vm::sys::RealSys;
        let exe = find_exe_from_env("x86_64").expect("qemu-system-x86_64 must be installed");
        let spec = test_spec(dir, firmware);
        let r = launch(&RealSys, &exe, &spec, &dir.join(layout::QEMU_LOG)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(layout::QEMU_PID))
                .unwrap()
                .trim(),
            r.child.id().to_string()
        );
        (r.child, r.qmp)
    }

    fn quit(mut child: Child, mut qmp: Qmp) {
        qmp.execute("quit", None).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "QEMU exits cleanly after quit: {status}");
    }

    #[test]
    fn real_qemu_starts_answers_qmp_and_quits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, mut qmp) = boot(dir.path(), None);
        assert_eq!(qmp.query_status().unwrap(), "running");
        // The built-in BIOS prints nothing on the serial console, which is
        // exactly what a hung accelerator looks like: judged as if under KVM
        // with a short window, the watcher must call it stuck.
        let v = stuck::watch(
            &crate::vm::sys::RealSys,
            Accel::Kvm,
            Duration::from_secs(2),
            Duration::from_millis(200),
            || stuck::observe(dir.path(), &mut child, Some(&mut qmp)),
        );
        assert!(matches!(v, stuck::Verdict::Stuck(_)), "{v:?}");
        qmp.system_powerdown().unwrap();
        quit(child, qmp);
        assert!(dir.path().join("share").is_dir(), "mount source created");
    }

    #[test]
    fn real_uefi_boot_shows_progress_on_the_serial_log() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::vm::dirs::home_dir().unwrap();
        let exe = find_exe_from_env("x86_64").unwrap();
        let fw = find_firmware("x86_64", dir.path(), &exe.path, &home)
            .expect("OVMF must be installed (apt-get install ovmf)");
        let (mut child, mut qmp) = boot(dir.path(), Some(fw));
        let v = stuck::watch(
            &crate::vm::sys::RealSys,
            Accel::Kvm,
            Duration::from_secs(60),
            Duration::from_millis(200),
            || stuck::observe(dir.path(), &mut child, Some(&mut qmp)),
        );
        assert_eq!(v, stuck::Verdict::Progress);
        quit(child, qmp);
    }

    #[test]
    fn real_qemu_failing_early_reports_its_error() {
        use crate::vm::sys::RealSys;
        let dir = tempfile::tempdir().unwrap();
        let exe = find_exe_from_env("x86_64").unwrap();
        let log = dir.path().join(layout::QEMU_LOG);
        let args = vec!["-drive".to_string(), "file=/nonexistent/disk".to_string()];
        let mut child = spawn(&exe, &args, &log).unwrap();
        let err = wait_for_pidfile(
            &RealSys,
            &mut child,
            &dir.path().join(layout::QEMU_PID),
            Duration::from_secs(20),
            &log,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk"), "{err}");
    }

    /// A second QEMU on a disk that another one holds binds its QMP socket,
    /// then fails on the disk's lock: the error must carry QEMU's words,
    /// whether it is caught before, during or after the QMP handshake.
    #[test]
    fn real_qemu_on_a_locked_disk_reports_the_lock() {
        use crate::vm::sys::RealSys;
        let dir = tempfile::tempdir().unwrap();
        let exe = find_exe_from_env("x86_64").unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let start = |sub: &str| {
            let d = dir.path().join(sub);
            std::fs::create_dir(&d).unwrap();
            let args: Vec<String> = [
                "-S".to_string(),
                "-display".into(),
                "none".into(),
                "-drive".into(),
                format!("file={},format=raw,if=virtio", disk.display()),
                "-pidfile".into(),
                d.join(layout::QEMU_PID).display().to_string(),
                "-qmp".into(),
                format!(
                    "unix:{},server=on,wait=off",
                    d.join(layout::QMP_SOCK).display()
                ),
            ]
            .into();
            let log = d.join(layout::QEMU_LOG);
            let mut child = spawn(&exe, &args, &log).unwrap();
            let qmp = connect_qmp(&RealSys, &mut child, &d, Duration::from_secs(20), &log);
            (child, qmp)
        };
        let (holder, held) = start("first");
        let held = held.unwrap();
        let (_second, err) = start("second");
        let err = err.err().expect("the second QEMU must fail");
        assert!(err.to_string().contains("\"write\" lock"), "{err}");
        quit(holder, held);
    }

    /// Forces kvm: here it either runs the guest (progress within the
    /// window) or is caught (no KVM, KVM internal error, silence) and
    /// replaced by TCG. Either way the guest ends up running.
    #[test]
    fn real_launch_with_fallback_ends_with_a_running_guest() {
        use crate::vm::sys::RealSys;
        let dir = tempfile::tempdir().unwrap();
        let home = crate::vm::dirs::home_dir().unwrap();
        let exe = find_exe_from_env("x86_64").unwrap();
        let fw = find_firmware("x86_64", dir.path(), &exe.path, &home).unwrap();
        let mut spec = test_spec(dir.path(), Some(fw));
        spec.accel = Accel::Kvm;
        let log = dir.path().join(layout::QEMU_LOG);
        let mut r = launch_with_fallback(&RealSys, &exe, &spec, &log, stuck::KVM_WINDOW).unwrap();
        assert_eq!(
            r.accel == Accel::Tcg,
            r.fell_back.is_some(),
            "{:?}",
            r.fell_back
        );
        let status = r.qmp.query_status().unwrap();
        assert_eq!(status, "running", "fell back because: {:?}", r.fell_back);
        quit(r.child, r.qmp);
    }
}

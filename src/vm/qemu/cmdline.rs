//! The QEMU command line, as a pure function of [`QemuSpec`], in Lima's
//! argument order (so a process listing reads the same as Lima's).

use std::path::{Path, PathBuf};

use super::Accel;
use crate::vm::layout;
use crate::vm::share::ShareType;

/// One host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountSpec {
    pub tag: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    /// `mounts[].virtiofs.queueSize` (virtiofs only).
    pub queue_size: u32,
}

/// Everything the command line depends on. Paths must be absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QemuSpec {
    /// The instance name; QEMU gets `-name lima-<name>`.
    pub name: String,
    /// Guest arch in Lima's names (x86_64, aarch64, …).
    pub arch: String,
    pub accel: Accel,
    /// `vmOpts.qemu.cpuType[arch]`; None picks `host` with hardware
    /// acceleration and `max` under TCG.
    pub cpu_type: Option<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// `$D`; the boot disk is `$D/disk`, sockets and logs live here too.
    pub instance_dir: PathBuf,
    /// UEFI code flash; None boots QEMU's built-in BIOS (fine for a direct
    /// kernel boot).
    pub firmware: Option<PathBuf>,
    /// `$D/iso` when the image was an installer ISO.
    pub iso: Option<PathBuf>,
    pub cidata_iso: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub kernel_cmdline: Option<String>,
    /// Host port forwarded to the guest's port 22.
    pub ssh_local_port: u16,
    /// From [`crate::vm::cidata::instance_mac_address`], shared with network-config.
    pub mac: String,
    pub mounts: Vec<MountSpec>,
    /// How the mounts are shared; virtiofs also shares the guest's memory
    /// with the daemons.
    pub share: ShareType,
}

impl QemuSpec {
    /// Fills `iso`, `cidata_iso`, `kernel`, `initrd` and `kernel_cmdline`
    /// from the files present in the instance dir, as Lima decides at start.
    pub(crate) fn with_instance_files(mut self) -> std::io::Result<Self> {
        let d = &self.instance_dir;
        let existing = |n: &str| Some(d.join(n)).filter(|p| p.exists());
        self.iso = existing(layout::ISO);
        self.cidata_iso = existing(layout::CIDATA_ISO);
        self.kernel = existing(layout::KERNEL);
        self.initrd = existing(layout::INITRD);
        self.kernel_cmdline = match existing(layout::KERNEL_CMDLINE) {
            Some(p) => Some(std::fs::read_to_string(p)?.trim_end().to_string()),
            None => None,
        };
        Ok(self)
    }
}

/// QEMU splits option values at commas; a literal comma is doubled.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Options that may appear once; extra args from `QEMU_SYSTEM_*` win.
const SINGLE: &[&str] = &[
    "-m", "-cpu", "-machine", "-smp", "-boot", "-display", "-kernel", "-append", "-initrd",
    "-sandbox",
];

/// QEMU parses everything the guest sends; should a guest break out into
/// it, seccomp denies it new privileges, new programs, scheduler and
/// resource changes and obsolete system calls.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

struct Args(Vec<String>);

impl Args {
    fn push(&mut self, items: &[&str]) {
        if SINGLE.contains(&items[0]) && self.0.iter().any(|a| a == items[0]) {
            return;
        }
        self.0.extend(items.iter().map(|s| s.to_string()));
    }
}

/// The arguments after the program name. `extra_args` (from
/// `QEMU_SYSTEM_<ARCH>`) come first.
pub(crate) fn cmdline(spec: &QemuSpec, extra_args: &[String]) -> Vec<String> {
    let d = &spec.instance_dir;
    let file = |n: &str| esc(&d.join(n));
    let mut a = Args(extra_args.to_vec());

    a.push(&["-m", &(spec.memory_bytes >> 20).to_string()]);
    if spec.share == ShareType::Virtiofs {
        // virtiofsd reads and writes the guest's buffers in place.
        let shm = format!(
            "memory-backend-memfd,id=virtiofs-shm,size={},share=on",
            spec.memory_bytes
        );
        a.push(&["-object", &shm]);
        a.push(&["-numa", "node,memdev=virtiofs-shm"]);
    }
    let cpu = match (&spec.cpu_type, spec.accel) {
        (Some(c), _) => c.clone(),
        (None, Accel::Tcg) => "max".to_string(),
        (None, _) => "host".to_string(),
    };
    a.push(&["-cpu", &cpu]);
    let accel = spec.accel.as_str();
    match (spec.arch.as_str(), spec.accel) {
        ("x86_64", Accel::Tcg) => {
            a.push(&["-machine", "q35,vmport=off"]);
            a.push(&["-accel", "tcg,thread=multi,tb-size=512"]);
            a.push(&["-global", "ICH9-LPC.disable_s3=1"]);
            a.push(&["-global", "ICH9-LPC.disable_s4=1"]);
        }
        ("x86_64", _) => a.push(&["-machine", &format!("q35,accel={accel}")]),
        ("riscv64", _) => a.push(&["-machine", &format!("virt,acpi=off,accel={accel}")]),
        ("ppc64le", _) => a.push(&["-machine", &format!("pseries,accel={accel}")]),
        ("s390x", _) => a.push(&["-machine", &format!("s390-ccw-virtio,accel={accel}")]),
        _ => a.push(&["-machine", &format!("virt,accel={accel}")]),
    }
    let n = spec.cpus;
    a.push(&["-smp", &format!("{n},sockets=1,cores={n},threads=1")]);

    if let Some(fw) = &spec.firmware {
        let v = format!("if=pflash,format=raw,readonly=on,file={}", esc(fw));
        a.push(&["-drive", &v]);
    }
    a.push(&["-device", "qemu-xhci,id=usb-bus"]);

    let blk = if spec.arch == "s390x" {
        "virtio-blk-ccw"
    } else {
        "virtio-blk-pci"
    };
    match &spec.iso {
        None => {
            let disk = format!(
                "file={},if=none,discard=on,id=boot-disk",
                file(layout::DISK)
            );
            a.push(&["-drive", &disk]);
            a.push(&["-device", &format!("{blk},drive=boot-disk,bootindex=1")]);
            a.push(&["-boot", "order=c,splash-time=0,menu=on"]);
        }
        Some(iso) => {
            a.push(&[
                "-drive",
                &format!("file={},if=virtio,discard=on", file(layout::DISK)),
            ]);
            a.push(&["-boot", "order=d,splash-time=0,menu=on"]);
            let cd = format!("file={},format=raw,media=cdrom,readonly=on", esc(iso));
            a.push(&["-drive", &cd]);
        }
    }

    if let Some(cidata) = &spec.cidata_iso {
        let v = format!(
            "id=cdrom0,if=none,format=raw,readonly=on,file={}",
            esc(cidata)
        );
        a.push(&["-drive", &v]);
        a.push(&["-device", "virtio-scsi,id=scsi0"]);
        a.push(&["-device", "scsi-cd,bus=scsi0.0,drive=cdrom0"]);
    }

    if let Some(k) = &spec.kernel {
        a.push(&["-kernel", &k.to_string_lossy()]);
        if let Some(c) = spec.kernel_cmdline.as_deref().filter(|c| !c.is_empty()) {
            a.push(&["-append", c]);
        }
        if let Some(i) = &spec.initrd {
            a.push(&["-initrd", &i.to_string_lossy()]);
        }
    }

    let port = spec.ssh_local_port;
    let user = format!(
        "user,id=net0,net=192.168.5.0/24,dhcpstart=192.168.5.15,hostfwd=tcp:127.0.0.1:{port}-:22"
    );
    a.push(&["-netdev", &user]);
    let nic = if spec.arch == "s390x" {
        "virtio-net-ccw"
    } else {
        "virtio-net-pci"
    };
    a.push(&["-device", &format!("{nic},netdev=net0,mac={}", spec.mac)]);
    a.push(&["-device", "virtio-rng-pci"]);
    a.push(&["-audiodev", "none,id=snd0"]);
    a.push(&["-display", "none"]);
    a.push(&["-vga", "none"]);
    a.push(&["-parallel", "none"]);
    a.push(&["-sandbox", SANDBOX]);

    let serial = |id: &str, sock: &str, log: &str| {
        format!(
            "socket,id={id},path={},server=on,wait=off,logfile={}",
            file(sock),
            file(log)
        )
    };
    a.push(&[
        "-chardev",
        &serial("char-serial", layout::SERIAL_SOCK, layout::SERIAL_LOG),
    ]);
    a.push(&["-serial", "chardev:char-serial"]);
    if matches!(spec.arch.as_str(), "aarch64" | "armv7l") {
        a.push(&[
            "-chardev",
            &serial(
                "char-serial-pci",
                layout::SERIAL_PCI_SOCK,
                layout::SERIAL_PCI_LOG,
            ),
        ]);
        a.push(&["-device", "pci-serial,chardev=char-serial-pci"]);
    }
    a.push(&[
        "-chardev",
        &serial(
            "char-serial-virtio",
            layout::SERIAL_VIRTIO_SOCK,
            layout::SERIAL_VIRTIO_LOG,
        ),
    ]);
    let ports = if spec.arch == "s390x" { 2 } else { 1 };
    a.push(&[
        "-device",
        &format!("virtio-serial-pci,id=virtio-serial0,max_ports={ports}"),
    ]);
    a.push(&[
        "-device",
        "virtconsole,chardev=char-serial-virtio,id=console0",
    ]);

    for (i, m) in spec.mounts.iter().enumerate() {
        match spec.share {
            ShareType::NineP => {
                let mut v = format!(
                    "local,mount_tag={},path={},security_model=none",
                    m.tag,
                    esc(&m.host_path)
                );
                if m.readonly {
                    v.push_str(",readonly=on");
                }
                a.push(&["-virtfs", &v]);
            }
            ShareType::Virtiofs => {
                // Read-only is virtiofsd's to enforce (and the guest's fstab).
                let sock = file(&layout::virtiofsd_sock(i));
                a.push(&[
                    "-chardev",
                    &format!("socket,id=char-virtiofs-{i},path={sock}"),
                ]);
                let dev = format!(
                    "vhost-user-fs-pci,queue-size={},chardev=char-virtiofs-{i},tag={}",
                    m.queue_size, m.tag
                );
                a.push(&["-device", &dev]);
            }
        }
    }

    let qmp = format!(
        "socket,id=char-qmp,path={},server=on,wait=off",
        file(layout::QMP_SOCK)
    );
    a.push(&["-chardev", &qmp]);
    a.push(&["-qmp", "chardev:char-qmp"]);
    a.push(&["-name", &format!("lima-{}", spec.name)]);
    a.push(&["-pidfile", &d.join(layout::QEMU_PID).to_string_lossy()]);
    a.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QemuSpec {
        QemuSpec {
            name: "default".into(),
            arch: "x86_64".into(),
            accel: Accel::Kvm,
            cpu_type: None,
            cpus: 4,
            memory_bytes: 4 << 30,
            instance_dir: PathBuf::from("/l/default"),
            firmware: None,
            iso: None,
            cidata_iso: Some(PathBuf::from("/l/default/cidata.iso")),
            kernel: Some(PathBuf::from("/l/default/kernel")),
            initrd: Some(PathBuf::from("/l/default/initrd")),
            kernel_cmdline: Some("root=/dev/vda1 console=ttyS0".into()),
            ssh_local_port: 41234,
            mac: "52:55:55:12:34:56".into(),
            mounts: vec![MountSpec {
                tag: "lima-abc".into(),
                host_path: PathBuf::from("/home/u,x"),
                readonly: true,
                queue_size: 1024,
            }],
            share: ShareType::NineP,
        }
    }

    fn joined(args: &[String]) -> String {
        args.join(" ")
    }

    fn pos(args: &[String], needle: &str) -> usize {
        args.iter()
            .position(|a| a.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing in {}", joined(args)))
    }

    #[test]
    fn kvm_direct_kernel_boot_in_lima_order() {
        let args = cmdline(&spec(), &[]);
        let s = joined(&args);
        assert!(s.starts_with(
            "-m 4096 -cpu host -machine q35,accel=kvm -smp 4,sockets=1,cores=4,threads=1 -device qemu-xhci,id=usb-bus"
        ), "{s}");
        assert!(!s.contains("pflash"), "no firmware given: {s}");
        assert!(s.contains(
            "-drive file=/l/default/disk,if=none,discard=on,id=boot-disk -device virtio-blk-pci,drive=boot-disk,bootindex=1 -boot order=c,splash-time=0,menu=on"
        ));
        assert!(s.contains("-drive id=cdrom0,if=none,format=raw,readonly=on,file=/l/default/cidata.iso -device virtio-scsi,id=scsi0 -device scsi-cd,bus=scsi0.0,drive=cdrom0"));
        assert!(s.contains("-kernel /l/default/kernel -append root=/dev/vda1 console=ttyS0 -initrd /l/default/initrd"));
        assert!(s.contains("-netdev user,id=net0,net=192.168.5.0/24,dhcpstart=192.168.5.15,hostfwd=tcp:127.0.0.1:41234-:22 -device virtio-net-pci,netdev=net0,mac=52:55:55:12:34:56"));
        assert!(s.contains(
            "-device virtio-rng-pci -audiodev none,id=snd0 -display none -vga none -parallel none"
        ));
        assert!(s.contains("-chardev socket,id=char-serial,path=/l/default/serial.sock,server=on,wait=off,logfile=/l/default/serial.log -serial chardev:char-serial"));
        assert!(!s.contains("serialp"), "x86 has no PCI serial");
        assert!(s.contains(
            "-virtfs local,mount_tag=lima-abc,path=/home/u,,x,security_model=none,readonly=on"
        ));
        assert!(s.ends_with(
            "-chardev socket,id=char-qmp,path=/l/default/qmp.sock,server=on,wait=off -qmp chardev:char-qmp -name lima-default -pidfile /l/default/qemu.pid"
        ), "{s}");
        // The -append value stays one argument.
        assert!(args.contains(&"root=/dev/vda1 console=ttyS0".to_string()));
        assert!(pos(&args, "boot-disk") < pos(&args, "cdrom0"));
        assert!(pos(&args, "cdrom0") < pos(&args, "-kernel"));
        assert!(pos(&args, "-kernel") < pos(&args, "net0"));
        assert!(pos(&args, "virtfs") < pos(&args, "char-qmp"));
    }

    #[test]
    fn tcg_firmware_iso_and_arm_variants() {
        let mut s = spec();
        s.accel = Accel::Tcg;
        s.kernel = None;
        s.firmware = Some(PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"));
        s.iso = Some(PathBuf::from("/l/default/iso"));
        s.mounts[0].readonly = false;
        let a = joined(&cmdline(&s, &[]));
        assert!(a.contains("-cpu max -machine q35,vmport=off -accel tcg,thread=multi,tb-size=512 -global ICH9-LPC.disable_s3=1 -global ICH9-LPC.disable_s4=1 -smp 4"), "{a}");
        assert!(a.contains("-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -device qemu-xhci"));
        assert!(a.contains("-drive file=/l/default/disk,if=virtio,discard=on -boot order=d,splash-time=0,menu=on -drive file=/l/default/iso,format=raw,media=cdrom,readonly=on"));
        assert!(
            !a.contains("-kernel") && !a.contains("-initrd"),
            "initrd needs a kernel: {a}"
        );
        assert!(!a.contains("readonly=on,id") && a.contains("security_model=none -chardev"));

        s.arch = "aarch64".into();
        s.accel = Accel::Hvf;
        let a = joined(&cmdline(&s, &[]));
        assert!(a.contains("-cpu host -machine virt,accel=hvf"), "{a}");
        assert!(a.contains("-device pci-serial,chardev=char-serial-pci"));
    }

    #[test]
    fn virtiofs_shares_memory_and_connects_each_mount_to_its_daemon() {
        let mut s = spec();
        s.share = ShareType::Virtiofs;
        s.mounts.push(MountSpec {
            tag: "lima-def".into(),
            host_path: PathBuf::from("/srv"),
            readonly: false,
            queue_size: 512,
        });
        let args = cmdline(&s, &[]);
        let a = joined(&args);
        assert!(a.starts_with("-m 4096 -object memory-backend-memfd,id=virtiofs-shm,size=4294967296,share=on -numa node,memdev=virtiofs-shm -cpu host"), "{a}");
        assert!(!a.contains("-virtfs"), "{a}");
        assert!(a.contains("-chardev socket,id=char-virtiofs-0,path=/l/default/virtiofsd-0.sock -device vhost-user-fs-pci,queue-size=1024,chardev=char-virtiofs-0,tag=lima-abc"), "{a}");
        assert!(a.contains("-chardev socket,id=char-virtiofs-1,path=/l/default/virtiofsd-1.sock -device vhost-user-fs-pci,queue-size=512,chardev=char-virtiofs-1,tag=lima-def"), "{a}");
        assert!(pos(&args, "char-virtiofs-1") < pos(&args, "char-qmp"));
    }

    #[test]
    fn extra_args_come_first_and_win_single_options() {
        let extra = vec![
            "-m".to_string(),
            "512".to_string(),
            "-d".to_string(),
            "int".to_string(),
        ];
        let args = cmdline(&spec(), &extra);
        assert_eq!(&args[..4], &extra[..]);
        assert_eq!(args.iter().filter(|a| *a == "-m").count(), 1);
        assert_eq!(args.iter().filter(|a| *a == "-device").count(), 8);
        // Sandboxed by default; a -sandbox of the user's own wins.
        assert!(joined(&args).contains("-sandbox on,obsolete=deny,elevateprivileges=deny"));
        let own = ["-sandbox", "off"].map(String::from).to_vec();
        let args = cmdline(&spec(), &own);
        assert_eq!(args.iter().filter(|a| *a == "-sandbox").count(), 1);
    }
}

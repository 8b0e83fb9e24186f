//! Every file name inside an instance directory (`$LIMA_HOME/<name>`), in
//! one place, as Lima keeps them in `pkg/limatype/filenames`. limactl reads
//! and writes the same directory, so a name here is a format, not a choice:
//! change one only where Lima did.

/// The instance's config as written at create time (no filled defaults).
pub const LIMA_YAML: &str = "lima.yaml";
/// The release of the Lima layout the instance was created with.
pub const LIMA_VERSION: &str = "lima-version";
/// Present (even empty) when the instance must not be deleted.
pub const PROTECTED: &str = "protected";
/// The rendered user-data without boot scripts, for reference only.
pub const CLOUD_CONFIG: &str = "cloud-config.yaml";
/// The NoCloud seed, rewritten at every start.
pub const CIDATA_ISO: &str = "cidata.iso";

/// Download target of the image, renamed to [`DISK`] or [`ISO`].
pub const IMAGE: &str = "image";
/// The root disk (current layout, Lima ≥ 2.1).
pub const DISK: &str = "disk";
/// An installer CD image (current layout).
pub const ISO: &str = "iso";
/// The downloaded image (legacy layout, Lima ≤ 2.0).
pub const BASE_DISK: &str = "basedisk";
/// The qcow2 overlay over [`BASE_DISK`] (legacy layout).
pub const DIFF_DISK: &str = "diffdisk";
pub const KERNEL: &str = "kernel";
pub const KERNEL_CMDLINE: &str = "kernel.cmdline";
pub const INITRD: &str = "initrd";
/// UEFI code downloaded for `firmware.images`.
pub const QEMU_EFI_CODE: &str = "qemu-efi-code.fd";
/// Only the vz driver writes it; its presence still makes an instance exist.
pub const VZ_IDENTIFIER: &str = "vz-identifier";

/// The host agent's pid, its HTTP socket and its two logs: stdout carries
/// JSON events, stderr a human log.
pub const HOST_AGENT_PID: &str = "ha.pid";
pub const HOST_AGENT_SOCK: &str = "ha.sock";
pub const HOST_AGENT_STDOUT_LOG: &str = "ha.stdout.log";
pub const HOST_AGENT_STDERR_LOG: &str = "ha.stderr.log";

/// Lima's `PIDFile`: the VM driver's pid, `<vmType>.pid`.
pub fn driver_pid(vm_type: &str) -> String {
    format!("{vm_type}.pid")
}
/// [`driver_pid`] of QEMU, written by QEMU itself (`-pidfile`).
pub const QEMU_PID: &str = "qemu.pid";
/// QEMU's own stdout and stderr (ours; Lima logs them through the agent).
pub const QEMU_LOG: &str = "qemu.log";
pub const QMP_SOCK: &str = "qmp.sock";
/// The default serial port: its live socket and everything it printed.
pub const SERIAL_SOCK: &str = "serial.sock";
pub const SERIAL_LOG: &str = "serial.log";
/// The PCI serial port (aarch64 and armv7l only).
pub const SERIAL_PCI_SOCK: &str = "serialp.sock";
pub const SERIAL_PCI_LOG: &str = "serialp.log";
/// The virtio console.
pub const SERIAL_VIRTIO_SOCK: &str = "serialv.sock";
pub const SERIAL_VIRTIO_LOG: &str = "serialv.log";

/// `ssh -F` config for plain OpenSSH, kept after stop.
pub const SSH_CONFIG: &str = "ssh.config";
/// OpenSSH's ControlMaster socket.
pub const SSH_SOCK: &str = "ssh.sock";
/// The guest's host key (ours): the private half goes into cidata at every
/// boot, the public half is what the SSH client pins.
pub const HOST_KEY: &str = "ssh_host_key";
pub const HOST_KEY_PUB: &str = "ssh_host_key.pub";
/// The pinned host key as a `known_hosts` line, for plain OpenSSH through
/// [`SSH_CONFIG`] (ours).
pub const KNOWN_HOSTS: &str = "known_hosts";
/// The host agent's held SSH connection for the CLI (ours; kept short, as
/// unix socket paths are limited to about 100 bytes).
pub const MUX_SOCK: &str = "mux.sock";

/// The vhost-user socket of virtiofsd for mount `index` (mountType virtiofs).
pub fn virtiofsd_sock(index: usize) -> String {
    format!("virtiofsd-{index}.sock")
}

/// Which guest agent the guest has (ours, its sha256): the guest's disk
/// lives and dies with the instance directory, so a matching stamp lets
/// `shell` skip the install round trip.
pub const AGENT_STAMP: &str = "guest-agent.sha256";

/// What only a running instance has; a stop leaves none of them behind.
pub const RUNNING_ONLY: [&str; 4] = [HOST_AGENT_PID, QEMU_PID, HOST_AGENT_SOCK, QMP_SOCK];

/// Lima's `TmpFileSuffixes`: what force-stop removes and clones skip.
pub const TMP_SUFFIXES: [&str; 3] = [".pid", ".sock", ".tmp"];

//! Fixtures for the SSH tests: a real OpenSSH sshd on a loopback port with a
//! throwaway config, a real ssh-agent, a fake instance directory pointing
//! at them, and a pseudo-terminal the test drives.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llima_box::testing::vm::layout;

use crate::common::*;

pub const INSTANCE: &str = "sshtest";

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {:?}", text(&out));
}

/// A free loopback port for sshd to bind soon after (it is released
/// again). Taken below the kernel's ephemeral range: a port from `bind(0)`
/// could be handed to another test's socket in between.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TRIES: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const LOW: u32 = 10000;
    assert!(
        ephemeral_low > LOW + 1000,
        "ephemeral ports start at {ephemeral_low}"
    );
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    for _ in 0..1000 {
        let n = seed.wrapping_add(TRIES.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919));
        let port = LOW + n.wrapping_mul(2_654_435_761) % (ephemeral_low - LOW);
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

/// `ssh-keygen` a passphrase-less key of `kind` at `path`, as the test user.
pub fn keygen(kind: &str, path: &Path, comment: &str) {
    run_ok(
        as_user("ssh-keygen")
            .args(["-q", "-N", "", "-t", kind, "-C", comment, "-f"])
            .arg(path),
    );
}

/// A throwaway sshd accepting only the test user with the keys listed in
/// its authorized_keys file.
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
}

impl Sshd {
    /// Prepares config and keys in `dir`; starts sshd after `delay` (in the
    /// background), or never with `None`.
    pub fn new(dir: &TestDir, delay: Option<Duration>) -> Sshd {
        let d = dir.mkdir("sshd");
        let port = free_port();
        // sshd itself reads its host key, so it is created by whoever runs
        // sshd (root in CI), unreadable by others as sshd demands.
        let st = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "ed25519", "-C", "host", "-f"])
            .arg(d.join("host_key"))
            .status()
            .unwrap();
        assert!(st.success());
        dir.write("sshd/authorized_keys", "");
        let u = user();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nUsePAM no\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             AllowAgentForwarding yes\nAcceptEnv LANG LC_* COLORTERM\nAllowUsers {user}\n\
             PrintMotd no\nLogLevel VERBOSE\n",
            d = d.display(),
            user = u.name,
        );
        dir.write("sshd/sshd_config", &config);
        if is_root() {
            std::fs::create_dir_all("/run/sshd").unwrap();
            // Without PAM, sshd refuses accounts whose password is locked
            // (`!`), which is how useradd leaves them; `*` is "no password".
            run_ok(Command::new("usermod").args(["-p", "*", &u.name]));
        }
        let child = Arc::new(Mutex::new(None));
        let sshd = Sshd {
            port,
            dir: d.clone(),
            child: child.clone(),
        };
        if let Some(delay) = delay {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let log = std::fs::File::create(d.join("sshd.log")).unwrap();
                let c = Command::new("/usr/sbin/sshd")
                    .args(["-D", "-e", "-f"])
                    .arg(d.join("sshd_config"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                *child.lock().unwrap() = Some(c);
            });
        }
        sshd
    }

    /// Starts now and waits until the port accepts connections.
    pub fn start(dir: &TestDir) -> Sshd {
        let sshd = Sshd::new(dir, Some(Duration::ZERO));
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", sshd.port)).is_err() {
            assert!(Instant::now() < until, "sshd did not start: {}", sshd.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    pub fn host_pub(&self) -> String {
        std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap()
    }

    pub fn authorize(&self, pub_key_file: &Path) {
        let line = std::fs::read_to_string(pub_key_file).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("authorized_keys"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `$LIMA_HOME` with one instance whose ssh.config and pinned host key
/// point at `sshd`, "running" (ha.pid is this test process).
pub struct Instance {
    pub home: TestDir,
    pub sshd: Sshd,
}

impl Instance {
    /// sshd started, llima-box's own key created and authorized.
    pub fn new() -> Instance {
        let inst = Instance::with_sshd(Sshd::start);
        let key = llima_box::testing::ssh::keys::ensure_user_key(inst.home.path()).unwrap();
        chown_r(&inst.lima_home().join("_config"));
        inst.sshd.authorize(&key.path().with_extension("pub"));
        inst
    }

    pub fn with_sshd(make: impl FnOnce(&TestDir) -> Sshd) -> Instance {
        let home = TestDir::new();
        let sshd = make(&home);
        let host_pub = sshd.host_pub();
        write_instance(&home, sshd.port, &host_pub);
        Instance { home, sshd }
    }

    pub fn lima_home(&self) -> &Path {
        self.home.path()
    }

    /// `llima-box vm shell ARGS` for this instance.
    pub fn shell(&self, args: &[&str]) -> Command {
        let mut c = llima_box(self.lima_home());
        c.args(["--instance", INSTANCE, "vm", "shell"]).args(args);
        c
    }
}

/// Lays out an instance that the store sees as Running: live pids in
/// `ha.pid` and `qemu.pid` (this test process) and a real host agent API on
/// `ha.sock` reporting `port`, with the pinned host key beside it.
pub fn write_instance(home: &TestDir, port: u16, host_pub: &str) {
    let i = INSTANCE;
    home.write(
        &format!("{i}/ssh.config"),
        &format!("Host lima-{i}\n  Hostname 127.0.0.1\n  Port {port}\n"),
    );
    home.write(&format!("{i}/ssh_host_key.pub"), host_pub);
    home.write(&format!("{i}/ha.pid"), &format!("{}\n", std::process::id()));
    home.write(
        &format!("{i}/qemu.pid"),
        &format!("{}\n", std::process::id()),
    );
    home.write(
        &format!("{i}/lima.yaml"),
        &format!(
            "images:\n- location: /unused/disk.img\nuser:\n  name: {}\n",
            user().name
        ),
    );
    serve_host_agent_api(&home.path().join(i).join(layout::HOST_AGENT_SOCK), port);
}

/// The product's own `ha.sock` server on a thread of this test process.
fn serve_host_agent_api(sock: &Path, port: u16) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sock = sock.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = llima_box::testing::vm::hostagent::api::bind(&sock).unwrap();
            // The test user must be able to connect when the suite runs as root.
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
            ready_tx.send(()).unwrap();
            let info = llima_box::testing::vm::store::Info {
                ssh_local_port: port,
                ..Default::default()
            };
            llima_box::testing::vm::hostagent::api::serve(listener, info).await;
        });
    });
    ready_rx.recv().unwrap();
}

/// An ssh-agent of the test user holding one fresh key.
pub struct SshAgent {
    pub socket: PathBuf,
    pub key_comment: String,
    child: Child,
}

impl SshAgent {
    /// An agent in `dir` holding a key of its own (two agents in one test
    /// hold different keys).
    pub fn start(dir: &TestDir) -> SshAgent {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = dir.mkdir(&format!("agent-{n}"));
        let socket = d.join("agent.sock");
        let child = as_user("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            assert!(Instant::now() < until, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let key_comment = format!("agent-key-{}-{n}", std::process::id());
        keygen("ed25519", &d.join("id"), &key_comment);
        run_ok(
            as_user("ssh-add")
                .arg(d.join("id"))
                .env("SSH_AUTH_SOCK", &socket),
        );
        SshAgent {
            socket,
            key_comment,
            child,
        }
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pseudo-terminal whose slave is the controlling terminal of a child,
/// with everything the child writes collected from the master.
pub struct Pty {
    master: std::fs::File,
    pub slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    pub fn open(rows: u16, cols: u16) -> Pty {
        let (mut m, mut s) = (-1, -1);
        let ws = winsize(rows, cols);
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let master = unsafe { std::fs::File::from_raw_fd(m) };
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        // The test user must be able to open its terminal (e.g. `tty`).
        if is_root() {
            let u = user();
            unsafe { libc::fchown(s, u.uid, u.gid) };
        }
        let output = Arc::new(Mutex::new(Vec::new()));
        let reader = output.clone();
        let mut rd = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child side is gone.
            while let Ok(n) = rd.read(&mut buf) {
                if n == 0 {
                    break;
                }
                reader.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            slave,
            output,
        }
    }

    /// Spawns `cmd` in a new session with the slave as its controlling
    /// terminal and stdio.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        cmd.stdin(self.slave.try_clone().unwrap())
            .stdout(self.slave.try_clone().unwrap())
            .stderr(self.slave.try_clone().unwrap());
        unsafe {
            // Runs after stdio is redirected: fd 0 is the slave.
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    pub fn termios(&self) -> libc::termios {
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) },
            0
        );
        t
    }

    /// Sets the erase character, as a terminal that sends ^H would.
    pub fn set_erase(&self, c: u8) {
        let mut t = self.termios();
        t.c_cc[libc::VERASE] = c;
        let rc = unsafe { libc::tcsetattr(self.slave.as_raw_fd(), libc::TCSANOW, &t) };
        assert_eq!(rc, 0);
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // The kernel sends SIGWINCH to the terminal's foreground group.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
    }

    pub fn send(&self, bytes: &[u8]) {
        (&self.master).write_all(bytes).unwrap();
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output after `from` contains `needle`; returns the
    /// output length after the match.
    pub fn expect(&self, from: usize, needle: &str, timeout: Duration) -> usize {
        let until = Instant::now() + timeout;
        loop {
            let out = self.output();
            if let Some(i) = out.get(from..).and_then(|s| s.find(needle)) {
                return from + i + needle.len();
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {needle:?}; terminal output:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Waits for a child with a timeout (then kills it and fails).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("child did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// termios fields that matter for "the terminal is as it was".
pub fn modes(t: &libc::termios) -> ([libc::tcflag_t; 4], Vec<libc::cc_t>) {
    (
        [t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag],
        t.c_cc.to_vec(),
    )
}

/// Serves `mux.sock` for `inst` with the product's mux server on a thread
/// of this test process, as the test user (so that the peer check accepts
/// the CLI): the same library calls the host agent makes.
pub fn serve_mux(inst: &Instance) -> PathBuf {
    let home = inst.lima_home();
    let (opts, _) = llima_box::testing::vm::access::connect_options(
        home,
        INSTANCE,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    let sock = home.join(INSTANCE).join(layout::MUX_SOCK);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = sock.clone();
    std::thread::spawn(move || {
        #[cfg(target_os = "linux")]
        if is_root() {
            become_test_user_on_this_thread();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = llima_box::testing::ssh::mux::bind(&path).unwrap();
            ready_tx.send(()).unwrap();
            llima_box::testing::ssh::mux::serve(listener, opts).await;
        });
    });
    ready_rx.recv().unwrap();
    // The server logs in at once: with and without agent forwarding.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while logins(&inst.sshd) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    sock
}

/// Linux credentials are per thread at the system-call level (libc's
/// setuid changes all threads, the raw call only this one), and threads
/// started from here inherit them.
#[cfg(target_os = "linux")]
fn become_test_user_on_this_thread() {
    let u = user();
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, u.gid, u.gid, u.gid), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, u.uid, u.uid, u.uid), 0);
    }
}

/// How many times sshd let a client log in.
pub fn logins(sshd: &Sshd) -> usize {
    sshd.log().matches("Accepted publickey").count()
}

/// The common end of the PTY tests, from output offset `at`: a resize is
/// seen remotely, Ctrl-C ends a remote `sleep` but not the shell, `exit 7`
/// comes back as 7 and the local terminal modes are as `before`.
pub fn resize_ctrl_c_and_exit(
    pty: &Pty,
    child: &mut Child,
    at: usize,
    before: &([libc::tcflag_t; 4], Vec<libc::cc_t>),
) {
    let t = Duration::from_secs(20);
    pty.resize(50, 132);
    // Poll remotely: the resize travels asynchronously.
    pty.send(b"for i in $(seq 100); do [ \"$(stty size)\" = '50 132' ] && break; sleep 0.1; done; echo \"R=$(stty size)\"\r");
    let at = pty.expect(at, "R=50 132", t);
    // Ctrl-C must end the sleep well before it would end by itself.
    pty.send(b"echo \"start-$((1+1))\"; sleep 30; echo \"slept-$((6*7))\"\r");
    let at = pty.expect(at, "start-2", t);
    std::thread::sleep(Duration::from_millis(200));
    pty.send(b"\x03");
    pty.send(b"echo \"alive-$((20+22))\"\r");
    let at = pty.expect(at, "alive-42", t);
    assert!(!pty.output()[at..].contains("slept-42"));
    pty.send(b"exit 7\r");
    let st = wait_timeout(child, t);
    assert_eq!(st.code(), Some(7), "{}", pty.output());
    assert_eq!(&modes(&pty.termios()), before, "terminal modes changed");
}

/// `vm shell -- yes` whose reader goes away after 4 bytes ends with 141
/// (SIGPIPE's status) and says nothing, as a shell pipeline expects.
pub fn closed_reader_ends_quietly(inst: &Instance) {
    let mut child = inst
        .shell(&["--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\ny\n");
    drop(stdout);
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    child
        .stderr
        .as_mut()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(st.code(), Some(141), "{stderr}");
    assert_eq!(stderr, "");
}

/// Writes `len` bytes of deterministic, incompressible data to `dir/name`,
/// readable by the test user.
pub fn write_data(dir: &TestDir, name: &str, len: usize) -> PathBuf {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    let p = dir.path().join(name);
    std::fs::write(&p, &data).unwrap();
    chown(&p);
    p
}

/// `vm shell -- cat FILE` prints the file byte for byte, with stderr apart.
pub fn stdout_is_byte_exact(inst: &Instance, file: &Path) {
    let script = format!("cat {}; echo err-marker >&2", file.display());
    let out = inst
        .shell(&["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err-marker\n");
    assert!(
        out.stdout == std::fs::read(file).unwrap(),
        "stdout differs from the file ({} bytes)",
        out.stdout.len()
    );
}

/// The file piped into `vm shell -- sha256sum` hashes as it does locally,
/// so every byte and the EOF arrived.
pub fn stdin_is_byte_exact(inst: &Instance, file: &Path) {
    let mut child = inst
        .shell(&["--", "sh", "-c", "sha256sum; echo err-marker >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = std::fs::read(file).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let local = Command::new("sha256sum").arg(file).output().unwrap();
    let want = String::from_utf8(local.stdout).unwrap();
    let want = want.split_whitespace().next().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("{want}  -\n"));
    assert_eq!(stderr, "err-marker\n");
}

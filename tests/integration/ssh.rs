//! The SSH layer against a real OpenSSH sshd and ssh-agent, through
//! `llima-box vm shell` run as the unprivileged test user.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llima_box::testing::vm::layout;

use crate::common::*;
use crate::ssh_support::*;

fn code(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let (o, e) = text(&out);
    (out.status.code().unwrap_or(-1), o, e)
}

#[test]
fn remote_exit_status_and_signal_become_the_exit_code() {
    let inst = Instance::new();
    for (argv, want) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 42"], 42),
        (vec!["sh", "-c", "kill -TERM $$"], 143),
    ] {
        let mut args = vec!["--"];
        args.extend(&argv);
        let (got, _, stderr) = code(&mut inst.shell(&args));
        assert_eq!(got, want, "{argv:?}: {stderr}\nsshd: {}", inst.sshd.log());
    }
}

#[test]
fn argv_reaches_the_remote_unsplit() {
    let inst = Instance::new();
    let (c, stdout, stderr) = code(&mut inst.shell(&[
        "--",
        "printf",
        "<%s>",
        "two words",
        "it's",
        "$HOME",
        "*",
        "",
    ]));
    assert_eq!(c, 0, "{stderr}");
    assert_eq!(stdout, "<two words><it's><$HOME><*><>");
}

const BIG: usize = 200 << 20;

#[test]
fn stdout_is_byte_exact_at_volume_and_stderr_stays_separate() {
    let inst = Instance::new();
    let file = write_data(&inst.home, "data.bin", BIG);
    stdout_is_byte_exact(&inst, &file);
}

#[test]
fn stdin_is_byte_exact_at_volume_with_eof() {
    let inst = Instance::new();
    let file = write_data(&inst.home, "data.bin", BIG);
    stdin_is_byte_exact(&inst, &file);
}

#[test]
fn workdir_and_host_cwd_are_used_remotely() {
    let inst = Instance::new();
    let (c, stdout, e) = code(&mut inst.shell(&["--workdir", "/tmp", "--", "pwd"]));
    assert_eq!((c, stdout.as_str()), (0, "/tmp\n"), "{e}");
    let (c, _, _) = code(&mut inst.shell(&["--workdir", "/nonexistent", "--", "true"]));
    assert_eq!(c, 1);
    // The sshd runs on this host, so the host cwd exists "in the guest".
    let here = inst.home.mkdir("project");
    let (c, stdout, e) = code(inst.shell(&["--", "pwd"]).current_dir(&here));
    assert_eq!((c, stdout.trim()), (0, here.to_str().unwrap()), "{e}");
}

#[test]
fn agent_is_forwarded_only_when_present_and_wanted() {
    let inst = Instance::new();
    let agent = SshAgent::start(&inst.home);
    let (c, stdout, e) = code(
        inst.shell(&["--", "ssh-add", "-l"])
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    assert_eq!(c, 0, "{e}");
    assert!(stdout.contains(&agent.key_comment), "{stdout}");

    let (c, stdout, _) = code(
        inst.shell(&["--no-agent", "--", "ssh-add", "-l"])
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    assert_eq!(c, 2, "ssh-add must find no agent: {stdout}");
    assert!(!stdout.contains(&agent.key_comment));

    let (c, stdout, e) = code(&mut inst.shell(&["--", "sh", "-c", "ssh-add -l; echo rc=$?"]));
    assert_eq!(c, 0, "{e}");
    assert!(stdout.contains("rc=2"), "{stdout}");
}

#[test]
fn connect_retries_until_sshd_comes_up() {
    let inst = Instance::with_sshd(|d| Sshd::new(d, Some(Duration::from_secs(3))));
    let key = llima_box::testing::ssh::keys::ensure_user_key(inst.lima_home()).unwrap();
    chown_r(&inst.lima_home().join("_config"));
    inst.sshd.authorize(&key.path().with_extension("pub"));
    let start = Instant::now();
    let (c, stdout, e) = code(
        inst.shell(&["--", "echo", "up"])
            .env("LLIMA_BOX_SSH_DEADLINE_SECS", "30"),
    );
    assert_eq!(
        (c, stdout.as_str()),
        (0, "up\n"),
        "{e}\nsshd: {}",
        inst.sshd.log()
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
}

#[test]
fn unreachable_sshd_fails_clearly_at_the_deadline() {
    let inst = Instance::with_sshd(|d| Sshd::new(d, None));
    let start = Instant::now();
    let (c, _, e) = code(
        inst.shell(&["--", "true"])
            .env("LLIMA_BOX_SSH_DEADLINE_SECS", "2"),
    );
    let took = start.elapsed();
    assert_eq!(c, 255, "{e}");
    assert!(e.contains("could not reach sshd"), "{e}");
    assert!(e.contains("refused"), "{e}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn wrong_host_key_is_refused_without_retrying() {
    let inst = Instance::new();
    let other = inst.home.path().join("other_host_key");
    keygen("ed25519", &other, "other");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    write_instance(&inst.home, inst.sshd.port, &other_pub);
    let start = Instant::now();
    let (c, _, e) = code(
        inst.shell(&["--", "true"])
            .env("LLIMA_BOX_SSH_DEADLINE_SECS", "30"),
    );
    assert_eq!(c, 255, "{e}");
    assert!(e.contains("host key"), "{e}");
    let fp = |p: &std::path::Path| {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert!(
        e.contains(&fp(&other.with_extension("pub"))),
        "expected fp missing: {e}"
    );
    assert!(
        e.contains(&fp(&inst.sshd.dir.join("host_key.pub"))),
        "got fp missing: {e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn parallel_first_uses_create_one_valid_key() {
    // sshd knows no key: every run creates-or-loads the key, then is
    // rejected, naming the fingerprint it used.
    let inst = Instance::with_sshd(Sshd::start);
    let children: Vec<_> = (0..8)
        .map(|_| {
            inst.shell(&["--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let errors: Vec<String> = children
        .into_iter()
        .map(|c| text(&c.wait_with_output().unwrap()).1)
        .collect();
    let key = inst.lima_home().join("_config/user");
    let out = as_user("ssh-keygen").arg("-lf").arg(&key).output().unwrap();
    let (listing, e) = text(&out);
    assert!(out.status.success(), "{e}");
    let fp = listing.split_whitespace().nth(1).unwrap();
    assert!(listing.trim_end().ends_with("lima (ED25519)"), "{listing}");
    for e in &errors {
        assert!(e.contains("rejected") && e.contains(fp), "{e}");
    }
    let out = as_user("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let mut names: Vec<_> = std::fs::read_dir(inst.lima_home().join("_config"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["user", "user.pub"]);
}

#[test]
fn existing_keys_of_other_types_are_used_as_is() {
    for kind in ["rsa", "ecdsa"] {
        let inst = Instance::with_sshd(Sshd::start);
        let config = inst.home.mkdir("_config");
        let key = config.join("user");
        keygen(kind, &key, "made-by-limactl");
        let before = std::fs::read(&key).unwrap();
        inst.sshd.authorize(&key.with_extension("pub"));
        let (c, stdout, e) = code(&mut inst.shell(&["--", "echo", "ok"]));
        assert_eq!(
            (c, stdout.as_str()),
            (0, "ok\n"),
            "{kind}: {e}\n{}",
            inst.sshd.log()
        );
        assert_eq!(std::fs::read(&key).unwrap(), before);
    }
}

#[test]
fn missing_or_stopped_instance_is_a_clear_error() {
    let home = TestDir::new();
    let (c, _, e) = code(llima_box(home.path()).args(["--instance", "nope", "vm", "shell"]));
    assert_ne!(c, 0);
    assert!(e.contains("does not exist"), "{e}");
    write_instance(&home, free_port(), "ssh-ed25519 AAAA");
    std::fs::remove_file(home.path().join(INSTANCE).join(layout::HOST_AGENT_PID)).unwrap();
    let (c, _, e) = code(llima_box(home.path()).args(["--instance", INSTANCE, "vm", "shell"]));
    assert_ne!(c, 0);
    assert!(e.contains("not running"), "{e}");
}

fn pty_shell(inst: &Instance, pty: &Pty, env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = inst.shell(&["--", "bash", "--norc", "--noprofile", "-i"]);
    cmd.env("TERM", "xterm-test").env("PS1", "");
    for (k, v) in env {
        cmd.env(k, v);
    }
    pty.spawn(&mut cmd)
}

#[test]
fn pty_session_gets_size_resizes_and_ctrl_c_and_restores_the_terminal() {
    let inst = Instance::new();
    let pty = Pty::open(33, 101);
    pty.set_erase(0x08);
    let before = modes(&pty.termios());
    let mut child = pty_shell(&inst, &pty, &[]);
    let t = Duration::from_secs(20);
    pty.send(b"echo \"T=$(tty) S=$(stty size) E=$TERM\"\r");
    let at = pty.expect(0, "T=/dev/pts/", t);
    let at = pty.expect(at, "S=33 101 E=xterm-test", t);
    // The local line settings travel with the PTY request.
    pty.send(b"stty -a | grep -o 'erase = [^;]*' | sed 's/^/M-/'\r");
    let at = pty.expect(at, "M-erase = ^H", t);
    resize_ctrl_c_and_exit(&pty, &mut child, at, &before);
}

#[test]
fn terminal_is_restored_after_a_panic_in_raw_mode() {
    let inst = Instance::new();
    let pty = Pty::open(24, 80);
    let before = modes(&pty.termios());
    let mut child = pty_shell(&inst, &pty, &[("LLIMA_BOX_TEST_PANIC", "after-raw")]);
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(101), "{}", pty.output());
    // The reader thread may still be draining the PTY after the exit.
    pty.expect(0, "LLIMA_BOX_TEST_PANIC", Duration::from_secs(5));
    assert_eq!(modes(&pty.termios()), before, "terminal modes changed");
}

#[test]
fn terminal_is_restored_after_sigterm() {
    let inst = Instance::new();
    let pty = Pty::open(24, 80);
    let before = modes(&pty.termios());
    let mut child = pty_shell(&inst, &pty, &[]);
    pty.send(b"echo \"up-$((1+1))\"\r");
    pty.expect(0, "up-2", Duration::from_secs(20));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(!st.success());
    assert_eq!(modes(&pty.termios()), before, "terminal modes changed");
}

#[test]
fn a_closed_local_reader_ends_the_session_quietly() {
    let inst = Instance::new();
    closed_reader_ends_quietly(&inst);
}

/// The library API other modules use (host agent readiness checks).
#[test]
fn library_api_connects_and_captures() {
    use llima_box::testing::ssh::{
        ConnectOptions, HostKeyPolicy, KeyPair, RemoteExit, Session, keys,
    };
    let inst = Instance::new();
    let opts = ConnectOptions {
        addr: ([127, 0, 0, 1], inst.sshd.port).into(),
        user: user().name.clone(),
        key: KeyPair::load(&inst.lima_home().join("_config/user")).unwrap(),
        host_key: HostKeyPolicy::Pinned(
            keys::load_host_public_key(&inst.sshd.dir.join("host_key.pub")).unwrap(),
        ),
        deadline: Duration::from_secs(5),
        agent_forwarding: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = Session::connect(opts).await.unwrap();
        let out = session
            .exec_capture(&[
                "sh",
                "-c",
                "printf 'a b'; printf err >&2; exit 3",
                "ignored",
            ])
            .await
            .unwrap();
        assert_eq!(out.exit, RemoteExit::Code(3));
        assert_eq!(out.stdout, b"a b");
        assert_eq!(out.stderr, b"err");
        // Several commands over one connection.
        let out = session.exec_capture(&["echo", "again"]).await.unwrap();
        assert!(out.exit.success());
        assert_eq!(out.stdout, b"again\n");
        session.close().await.unwrap();
    });
}

/// A port forwarder whose guest is not listening yet accepts and closes
/// at once; that is retried until the deadline, not reported at once.
#[test]
fn connections_closed_before_the_banner_are_retried() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let dir = TestDir::new();
    let key = llima_box::testing::ssh::keys::ensure_user_key(dir.path()).unwrap();
    let some_host_key = key.public_key().clone();
    let opts = llima_box::testing::ssh::ConnectOptions {
        addr: ([127, 0, 0, 1], port).into(),
        user: user().name.clone(),
        key,
        host_key: llima_box::testing::ssh::HostKeyPolicy::Pinned(some_host_key),
        deadline: Duration::from_secs(2),
        agent_forwarding: None,
    };
    let start = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = match rt.block_on(llima_box::testing::ssh::Session::connect(opts)) {
        Ok(_) => panic!("connected to a port without sshd"),
        Err(e) => e,
    };
    assert!(
        matches!(err, llima_box::testing::ssh::Error::Deadline { .. }),
        "{err}"
    );
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(accepted.load(Ordering::SeqCst) > 3, "it did not retry");
}

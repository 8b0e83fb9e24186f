//! The warm path: `vm shell` through the mux server (the host agent's held
//! connection) in front of a real OpenSSH sshd, behaving exactly like a
//! direct connection, and falling back to one when the mux is unusable.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::ssh_support::*;

fn code(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let (o, e) = text(&out);
    (out.status.code().unwrap_or(-1), o, e)
}

#[test]
fn commands_share_one_login_and_keep_their_exit_codes() {
    let inst = Instance::new();
    serve_mux(&inst);
    assert_eq!(logins(&inst.sshd), 2, "the mux logs in before any command");
    for (argv, want) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 42"], 42),
        (vec!["sh", "-c", "kill -TERM $$"], 143),
        (vec!["sh", "-c", "echo out; echo err >&2; exit 3"], 3),
    ] {
        let mut args = vec!["--"];
        args.extend(&argv);
        let (got, stdout, stderr) = code(&mut inst.shell(&args));
        assert_eq!(got, want, "{argv:?}: {stderr}\nsshd: {}", inst.sshd.log());
        if want == 3 {
            assert_eq!((stdout.as_str(), stderr.as_str()), ("out\n", "err\n"));
        }
    }
    assert_eq!(logins(&inst.sshd), 2, "sshd: {}", inst.sshd.log());
}

const BIG: usize = 50 << 20;

#[test]
fn stdin_and_stdout_are_byte_exact_at_volume_and_stderr_separate() {
    let inst = Instance::new();
    serve_mux(&inst);
    let file = write_data(&inst.home, "data.bin", BIG);
    stdout_is_byte_exact(&inst, &file);
    stdin_is_byte_exact(&inst, &file);
    assert_eq!(logins(&inst.sshd), 2, "sshd: {}", inst.sshd.log());
}

#[test]
fn a_stale_socket_falls_back_to_a_direct_connection() {
    let inst = Instance::new();
    let sock = inst
        .lima_home()
        .join(INSTANCE)
        .join(llima_box::testing::vm::layout::MUX_SOCK);
    // A socket file nobody listens on, as a crashed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    chown(&sock);
    for _ in 0..2 {
        let (c, stdout, stderr) = code(&mut inst.shell(&["--", "sh", "-c", "echo hi; exit 5"]));
        assert_eq!((c, stdout.as_str(), stderr.as_str()), (5, "hi\n", ""));
    }
    assert_eq!(logins(&inst.sshd), 2, "two direct logins");
}

#[test]
fn agent_is_forwarded_through_the_mux() {
    let inst = Instance::new();
    serve_mux(&inst);
    let agent = SshAgent::start(&inst.home);
    for _ in 0..2 {
        let (c, stdout, e) = code(
            inst.shell(&["--", "ssh-add", "-l"])
                .env("SSH_AUTH_SOCK", &agent.socket),
        );
        assert_eq!(c, 0, "{e}");
        assert!(stdout.contains(&agent.key_comment), "{stdout}");
    }
    let (c, stdout, _) = code(
        inst.shell(&["--no-agent", "--", "sh", "-c", "ssh-add -l; echo rc=$?"])
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    assert_eq!(c, 0);
    assert!(
        stdout.contains("rc=2"),
        "no agent without forwarding: {stdout}"
    );
    // One held connection with agent forwarding, one without.
    assert_eq!(logins(&inst.sshd), 2, "sshd: {}", inst.sshd.log());
}

/// A command reaches the agent of the client that started it, also while
/// another client's command with another agent starts: an agent channel
/// says nothing of its command, so each local agent gets a held
/// connection of its own. Before, the latest client's agent served all.
#[test]
fn each_command_reaches_its_own_clients_agent() {
    let inst = Instance::new();
    serve_mux(&inst);
    let first = SshAgent::start(&inst.home);
    let second = SshAgent::start(&inst.home);
    let slow = inst
        .shell(&["--", "sh", "-c", "sleep 3; ssh-add -l"])
        .env("SSH_AUTH_SOCK", &first.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (c, stdout, e) = code(
        inst.shell(&["--", "ssh-add", "-l"])
            .env("SSH_AUTH_SOCK", &second.socket),
    );
    assert_eq!(c, 0, "{e}");
    assert!(stdout.contains(&second.key_comment), "{stdout}");
    assert!(!stdout.contains(&first.key_comment), "{stdout}");
    let out = slow.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&first.key_comment), "{stdout}");
    assert!(!stdout.contains(&second.key_comment), "{stdout}");
    // One held connection without an agent, one per agent.
    assert_eq!(logins(&inst.sshd), 3, "sshd: {}", inst.sshd.log());
}

#[test]
fn pty_session_through_the_mux_gets_size_resizes_and_restores_the_terminal() {
    let inst = Instance::new();
    serve_mux(&inst);
    let pty = Pty::open(33, 101);
    let before = modes(&pty.termios());
    let mut cmd = inst.shell(&["--", "bash", "--norc", "--noprofile", "-i"]);
    cmd.env("TERM", "xterm-test").env("PS1", "");
    let mut child = pty.spawn(&mut cmd);
    let t = Duration::from_secs(20);
    pty.send(b"echo \"T=$(tty) S=$(stty size) E=$TERM\"\r");
    let at = pty.expect(0, "T=/dev/pts/", t);
    let at = pty.expect(at, "S=33 101 E=xterm-test", t);
    resize_ctrl_c_and_exit(&pty, &mut child, at, &before);
    assert_eq!(logins(&inst.sshd), 2, "sshd: {}", inst.sshd.log());
}

#[test]
fn a_closed_local_reader_ends_the_session_quietly() {
    let inst = Instance::new();
    serve_mux(&inst);
    closed_reader_ends_quietly(&inst);
    // The held connection is still good for the next command.
    assert_eq!(code(&mut inst.shell(&["--", "true"])).0, 0);
    assert_eq!(logins(&inst.sshd), 2, "sshd: {}", inst.sshd.log());
}

#[test]
fn a_broken_held_connection_is_replaced() {
    let inst = Instance::new();
    serve_mux(&inst);
    assert_eq!(code(&mut inst.shell(&["--", "true"])).0, 0);
    // Kill sshd's per-connection processes (the whole tree, so that the
    // TCP connection drops), as a guest reboot does.
    let pid = std::fs::read_to_string(inst.sshd.dir.join("sshd.pid")).unwrap();
    let sessions = descendants(pid.trim().parse().unwrap());
    assert!(!sessions.is_empty(), "no sshd session process");
    for p in sessions {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let (c, stdout, e) = code(&mut inst.shell(&["--", "echo", "again"]));
    assert_eq!((c, stdout.as_str()), (0, "again\n"), "{e}");
    // Both held connections were lost; the command replaced the one it needed.
    assert_eq!(logins(&inst.sshd), 3, "sshd: {}", inst.sshd.log());
}

fn descendants(pid: i32) -> Vec<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut all = Vec::new();
    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        all.extend(descendants(c));
        all.push(c);
    }
    all
}

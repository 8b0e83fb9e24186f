//! The spawn server for real, outside a VM: started on its own (`env-server`,
//! descriptors 5-8, a socket, what a holder gives it), asked over its socket to run
//! commands as `nobody` with pipes and with a terminal. It changes user, so
//! it needs root: as another user the test runs itself again through
//! `sudo -n`, and fails when that is not possible.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use llima_box_proto::frame::{self, Decoder};
use llima_box_proto::spawn::{self, EnvRequest, ExitStatus, Header, Pty};

const NOBODY: u32 = 65534;

/// Runs `test` as root: here when root, else this test again under sudo.
fn as_root(name: &str, test: fn()) {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        return test();
    }
    let out = Command::new("sudo")
        .args(["-n", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--include-ignored", "--nocapture"])
        .output()
        .expect("sudo");
    assert!(
        out.status.success(),
        "{name} needs root or passwordless sudo: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Server {
    child: Child,
    socket: PathBuf,
    project: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["env", "state", "homes", "project"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    std::fs::set_permissions(d.join("project"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = d.join("s.sock");
    let ready = std::fs::File::create(d.join("ready")).unwrap();
    let open = |p: &str| std::fs::File::open(d.join(p)).unwrap();
    let fds = [
        (ready, 7),
        (open("env"), 8),
        (open("state"), 6),
        (open("homes"), 5),
    ];
    let raw: Vec<(i32, i32)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let project = d.join("project");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llima-box-guest-agent"));
    cmd.arg("env-server")
        .arg("v1")
        .arg(&socket)
        .arg("nobody")
        .args([NOBODY.to_string(), NOBODY.to_string()])
        .arg(&project)
        .args(["0", "1000", "1000"]);
    // SAFETY: dup2 and a write, in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &raw {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The holder gives it -1000; any score other than the
            // commands' 0 shows the reset (lowering needs a capability
            // that a container's root may lack).
            std::fs::write("/proc/self/oom_score_adj", "500")
        });
    }
    let child = cmd.spawn().unwrap();
    drop(fds);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(d.join("ready")).unwrap() != "ready\n" {
        assert!(Instant::now() < deadline, "the server never reported ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        socket,
        project,
        _dir: dir,
    }
}

#[derive(Debug, Default)]
struct Outcome {
    stdout: String,
    stderr: String,
    exit: Option<ExitStatus>,
}

/// Sends the header and `input` (then EOF), and collects every frame until
/// the exit frame.
fn run(server: &Server, argv: &[&str], cwd: &Path, pty: Option<Pty>, input: &[u8]) -> Outcome {
    let mut conn = UnixStream::connect(&server.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let header = Header {
        request: EnvRequest {
            cwd: cwd.to_str().unwrap().into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            claim: None,
        },
        env: vec![
            ("LANG".into(), "C".into()),
            ("PATH".into(), "/nowhere".into()),
        ],
        pty,
        agent: None,
    };
    let mut wire = frame::encode(spawn::HEADER, &serde_json::to_vec(&header).unwrap());
    if !input.is_empty() {
        wire.extend(frame::encode(spawn::STDIN, input));
    }
    wire.extend(frame::encode(spawn::EOF, &[]));
    conn.write_all(&wire).unwrap();
    let mut out = Outcome::default();
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 4096];
    while out.exit.is_none() {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before the exit frame: {out:?}");
        decoder.push(&buf[..n]);
        while let Some(f) = decoder.next_frame().unwrap() {
            let text = String::from_utf8_lossy(&f.payload).into_owned();
            match f.kind {
                spawn::STDOUT => out.stdout += &text,
                spawn::STDERR => out.stderr += &text,
                spawn::EXIT => out.exit = Some(serde_json::from_slice(&f.payload).unwrap()),
                k => panic!("unexpected frame {k}: {text}"),
            }
        }
    }
    out
}

fn code(c: u32) -> Option<ExitStatus> {
    Some(ExitStatus::Code { code: c })
}

/// Perl: `openat2` (437 on x86_64 and aarch64) creating `o2-setid` with
/// mode 4755 and `o2-plain` with 0644, then opening `.` with `O_PATH` as
/// bubblewrap does; prints `openat2 WHAT=ok` or the errno.
const OPENAT2: &str = r#"
for (["setid", 0101, 04755, "o2-setid"], ["plain", 0101, 0644, "o2-plain"],
     ["path", 010200000, 0, "."]) {
    my ($what, $flags, $mode, $path) = @$_;
    my $r = syscall(437, -100, $path, pack("QQQ", $flags, $mode, 0), 24);
    print "openat2 $what=", ($r < 0 ? $! + 0 : "ok"), "\n";
}
"#;

/// Pipes: stdin arrives, stdout and stderr stay apart, the status is the
/// command's; the command runs as the user, unprivileged, in the project,
/// with the environment's PATH rather than the client's.
#[test]
#[ignore = "needs root: run through tests/run or with --include-ignored"]
fn runs_commands_with_pipes_as_the_user() {
    as_root("runs_commands_with_pipes_as_the_user", || {
        let s = start();
        let script = "read -r x; echo \"got $x\"; echo oops >&2; id -u; id -G; pwd; echo \"$PATH $LANG\"; \
                      grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status; \
                      echo oom=$(cat /proc/self/oom_score_adj); \
                      awk '{print \"key-owner=\" $6}' /proc/keys; \
                      touch f && chmod 4755 f 2>/dev/null; echo chmod=$?; \
                      install -m 2755 f g 2>/dev/null; echo install=$?; \
                      stat -c 'modes=%a %a' f g; perl o2.pl; exit 3";
        std::fs::write(s.project.join("o2.pl"), OPENAT2).unwrap();
        let o = run(&s, &["sh", "-c", script], &s.project, None, b"hello\n");
        assert_eq!(o.exit, code(3), "{o:?}");
        assert_eq!(o.stderr, "oops\n");
        let lines: Vec<&str> = o.stdout.lines().collect();
        assert_eq!(lines[0], "got hello");
        assert_eq!(lines[1..3], [NOBODY.to_string(), NOBODY.to_string()]);
        assert_eq!(lines[3], s.project.to_str().unwrap());
        assert!(
            lines[4].starts_with("/usr/local/bin:/usr/bin:/bin") && lines[4].ends_with(" C"),
            "{o:?}"
        );
        assert!(o.stdout.contains("CapEff:\t0000000000000000"), "{o:?}");
        assert!(o.stdout.contains("CapBnd:\t0000000000000000"), "{o:?}");
        assert!(o.stdout.contains("NoNewPrivs:\t1"), "{o:?}");
        // The server's OOM score is not its commands'.
        assert!(o.stdout.contains("oom=0\n"), "{o:?}");
        // No setuid or setgid bit from an environment.
        assert!(o.stdout.contains("chmod=1\ninstall=1\n"), "{o:?}");
        assert!(o.stdout.contains("modes=644 "), "{o:?}");
        // Nor through openat2, which keeps its mode out of the filter's
        // sight: its supervisor refuses the bits and passes the rest.
        assert!(
            o.stdout
                .contains("openat2 setid=1\nopenat2 plain=ok\nopenat2 path=ok\n"),
            "{o:?}"
        );
        assert!(!s.project.join("o2-setid").exists());
        let plain = std::fs::metadata(s.project.join("o2-plain")).unwrap();
        assert_eq!(plain.permissions().mode() & 0o7777, 0o644);
        // A session keyring of its own, the user's: not the server's.
        let owners: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("key-owner="))
            .collect();
        assert!(!owners.is_empty(), "{o:?}");
        assert!(owners.iter().all(|u| *u == NOBODY.to_string()), "{o:?}");
    });
}

/// A terminal of the client's size; a command killed by a signal reports
/// it; what cannot run gets the shell's statuses; a working directory
/// outside the project is refused before anything runs.
#[test]
#[ignore = "needs root: run through tests/run or with --include-ignored"]
fn terminals_signals_and_refusals() {
    as_root("terminals_signals_and_refusals", || {
        let s = start();
        let pty = Pty {
            term: "xterm-test".into(),
            cols: 101,
            rows: 33,
            modes: vec![],
        };
        let o = run(
            &s,
            &["sh", "-c", "tty; stty size; echo $TERM; kill -TERM $$"],
            &s.project,
            Some(pty),
            b"",
        );
        assert_eq!(
            o.exit,
            Some(ExitStatus::Signal {
                signal: "TERM".into(),
                core: false
            }),
            "{o:?}"
        );
        assert!(o.stdout.starts_with("/dev/pts/"), "{o:?}");
        assert!(
            o.stdout.contains("33 101\r\n") && o.stdout.contains("xterm-test\r\n"),
            "{o:?}"
        );

        let o = run(&s, &["no-such-command"], &s.project, None, b"");
        assert_eq!(o.exit, code(127), "{o:?}");
        assert!(
            o.stderr.contains("no-such-command: command not found"),
            "{o:?}"
        );

        let o = run(&s, &["true"], &s.project.join("missing"), None, b"");
        assert_eq!(o.exit, code(125), "{o:?}");
        assert!(o.stderr.contains("cannot enter"), "{o:?}");

        let o = run(&s, &["true"], Path::new("/etc"), None, b"");
        assert_eq!(o.exit, code(2), "{o:?}");
        assert!(o.stderr.contains("outside the project"), "{o:?}");

        // Large output arrives whole, whatever the pace of the client.
        let o = run(
            &s,
            &["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"],
            &s.project,
            None,
            b"",
        );
        assert_eq!((o.exit, o.stdout.len()), (code(0), 3_000_000));
    });
}

/// `protect-git` in a mount namespace of its own: the repositories'
/// config and hooks (the project's and a nested one) refuse writes, even
/// from root; the rest of `.git` takes them; outside the namespace nothing
/// changed. The project is a second view of a directory (as the remap is
/// of the raw share), the repositories found in the first.
#[test]
#[ignore = "needs root: run through tests/run or with --include-ignored"]
fn git_metadata_is_read_only_in_the_namespace() {
    as_root("git_metadata_is_read_only_in_the_namespace", || {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in [".git/hooks", ".git/refs", "sub/inner/.git/hooks"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        for f in [".git/config", "sub/inner/.git/config"] {
            std::fs::write(p.join(f), "[core]\n").unwrap();
        }
        let view = tempfile::tempdir().unwrap();
        const TRY: &str = r#"
mount --bind "$1" "$2" || exit 8
"$0" protect-git "$2" "$1" || exit 9
for f in .git/config .git/hooks/pre-commit sub/inner/.git/config sub/inner/.git/hooks/x .git/refs/ok; do
    if echo x >>"$2/$f" 2>/dev/null; then echo "$f=written"; else echo "$f=refused"; fi
done
"$0" protect-git --undo "$2" || exit 10
if echo x >>"$2/sub/inner/.git/config"; then echo undone; fi
"#;
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", TRY])
            .arg(env!("CARGO_BIN_EXE_llima-box-guest-agent"))
            .arg(p)
            .arg(view.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            text,
            ".git/config=refused\n.git/hooks/pre-commit=refused\nsub/inner/.git/config=refused\n\
             sub/inner/.git/hooks/x=refused\n.git/refs/ok=written\nundone\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join(".git/config")).unwrap(),
            "[core]\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("sub/inner/.git/config")).unwrap(),
            "[core]\nx\n"
        );
        assert!(!p.join(".git/hooks/pre-commit").exists());
    });
}

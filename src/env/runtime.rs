//! The protocol with the in-guest environment runtime
//! (`assets/guest/env-runtime`): the argv of every subcommand, its
//! installation, and the parsing of what it prints. Callers run these argv
//! over SSH as the guest's admin user (who has passwordless sudo).

use llima_box_proto::paths::{SOCKETS_DIR, SPARE_SOCKET};
use llima_box_proto::spawn::{Claim, EnvRequest};
use sha2::{Digest, Sha256};

use super::Error;

/// The runtime script, shipped inside the binary.
pub(crate) const RUNTIME: &str = include_str!("../../assets/guest/env-runtime");
/// Where [`install_argv`] puts it in the guest.
pub(crate) const RUNTIME_PATH: &str = "/usr/local/libexec/llima-box/env-runtime";

/// The environment name is taken by another project (a hash collision).
pub(crate) const EXIT_OTHER_PROJECT: u32 = 3;

/// sha256 of [`RUNTIME`], hex: what `env-runtime version` prints once
/// installed, and what decides whether to upgrade it.
pub(crate) fn runtime_version() -> String {
    hex::encode(Sha256::digest(RUNTIME.as_bytes()))
}

// Installs the script read on stdin when the recorded version differs (the
// version file follows the script, so a reader that sees a new version
// finds the new script).
const INSTALL_SCRIPT: &str = concat!(
    "set -eu\n",
    super::receive::receive_fn!(),
    r#"d=/usr/local/libexec/llima-box
if [ -x "$d/env-runtime" ] && [ "$(cat "$d/version" 2>/dev/null)" = "$1" ]; then
    cat >/dev/null
    exit 0
fi
receive "$d/env-runtime" "$1" "the environment runtime"
printf '%s\n' "$1" >"$d/.version.tmp"
chmod 0644 "$d/.version.tmp"
mv -f "$d/.version.tmp" "$d/version"
# Environments that already run get this runtime's guard now rather than at
# their next start; a failure stops the next start, which says why.
"$d/env-runtime" guard >/dev/null 2>&1 || true
"#
);

/// Installs or upgrades the runtime: run it with [`RUNTIME`] on stdin. Does
/// nothing (but read stdin) when the guest already has this version, so it
/// can run before every use at the cost of one round trip.
pub(crate) fn install_argv() -> Vec<String> {
    let mut argv = sudo();
    argv.extend(["sh", "-c", INSTALL_SCRIPT, "llima-box-install"].map(String::from));
    argv.push(runtime_version());
    argv
}

/// One command (or a login shell) in an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecRequest {
    pub name: String,
    /// Working directory: inside the project or the environment's home.
    pub cwd: String,
    /// When set, `(project, host uid, host gid)`: ensure the environment in
    /// the same round trip (first use, or after a VM reboot).
    pub ensure: Option<(String, u32, u32)>,
    /// Hand the SSH session's forwarded agent to the command.
    pub agent: bool,
    /// Empty: a login shell.
    pub argv: Vec<String>,
}

/// The argv for [`ExecRequest`]; its exit status is the command's, except
/// 125 when the runtime failed before running it.
pub(crate) fn exec_argv(req: &ExecRequest) -> Vec<String> {
    let mut argv = sudo();
    if req.agent {
        // The socket path is only known in the guest: sudo keeps the
        // session's variable (allowed for NOPASSWD: ALL) and the runtime
        // reads it.
        argv.push("--preserve-env=SSH_AUTH_SOCK".into());
    }
    argv.extend([RUNTIME_PATH, "exec", &req.name, &req.cwd].map(String::from));
    if let Some((project, uid, gid)) = &req.ensure {
        argv.extend([
            "--ensure".into(),
            project.clone(),
            uid.to_string(),
            gid.to_string(),
        ]);
    }
    if req.agent {
        argv.push("--agent-env".into());
    }
    argv.push("--".into());
    argv.extend(req.argv.iter().cloned());
    argv
}

/// The guest software an environment is made with: the runtime and the
/// guest agent whose `env-server` is each environment's first process (what
/// the runtime's `guest_version` prints). A spare made with other software
/// refuses to be claimed, and the host's record of what the guest has
/// (`layout::RUNTIME_STAMP`) changes with either.
pub(crate) fn guest_version(agent_sha256: &str) -> String {
    format!("{} {agent_sha256}", runtime_version())
}

/// The environment's spawn server (the guest agent's `env-server`, started
/// with its namespace): the command of `req` without sudo, the runtime or
/// sshd's session in between. When the environment does not exist yet (or
/// its server is not up), the spare environment, which becomes this one if
/// `req` says what to create it from and `guest_version` is the spare's.
pub(crate) fn spawn_target(req: &ExecRequest, guest_version: &str) -> crate::ssh::Spawn {
    let request = |claim| {
        serde_json::to_value(EnvRequest {
            cwd: req.cwd.clone(),
            argv: req.argv.clone(),
            claim,
        })
        .expect("plain data serialises")
    };
    let alternate = req.ensure.as_ref().map(|(project, uid, gid)| {
        Box::new(crate::ssh::Spawn {
            socket: SPARE_SOCKET.to_string(),
            request: request(Some(Claim {
                name: req.name.clone(),
                project: project.clone(),
                host_uid: *uid,
                host_gid: *gid,
                runtime: guest_version.to_string(),
            })),
            alternate: None,
        })
    });
    crate::ssh::Spawn {
        socket: format!("{SOCKETS_DIR}/{}.sock", req.name),
        request: request(None),
        alternate,
    }
}

/// Turns a failed runtime call (not `exec`'s command) into an error that
/// says what failed; `action` completes "failed to ...".
pub(crate) fn check_status(
    action: &'static str,
    name: &str,
    code: u32,
    stderr: &str,
) -> Result<(), Error> {
    let detail = stderr.trim().to_string();
    match code {
        0 => Ok(()),
        EXIT_OTHER_PROJECT => Err(Error::OtherProject {
            name: name.to_string(),
            detail,
        }),
        _ => Err(Error::Runtime {
            action,
            code,
            detail,
        }),
    }
}

fn sudo() -> Vec<String> {
    // -n: fail rather than wait for a password nobody can type.
    vec!["sudo".into(), "-n".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_scripts_sha256() {
        let v = runtime_version();
        assert_eq!(v.len(), 64);
        assert_eq!(v, hex::encode(Sha256::digest(RUNTIME.as_bytes())));
        assert!(RUNTIME.starts_with("#!/bin/bash\n"));
    }

    /// The embedded script at least parses; its behaviour is checked in a
    /// real guest by tests/integration/env.rs.
    #[test]
    fn runtime_script_parses() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", RUNTIME])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `program` with `args`, `stdin` as its input; stderr captured.
    fn with_stdin(program: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn a_new_environment_may_claim_the_spare() {
        let mut req = ExecRequest {
            name: "app-0123abcd".into(),
            cwd: "/p q/sub".into(),
            ensure: Some(("/p q".into(), 501, 20)),
            agent: false,
            argv: vec!["a b".into()],
        };
        let target = spawn_target(&req, "r a");
        assert_eq!(target.socket, "/run/llima-box/sock/app-0123abcd.sock");
        assert_eq!(
            target.request,
            serde_json::json!({"cwd": "/p q/sub", "argv": ["a b"]})
        );
        let spare = target.alternate.expect("a spare to claim");
        assert_eq!(spare.socket, "/run/llima-box/sock/spare.sock");
        assert_eq!(
            spare.request,
            serde_json::json!({"cwd": "/p q/sub", "argv": ["a b"], "claim": {
                "name": "app-0123abcd", "project": "/p q", "host_uid": 501,
                "host_gid": 20, "runtime": "r a"}})
        );
        // Without what to create it from, there is nothing to claim.
        req.ensure = None;
        assert!(spawn_target(&req, "r a").alternate.is_none());
    }

    #[test]
    fn exec_argv_shapes() {
        let mut req = ExecRequest {
            name: "app-0123abcd".into(),
            cwd: "/p q".into(),
            ensure: None,
            agent: false,
            argv: vec!["--".into(), "a b".into(), "".into()],
        };
        assert_eq!(
            exec_argv(&req),
            [
                "sudo",
                "-n",
                RUNTIME_PATH,
                "exec",
                "app-0123abcd",
                "/p q",
                "--",
                "--",
                "a b",
                ""
            ]
        );
        req.ensure = Some(("/p q".into(), 1000, 1001));
        req.agent = true;
        req.argv.clear();
        assert_eq!(
            exec_argv(&req),
            [
                "sudo",
                "-n",
                "--preserve-env=SSH_AUTH_SOCK",
                RUNTIME_PATH,
                "exec",
                "app-0123abcd",
                "/p q",
                "--ensure",
                "/p q",
                "1000",
                "1001",
                "--agent-env",
                "--"
            ]
        );
    }

    /// Runs the runtime's guard functions with every system command they
    /// use replaced by a stub that logs its arguments (and, for the
    /// restores, the rules on stdin) to `$T/log`, and every path in `t`.
    fn run_guard(t: &std::path::Path, calls: &str) -> std::process::Output {
        let section = |from: &str, to: &str| {
            let start = RUNTIME.find(from).expect(from);
            &RUNTIME[start..start + RUNTIME[start..].find(to).expect(to)]
        };
        let harness = format!(
            r#"set -eEuo pipefail
T=$1
SELF=$T/libexec/env-runtime STATE=$T/state LOCKS=$T/state/locks
GUARD_MARK=$T/run/guard SSHD_DROPIN=$T/ssh/sshd_config.d/00-llima-box.conf
FW_CHAIN=LLIMA-BOX-ENV ENV_UID_RANGES='70000-99999 60001-64999' SLIRP_GATEWAY=192.168.5.2
SLIRP_DNS=192.168.5.3 RESOLV_CONF=$T/resolv.conf IF_INET6=$T/if_inet6
RESOLVED_UPSTREAM=$T/upstream.conf IP_FORWARD=$T/ip_forward ENV_NET=100.64.0.0/10
VETH_PREFIX=lbx FW_FORWARD=LLIMA-BOX-FWD FW_INPUT=LLIMA-BOX-IN FW_NAT=LLIMA-BOX-NAT
die() {{ echo "die $*" >>"$T/log"; exit "$1"; }}
id() {{ echo alice; }}
# What sshd makes of the configuration: the drop-in is read.
sshd() {{ sed -n 's/^AllowUsers /allowusers /p' "$SSHD_DROPIN"; }}
systemctl() {{ echo "systemctl $*" >>"$T/log"; }}
iptables-restore() {{ echo "iptables-restore $*" >>"$T/log"; cat >>"$T/log"; }}
ip6tables-restore() {{ echo "ip6tables-restore $*" >>"$T/log"; cat >>"$T/log"; }}
# -C finds a jump only once -I inserted it (at position 1).
fw() {{
    local tool=$1 key
    shift
    echo "$tool $*" >>"$T/log"
    key=$(printf '%s_' "$@" | sed 's/-[CI]_//; s/_1_/_/')
    case " $* " in
    *" -C "*) [ -e "$T/$tool$key" ] ;;
    *" -I "*) touch "$T/$tool$key" ;;
    esac
}}
iptables() {{ fw iptables "$@"; }}
ip6tables() {{ fw ip6tables "$@"; }}
{}
{}
{}
{calls}
"#,
            section("\nmake_dirs() {", "\nread_file() {"),
            section("\nenv_nameservers() {", "\n# The next uid to give out"),
            section("\nensure_guard() {", "\ncmd_guard() {"),
        );
        std::process::Command::new("bash")
            .args(["-c", &harness, "harness"])
            .arg(t)
            .output()
            .unwrap()
    }

    /// The guard lets only the admin into sshd and firewalls the
    /// environments' uids away from the host, link-local and private
    /// addresses but for DNS; it does its work once per boot and version,
    /// and again (without reloading sshd) when forced.
    #[test]
    fn guard_writes_sshd_config_and_firewall_rules() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for d in ["libexec", "ssh", "run"] {
            std::fs::create_dir(t.join(d)).unwrap();
        }
        std::fs::write(t.join("libexec/version"), "v1\n").unwrap();
        std::fs::write(
            t.join("resolv.conf"),
            "# generated\nnameserver 10.0.0.2\nnameserver fd00::53\nsearch lan\n",
        )
        .unwrap();
        std::fs::write(t.join("if_inet6"), "").unwrap();
        let log = || std::fs::read_to_string(t.join("log")).unwrap_or_default();

        let out = run_guard(t, "ensure_guard 1000");
        assert!(out.status.success(), "{out:?}\n{}", log());
        assert_eq!(
            std::fs::read_to_string(t.join("ssh/sshd_config.d/00-llima-box.conf")).unwrap(),
            "# Written by llima-box: only the admin user may log in, never an environment\n\
             # user (uids 70000-99999 60001-64999). Read before the other files of this directory.\n\
             AllowUsers alice\n"
        );
        assert_eq!(
            log(),
            "systemctl try-reload-or-restart ssh.service\n\
             iptables-restore -w --noflush\n\
             *filter\n\
             :LLIMA-BOX-ENV - [0:0]\n\
             -A LLIMA-BOX-ENV -d 192.168.5.3/32 -p udp --dport 53 -j RETURN\n\
             -A LLIMA-BOX-ENV -d 192.168.5.3/32 -p tcp --dport 53 -j RETURN\n\
             -A LLIMA-BOX-ENV -d 10.0.0.2/32 -p udp --dport 53 -j RETURN\n\
             -A LLIMA-BOX-ENV -d 10.0.0.2/32 -p tcp --dport 53 -j RETURN\n\
             -A LLIMA-BOX-ENV -p tcp --dport 22 -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset\n\
             -A LLIMA-BOX-ENV -d 192.168.5.2/32 -j REJECT --reject-with icmp-admin-prohibited\n\
             -A LLIMA-BOX-ENV -d 169.254.0.0/16 -j REJECT --reject-with icmp-admin-prohibited\n\
             -A LLIMA-BOX-ENV -d 10.0.0.0/8 -j REJECT --reject-with icmp-admin-prohibited\n\
             -A LLIMA-BOX-ENV -d 172.16.0.0/12 -j REJECT --reject-with icmp-admin-prohibited\n\
             -A LLIMA-BOX-ENV -d 192.168.0.0/16 -j REJECT --reject-with icmp-admin-prohibited\n\
             -A LLIMA-BOX-ENV -d 100.64.0.0/10 -j REJECT --reject-with icmp-admin-prohibited\n\
             :LLIMA-BOX-FWD - [0:0]\n\
             -A LLIMA-BOX-FWD -i lbx+ -j LLIMA-BOX-ENV\n\
             -A LLIMA-BOX-FWD -i lbx+ -j ACCEPT\n\
             -A LLIMA-BOX-FWD -o lbx+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             :LLIMA-BOX-IN - [0:0]\n\
             -A LLIMA-BOX-IN -i lbx+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A LLIMA-BOX-IN -i lbx+ -j REJECT --reject-with icmp-admin-prohibited\n\
             COMMIT\n\
             *nat\n\
             :LLIMA-BOX-NAT - [0:0]\n\
             -A LLIMA-BOX-NAT -s 100.64.0.0/10 ! -d 100.64.0.0/10 -j MASQUERADE\n\
             COMMIT\n\
             iptables -w -C OUTPUT -m owner --uid-owner 70000-99999 -j LLIMA-BOX-ENV\n\
             iptables -w -I OUTPUT 1 -m owner --uid-owner 70000-99999 -j LLIMA-BOX-ENV\n\
             iptables -w -C OUTPUT -m owner --uid-owner 60001-64999 -j LLIMA-BOX-ENV\n\
             iptables -w -I OUTPUT 1 -m owner --uid-owner 60001-64999 -j LLIMA-BOX-ENV\n\
             iptables -w -t filter -C FORWARD -j LLIMA-BOX-FWD\n\
             iptables -w -t filter -I FORWARD 1 -j LLIMA-BOX-FWD\n\
             iptables -w -t filter -C INPUT -j LLIMA-BOX-IN\n\
             iptables -w -t filter -I INPUT 1 -j LLIMA-BOX-IN\n\
             iptables -w -t nat -C POSTROUTING -j LLIMA-BOX-NAT\n\
             iptables -w -t nat -I POSTROUTING 1 -j LLIMA-BOX-NAT\n\
             ip6tables-restore -w --noflush\n\
             *filter\n\
             :LLIMA-BOX-ENV - [0:0]\n\
             -A LLIMA-BOX-ENV -d fd00::53/128 -p udp --dport 53 -j RETURN\n\
             -A LLIMA-BOX-ENV -d fd00::53/128 -p tcp --dport 53 -j RETURN\n\
             -A LLIMA-BOX-ENV -p tcp --dport 22 -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset\n\
             -A LLIMA-BOX-ENV -d fe80::/10 -j REJECT --reject-with icmp6-adm-prohibited\n\
             -A LLIMA-BOX-ENV -d fc00::/7 -j REJECT --reject-with icmp6-adm-prohibited\n\
             -A LLIMA-BOX-ENV -d fec0::/10 -j REJECT --reject-with icmp6-adm-prohibited\n\
             COMMIT\n\
             ip6tables -w -C OUTPUT -m owner --uid-owner 70000-99999 -j LLIMA-BOX-ENV\n\
             ip6tables -w -I OUTPUT 1 -m owner --uid-owner 70000-99999 -j LLIMA-BOX-ENV\n\
             ip6tables -w -C OUTPUT -m owner --uid-owner 60001-64999 -j LLIMA-BOX-ENV\n\
             ip6tables -w -I OUTPUT 1 -m owner --uid-owner 60001-64999 -j LLIMA-BOX-ENV\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.join("run/guard")).unwrap(),
            "v1 1000\n"
        );
        // The environments' namespaces reach out through the guest.
        assert_eq!(
            std::fs::read_to_string(t.join("ip_forward")).unwrap(),
            "1\n"
        );

        // Done for this boot and version: nothing runs.
        std::fs::remove_file(t.join("log")).unwrap();
        assert!(run_guard(t, "ensure_guard 1000").status.success());
        assert_eq!(log(), "");

        // Forced (after an upgrade): the rules again, the jump found,
        // sshd left alone since its file is unchanged.
        let out = run_guard(t, "ensure_guard 1000 force");
        assert!(out.status.success(), "{out:?}\n{}", log());
        let log_text = log();
        assert!(!log_text.contains("systemctl"), "{log_text}");
        assert!(!log_text.contains(" -I "), "{log_text}");
        assert_eq!(log_text.matches("-restore -w --noflush").count(), 2);

        // Without IPv6 there are no IPv6 rules; root is no admin.
        std::fs::remove_file(t.join("log")).unwrap();
        std::fs::remove_file(t.join("if_inet6")).unwrap();
        assert!(run_guard(t, "guard_firewall").status.success());
        assert!(!log().contains("ip6tables"), "{}", log());
        assert!(!run_guard(t, "guard_sshd 0").status.success());
        assert!(log().contains("die 125 cannot tell the VM's admin user"));
    }

    /// Runs the runtime's `from`..`to` section with `calls` after it.
    fn run_section(from: &str, to: &str, vars: &str, calls: &str) -> String {
        let start = RUNTIME.find(from).expect(from);
        let len = RUNTIME[start..].find(to).expect(to);
        let out = std::process::Command::new("bash")
            .args([
                "-c",
                &format!(
                    "set -eEuo pipefail\n{vars}\n{}\n{calls}",
                    &RUNTIME[start..start + len]
                ),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Each environment user (of either range) gets a /31 of its own in
    /// the shared address space, and a veth name within IFNAMSIZ.
    #[test]
    fn each_uid_has_its_own_network() {
        let got = run_section(
            "\nenv_net() {",
            "\n# Joins the network namespace",
            "UID_MIN=70000 UID_MAX=99999 VETH_PREFIX=lbx",
            "for u in 70000 70001 99999 60001 64999; do env_net $u; echo $VETH $HOST_ADDR $ENV_ADDR; done",
        );
        assert_eq!(
            got,
            "lbx0 100.64.0.0 100.64.0.1\n\
             lbx1 100.64.0.2 100.64.0.3\n\
             lbx29999 100.64.234.94 100.64.234.95\n\
             lbx30000 100.64.234.96 100.64.234.97\n\
             lbx34998 100.65.17.108 100.65.17.109\n"
        );
    }

    /// Memory and tmpfs limits are shares of the guest's memory.
    #[test]
    fn limits_follow_the_guests_memory() {
        let dir = tempfile::tempdir().unwrap();
        let meminfo = dir.path().join("meminfo");
        std::fs::write(&meminfo, "MemTotal:        2000000 kB\nMemFree: 5 kB\n").unwrap();
        let vars = format!(
            "MEMORY_PERCENT=50 TMPFS_PERCENT=25 MEMINFO='{}'",
            meminfo.display()
        );
        let got = run_section(
            "\nenv_limits() {",
            "\n# Sets NAMESERVERS",
            &vars,
            "env_limits; echo $MEMORY_MAX $TMPFS_SIZE",
        );
        assert_eq!(got, "1000000 500000\n");
    }

    /// Environments cannot reach a resolver on the guest's loopback: they
    /// get what it forwards to, else QEMU's, and their own resolv.conf then.
    #[test]
    fn environments_get_resolvers_they_can_reach() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, upstream) = (dir.path().join("resolv.conf"), dir.path().join("upstream"));
        let vars = format!(
            "SLIRP_DNS=192.168.5.3 RESOLV_CONF='{}' RESOLVED_UPSTREAM='{}'",
            conf.display(),
            upstream.display()
        );
        let run = || {
            run_section(
                "\nenv_nameservers() {",
                "\n# The next uid to give out",
                &vars,
                r#"env_nameservers; echo "${NAMESERVERS[*]} own=$OWN_RESOLV_CONF""#,
            )
        };
        std::fs::write(
            &conf,
            "search lan\nnameserver 10.0.0.2\nnameserver fd00::1\n",
        )
        .unwrap();
        assert_eq!(run(), "10.0.0.2 fd00::1 own=\n");
        std::fs::write(&conf, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        assert_eq!(run(), "192.168.5.3 own=1\n", "no upstream list");
        std::fs::write(&upstream, "nameserver 10.1.1.1\n").unwrap();
        assert_eq!(run(), "10.1.1.1 own=1\n");
        std::fs::write(&conf, "").unwrap();
        assert_eq!(run(), "192.168.5.3 own=1\n", "none at all");
    }

    /// `next_uid` never gives a uid twice: past the last one recorded, past
    /// every uid and gid of the range in use, never below the range, and an
    /// error once the range is used up.
    #[test]
    fn next_uid_never_reuses() {
        let start = RUNTIME.find("\nnext_uid() {").expect("next_uid");
        let end = RUNTIME
            .find("\n# Creates the user NAME")
            .expect("ensure_user");
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let run = |passwd: &str, group: &str, last: Option<&str>| {
            std::fs::write(t.join("passwd"), passwd).unwrap();
            std::fs::write(t.join("group"), group).unwrap();
            match last {
                Some(l) => std::fs::write(t.join("last"), l).unwrap(),
                None => drop(std::fs::remove_file(t.join("last"))),
            }
            let harness = format!(
                "set -eu\nT=$1 UID_MIN=70000 UID_MAX=70005 LAST_UID=$1/last\n\
                 PASSWD_FILE=$1/passwd GROUP_FILE=$1/group\n\
                 read_file() {{ local v; v=$(<\"$1\") && printf '%s' \"$v\"; }}\n\
                 die() {{ echo \"die $*\"; exit \"$1\"; }}\n{}\nnext_uid",
                &RUNTIME[start..end]
            );
            let out = std::process::Command::new("bash")
                .args(["-c", &harness, "harness"])
                .arg(t)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let root = "root:x:0:0::/root:/bin/sh\n";
        assert_eq!(run(root, "root:x:0:\n", None), "70000");
        // A deleted environment's uid stays given out.
        assert_eq!(run(root, "root:x:0:\n", Some("70002\n")), "70003");
        // Users and groups in the range count even without the record;
        // legacy and foreign uids do not.
        let passwd = format!("{root}old:x:60001:60001::/:/bin/sh\na:x:70001:70001::/:/bin/sh\n");
        assert_eq!(run(&passwd, "g:x:70003:\n", None), "70004");
        assert_eq!(run(&passwd, "g:x:70003:\n", Some("garbage")), "70004");
        assert!(run(root, "", Some("70005")).starts_with("die 125 no environment uids left"));
    }

    const GUARD_LINE: &str = "\"$d/env-runtime\" guard >/dev/null 2>&1 || true\n";

    /// The install script for real, with sudo and the install directory
    /// swapped for a temporary one: installs, skips when current, refuses a
    /// damaged upload and keeps the old runtime then.
    #[test]
    fn install_script_installs_skips_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("libexec");
        let script = INSTALL_SCRIPT
            .replace(
                "d=/usr/local/libexec/llima-box",
                &format!("d='{}'", d.display()),
            )
            // The guard changes the system's sshd and firewall.
            .replace(GUARD_LINE, "");
        assert!(!script.contains("env-runtime\" guard"), "{script}");
        let run = |stdin: &str, version: &str| {
            with_stdin("sh", &["-c", &script, "install", version], stdin.as_bytes())
        };
        let v = runtime_version();
        assert!(run(RUNTIME, &v).status.success());
        assert_eq!(
            std::fs::read_to_string(d.join("env-runtime")).unwrap(),
            RUNTIME
        );
        assert_eq!(
            std::fs::read_to_string(d.join("version")).unwrap(),
            format!("{v}\n")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("env-runtime"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        // Current: stdin is ignored, nothing changes.
        assert!(run("garbage", &v).status.success());
        assert_eq!(
            std::fs::read_to_string(d.join("env-runtime")).unwrap(),
            RUNTIME
        );

        // A new version whose bytes do not match is refused.
        let out = run("truncated", &"0".repeat(64));
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
        assert_eq!(
            std::fs::read_to_string(d.join("env-runtime")).unwrap(),
            RUNTIME
        );
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn status_codes_become_errors() {
        assert!(check_status("create the environment", "a", 0, "").is_ok());
        let e = check_status(
            "create the environment",
            "a",
            EXIT_OTHER_PROJECT,
            "belongs to /x\n",
        )
        .unwrap_err();
        assert!(matches!(e, Error::OtherProject { .. }));
        assert!(e.to_string().contains("belongs to /x"));
        let e = check_status("delete the environment", "a", 125, "boom").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the environment runtime failed to delete the environment (exit status 125): boom"
        );
    }
}

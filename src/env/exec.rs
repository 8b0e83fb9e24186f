//! A command in an environment, as the host asks for it: through the
//! environment's spawn server (or the spare that becomes it), else through
//! an SSH session running the guest agent's `env-run` (as root, through
//! sudo), which creates the environment or starts its holder again first.

use llima_box_proto::paths::{AGENT_PATH, SOCKETS_DIR, SPARE_SOCKET};
use llima_box_proto::settings::Settings;
use llima_box_proto::spawn::{Claim, EnvRequest};

/// One command (or a login shell) in an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecRequest {
    pub name: String,
    /// Working directory: inside the project or the environment's home.
    pub cwd: String,
    /// When set, `(project, host uid, host gid)`: ensure the environment in
    /// the same round trip (first use, or after a VM reboot).
    pub ensure: Option<(String, u32, u32)>,
    /// The project's own settings, recorded with the environment whenever
    /// `env-run` ensures it. An environment with other settings than the
    /// defaults is always made the long way, which applies them; a spare
    /// has the defaults.
    pub settings: Settings,
    /// The project's repositories, for a spare it claims (see [`Claim`]).
    pub repositories: Option<Vec<String>>,
    /// Hand the SSH session's forwarded agent to the command.
    pub agent: bool,
    /// Empty: a login shell.
    pub argv: Vec<String>,
}

/// The argv for [`ExecRequest`]; its exit status is the command's, except
/// 2 (bad usage), 3 (the name belongs to another project) and 125 when
/// `env-run` failed before running it.
pub(crate) fn exec_argv(req: &ExecRequest) -> Vec<String> {
    // -n: fail rather than wait for a password nobody can type.
    let mut argv = vec!["sudo".to_string(), "-n".to_string()];
    if req.agent {
        // The socket path is only known in the guest: sudo keeps the
        // session's variable (allowed for NOPASSWD: ALL) and env-run reads it.
        argv.push("--preserve-env=SSH_AUTH_SOCK".into());
    }
    argv.extend([AGENT_PATH, "env-run", &req.name, &req.cwd].map(String::from));
    if let Some((project, uid, gid)) = &req.ensure {
        argv.extend([
            "--ensure".into(),
            project.clone(),
            uid.to_string(),
            gid.to_string(),
        ]);
    }
    if req.ensure.is_some() {
        let json = serde_json::to_string(&req.settings).expect("settings serialise");
        argv.extend(["--settings".into(), json]);
    }
    if req.agent {
        argv.push("--agent-env".into());
    }
    argv.push("--".into());
    argv.extend(req.argv.iter().cloned());
    argv
}

/// The environment's spawn server (the guest agent's `env-server`, started
/// with its namespace): the command of `req` without sudo, `env-run` or
/// sshd's session in between. When the environment does not exist yet (or
/// its server is not up), the spare environment, which becomes this one if
/// `req` says what to create it from and `agent_sha256` is the agent that
/// made the spare.
pub(crate) fn spawn_target(req: &ExecRequest, agent_sha256: &str) -> crate::ssh::Spawn {
    let request = |claim| {
        serde_json::to_value(EnvRequest {
            cwd: req.cwd.clone(),
            argv: req.argv.clone(),
            claim,
        })
        .expect("plain data serialises")
    };
    let claimable = req
        .ensure
        .as_ref()
        .filter(|_| req.settings == Settings::default());
    let alternate = claimable.map(|(project, uid, gid)| {
        Box::new(crate::ssh::Spawn {
            socket: SPARE_SOCKET.to_string(),
            request: request(Some(Claim {
                name: req.name.clone(),
                project: project.clone(),
                host_uid: *uid,
                host_gid: *gid,
                version: agent_sha256.to_string(),
                repositories: req.repositories.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_environment_may_claim_the_spare() {
        let mut req = ExecRequest {
            name: "app-0123abcd".into(),
            cwd: "/p q/sub".into(),
            ensure: Some(("/p q".into(), 501, 20)),
            settings: Settings::default(),
            repositories: Some(vec![".git".into(), "sub/.git".into()]),
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
                "host_gid": 20, "version": "r a", "repositories": [".git", "sub/.git"]}})
        );
        // A project with settings of its own is made the long way.
        req.settings = Settings {
            tasks_max: Some(100),
            ..Default::default()
        };
        assert!(spawn_target(&req, "r a").alternate.is_none());
        // Without what to create it from, there is nothing to claim.
        req.settings = Settings::default();
        req.ensure = None;
        assert!(spawn_target(&req, "r a").alternate.is_none());
    }

    #[test]
    fn exec_argv_shapes() {
        let mut req = ExecRequest {
            name: "app-0123abcd".into(),
            cwd: "/p q".into(),
            ensure: None,
            settings: Settings::default(),
            repositories: None,
            agent: false,
            argv: vec!["--".into(), "a b".into(), "".into()],
        };
        assert_eq!(
            exec_argv(&req),
            [
                "sudo",
                "-n",
                AGENT_PATH,
                "env-run",
                "app-0123abcd",
                "/p q",
                "--",
                "--",
                "a b",
                ""
            ]
        );
        req.ensure = Some(("/p q".into(), 1000, 1001));
        req.settings = Settings {
            git_writes: true,
            ..Default::default()
        };
        req.agent = true;
        req.argv.clear();
        assert_eq!(
            exec_argv(&req),
            [
                "sudo",
                "-n",
                "--preserve-env=SSH_AUTH_SOCK",
                AGENT_PATH,
                "env-run",
                "app-0123abcd",
                "/p q",
                "--ensure",
                "/p q",
                "1000",
                "1001",
                "--settings",
                r#"{"gitWrites":true}"#,
                "--agent-env",
                "--"
            ]
        );
    }
}

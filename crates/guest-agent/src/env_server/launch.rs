//! What an environment's command is: its user, its working directory (in
//! the project or the home), its environment and the forwarded agent;
//! claiming the spare first when the header says so.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;

use llima_box_proto::spawn::{EnvRequest, Header};

use super::child::{self, Command, Prepared};
use super::reaper::Reaper;
use super::session::{Claimed, Launch, Launcher, forwarded_agent};
use super::{Server, claim, within};

impl Launcher for Server {
    fn launch(&'static self, payload: &[u8], claimed: &mut Claimed) -> Result<Launch, String> {
        let header: Header<EnvRequest> =
            serde_json::from_slice(payload).map_err(|e| format!("unreadable header: {e}"))?;
        if let Some(c) = &header.request.claim {
            let completion = claim::claim(self, c)?;
            claimed.accepted = true;
            if let Some(completion) = completion {
                claimed.rest = Some(Box::new(move || completion.complete(self)));
            }
        }
        let (name, home, project, groups) = {
            let id = self.identity.lock().unwrap_or_else(|e| e.into_inner());
            (
                id.name.clone(),
                id.home(),
                id.project.clone(),
                id.groups.clone(),
            )
        };
        let project = project.ok_or("this spare serves no project yet")?;
        let cwd = &header.request.cwd;
        if !(within(cwd, &project) || within(cwd, &home)) || format!("{cwd}/").contains("/../") {
            return Err(format!(
                "working directory {cwd:?} is outside the project {project:?} and {home}"
            ));
        }
        let term = super::session::terminal_type(&header.env, header.pty.as_ref());
        let mut env = child::user_env(&name, self.config.uid, &header.env, term);
        if let Some(agent) = &header.agent {
            // Only this command's namespace will show it.
            forwarded_agent(agent)?;
            std::fs::set_permissions(agent, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("cannot open the agent socket to the command: {e}"))?;
            env.push(("SSH_AUTH_SOCK".into(), child::AGENT_SOCKET_PATH.into()));
        }
        let login = child::login_shell();
        let argv = if header.request.argv.is_empty() {
            &login[..]
        } else {
            &header.request.argv[..]
        };
        let prepared = Prepared::new(&Command {
            argv,
            env: &env,
            cwd,
            uid: self.config.uid,
            gid: self.config.gid,
            groups: &groups,
            agent: header.agent.as_deref(),
            sandboxed: true,
            umask: None,
        })?;
        // SAFETY: a valid directory descriptor and name; NULL times: now.
        unsafe {
            libc::utimensat(
                self.dirs.env.as_raw_fd(),
                c"last_used".as_ptr(),
                std::ptr::null(),
                0,
            )
        };
        Ok(Launch::of(prepared, header))
    }

    fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// What the command wrote to the project reaches the host before its
    /// exit status does (see [`super::nine_p_shares`]).
    fn settle(&self) {
        for share in &self.nine_p {
            // SAFETY: a descriptor this server owns.
            unsafe { libc::syncfs(share.as_raw_fd()) };
        }
    }
}

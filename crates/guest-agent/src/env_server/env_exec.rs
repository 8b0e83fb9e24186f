//! One command started outside the spawn server (`env-run`, once inside
//! the environment's namespaces): it becomes the environment's user and the
//! command, on the SSH session's own stdio and terminal, just as the
//! server's children do.

use llima_box_proto::paths::is_env_uid;

use super::child::{self, Command, Prepared, Stdio};
use crate::accounts;

/// The command, ready to fork: `exec` in the child, then
/// `Prepared::supervise_until` in the parent.
pub fn prepare(
    name: &str,
    cwd: &str,
    agent: Option<&str>,
    vars: &[(String, String)],
    argv: &[String],
) -> Result<Prepared, String> {
    let (passwd, group) =
        accounts::local_files().map_err(|e| format!("cannot read the accounts: {e}"))?;
    let Some(user) = accounts::users(&passwd).find(|u| u.name == name) else {
        return Err(format!("no user {name} in this environment"));
    };
    if !is_env_uid(user.uid) {
        return Err(format!("{name} is not an environment's user"));
    }
    // TERM, if any, is among the variables passed on.
    let env = child::user_env(name, user.uid, vars, None);
    let login = child::login_shell();
    let argv = if argv.is_empty() { &login[..] } else { argv };
    Prepared::new(&Command {
        argv,
        env: &env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        groups: &accounts::groups_of(&group, name, user.gid),
        agent,
        sandboxed: true,
        umask: None,
    })
}

/// In the forked child: becomes the command; returns only why it could not.
pub fn exec(prepared: &Prepared) -> String {
    // As the server's commands inherit it from the server.
    if let Err(e) = super::drop_bounding_set() {
        return format!("cannot drop the capability bounding set: {e}");
    }
    // SAFETY: this process has one thread; exec replaces it.
    unsafe { prepared.exec(&Stdio::Inherited) }
}

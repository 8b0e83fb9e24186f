//! One command started outside the spawn server: the runtime's way when
//! the server is not there yet (the first use after a VM boot, or without
//! the host agent). The runtime enters the environment's namespaces as
//! root and execs `env-exec`, which becomes the environment's user and the
//! command, on the SSH session's own stdio and terminal, just as the
//! server's children do.
//!
//! `env-exec NAME CWD AGENT [VAR=VALUE...] -- [ARGV...]`: AGENT is the
//! path of the session's forwarded agent socket as seen in the namespace,
//! or empty; the variables are the client's, of which the terminal and
//! locale ones are passed on; no ARGV is a login shell.

use llima_box_proto::paths::is_env_uid;

use super::child::{self, Command, Prepared, Stdio};
use crate::accounts;

pub const USAGE: &str = "env-exec NAME CWD AGENT [VAR=VALUE...] -- [ARGV...]";

/// The parts of the arguments: name, cwd, agent, variables, argv.
type Args<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Vec<(String, String)>,
    &'a [String],
);

fn parse(args: &[String]) -> Option<Args<'_>> {
    let [name, cwd, agent, rest @ ..] = args else {
        return None;
    };
    let dash = rest.iter().position(|a| a == "--")?;
    let vars = rest[..dash]
        .iter()
        .map(|v| {
            let (k, v) = v.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    let agent = (!agent.is_empty()).then_some(agent.as_str());
    Some((name, cwd, agent, vars, &rest[dash + 1..]))
}

/// Becomes the command; returns only why it could not.
pub fn run(args: &[String]) -> String {
    let Some((name, cwd, agent, vars, argv)) = parse(args) else {
        return format!("usage: {USAGE}");
    };
    let (passwd, group) = match accounts::local_files() {
        Ok(files) => files,
        Err(e) => return format!("cannot read the accounts: {e}"),
    };
    let Some(user) = accounts::users(&passwd).find(|u| u.name == name) else {
        return format!("no user {name} in this environment");
    };
    if !is_env_uid(user.uid) {
        return format!("{name} is not an environment's user");
    }
    // TERM, if any, is among the variables passed on.
    let env = child::user_env(name, user.uid, &vars, None);
    let login = child::login_shell();
    let argv = if argv.is_empty() { &login[..] } else { argv };
    let prepared = match Prepared::new(&Command {
        argv,
        env: &env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        groups: &accounts::groups_of(&group, name, user.gid),
        agent,
        sandboxed: true,
    }) {
        Ok(p) => p,
        Err(e) => return e,
    };
    // As the server's commands inherit it from the server.
    if let Err(e) = super::drop_bounding_set() {
        return format!("cannot drop the capability bounding set: {e}");
    }
    // SAFETY: this process has one thread; exec replaces it.
    unsafe { prepared.exec(&Stdio::Inherited) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_variables_then_the_command() {
        let a = args(&[
            "app",
            "/p",
            "",
            "TERM=xterm",
            "LANG=C.UTF-8",
            "--",
            "ls",
            "--",
            "x",
        ]);
        let (name, cwd, agent, vars, argv) = parse(&a).unwrap();
        assert_eq!((name, cwd, agent), ("app", "/p", None));
        assert_eq!(vars[0], ("TERM".to_string(), "xterm".to_string()));
        assert_eq!(argv, ["ls", "--", "x"]);
        let a = args(&["app", "/p", "/s/a.sock", "--"]);
        let (_, _, agent, vars, argv) = parse(&a).unwrap();
        assert_eq!((agent, vars.len(), argv.len()), (Some("/s/a.sock"), 0, 0));
        assert!(parse(&args(&["app", "/p", "", "ls"])).is_none());
        assert!(parse(&args(&["app", "/p", "", "NOVALUE", "--", "ls"])).is_none());
        assert!(parse(&args(&["app", "/p"])).is_none());
    }
}

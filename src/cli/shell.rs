//! `llima-box shell [PATH] [-- CMD ARGS...]`: a login shell or one command
//! in the project's environment, as the environment's user, in the project.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::Output;
use super::args::ShellArgs;
use super::output::printable;
use super::vm_shell::{agent_socket, block_on, exit_code, run_attached};
use crate::env;
use crate::ssh;
use crate::timeouts;
use crate::vm::access::{self, AccessError};

pub(super) fn run(
    lima_home: &Path,
    instance: &str,
    args: &ShellArgs,
    out: &Output,
) -> Result<ExitCode> {
    let path = logical_path(args.path.as_deref())?;
    let project = env::canonical_project(&path)?;
    if !args.force {
        check_selection(&path, &project, lima_home)?;
    }
    // Before anything can reach the project: what the shell changes in
    // its repositories is reported after it, whatever becomes of it.
    let git_before = env::GitSnapshot::take(&project);
    let dir = lima_home.join(instance);
    // Refused before anything boots.
    let guest_project = env::guest_path(&dir, lima_home, &project)?;
    let agent = agent_socket(args.no_agent);
    // What the guest needs, found (or refused) before anything boots.
    let prepared = env::Prepared::new(
        &dir,
        &project,
        &guest_project,
        &args.command,
        agent.is_some(),
        git_before.repositories(&project),
    )?;
    let opts = match access::connect_options(
        lima_home,
        instance,
        timeouts::SSH_DEADLINE.get()?,
        agent.clone(),
    ) {
        Ok((opts, _)) => opts,
        Err(AccessError::NotRunning { .. } | AccessError::NotFound { .. }) => {
            super::vm_start::start(lima_home, instance, None, out)?;
            access::connect_options(lima_home, instance, timeouts::SSH_DEADLINE.get()?, agent)?.0
        }
        Err(e) => return Err(e.into()),
    };
    // The VM runs now: the host agent can listen for them.
    let _published = super::ports::ShellPorts::publish(&dir, &project, &args.publish, out)?;
    out.debug(&format!(
        "ssh {}@{}: spawn server {}, else: {}",
        opts.user, opts.addr, prepared.spawn.socket, prepared.script
    ));
    let pty = ssh::stdin_is_tty();
    let result = block_on(async {
        if !prepared.guest_is_current(&dir) {
            let session = prepared.install(&dir, opts).await?;
            // Use this connection rather than open another.
            return anyhow::Ok(
                session
                    .run_interactive_or_piped(&prepared.script, pty)
                    .await,
            );
        }
        let spawn = Some(prepared.spawn.clone());
        Ok(run_attached(&dir, opts, &prepared.script, spawn, pty, out).await)
    });
    warn_git_changes(&project, &git_before, out);
    let result = result??;
    // The exit status is the command's. env-run's own failures (bad usage
    // 2, a name taken by another project 3, anything else 125) use statuses
    // that commands use too, so they cannot be told apart here; it prints
    // its diagnosis ("llima-box-guest-agent env-run: ...") on the same
    // stderr, which is what tells the user.
    Ok(exit_code(result, out))
}

/// Warns about what the shell left in the project's repositories that
/// the user's next git command would run (see [`env::GitSnapshot`]).
fn warn_git_changes(project: &Path, before: &env::GitSnapshot, out: &Output) {
    for warning in git_warnings(
        project,
        &env::GitSnapshot::take(project).changes_since(before),
    ) {
        out.warn(&warning);
    }
}

/// One warning per change, each a line saying what changed and one
/// saying what to do; nothing from the project reaches the terminal
/// unescaped.
fn git_warnings(project: &Path, changes: &[env::GitChange]) -> Vec<String> {
    let shown = |p: &Path| printable(&p.to_string_lossy());
    // For commands to copy: quoted for the shell (a NUL cannot be there,
    // `printable` escaped it).
    let quoted = |s: &str| {
        let s = printable(s);
        shlex::try_quote(&s).map_or(s.clone(), |q| q.into_owned())
    };
    changes
        .iter()
        .map(|change| match change {
            env::GitChange::Key {
                file,
                key,
                value,
                why,
            } => {
                let entry = match value {
                    Some(v) => format!("{} = {}", printable(key), printable(v)),
                    None => format!("{} (no value)", printable(key)),
                };
                // `--no-pager`: `git config --list` starts the configured
                // pager, which may be the planted program.
                let config = format!(
                    "git --no-pager config --file {}",
                    quoted(&file.to_string_lossy())
                );
                format!(
                    "{} now has {entry} ({why})\n  \
                     if you did not set it: review the file with `{config} --list` and remove the entry with `{config} --unset-all {}`",
                    shown(file),
                    quoted(key)
                )
            }
            env::GitChange::Hook { path } => format!(
                "{} is a new or changed git hook, which git on this host would run\n  \
                 if you did not put it there: read it, and remove it with `rm {}`",
                shown(path),
                quoted(&path.to_string_lossy())
            ),
            env::GitChange::Unchecked { file, reason } => format!(
                "{} changed and cannot be checked for programs git would run: {}\n  \
                 read it (not with git) before running git in that repository",
                shown(file),
                printable(reason)
            ),
            env::GitChange::Incomplete => format!(
                "{} holds too many directories to look through for git repositories; \
                 nested ones were not all checked for settings that run programs\n  \
                 check the repositories you use there before running git in them",
                shown(project)
            ),
        })
        .collect()
}

/// The project directory as the user named it: `PATH` made absolute
/// against the logical working directory, or that directory itself (the
/// shell's `$PWD`, when it is where we are, keeps the symlinks it went
/// through; `getcwd` has none).
fn logical_path(arg: Option<&Path>) -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let logical_cwd = std::env::var_os("PWD")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && std::fs::canonicalize(p).ok().as_ref() == Some(&cwd))
        .unwrap_or(cwd);
    Ok(match arg {
        Some(p) => env::selection::normalise(&logical_cwd.join(p)),
        None => logical_cwd,
    })
}

/// Refuses a project that would expose the home, keys or the VM's files;
/// asks (on a terminal) before using a directory reached through a symlink.
fn check_selection(logical: &Path, project: &Path, lima_home: &Path) -> Result<()> {
    let home = dirs::home_dir().context("cannot locate the home directory")?;
    let cx = env::selection::Context {
        home: &home,
        lima_home,
    };
    let env::selection::Selection::ThroughSymlink { logical } =
        env::selection::check(logical, project, &cx)?
    else {
        return Ok(());
    };
    let what = format!(
        "{} leads through a symlink to {}",
        logical.display(),
        project.display()
    );
    if !std::io::stdin().is_terminal() {
        bail!(
            "{what}; refusing without a terminal to ask on (an agent may have planted the link): give the real path, or pass --force"
        );
    }
    if !super::prompt::ask_yes_no(&format!(
        "{what}. Use {} as the project?",
        project.display()
    ))? {
        bail!("not using {}", project.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_warnings_escape_what_the_project_holds_and_say_what_to_do() {
        let project = Path::new("/home/u/p");
        let file = PathBuf::from("/home/u/p q/.git/config");
        let changes = [
            env::GitChange::Key {
                file: file.clone(),
                key: "alias.x\u{1b}]0;t\u{7}".into(),
                value: Some("!sh -c 'x'\n\u{1b}[2Jfake warning\r".into()),
                why: "git runs it as a program",
            },
            env::GitChange::Key {
                file: file.clone(),
                key: "core.fsmonitor".into(),
                value: None,
                why: "git runs it as a program",
            },
            env::GitChange::Hook {
                path: PathBuf::from("/home/u/p/.git/hooks/pre-commit\u{9b}1m"),
            },
            env::GitChange::Unchecked {
                file: file.clone(),
                reason: "git cannot parse it (line 2: x)".into(),
            },
            env::GitChange::Incomplete,
        ];
        let warnings = git_warnings(project, &changes);
        assert_eq!(warnings.len(), changes.len());
        for w in &warnings {
            // Two lines, and no control character but the one between.
            assert_eq!(w.lines().count(), 2, "{w}");
            assert!(!w.chars().any(|c| c.is_control() && c != '\n'), "{w:?}");
        }
        assert_eq!(
            warnings[0],
            "/home/u/p q/.git/config now has alias.x\\u{1b}]0;t\\u{7} = !sh -c 'x'\\n\\u{1b}[2Jfake warning\\r (git runs it as a program)\n  \
             if you did not set it: review the file with `git --no-pager config --file '/home/u/p q/.git/config' --list` \
             and remove the entry with `git --no-pager config --file '/home/u/p q/.git/config' --unset-all \"alias.x\\\\u{1b}]0;t\\\\u{7}\"`"
        );
        assert!(
            warnings[1].starts_with("/home/u/p q/.git/config now has core.fsmonitor (no value)"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].contains("rm \"/home/u/p/.git/hooks/pre-commit\\\\u{9b}1m\""),
            "{}",
            warnings[2]
        );
        assert!(warnings[3].contains("line 2: x"), "{}", warnings[3]);
        assert!(
            warnings[4].starts_with("/home/u/p holds too many"),
            "{}",
            warnings[4]
        );
    }
}

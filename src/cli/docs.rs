//! `llima-box completions SHELL` and `llima-box man`: completion scripts and
//! manual pages generated from the parser's own definitions, so they never
//! fall behind the commands.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::args::{Cli, CompletionsArgs, ManArgs};

pub(super) fn completions(args: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = without_hidden_commands(Cli::command());
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name.clone(), &mut script);
    if args.shell == clap_complete::Shell::Bash {
        script = fix_bash_states(&script, &name);
    }
    print(&script)
}

/// clap_complete's bash script tracks the subcommand typed so far in a
/// state such as `llima__box__subcmd__vm`, but spells the case arms that
/// complete it `llima__subcmd__box__subcmd__vm` when the binary's name has
/// a hyphen, so nothing after a subcommand completed (clap-rs/clap#6421).
/// Spelling the arms like the states fixes it, and is a no-op once clap
/// does the same.
fn fix_bash_states(script: &[u8], name: &str) -> Vec<u8> {
    let sep = "__subcmd__";
    let wrong = format!("{}{sep}", name.replace('-', sep));
    let right = format!("{}{sep}", name.replace('-', "__"));
    String::from_utf8_lossy(script)
        .replace(&wrong, &right)
        .into_bytes()
}

/// `cmd` without its hidden subcommands (the host agent), which
/// clap_complete would otherwise offer (clap-rs/clap#1335). clap has no
/// way to remove a subcommand, so the root is put together again from the
/// parser's own arguments and visible subcommands.
fn without_hidden_commands(cmd: clap::Command) -> clap::Command {
    let mut root = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    if let Some(v) = cmd.get_version() {
        root = root.version(v.to_string());
    }
    root
}

pub(super) fn man(args: &ManArgs) -> Result<ExitCode> {
    let cmd = Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            print(&page)
        }
    }
}

/// Writes the whole text at once; a reader that went away (`| head`) is
/// not an error.
fn print(text: &[u8]) -> Result<ExitCode> {
    match std::io::stdout().lock().write_all(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

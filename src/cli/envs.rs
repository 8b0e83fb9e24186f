//! `llima-box list`, `delete` and `delete-all`: the guest agent's answers,
//! reached as the guest's admin.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::Output;
use super::args::{DeleteArgs, JsonArg, YesArg};
use super::output::printable;
use super::vm_shell::block_on;
use crate::env::ports::{self, Published};
use crate::env::{self, EnvInfo, Guest};
use crate::timeouts;

/// The running guest, or `None` when the VM is stopped or missing.
async fn guest(lima_home: &Path, instance: &str) -> Result<Option<Guest>> {
    Ok(Guest::connect(lima_home, instance, timeouts::SSH_DEADLINE.get()?).await?)
}

/// Every environment, from the guest agent.
async fn list_in(guest: &Guest) -> Result<Vec<EnvInfo>> {
    guest.list().await.context("cannot list the environments")
}

async fn delete_in(guest: &Guest, name: &str) -> Result<()> {
    guest
        .delete(name)
        .await
        .with_context(|| format!("cannot delete environment {name}"))
}

const STOPPED: &str = "the VM is stopped; start it with `llima-box vm start` to list environments";

pub(super) fn list(
    lima_home: &Path,
    instance: &str,
    args: &JsonArg,
    out: &Output,
) -> Result<ExitCode> {
    block_on(async {
        // Environments live only in the guest; nothing is recorded on the
        // host, so a stopped VM has nothing to show (and is never booted
        // just to list).
        let Some(guest) = guest(lima_home, instance).await? else {
            out.info(STOPPED);
            return Ok(ExitCode::SUCCESS);
        };
        let envs = list_in(&guest).await?;
        let published = ports::load(&lima_home.join(instance))?;
        let mut stdout = std::io::stdout().lock();
        if args.json {
            for e in &envs {
                let mut v = serde_json::to_value(e)?;
                v["ports"] = serde_json::to_value(ports_of(&published, &e.name))?;
                writeln!(stdout, "{v}")?;
            }
        } else if envs.is_empty() {
            out.info("no environments; `llima-box shell` in a project directory creates one");
        } else {
            write!(stdout, "{}", table(&envs, &published))?;
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn state(e: &EnvInfo) -> &'static str {
    match (e.active, e.running) {
        (true, _) => "active",
        (false, true) => "idle",
        (false, false) => "stopped",
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n}B"),
        _ => format!("{v:.1}{}", UNITS[unit]),
    }
}

fn ports_of<'a>(published: &'a [Published], env: &'a str) -> Vec<&'a Published> {
    published.iter().filter(|p| p.env == env).collect()
}

fn table(envs: &[EnvInfo], published: &[Published]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "STATE".into(),
        "CREATED".into(),
        "LAST USED".into(),
        "HOME".into(),
        "PORTS".into(),
        "DENIED".into(),
        "PROJECT".into(),
    ]];
    for e in envs {
        // host port -> environment port, as `port list` prints them.
        let ports: Vec<String> = ports_of(published, &e.name)
            .iter()
            .map(|p| format!("{}->{}", p.host_port, p.env_port))
            .collect();
        rows.push([
            e.name.clone(),
            state(e).into(),
            printable(&e.created),
            printable(&e.last_used),
            human_bytes(e.home_bytes),
            match ports.is_empty() {
                true => "-".into(),
                false => ports.join(","),
            },
            e.denied.to_string(),
            printable(&e.project),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| match i {
                7 => c.clone(),
                _ => format!("{c:<w$}"),
            })
            .collect();
        text.push_str(&cells.join("  "));
        text.push('\n');
    }
    text
}

/// What `delete` was given: a project directory or an environment name.
fn target_name(target: Option<&str>) -> Result<String> {
    let looks_like_path = |t: &str| t.contains('/') || t == "." || t == "..";
    match target {
        Some(t) if !looks_like_path(t) && !Path::new(t).is_dir() => {
            env::validate_name(t)?;
            Ok(t.to_string())
        }
        _ => {
            let path = match target {
                Some(t) => PathBuf::from(t),
                None => std::env::current_dir().context("cannot read the current directory")?,
            };
            let canonical = env::canonical_project(&path)?;
            Ok(env::env_name_of(&canonical))
        }
    }
}

/// Asks on the terminal; without one (scripts), `-y` is implied.
fn confirm(question: &str, yes: &YesArg) -> Result<bool> {
    if yes.yes || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    Ok(super::prompt::ask_yes_no(question)?)
}

pub(super) fn delete(
    lima_home: &Path,
    instance: &str,
    args: &DeleteArgs,
    out: &Output,
) -> Result<ExitCode> {
    let name = target_name(args.target.as_deref())?;
    block_on(async {
        let Some(guest) = guest(lima_home, instance).await? else {
            bail!("the VM is stopped; start it with `llima-box vm start` to delete environments");
        };
        let envs = list_in(&guest).await?;
        let Some(e) = envs.iter().find(|e| e.name == name) else {
            out.info(&format!("no environment {name}; nothing to delete"));
            // Ports published before its first shell go all the same.
            super::ports::forget(lima_home, instance, &name, out)?;
            return Ok(ExitCode::SUCCESS);
        };
        let question = format!(
            "Delete environment {name} (its home and processes; the files of {} stay)?",
            printable(&e.project)
        );
        if !confirm(&question, &args.yes)? {
            out.info("nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
        delete_in(&guest, &name).await?;
        out.info(&format!("deleted environment {name}"));
        super::ports::forget(lima_home, instance, &name, out)?;
        Ok(ExitCode::SUCCESS)
    })?
}

pub(super) fn delete_all(
    lima_home: &Path,
    instance: &str,
    args: &YesArg,
    out: &Output,
) -> Result<ExitCode> {
    block_on(async {
        let Some(guest) = guest(lima_home, instance).await? else {
            bail!("the VM is stopped; start it with `llima-box vm start` to delete environments");
        };
        let envs = list_in(&guest).await?;
        if envs.is_empty() {
            out.info("no environments; nothing to delete");
            return Ok(ExitCode::SUCCESS);
        }
        let question = format!(
            "Delete all {} environments (homes and processes; project files stay)?",
            envs.len()
        );
        if !confirm(&question, args)? {
            out.info("nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
        // One failure does not keep the others.
        let mut failed = 0;
        for e in &envs {
            match delete_in(&guest, &e.name).await {
                Ok(()) => {
                    out.info(&format!("deleted environment {}", e.name));
                    super::ports::forget(lima_home, instance, &e.name, out)?;
                }
                Err(err) => {
                    failed += 1;
                    out.error(&err);
                }
            }
        }
        if failed > 0 {
            bail!(
                "{failed} of {} environments could not be deleted",
                envs.len()
            );
        }
        Ok(ExitCode::SUCCESS)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_du() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(12288), "12.0KiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
    }

    #[test]
    fn the_table_never_carries_control_characters() {
        let e = EnvInfo {
            name: "x-0123abcd".into(),
            project: "/home/u/\u{1b}]0;owned\u{7}\u{1b}[2J\nfake line\u{9b}31m ü".into(),
            created: "2026-11-30T07:00:00Z".into(),
            last_used: "2026-11-30T07:00:00Z\r".into(),
            running: false,
            active: false,
            processes: 0,
            home_bytes: 0,
            denied: 12,
        };
        let t = table(&[e], &[]);
        assert!(t.contains("  -      12      /home"), "{t}");
        assert!(
            !t.trim_end().chars().any(|c| c.is_control() && c != '\n'),
            "{t:?}"
        );
        assert_eq!(t.trim_end().lines().count(), 2, "{t}");
        assert!(t.contains("\\u{1b}]0;owned\\u{7}"), "{t}");
        assert!(t.contains("\\nfake line\\u{9b}31m ü"), "{t}");
    }

    #[test]
    fn delete_takes_a_name_or_a_path() {
        assert_eq!(target_name(Some("app-0123abcd")).unwrap(), "app-0123abcd");
        assert!(target_name(Some("Bad Name")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            target_name(dir.path().to_str()).unwrap(),
            env::naming::env_name(canonical.to_str().unwrap())
        );
    }
}

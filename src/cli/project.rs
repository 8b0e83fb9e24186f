//! `llima-box project show|set`: a project's own settings, kept on the host
//! and given to its environment through the guest agent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Output;
use super::args::{ProjectSetArgs, ProjectShowArgs};
use super::vm_shell::block_on;
use crate::env::settings::{self, Settings};
use crate::env::{self, Guest};
use crate::timeouts;

/// The project named by `path` (default: the current directory) and its
/// environment's name.
pub(super) fn project(path: Option<&Path>) -> Result<(PathBuf, String)> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let canonical = env::canonical_project(&path)?;
    let name = env::env_name_of(&canonical);
    Ok((canonical, name))
}

fn describe(s: &Settings) -> Vec<(&'static str, String)> {
    let or_default =
        |v: Option<String>, default: &str| v.unwrap_or_else(|| format!("{default} (default)"));
    vec![
        (
            "memory",
            or_default(
                s.memory_max.map(|m| format!("{} MiB", m >> 20)),
                "half the VM's memory",
            ),
        ),
        (
            "tasks",
            or_default(s.tasks_max.map(|t| t.to_string()), "4096"),
        ),
        (
            "cpu weight",
            or_default(s.cpu_weight.map(|w| w.to_string()), "100"),
        ),
        (
            "io weight",
            or_default(s.io_weight.map(|w| w.to_string()), "100"),
        ),
        (
            "git writes",
            match s.git_writes {
                true => "allow".to_string(),
                false => "deny (default)".to_string(),
            },
        ),
    ]
}

pub(super) fn show(lima_home: &Path, instance: &str, args: &ProjectShowArgs) -> Result<ExitCode> {
    let (project, name) = project(args.path.as_deref())?;
    let s = settings::load(&lima_home.join(instance), &name)?.unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    if args.json.json {
        let mut v = serde_json::to_value(&s)?;
        v["name"] = name.into();
        v["project"] = project.to_string_lossy().into_owned().into();
        writeln!(stdout, "{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(stdout, "{:<11} {}", "project", project.display())?;
    writeln!(stdout, "{:<11} {name}", "environment")?;
    for (k, v) in describe(&s) {
        writeln!(stdout, "{k:<11} {v}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn set(
    lima_home: &Path,
    instance: &str,
    args: &ProjectSetArgs,
    out: &Output,
) -> Result<ExitCode> {
    let (project, name) = project(args.path.as_deref())?;
    let dir = lima_home.join(instance);
    let mut s = match args.reset {
        true => Settings::default(),
        false => settings::load(&dir, &name)?.unwrap_or_default(),
    };
    if let Some(m) = &args.memory {
        s.memory_max = Some(settings::parse_size(m).map_err(anyhow::Error::msg)?);
    }
    s.tasks_max = args.tasks.or(s.tasks_max);
    s.cpu_weight = args.cpu_weight.or(s.cpu_weight);
    s.io_weight = args.io_weight.or(s.io_weight);
    if let Some(g) = &args.git_writes {
        s.git_writes = g == "allow";
    }
    s.check().map_err(anyhow::Error::msg)?;
    settings::save(&dir, &name, &s)?;
    let applied = block_on(async {
        let Some(guest) =
            Guest::connect(lima_home, instance, timeouts::SSH_DEADLINE.get()?).await?
        else {
            return anyhow::Ok(None);
        };
        Ok(Some(guest.configure(&name, &s).await.with_context(
            || format!("saved, but cannot give them to the running environment {name}"),
        )?))
    })??;
    let shown = project.display();
    out.info(&match applied {
        Some((_, true)) => format!("{shown}: applied to the running environment {name}"),
        Some((true, false)) => format!("{shown}: saved; they apply when environment {name} starts"),
        Some((false, _)) => format!("{shown}: saved; they apply when its environment is created"),
        None => {
            format!("{shown}: saved; the VM is not running: they apply when the environment starts")
        }
    });
    Ok(ExitCode::SUCCESS)
}

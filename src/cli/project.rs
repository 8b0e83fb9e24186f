//! `llima-box project show|set`: a project's own settings, kept on the host
//! and given to its environment through the guest agent, and the defaults
//! of the projects without their own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Output;
use super::args::{ProjectSetArgs, ProjectShowArgs, TargetArg};
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
            "home disk",
            or_default(
                s.disk_max.map(|d| format!("{} MiB", d >> 20)),
                "a quarter of the VM's disk",
            ),
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

/// What `show` and `set` are about: a project, or the defaults of the
/// projects without settings of their own (`--default`).
pub(super) enum Target {
    Project { path: PathBuf, name: String },
    Defaults,
}

impl Target {
    pub(super) fn of(arg: &TargetArg) -> Result<Target> {
        if arg.default {
            return Ok(Target::Defaults);
        }
        let (path, name) = project(arg.path.as_deref())?;
        Ok(Target::Project { path, name })
    }

    /// Its settings now, whether they are its own (the defaults' always
    /// are), and what `--reset` goes back to.
    pub(super) fn load(
        &self,
        lima_home: &Path,
        instance: &str,
    ) -> Result<(Settings, bool, Settings)> {
        Ok(match self {
            Target::Project { name, .. } => {
                let (s, own) = settings::load(&lima_home.join(instance), name)?;
                (s, own, settings::load_defaults(lima_home)?)
            }
            Target::Defaults => (
                settings::load_defaults(lima_home)?,
                true,
                Settings::default(),
            ),
        })
    }

    /// `v` with what names the target.
    pub(super) fn json(&self, mut v: serde_json::Value, own: bool) -> serde_json::Value {
        match self {
            Target::Project { path, name } => {
                v["name"] = name.clone().into();
                v["project"] = path.to_string_lossy().into_owned().into();
                v["own"] = own.into();
            }
            Target::Defaults => v["default"] = true.into(),
        }
        v
    }

    /// The lines that name the target, before its settings.
    pub(super) fn header(&self, own: bool) -> Vec<(&'static str, String)> {
        match self {
            Target::Project { path, name } => vec![
                ("project", path.display().to_string()),
                ("environment", name.clone()),
                (
                    "settings",
                    match own {
                        true => "its own".into(),
                        false => "the defaults (see --default)".into(),
                    },
                ),
            ],
            Target::Defaults => vec![(
                "defaults",
                "of projects without settings of their own".into(),
            )],
        }
    }

    /// Saves `s` and, for a project, gives them to its running environment.
    pub(super) fn save_and_apply(
        &self,
        lima_home: &Path,
        instance: &str,
        s: &Settings,
        out: &Output,
    ) -> Result<ExitCode> {
        s.check().map_err(anyhow::Error::msg)?;
        match self {
            Target::Project { path, name } => {
                save_and_apply(lima_home, instance, path, name, s, out)
            }
            Target::Defaults => {
                settings::save_defaults(lima_home, s)?;
                out.info(
                    "defaults saved: projects without settings of their own get them when their \
                     environment next starts (or when you change one of their settings)",
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Prints `lines` as `key value`, the keys in one column.
pub(super) fn print_table(lines: &[(&'static str, String)]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    for (k, v) in lines {
        writeln!(stdout, "{k:<11} {v}")?;
    }
    Ok(())
}

pub(super) fn show(lima_home: &Path, instance: &str, args: &ProjectShowArgs) -> Result<ExitCode> {
    let target = Target::of(&args.target)?;
    let (s, own, _) = target.load(lima_home, instance)?;
    if args.json.json {
        let v = target.json(serde_json::to_value(&s)?, own);
        writeln!(std::io::stdout().lock(), "{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut lines = target.header(own);
    lines.extend(describe(&s));
    print_table(&lines)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn set(
    lima_home: &Path,
    instance: &str,
    args: &ProjectSetArgs,
    out: &Output,
) -> Result<ExitCode> {
    let target = Target::of(&args.target)?;
    let (mut s, _, base) = target.load(lima_home, instance)?;
    if args.reset {
        // The network policy is `net set`'s.
        s = Settings { net: s.net, ..base };
    }
    if let Some(m) = &args.memory {
        s.memory_max = Some(settings::parse_size(m).map_err(anyhow::Error::msg)?);
    }
    if let Some(d) = &args.disk {
        s.disk_max = Some(settings::parse_size(d).map_err(anyhow::Error::msg)?);
    }
    s.tasks_max = args.tasks.or(s.tasks_max);
    s.cpu_weight = args.cpu_weight.or(s.cpu_weight);
    s.io_weight = args.io_weight.or(s.io_weight);
    if let Some(g) = &args.git_writes {
        s.git_writes = g == "allow";
    }
    target.save_and_apply(lima_home, instance, &s, out)
}

/// Saves `s` as the settings of `project` (environment `name`) and gives
/// them to its environment if the VM runs; says which happened.
fn save_and_apply(
    lima_home: &Path,
    instance: &str,
    project: &Path,
    name: &str,
    s: &Settings,
    out: &Output,
) -> Result<ExitCode> {
    settings::save(&lima_home.join(instance), name, s)?;
    let applied = block_on(async {
        let Some(guest) =
            Guest::connect(lima_home, instance, timeouts::SSH_DEADLINE.get()?).await?
        else {
            return anyhow::Ok(None);
        };
        Ok(Some(guest.configure(name, s).await.with_context(|| {
            format!("saved, but cannot give them to the running environment {name}")
        })?))
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

//! `llima-box port publish|list|unpublish`: the published ports' table on
//! the host (see `env::ports`), and the running host agent told of each
//! change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::Output;
use super::args::PortListArgs;
use super::output::printable;
use super::project::project;
use crate::env::ports::{self, Published};
use crate::vm::hostagent::ports::{Listening, ask_sync};
use crate::vm::layout;

/// `[PATH] SPEC`: clap has checked there are one or two.
fn path_and_spec(args: &[String]) -> (Option<&Path>, &str) {
    match args {
        [path, spec] => (Some(Path::new(path)), spec),
        [spec] => (None, spec),
        _ => unreachable!("clap takes one or two values"),
    }
}

/// The instance's directory; the table lives there, so the VM must have
/// been created.
fn instance_dir(lima_home: &Path, instance: &str) -> Result<PathBuf> {
    let dir = lima_home.join(instance);
    if !dir.join(layout::LIMA_YAML).is_file() {
        bail!(
            "there is no VM {instance:?} yet; `llima-box vm start` (or a first `llima-box shell`) creates it"
        );
    }
    Ok(dir)
}

/// Tells the running host agent; `Ok(None)` when the VM is not running.
fn sync(dir: &Path) -> Result<Option<Vec<Listening>>> {
    ask_sync(dir).context(
        "the VM's host agent did not take the change; restart the VM (`llima-box vm stop`, `llima-box vm start`) to apply it",
    )
}

/// What publishing one port did.
struct Outcome {
    row: Published,
    /// The row for the same environment port it replaced.
    replaced: Option<Published>,
    /// `false` when the row was there already.
    changed: bool,
    /// The host agent listens for it now (else the VM is not running).
    listening: bool,
}

/// Records `new` (its host port: `wanted`, else a free one) and has the
/// running host agent listen for it; on any failure the table is left as
/// it was.
fn publish_row(dir: &Path, new: Published, wanted: Option<u16>) -> Result<Outcome> {
    let (env, env_port) = (new.env.clone(), new.env_port);
    let (row, replaced, changed) = ports::update(dir, |rows| {
        if let Some(same) = rows
            .iter()
            .find(|r| r.env == env && r.env_port == env_port)
            .filter(|r| new.shell.is_some() || wanted.is_none_or(|p| p == r.host_port))
        {
            // A shell does not take over a port published for good.
            if wanted.is_some_and(|p| p != same.host_port) {
                return Err(crate::env::Error::PortSpec(format!(
                    "{env_port} is published already, on 127.0.0.1:{}; leave out the host port to use that, or `llima-box port unpublish {env_port}` first",
                    same.host_port
                )));
            }
            return Ok((same.clone(), None, false));
        }
        let host_port = match wanted {
            // Published already (by another row: `add` says whose): the
            // host agent has it bound, so a bind test would mislead.
            Some(p) if rows.iter().any(|r| r.host_port == p) => p,
            other => ports::host_port(rows, other)?,
        };
        let row = Published { host_port, ..new };
        let replaced = ports::add(rows, row.clone())?;
        Ok((row, replaced, true))
    })?;
    if !changed {
        return Ok(Outcome {
            row,
            replaced,
            changed,
            listening: true,
        });
    }
    let listening = sync(dir);
    let refused = match &listening {
        Ok(Some(states)) => states
            .iter()
            .find(|s| s.host_port == row.host_port)
            .and_then(|s| s.error.clone()),
        Ok(None) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    if let Some(why) = refused {
        // Back to what it was, so a failed publish leaves nothing behind.
        ports::update(dir, |rows| {
            ports::remove(rows, &env, Some(env_port));
            if let Some(old) = replaced {
                ports::add(rows, old)?;
            }
            Ok(())
        })?;
        let _ = ask_sync(dir);
        bail!("cannot publish port {env_port} of {}: {why}", row.project);
    }
    Ok(Outcome {
        row,
        replaced,
        changed,
        listening: matches!(listening, Ok(Some(_))),
    })
}

fn mapping(row: &Published) -> String {
    format!("127.0.0.1:{} -> {}", row.host_port, row.env_port)
}

const NOT_RUNNING: &str = "the VM is not running: the port is forwarded once it starts";

pub(super) fn publish(
    lima_home: &Path,
    instance: &str,
    args: &[String],
    out: &Output,
) -> Result<ExitCode> {
    let (path, spec) = path_and_spec(args);
    let (env_port, wanted) = ports::parse_spec(spec)?;
    let (project, name) = project(path)?;
    let dir = instance_dir(lima_home, instance)?;
    let new = Published {
        env: name,
        project: project.to_string_lossy().into_owned(),
        env_port,
        host_port: 0,
        shell: None,
    };
    let done = publish_row(&dir, new, wanted)?;
    if let Some(old) = done.replaced.filter(|o| o.host_port != done.row.host_port) {
        out.info(&format!("no longer on 127.0.0.1:{}", old.host_port));
    }
    if done.changed && !done.listening {
        out.info(NOT_RUNNING);
    }
    writeln!(std::io::stdout().lock(), "{}", mapping(&done.row))?;
    Ok(ExitCode::SUCCESS)
}

/// `shell --publish`: ports for the length of one shell. Dropping it
/// removes them; rows of a shell that was killed go at the next change
/// of the table (see `Published::shell`).
pub(super) struct ShellPorts {
    dir: PathBuf,
    any: bool,
}

impl ShellPorts {
    pub(super) fn publish(
        dir: &Path,
        project: &Path,
        specs: &[String],
        out: &Output,
    ) -> Result<ShellPorts> {
        let mut me = ShellPorts {
            dir: dir.to_path_buf(),
            any: false,
        };
        let name = crate::env::env_name_of(project);
        for spec in specs {
            let (env_port, wanted) = ports::parse_spec(spec)?;
            let new = Published {
                env: name.clone(),
                project: project.to_string_lossy().into_owned(),
                env_port,
                host_port: 0,
                shell: Some(std::process::id()),
            };
            let done = publish_row(dir, new, wanted)?;
            me.any |= done.changed;
            out.info(&mapping(&done.row));
        }
        Ok(me)
    }
}

impl Drop for ShellPorts {
    fn drop(&mut self) {
        if !self.any {
            return;
        }
        let me = Some(std::process::id());
        let _ = ports::update(&self.dir, |rows| {
            rows.retain(|r| r.shell != me);
            Ok(())
        });
        let _ = ask_sync(&self.dir);
    }
}

pub(super) fn list(
    lima_home: &Path,
    instance: &str,
    args: &PortListArgs,
    out: &Output,
) -> Result<ExitCode> {
    let mut rows = ports::load(&lima_home.join(instance))?;
    if !args.all {
        let (_, name) = project(args.path.as_deref())?;
        rows.retain(|r| r.env == name);
    }
    let mut stdout = std::io::stdout().lock();
    if args.json.json {
        for r in &rows {
            writeln!(stdout, "{}", serde_json::to_string(r)?)?;
        }
    } else if rows.is_empty() {
        out.info("no published ports; `llima-box port publish ENV_PORT` publishes one");
    } else {
        write!(stdout, "{}", table(&rows))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn table(rows: &[Published]) -> String {
    let host = |r: &Published| format!("127.0.0.1:{}", r.host_port);
    let width = rows.iter().map(|r| host(r).len()).max().unwrap_or(0).max(4);
    let mut text = format!("{:<width$}  {:<8}  PROJECT\n", "HOST", "ENV PORT");
    for r in rows {
        text.push_str(&format!(
            "{:<width$}  {:<8}  {}\n",
            host(r),
            r.env_port,
            printable(&r.project)
        ));
    }
    text
}

pub(super) fn unpublish(
    lima_home: &Path,
    instance: &str,
    args: &[String],
    out: &Output,
) -> Result<ExitCode> {
    let (path, spec) = path_and_spec(args);
    let env_port = match ports::parse_spec(spec)? {
        (port, None) => port,
        (_, Some(_)) => bail!("unpublish takes the environment's port alone, e.g. 3000"),
    };
    let (project, name) = project(path)?;
    let dir = lima_home.join(instance);
    let not_published = || {
        anyhow::anyhow!(
            "port {env_port} of {} is not published; `llima-box port list` shows what is",
            project.display()
        )
    };
    // Looked up first: without a VM there is no table to change.
    if !ports::load(&dir)?
        .iter()
        .any(|r| r.env == name && r.env_port == env_port)
    {
        return Err(not_published());
    }
    let gone = ports::update(&dir, |rows| Ok(ports::remove(rows, &name, Some(env_port))))?;
    if gone.is_empty() {
        return Err(not_published());
    }
    sync(&dir)?;
    for r in gone {
        out.info(&format!(
            "127.0.0.1:{} no longer reaches port {env_port}",
            r.host_port
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Drops environment `name`'s published ports (it was deleted).
pub(super) fn forget(lima_home: &Path, instance: &str, name: &str, out: &Output) -> Result<()> {
    let dir = lima_home.join(instance);
    let gone = ports::update(&dir, |rows| Ok(ports::remove(rows, name, None)))?;
    if !gone.is_empty() {
        sync(&dir)?;
        for r in gone {
            out.info(&format!("closed 127.0.0.1:{}", r.host_port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_escapes_the_project() {
        let rows = [
            Published {
                env: "a".into(),
                project: "/p/a".into(),
                env_port: 3000,
                host_port: 8080,
                shell: None,
            },
            Published {
                env: "b".into(),
                project: "/p/b\x1b[2J".into(),
                env_port: 80,
                host_port: 40123,
                shell: Some(1),
            },
        ];
        assert_eq!(
            table(&rows),
            "HOST             ENV PORT  PROJECT\n\
             127.0.0.1:8080   3000      /p/a\n\
             127.0.0.1:40123  80        /p/b\\u{1b}[2J\n"
        );
    }
}

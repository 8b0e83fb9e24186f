//! `llima-box vm start`: create (first time) and boot the VM, showing
//! download progress and boot stages with elapsed time.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Output;
use super::args::StartArgs;
use super::progress::Stages;
use crate::vm::config::{self, TemplateSearch};
use crate::vm::image::{BarReporter, NoProgress, Progress};
use crate::vm::lifecycle::{self, StartUi, Started};

pub(super) struct CliStartUi {
    stages: Stages,
    bar: Box<dyn Progress>,
}

impl CliStartUi {
    pub(super) fn new(out: &Output) -> Self {
        CliStartUi {
            stages: Stages::new(out.is_quiet()),
            bar: if out.is_quiet() {
                Box::new(NoProgress)
            } else {
                Box::new(BarReporter::default())
            },
        }
    }

    pub(super) fn elapsed_secs(&self) -> f64 {
        self.stages.elapsed().as_secs_f64()
    }
}

impl StartUi for CliStartUi {
    fn stage(&mut self, stage: &str) {
        self.stages.stage(stage);
    }

    fn download(&self) -> &dyn Progress {
        self.bar.as_ref()
    }
}

/// Boots `instance` (creating it first, from `template` or the built-in
/// config, if needed) and returns where it is.
pub(super) fn start(
    lima_home: &Path,
    instance: &str,
    template: Option<&Path>,
    out: &Output,
) -> Result<Started> {
    let yaml = match template {
        Some(t) => Some(
            config::instance_yaml_from_template(t, lima_home, &TemplateSearch::from_env(lima_home))
                .with_context(|| format!("cannot use {} as the instance config", t.display()))?,
        ),
        None => None,
    };
    let mut ui = CliStartUi::new(out);
    let started = lifecycle::start(lima_home, instance, yaml.as_deref(), &mut ui)
        .with_context(|| format!("cannot start instance {instance:?}"))?;
    if started.already_running {
        out.info(&format!(
            "{instance} is running (SSH on 127.0.0.1:{})",
            started.ssh_local_port
        ));
    } else {
        out.info(&format!(
            "{instance} is ready after {:.1}s (SSH on 127.0.0.1:{}). Run `llima-box shell` in a project, or `llima-box vm shell`.",
            ui.elapsed_secs(),
            started.ssh_local_port
        ));
    }
    Ok(started)
}

pub(super) fn run(
    lima_home: &Path,
    instance: &str,
    args: &StartArgs,
    out: &Output,
) -> Result<ExitCode> {
    start(lima_home, instance, args.template.as_deref(), out)?;
    Ok(ExitCode::SUCCESS)
}

//! `llima-box vm validate [--fill] FILE...`, like `limactl validate`: embed
//! each template's bases, merge `_config/default.yaml`/`override.yaml`,
//! fill the defaults and validate. Nothing is written.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::Output;
use super::args::ValidateArgs;
use crate::vm::config::{self, FillContext, HostFacts, LimaYaml, TemplateSearch};
use crate::vm::dirs;

pub(super) fn run(lima_home: &Path, args: &ValidateArgs, out: &Output) -> Result<ExitCode> {
    let search = TemplateSearch::from_env(lima_home);
    let host = HostFacts::current();
    let mut failed = 0;
    for file in &args.files {
        match check(file, lima_home, &search, &host, args.fill) {
            Ok(y) => {
                out.info(&format!("{}: OK", file.display()));
                if args.fill {
                    if args.files.len() > 1 {
                        println!("---");
                    }
                    print!("{}", serde_yaml::to_string(&y)?);
                }
            }
            Err(e) => {
                failed += 1;
                out.error(&anyhow::Error::new(e));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} file(s) failed validation; fix the field named above and run \
             `llima-box vm validate` again",
            args.files.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(
    file: &Path,
    lima_home: &Path,
    search: &TemplateSearch,
    host: &HostFacts,
    fill: bool,
) -> Result<LimaYaml, config::ConfigError> {
    // Like limactl, `_config/base.yaml` is embedded only when filling.
    let base = fill.then(|| dirs::config_dir(lima_home).join("base.yaml"));
    let doc = config::embed_file(file, search, base.as_deref())?;
    let y = config::from_mapping(doc, file)?;
    // The instance this template would become, for `{{.Dir}}`/`{{.Name}}`.
    let stem = file.file_stem().unwrap_or_default();
    let cx = FillContext {
        host,
        instance_dir: &lima_home.join(stem),
        file,
        existing_version: config::COMPAT_VERSION.to_string(),
    };
    let y = config::load(y, lima_home, &cx)?;
    config::validate(&y, file)?;
    Ok(y)
}

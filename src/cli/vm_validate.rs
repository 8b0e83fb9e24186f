use std::process::ExitCode;

use anyhow::Result;

use super::Output;
use super::args::ValidateArgs;

pub fn run(_args: &ValidateArgs, _out: &Output) -> Result<ExitCode> {
    anyhow::bail!("vm validate: not written yet")
}

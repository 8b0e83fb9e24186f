use std::process::ExitCode;

use anyhow::Result;

use super::Output;
use super::args::VmListArgs;

pub fn run(_args: &VmListArgs, _out: &Output) -> Result<ExitCode> {
    anyhow::bail!("vm list: not written yet")
}

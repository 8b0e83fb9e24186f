//! `llima-box vm stop [--force]` and `llima-box vm delete [--force]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::Output;
use super::args::ForceArg;
use crate::vm::lifecycle::{self, InstanceLock};
use crate::vm::store;

pub(super) fn stop(
    lima_home: &Path,
    instance: &str,
    args: &ForceArg,
    out: &Output,
) -> Result<ExitCode> {
    let _lock = InstanceLock::acquire(lima_home, instance)?;
    if args.force {
        let inst = match store::inspect(lima_home, instance) {
            Err(store::StoreError::NotFound { .. }) => {
                anyhow::bail!("instance {instance:?} does not exist")
            }
            other => other?,
        };
        lifecycle::force_stop(&inst)?;
        out.info(&format!("{instance}: killed (forced stop)"));
    } else {
        out.info(&format!("{instance}: shutting the guest down..."));
        lifecycle::stop(lima_home, instance, lifecycle::STOP_TIMEOUT)?;
        out.info(&format!("{instance}: stopped"));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn delete(
    lima_home: &Path,
    instance: &str,
    args: &ForceArg,
    out: &Output,
) -> Result<ExitCode> {
    let _lock = InstanceLock::acquire(lima_home, instance)?;
    lifecycle::delete(lima_home, instance, args.force)?;
    out.info(&format!("{instance}: deleted"));
    Ok(ExitCode::SUCCESS)
}

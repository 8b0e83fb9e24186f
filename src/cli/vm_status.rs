//! `llima-box vm status [--json]`: one instance, as `vm list` shows it,
//! with the paths a person needs when something is wrong.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::args::JsonArg;
use crate::vm::store;

pub(super) fn run(lima_home: &Path, instance: &str, args: &JsonArg) -> Result<ExitCode> {
    let inst = match store::inspect(lima_home, instance) {
        Err(store::StoreError::NotFound { .. }) => {
            anyhow::bail!(
                "instance {instance:?} does not exist in {}; `llima-box vm start` creates it",
                lima_home.display()
            )
        }
        other => other?,
    };
    if args.json {
        let v = store::list_json(&inst, &store::Globals::new(lima_home));
        println!("{}", serde_json::to_string(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let status = if inst.status == store::Status::Unknown {
        "invalid configuration"
    } else {
        inst.status.as_str()
    };
    println!("{}: {status}", inst.name);
    if inst.ssh_local_port != 0 {
        println!("  ssh:        127.0.0.1:{}", inst.ssh_local_port);
    }
    if let Some(pid) = inst.host_agent_pid {
        println!("  host agent: pid {pid}");
    }
    if let Some(pid) = inst.driver_pid {
        println!("  qemu:       pid {pid}");
    }
    println!(
        "  resources:  {} CPUs, {} memory, {} disk",
        inst.cpus,
        crate::vm::units::format_bytes(inst.memory),
        crate::vm::units::format_bytes(inst.disk)
    );
    println!("  directory:  {}", inst.dir.display());
    for e in &inst.errors {
        println!("  error:      {e}");
    }
    Ok(ExitCode::SUCCESS)
}

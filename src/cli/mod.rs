//! The command-line edge: parsing, dispatch, and everything printed for
//! humans. Domain modules return typed errors; `anyhow` context is added here.

pub mod args;
mod envs;
mod output;
mod progress;
mod prompt;
mod shell;
mod test_vm;
mod vm_list;
mod vm_logs;
mod vm_shell;
mod vm_start;
mod vm_status;
mod vm_stop;
mod vm_validate;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use args::{Cli, Command, VmCommand};
pub use output::Output;

/// Entry point of the `llima-box` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.verbose, cli.quiet);
    match run(cli, &out) {
        Ok(code) => code,
        Err(err) => {
            out.error(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, out: &Output) -> Result<ExitCode> {
    match cli.command {
        Command::Vm(VmCommand::List(args)) => vm_list::run(&args, out),
        Command::Vm(VmCommand::Validate(args)) => vm_validate::run(&args, out),
        Command::Vm(VmCommand::Shell(args)) => {
            refuse_root()?;
            vm_shell::run(&cli.instance, &args, out)
        }
        Command::Shell(args) => {
            refuse_root()?;
            shell::run(&cli.instance, &args, out)
        }
        Command::List(args) => {
            refuse_root()?;
            envs::list(&cli.instance, &args, out)
        }
        Command::Delete(args) => {
            refuse_root()?;
            envs::delete(&cli.instance, &args, out)
        }
        Command::DeleteAll(args) => {
            refuse_root()?;
            envs::delete_all(&cli.instance, &args, out)
        }
        Command::Vm(VmCommand::Status(args)) => vm_status::run(&cli.instance, &args),
        Command::Vm(VmCommand::Logs(args)) => vm_logs::run(&cli.instance, &args),
        Command::Vm(VmCommand::Stop(args)) => {
            refuse_root()?;
            vm_stop::stop(&cli.instance, &args, out)
        }
        Command::Vm(VmCommand::Delete(args)) => {
            refuse_root()?;
            vm_stop::delete(&cli.instance, &args, out)
        }
        Command::Vm(VmCommand::Start(args)) => {
            refuse_root()?;
            vm_start::run(&cli.instance, &args, out)
        }
        Command::Hostagent(args) => {
            refuse_root()?;
            Ok(crate::vm::hostagent::main(&args.dir))
        }
        Command::TestVm(args) => {
            refuse_root()?;
            test_vm::run(&args, out)
        }
    }
}

/// Commands that create or drive a VM would leave root-owned files in
/// `$LIMA_HOME` and give the guest's admin user root's identity, as limactl
/// also refuses.
fn refuse_root() -> Result<()> {
    if rustix::process::geteuid().is_root() {
        anyhow::bail!(
            "refusing to run as root: the VM's files and its user would belong to root; \
             run llima-box as your normal user"
        );
    }
    Ok(())
}

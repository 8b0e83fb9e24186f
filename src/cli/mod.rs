//! The command-line edge: parsing, dispatch, and everything printed for
//! humans. Domain modules return typed errors; `anyhow` context is added here.

pub(crate) mod args;
mod docs;
mod envs;
mod net;
mod output;
mod ports;
mod progress;
mod project;
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

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use args::{Cli, Command, NetCommand, PortCommand, ProjectCommand, VmCommand};
pub(crate) use output::Output;

use crate::vm::{dirs, trust};

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
    // Every command but the host agent (given its instance directory)
    // works under $LIMA_HOME; resolved here, once, after refuse_root.
    let lima_home = || {
        dirs::lima_home().context("cannot find the Lima directory ($LIMA_HOME, default ~/.lima)")
    };
    let instance = cli.instance.as_str();
    // Commands that log into the guest or drive the VM first make sure that
    // nobody else could have replaced the keys and sockets they trust. The
    // reports (`vm list`, `status`, `logs`, `validate`) read no key, send
    // the VM nothing and run as root too, as limactl's do.
    let trusted_home = |instance: Option<&str>| -> Result<PathBuf> {
        let home = lima_home()?;
        trust::check_home(&home, instance).with_context(|| {
            format!(
                "refusing to trust the keys and sockets in {}: it must be private to you",
                home.display()
            )
        })?;
        Ok(home)
    };
    match cli.command {
        Command::Vm(VmCommand::List(args)) => vm_list::run(&lima_home()?, &args, out),
        Command::Vm(VmCommand::Validate(args)) => vm_validate::run(&lima_home()?, &args, out),
        Command::Vm(VmCommand::Shell(args)) => {
            refuse_root()?;
            vm_shell::run(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Shell(args) => {
            refuse_root()?;
            shell::run(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::List(args) => {
            refuse_root()?;
            envs::list(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Delete(args) => {
            refuse_root()?;
            envs::delete(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Project(ProjectCommand::Show(args)) => {
            refuse_root()?;
            project::show(&trusted_home(Some(instance))?, instance, &args)
        }
        Command::Project(ProjectCommand::Set(args)) => {
            refuse_root()?;
            project::set(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Net(NetCommand::Show(args)) => {
            refuse_root()?;
            net::show(&trusted_home(Some(instance))?, instance, &args)
        }
        Command::Net(NetCommand::Log(args)) => {
            refuse_root()?;
            net::log(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Net(NetCommand::Set(args)) => {
            refuse_root()?;
            net::set(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Port(PortCommand::Publish(args)) => {
            refuse_root()?;
            ports::publish(&trusted_home(Some(instance))?, instance, &args.args, out)
        }
        Command::Port(PortCommand::List(args)) => {
            refuse_root()?;
            ports::list(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Port(PortCommand::Unpublish(args)) => {
            refuse_root()?;
            ports::unpublish(&trusted_home(Some(instance))?, instance, &args.args, out)
        }
        Command::DeleteAll(args) => {
            refuse_root()?;
            envs::delete_all(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Vm(VmCommand::Status(args)) => vm_status::run(&lima_home()?, instance, &args),
        Command::Vm(VmCommand::Logs(args)) => vm_logs::run(&lima_home()?, instance, &args),
        Command::Vm(VmCommand::Stop(args)) => {
            refuse_root()?;
            vm_stop::stop(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Vm(VmCommand::Delete(args)) => {
            refuse_root()?;
            vm_stop::delete(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Vm(VmCommand::Start(args)) => {
            refuse_root()?;
            vm_start::run(&trusted_home(Some(instance))?, instance, &args, out)
        }
        Command::Completions(args) => docs::completions(&args),
        Command::Man(args) => docs::man(&args),
        Command::Hostagent(args) => {
            refuse_root()?;
            Ok(crate::vm::hostagent::main(&args.dir))
        }
        Command::TestVm(args) => {
            refuse_root()?;
            test_vm::run(&trusted_home(None)?, &args, out)
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

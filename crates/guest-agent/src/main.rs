//! llima-box's guest agent: a root service in the VM that the host reaches
//! through the admin user's SSH connection, on one unix socket. It takes
//! over the environment runtime's work one responsibility at a time; today
//! it answers `version`, `list` and `delete`, runs the admin's `vm shell`
//! commands (`admin-server`), and each environment's holder is this
//! binary's `env-holder`: it builds the environment's namespaces and
//! becomes, in them, the commands' spawn server.
//!
//! It is built as a static executable (no glibc NSS: account files are read
//! directly), so one binary runs on any guest of its architecture.

mod accounts;
mod admin_server;
mod delete;
mod env_server;
mod holder;
mod list;
mod lock;
mod protect_git;
mod server;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "env-server") {
        return match env_server::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llima-box-guest-agent env-server: {e}");
                ExitCode::from(125)
            }
        };
    }
    if args.first().is_some_and(|a| a == "env-exec") {
        let why = env_server::env_exec::run(&args[1..]);
        eprintln!("llima-box-guest-agent env-exec: {why}");
        return ExitCode::from(125);
    }
    if args.first().is_some_and(|a| a == "env-holder") {
        return match holder::run(&args[1..]) {
            Ok(status) => ExitCode::from(status),
            Err(e) => {
                eprintln!("llima-box-guest-agent env-holder: {e}");
                ExitCode::from(125)
            }
        };
    }
    if let [cmd, project] = args.as_slice()
        && cmd == "protect-git"
    {
        return match protect_git::protect(std::path::Path::new(project)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llima-box-guest-agent protect-git: {e}");
                ExitCode::from(125)
            }
        };
    }
    let (cmd, admin_uid) = match args.as_slice() {
        [cmd, flag, uid] if flag == "--admin-uid" => match uid.parse::<u32>() {
            Ok(uid) => (cmd.as_str(), uid),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    let served = match cmd {
        "serve" => server::serve(admin_uid),
        "admin-server" => admin_server::run(admin_uid),
        _ => return usage(),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llima-box-guest-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: llima-box-guest-agent serve --admin-uid UID");
    eprintln!("       llima-box-guest-agent admin-server --admin-uid UID");
    eprintln!("       llima-box-guest-agent {}", holder::USAGE);
    eprintln!("       llima-box-guest-agent {}", env_server::USAGE);
    eprintln!(
        "       llima-box-guest-agent {}",
        env_server::env_exec::USAGE
    );
    eprintln!("       llima-box-guest-agent protect-git PROJECT");
    ExitCode::from(2)
}

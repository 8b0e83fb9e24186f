//! llima-box's guest agent: everything environments need in the VM. A root
//! service that the host reaches through the admin user's SSH connection,
//! on one unix socket, answers `version`, `list`, `delete`, `configure`,
//! `net-log` and `connect` (a published port's connection) and installs
//! the guard (`guard`); `admin-server` runs the admin's `vm shell`
//! commands; each environment's holder is `env-holder`, which builds the
//! environment's namespaces and becomes, in them, the commands' spawn
//! server; `env-run` (through sudo) creates an environment or starts its
//! holder again and runs a command in it when its server cannot be
//! reached; `pool-keeper` keeps a spare environment ready.
//!
//! It is built as a static executable (no glibc NSS: account files are read
//! directly), so one binary runs on any guest of its architecture.

mod accepters;
mod accounts;
mod admin_server;
mod delete;
mod egress;
mod ensure;
mod env_run;
mod env_server;
mod forward;
mod guard;
mod holder;
mod homes;
mod list;
mod lock;
mod netlog;
mod pool;
mod protect_git;
mod server;
mod sys;
mod tools;

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
    if args.first().is_some_and(|a| a == "env-run") {
        return ExitCode::from(env_run::run(&args[1..]));
    }
    if let [cmd, ids @ ..] = args.as_slice()
        && cmd == "pool-keeper"
    {
        let ids: Vec<u32> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let [admin, host_uid, host_gid] = ids[..] else {
            return usage();
        };
        pool::keeper(admin, host_uid, host_gid);
    }
    if let [cmd] = args.as_slice()
        && cmd == "guard"
    {
        let admin = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok());
        return match guard::ensure(admin.unwrap_or(0), true) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llima-box-guest-agent guard: {e}");
                ExitCode::from(125)
            }
        };
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
    if let [cmd, rest @ ..] = args.as_slice()
        && cmd == "protect-git"
    {
        let done = match rest {
            [undo, project] if undo == "--undo" => {
                protect_git::unprotect(std::path::Path::new(project))
            }
            [project, scan @ ..] if scan.len() <= 1 => {
                let project = std::path::Path::new(project);
                let scan = scan.first().map_or(project, std::path::Path::new);
                protect_git::protect_found(project, scan).map(drop)
            }
            _ => return usage(),
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
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
    eprintln!("       llima-box-guest-agent {}", env_run::USAGE);
    eprintln!("       llima-box-guest-agent pool-keeper ADMIN_UID HOST_UID HOST_GID");
    eprintln!("       sudo llima-box-guest-agent guard");
    eprintln!("       llima-box-guest-agent protect-git [--undo] PROJECT [SCAN]");
    ExitCode::from(2)
}

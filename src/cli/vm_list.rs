//! `llima-box vm list`: `limactl list` for every instance under
//! `$LIMA_HOME`, ours or Lima's. It only reads (apart from Lima's own
//! stale-pid-file cleanup), so unlike the VM commands it also runs as root.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Output;
use super::args::VmListArgs;
use crate::vm::{dirs, store};

pub(super) fn run(lima_home: &Path, args: &VmListArgs, out: &Output) -> Result<ExitCode> {
    let all = store::instance_names(lima_home)?;
    if args.names.is_empty() && all.is_empty() {
        out.warn(&format!(
            "no instance found in {}; `llima-box vm start` creates one",
            lima_home.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }

    let mut unmatched = false;
    let selected: Vec<&String> = if args.names.is_empty() {
        all.iter().collect()
    } else {
        let mut sel = Vec::new();
        for wanted in &args.names {
            match all.iter().find(|n| *n == wanted) {
                Some(n) => sel.push(n),
                None => {
                    out.warn(&format!("No instance matching {wanted} found."));
                    unmatched = true;
                }
            }
        }
        sel
    };

    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let mut w = stdout.lock();
    if args.names_only {
        for name in &selected {
            writeln!(w, "{name}")?;
        }
    } else {
        let mut instances = Vec::new();
        for name in selected {
            let inst = store::inspect_for_list(lima_home, name)
                .with_context(|| format!("unable to load instance {name:?}"))?;
            if !inst.errors.is_empty() {
                out.warn(&format!(
                    "instance {:?} has errors: {}",
                    inst.name,
                    inst.errors.join("; ")
                ));
            }
            instances.push(inst);
        }
        if args.json {
            let globals = store::Globals::new(lima_home);
            for inst in &instances {
                let v = store::list_json(inst, &globals);
                // JSON Lines for programs; indented for a person, as limactl.
                let line = if tty {
                    serde_json::to_string_pretty(&v)?
                } else {
                    serde_json::to_string(&v)?
                };
                writeln!(w, "{line}")?;
            }
        } else {
            let home = dirs::home_dir().ok();
            let width = if tty {
                terminal_width(&std::io::stdout())
            } else {
                None
            };
            w.write_all(store::table(&instances, home.as_deref(), width).as_bytes())?;
        }
    }
    w.flush()?;
    Ok(if unmatched {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn terminal_width(fd: &impl std::os::fd::AsFd) -> Option<usize> {
    rustix::termios::tcgetwinsize(fd)
        .ok()
        .map(|ws| usize::from(ws.ws_col))
        .filter(|w| *w > 0)
}

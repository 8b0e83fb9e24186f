//! `llima-box vm logs [--serial] [--follow]`: the host agent's log or the
//! guest's serial console, optionally followed as it grows.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::args::LogsArgs;
use crate::vm::{layout, store};

pub(super) fn run(lima_home: &Path, instance: &str, args: &LogsArgs) -> Result<ExitCode> {
    let dir = store::instance_dir(lima_home, instance)?;
    if !dir.is_dir() {
        anyhow::bail!("instance {instance:?} does not exist; `llima-box vm start` creates it");
    }
    let path = dir.join(if args.serial {
        layout::SERIAL_LOG
    } else {
        layout::HOST_AGENT_STDERR_LOG
    });
    print_log(&path, args.follow).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn print_log(path: &Path, follow: bool) -> std::io::Result<()> {
    let mut pos = 0u64;
    let stdout = std::io::stdout();
    loop {
        match std::fs::File::open(path) {
            Ok(mut f) => {
                let len = f.metadata()?.len();
                // A new start truncates the logs: begin again from the top.
                if len < pos {
                    pos = 0;
                }
                f.seek(SeekFrom::Start(pos))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                pos += buf.len() as u64;
                let mut w = stdout.lock();
                w.write_all(&buf)?;
                w.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {}
            Err(e) => return Err(e),
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

//! A guest kernel that panics while booting stops there unless its command
//! line has `panic=N`, and the start would wait out the whole boot timeout
//! (ten minutes under TCG) for a guest that will never answer. The serial
//! consoles say so much sooner: a panic after the last boot's banner, and
//! then silence. Under TCG a kernel sometimes panics on its own code
//! patching (an int3 it has just written, hit on another vCPU), which the
//! next boot does not repeat: the host agent resets the guest a few times
//! before it gives up.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the consoles must stay silent after a panic: a guest with
/// `panic=N` restarts (and prints again) within N seconds.
pub(super) const QUIET: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_secs(1);
/// How many panics the host agent answers with a reset.
pub(super) const RESETS: u32 = 2;
/// How much of the end of each console is read: a panic's report.
const TAIL: u64 = 32 << 10;

const PANIC: &str = "Kernel panic - not syncing";
/// What the kernel prints first on each boot.
const BANNER: &str = "Linux version";
const CMDLINE: &str = "Kernel command line:";

/// Returns the panic's reason once one of `consoles`, past the offsets
/// `from` (see [`sizes`]), shows a panic that nothing followed for
/// `quiet`; never returns for a guest that boots.
pub(super) async fn wait(consoles: &[PathBuf], from: &[u64], quiet: Duration) -> String {
    let mut last = Vec::new();
    let mut silent = Duration::ZERO;
    loop {
        tokio::time::sleep(POLL.min(quiet)).await;
        let now = sizes(consoles);
        if now != last {
            last = now;
            silent = Duration::ZERO;
            continue;
        }
        silent += POLL.min(quiet);
        if silent < quiet {
            continue;
        }
        let found = consoles
            .iter()
            .zip(from.iter().chain(std::iter::repeat(&0)));
        if let Some(why) = found
            .map(|(p, from)| tail(p, *from))
            .find_map(|t| panic_reason(&t))
        {
            return why;
        }
    }
}

/// How far each console is written: where a reset guest's output begins.
pub(super) fn sizes(consoles: &[PathBuf]) -> Vec<u64> {
    consoles.iter().map(|p| size(p)).collect()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The end of `path`, nothing before offset `from`.
fn tail(path: &Path, from: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let start = size(path).saturating_sub(TAIL).max(from);
        if f.seek(SeekFrom::Start(start)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The reason of the last panic in `console`, unless a boot began after it
/// or the kernel was told to restart after a panic (`panic=N`, N not 0).
fn panic_reason(console: &str) -> Option<String> {
    let this_boot: Vec<&str> = console
        .lines()
        .rev()
        .take_while(|l| !l.contains(BANNER))
        .collect();
    let restarts = this_boot
        .iter()
        .filter(|l| l.contains(CMDLINE))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_prefix("panic="))
        .any(|n| n.parse::<i64>().is_ok_and(|n| n != 0));
    if restarts {
        return None;
    }
    let line = this_boot.iter().find(|l| l.contains(PANIC))?;
    let after = &line[line.find(PANIC)? + PANIC.len()..];
    // The report's last line repeats the first inside "---[ end ... ]---".
    let why = after
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("]---")
        .trim();
    Some(if why.is_empty() {
        PANIC.to_string()
    } else {
        why.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PANICKED: &str = "\
[    0.000000] Linux version 6.1.0-40-cloud-amd64 (debian-kernel@lists.debian.org)
[    3.901234] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    3.912345] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
[    3.912400] Kernel Offset: disabled
[    3.912500] ---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b ]---
";

    #[test]
    fn reads_the_reason_of_a_panic_with_no_boot_after_it() {
        assert_eq!(
            panic_reason(PANICKED).as_deref(),
            Some("Attempted to kill init! exitcode=0x0000000b")
        );
        let rebooted = format!("{PANICKED}[    0.000000] Linux version 6.1.0-40-cloud-amd64\n");
        assert_eq!(panic_reason(&rebooted), None);
        assert_eq!(
            panic_reason("[ 1.0] Linux version 6.1\n[ 2.0] Run /init\n"),
            None
        );
        assert_eq!(
            panic_reason("Kernel panic - not syncing\n").as_deref(),
            Some(PANIC)
        );
        // A kernel that restarts by itself is left to the boot timeout.
        let with = |opts: &str| {
            PANICKED.replace(
                "NOPTI\n",
                &format!("NOPTI\n[    0.01] Kernel command line: root=/dev/vda1 {opts}\n"),
            )
        };
        assert_eq!(panic_reason(&with("panic=1 quiet")), None);
        assert_eq!(panic_reason(&with("panic=-1")), None);
        assert!(panic_reason(&with("panic=0")).is_some());
        assert!(panic_reason(&with("console=ttyS0")).is_some());
    }

    #[tokio::test]
    async fn waits_for_silence_after_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (serial, virtio) = (dir.path().join("serial.log"), dir.path().join("v.log"));
        std::fs::write(&virtio, PANICKED).unwrap();
        let quiet = Duration::from_millis(300);
        let consoles = vec![serial.clone(), virtio];
        let watch = {
            let consoles = consoles.clone();
            tokio::spawn(async move { wait(&consoles, &[], quiet).await })
        };
        // A console that keeps printing holds it off.
        for i in 0..8 {
            std::fs::write(&serial, "x".repeat(i + 1)).unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(!watch.is_finished(), "gave up on a guest still printing");
        }
        let why = tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("a silent panicked guest is reported")
            .unwrap();
        assert!(why.starts_with("Attempted to kill init!"), "{why}");

        // A guest that restarted after its panic is not reported.
        std::fs::write(&serial, format!("{PANICKED}[ 0.0] Linux version 6.1\n")).unwrap();
        std::fs::write(&consoles[1], "").unwrap();
        let silent = |from: Vec<u64>| {
            let consoles = consoles.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(2), wait(&consoles, &from, quiet))
                    .await
                    .is_err()
            }
        };
        assert!(silent(vec![]).await);
        // Nor a panic from before a reset, whose output has not begun yet.
        std::fs::write(&serial, PANICKED).unwrap();
        assert!(silent(sizes(&consoles)).await);
        assert!(!silent(vec![]).await);
    }
}

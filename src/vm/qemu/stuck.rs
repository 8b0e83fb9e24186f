//! Noticing a hardware accelerator that accepts a guest but never runs it.
//!
//! Some hosts (nested virtualization in particular) have a `/dev/kvm` that
//! opens fine while guests hang at the first instruction or QEMU aborts
//! (`-cpu host`). The caller cannot tell from the start alone, so it watches
//! the first seconds of the boot:
//!
//! * Any byte on the serial console (`$D/serial.log`: UEFI firmware prints
//!   its boot lines there, a kernel with `console=ttyS0` prints at once)
//!   proves the vCPU executes code: **progress**.
//! * QEMU exiting, or QMP `query-status` saying `internal-error` or
//!   `guest-panicked`, before any progress under kvm/hvf: **stuck**.
//! * No serial output at all within the window ([`KVM_WINDOW`], 10 s) under
//!   kvm/hvf: **stuck**. Under TCG the same firmware prints within about
//!   2 s on an idle host, and KVM is faster still, so 10 s of silence is
//!   not slowness.
//!
//! On a nested-virtualization host whose `/dev/kvm` opens, QEMU under kvm
//! stops at once with a KVM internal error: state `internal-error`, no
//! serial output; the watcher catches it on its first poll.
//!
//! On "stuck" the caller kills QEMU and starts again with `-accel tcg`.
//! Under TCG nothing is ever judged stuck: slow is still working. The
//! signal needs a guest that writes to the serial console, so direct-boot
//! kernels must have `console=ttyS0` (or the arch's equivalent) on their
//! command line.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use super::Accel;
use crate::vm::layout;
use crate::vm::qmp::Qmp;
use crate::vm::sys::Sys;

/// How long kvm/hvf may stay silent before the accelerator is given up.
pub(crate) const KVM_WINDOW: Duration = Duration::from_secs(10);

/// What the watcher sees at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Observation {
    /// Size of `$D/serial.log`.
    pub serial_bytes: u64,
    /// QMP `query-status`, when QMP answered.
    pub status: Option<String>,
    /// QEMU is no longer running.
    pub exited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The guest is running code.
    Progress,
    /// Nothing decided yet.
    Waiting,
    /// The accelerator does not run this guest; retry with TCG.
    Stuck(String),
    /// QEMU is gone under TCG: a plain failure, see its log.
    Exited,
}

/// The pure decision for one observation `elapsed` after the start.
pub(crate) fn judge(accel: Accel, elapsed: Duration, o: &Observation, window: Duration) -> Verdict {
    let hw = accel != Accel::Tcg;
    let name = accel.as_str();
    if o.serial_bytes > 0 && !o.exited {
        return Verdict::Progress;
    }
    if o.exited {
        return if hw {
            Verdict::Stuck(format!(
                "QEMU exited under {name} before the guest printed anything"
            ))
        } else {
            Verdict::Exited
        };
    }
    if let Some(s) = o
        .status
        .as_deref()
        .filter(|s| *s == "internal-error" || *s == "guest-panicked")
        && hw
    {
        return Verdict::Stuck(format!("the guest is in state {s} under {name}"));
    }
    if hw && elapsed >= window {
        return Verdict::Stuck(format!(
            "no serial console output within {} s under {name}",
            window.as_secs()
        ));
    }
    Verdict::Waiting
}

/// Polls `observe` every `poll` until [`judge`] decides, or `window` has
/// passed (then, under TCG, the answer is `Waiting`).
pub(crate) fn watch(
    host: &dyn Sys,
    accel: Accel,
    window: Duration,
    poll: Duration,
    mut observe: impl FnMut() -> Observation,
) -> Verdict {
    let start = host.now();
    loop {
        let elapsed = host.now() - start;
        let v = judge(accel, elapsed, &observe(), window);
        if v != Verdict::Waiting || elapsed >= window {
            return v;
        }
        host.sleep(poll);
    }
}

/// One real observation of an instance whose QEMU is `child`. `qmp` is
/// used for `query-status` when given (a failed query counts as unknown).
pub(crate) fn observe(
    instance_dir: &Path,
    child: &mut Child,
    qmp: Option<&mut Qmp>,
) -> Observation {
    Observation {
        serial_bytes: std::fs::metadata(instance_dir.join(layout::SERIAL_LOG))
            .map(|m| m.len())
            .unwrap_or(0),
        status: qmp.and_then(|q| q.query_status().ok()),
        exited: !matches!(child.try_wait(), Ok(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::sys::fake::{FakeSys, ok};

    const W: Duration = KVM_WINDOW;

    fn obs(serial: u64, status: Option<&str>, exited: bool) -> Observation {
        Observation {
            serial_bytes: serial,
            status: status.map(str::to_string),
            exited,
        }
    }

    #[test]
    fn decisions() {
        let s = |n| Duration::from_secs(n);
        assert_eq!(
            judge(Accel::Kvm, s(1), &obs(0, Some("running"), false), W),
            Verdict::Waiting
        );
        assert_eq!(
            judge(Accel::Kvm, s(3), &obs(12, None, false), W),
            Verdict::Progress
        );
        assert!(
            matches!(judge(Accel::Kvm, s(10), &obs(0, Some("running"), false), W), Verdict::Stuck(m) if m.contains("within 10 s under kvm"))
        );
        assert!(matches!(
            judge(Accel::Hvf, s(1), &obs(0, None, true), W),
            Verdict::Stuck(_)
        ));
        assert!(matches!(
            judge(Accel::Kvm, s(1), &obs(0, Some("internal-error"), false), W),
            Verdict::Stuck(_)
        ));
        assert_eq!(
            judge(Accel::Tcg, s(60), &obs(0, Some("running"), false), W),
            Verdict::Waiting
        );
        assert_eq!(
            judge(Accel::Tcg, s(1), &obs(0, None, true), W),
            Verdict::Exited
        );
        assert_eq!(
            judge(Accel::Tcg, s(1), &obs(0, Some("guest-panicked"), false), W),
            Verdict::Waiting
        );
    }

    #[test]
    fn watch_polls_until_the_window_closes() {
        let host = FakeSys::new(|_, _| ok(""));
        let mut calls = 0;
        let v = watch(&host, Accel::Kvm, W, Duration::from_millis(500), || {
            calls += 1;
            Observation::default()
        });
        assert!(matches!(v, Verdict::Stuck(_)));
        assert_eq!(calls, 21, "0 s, 0.5 s, … 10 s");

        let mut n = 0;
        let v = watch(&host, Accel::Kvm, W, Duration::from_millis(500), || {
            n += 1;
            obs(if n == 3 { 40 } else { 0 }, None, false)
        });
        assert_eq!((v, n), (Verdict::Progress, 3));
    }
}

//! The seam for the side effects of the disk and QEMU code: running helper
//! programs (qemu-img) and the clock. The real implementation is
//! [`RealSys`]; unit tests use a recording fake so they can assert the
//! exact commands without touching the system.

use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

/// Lima's name for this host's architecture (`x86_64`, `aarch64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7l",
        "powerpc64" => "ppc64le",
        arch => arch,
    }
}

/// Go's `GOOS` for this host (`linux`, `darwin`), as `limactl` prints it.
pub fn host_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    }
}

/// What a finished helper program left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Output {
    /// True when the program exited with status 0.
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub(crate) trait Sys {
    /// Runs `program args…` to completion and collects its output. An
    /// `Err` means the program could not be started at all.
    fn run(&self, program: &str, args: &[String]) -> io::Result<Output>;
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The machine itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RealSys;

impl Sys for RealSys {
    fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        let out = Command::new(program).args(args).output()?;
        Ok(Output {
            success: out.status.success(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::cell::{Cell, RefCell};

    type Responder = Box<dyn Fn(&str, &[String]) -> io::Result<Output>>;

    /// Records every command as one string ("qemu-img info …") and answers
    /// with `respond`; its clock only moves when `sleep` is called.
    pub(crate) struct FakeSys {
        pub calls: RefCell<Vec<String>>,
        respond: Responder,
        start: Instant,
        elapsed: Cell<Duration>,
    }

    impl FakeSys {
        pub(crate) fn new(
            respond: impl Fn(&str, &[String]) -> io::Result<Output> + 'static,
        ) -> Self {
            FakeSys {
                calls: RefCell::new(Vec::new()),
                respond: Box::new(respond),
                start: Instant::now(),
                elapsed: Cell::new(Duration::ZERO),
            }
        }

        pub(crate) fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    /// A successful run printing `stdout`.
    pub(crate) fn ok(stdout: &str) -> io::Result<Output> {
        Ok(Output {
            success: true,
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }

    impl Sys for FakeSys {
        fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
            let mut line = program.to_string();
            for a in args {
                line.push(' ');
                line.push_str(a);
            }
            self.calls.borrow_mut().push(line);
            (self.respond)(program, args)
        }

        fn now(&self) -> Instant {
            self.start + self.elapsed.get()
        }

        fn sleep(&self, d: Duration) {
            self.elapsed.set(self.elapsed.get() + d);
        }
    }
}

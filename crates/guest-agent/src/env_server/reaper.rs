//! The server is PID 1 of the environment: it reaps every process that
//! ends in it, hands each command's status to the session waiting for it,
//! and exits on SIGTERM (which ends the namespace). Signals are blocked in
//! every thread and taken by one, with sigwait.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Commands' pids and where their wait statuses go.
#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<libc::pid_t, std::fs::File>>,
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

const TAKEN: [libc::c_int; 2] = [libc::SIGCHLD, libc::SIGTERM];

/// Blocks the signals the reaper takes, and the ones an environment's
/// first process ignores (INT, HUP); call before any thread starts so that
/// every thread inherits the mask.
pub fn block_signals() {
    let set = signal_set(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

impl Reaper {
    /// Forks with `child` run in the child (which must exec or exit; it
    /// exits 125 if `child` returns), and returns the pid and a pipe
    /// that delivers its wait status (4 bytes, native order) once it ends.
    /// The pid is registered before the reaper can see the child end.
    pub fn fork(&self, child: impl FnOnce()) -> io::Result<(libc::pid_t, OwnedFd)> {
        let (read, write) = crate::sys::pipe()?;
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child only runs `child`, which makes system calls and
        // never returns.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                child();
                // SAFETY: ends the child without running the parent's exit code.
                unsafe { libc::_exit(125) }
            }
            pid => {
                waiting.insert(pid, std::fs::File::from(write));
                Ok((pid, read))
            }
        }
    }

    /// Takes signals forever: reaps on SIGCHLD, exits on SIGTERM.
    pub fn run(&self) -> ! {
        let set = signal_set(&TAKEN);
        loop {
            let mut sig = 0;
            // SAFETY: a valid set and out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGTERM {
                std::process::exit(0);
            }
            self.reap();
        }
    }

    fn reap(&self) {
        loop {
            let mut status = 0;
            // SAFETY: an out-pointer to an int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let waiter = self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid);
            // A session that hung up has closed its end: nothing to tell.
            if let Some(mut w) = waiter {
                let _ = w.write_all(&status.to_ne_bytes());
            }
        }
    }
}

//! The seccomp filter that keeps setuid and setgid bits off files made
//! from the guest. A project is the host user's own directory, so such a
//! bit would reach the host (where it is not inert, as it is in an
//! environment's `nosuid` mounts), whichever way the project is shared.
//! Refused with EPERM: `chmod` and friends with those bits, and files
//! created or made (`open`, `creat`, `mknod`) with them. Refused as if
//! absent (ENOSYS, which callers fall back from): system call ABIs whose
//! numbers differ (i386, x32), and where the filter is to be sure of what
//! it cannot read, io_uring and `openat2` (see [`Scope`]).

use std::os::fd::RawFd;

use libc::sock_filter;

/// The bits no file from the guest may get.
pub const SET_ID: u32 = libc::S_ISUID | libc::S_ISGID;
/// Flags with which `open` uses its mode.
pub const CREATE: u32 = (libc::O_CREAT | libc::O_TMPFILE) as u32;

/// Whose system calls the filter judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A command in an environment, in the guest: no `chmod` and no
    /// creation with the bits; io_uring (whose operations a filter cannot
    /// read) absent; `openat2` (whose mode is in the caller's memory)
    /// handed to a supervisor on the filter's listener. The supervisor
    /// reads the mode before the kernel does, so a thread of the caller
    /// can change it in between: what wins that race in the project is
    /// stopped on the host ([`Scope::FileServer`]).
    Command,
    /// A host process that serves the guest's shares (virtiofsd, QEMU's
    /// 9p): whatever the guest asks for, no file is created with the bits.
    /// `openat2` is absent, so both use `openat`, whose mode the filter
    /// reads in a register: race-free, as nothing of the guest's can change
    /// the server's memory. `chmod` passes: the 9p server sets a new
    /// directory's inherited setgid bit with it, and an environment's
    /// `chmod` is refused in the guest (its mode is in a register, so
    /// that refusal cannot be raced).
    FileServer,
}

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xC000_00B7;

/// A system call that takes a mode: its number, the argument with the
/// mode, for `open`s the one with the flags, and whether it makes a file
/// (rather than changing one).
struct Moded {
    nr: libc::c_long,
    mode: u32,
    flags: Option<u32>,
    creates: bool,
}

const fn change(nr: libc::c_long, mode: u32) -> Moded {
    Moded {
        nr,
        mode,
        flags: None,
        creates: false,
    }
}

const fn create(nr: libc::c_long, mode: u32, flags: Option<u32>) -> Moded {
    Moded {
        nr,
        mode,
        flags,
        creates: true,
    }
}

#[cfg(target_arch = "x86_64")]
const MODED: [Moded; 9] = [
    change(libc::SYS_chmod, 1),
    change(libc::SYS_fchmod, 1),
    change(libc::SYS_fchmodat, 2),
    change(libc::SYS_fchmodat2, 2),
    create(libc::SYS_creat, 1, None),
    create(libc::SYS_open, 2, Some(1)),
    create(libc::SYS_openat, 3, Some(2)),
    create(libc::SYS_mknod, 1, None),
    create(libc::SYS_mknodat, 2, None),
];
#[cfg(target_arch = "aarch64")]
const MODED: [Moded; 5] = [
    change(libc::SYS_fchmod, 1),
    change(libc::SYS_fchmodat, 2),
    change(libc::SYS_fchmodat2, 2),
    create(libc::SYS_openat, 3, Some(2)),
    create(libc::SYS_mknodat, 2, None),
];
/// x32 system calls are the x86_64 numbers with this bit.
const X32_BIT: u32 = 0x4000_0000;

// Offsets in `struct seccomp_data`: nr, arch, instruction pointer, args.
const NR: u32 = 0;
const ARCH_AT: u32 = 4;
/// The low 32 bits of argument `i` (little-endian).
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

fn load(offset: u32) -> sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(value: u32) -> sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, value)
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

/// The filter for `scope`, built before a fork so that installing it in
/// the child allocates nothing.
pub struct Filter {
    program: Vec<sock_filter>,
    scope: Scope,
}

impl Filter {
    pub fn new(scope: Scope) -> Filter {
        Filter {
            program: program(scope),
            scope,
        }
    }

    /// Sets `no_new_privs` (which an unprivileged filter needs, and which
    /// every process under this one keeps) and installs the filter in the
    /// calling thread. For [`Scope::Command`], returns the listener on
    /// which its supervisor answers `openat2` calls.
    ///
    /// # Safety
    /// Only system calls: fit for a child forked from a threaded process.
    pub unsafe fn install(&self) -> Result<Option<RawFd>, i32> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        let flags = match self.scope {
            Scope::Command => libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            Scope::FileServer => 0,
        };
        // SAFETY: prctl with integer arguments, and a valid program for the
        // kernel to copy.
        let fd = unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(errno_now());
            }
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if fd < 0 {
            Err(errno_now())
        } else {
            Ok((self.scope == Scope::Command).then_some(fd as RawFd))
        }
    }
}

/// Makes `cmd` start under the filter of [`Scope::FileServer`]: for
/// the host's QEMU and virtiofsd, which write the shared files.
pub fn file_server(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let filter = Filter::new(Scope::FileServer);
    // SAFETY: installing the filter makes only system calls.
    unsafe {
        cmd.pre_exec(move || {
            filter
                .install()
                .map(drop)
                .map_err(std::io::Error::from_raw_os_error)
        })
    }
}

fn errno_now() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn program(scope: Scope) -> Vec<sock_filter> {
    let allow = ret(libc::SECCOMP_RET_ALLOW);
    let mut p = vec![
        load(ARCH_AT),
        jump(libc::BPF_JEQ, ARCH, 1, 0),
        ret(errno(libc::ENOSYS)),
        load(NR),
    ];
    if cfg!(target_arch = "x86_64") {
        p.extend([jump(libc::BPF_JGE, X32_BIT, 0, 1), ret(errno(libc::ENOSYS))]);
    }
    if scope == Scope::Command {
        p.extend([
            jump(libc::BPF_JEQ, libc::SYS_io_uring_setup as u32, 0, 1),
            ret(errno(libc::ENOSYS)),
        ]);
    }
    let openat2 = match scope {
        // The supervisor reads the call and answers for it.
        Scope::Command => libc::SECCOMP_RET_USER_NOTIF,
        // The server falls back to openat, which is judged below.
        Scope::FileServer => errno(libc::ENOSYS),
    };
    p.extend([
        jump(libc::BPF_JEQ, libc::SYS_openat2 as u32, 0, 1),
        ret(openat2),
    ]);
    let judged = MODED
        .iter()
        .filter(|m| m.creates || scope == Scope::Command);
    for m in judged {
        let mut body = Vec::new();
        if let Some(flags) = m.flags {
            // Without a creating flag the mode is not used: allowed.
            body.extend([load(arg(flags)), jump(libc::BPF_JSET, CREATE, 0, 3)]);
        }
        body.extend([
            load(arg(m.mode)),
            jump(libc::BPF_JSET, SET_ID, 0, 1),
            ret(errno(libc::EPERM)),
            allow,
        ]);
        p.push(jump(libc::BPF_JEQ, m.nr as u32, 0, body.len() as u8));
        p.extend(body);
        // The number register was replaced by the arguments: load it again.
        p.push(load(NR));
    }
    p.push(allow);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on a system call as the kernel would: the few
    /// instructions it uses.
    fn verdict(program: &[sock_filter], arch: u32, nr: libc::c_long, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = program[pc];
            let code = u32::from(ins.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let at = ins.k as usize;
                acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            } else if code == libc::BPF_RET | libc::BPF_K {
                return ins.k;
            } else {
                let taken = match code & 0xf0 {
                    c if c == libc::BPF_JEQ => acc == ins.k,
                    c if c == libc::BPF_JGE => acc >= ins.k,
                    c if c == libc::BPF_JSET => acc & ins.k != 0,
                    _ => panic!("unexpected instruction {code:#x}"),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
        }
    }

    fn run(nr: libc::c_long, args: [u64; 6]) -> u32 {
        verdict(&program(Scope::Command), ARCH, nr, args)
    }

    fn serve(nr: libc::c_long, args: [u64; 6]) -> u32 {
        verdict(&program(Scope::FileServer), ARCH, nr, args)
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const O_CREAT: u64 = libc::O_CREAT as u64;

    #[test]
    fn refuses_set_id_bits_only() {
        let eperm = errno(libc::EPERM);
        assert_eq!(run(libc::SYS_fchmodat, [0, 0, 0o4755, 0, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_fchmodat, [0, 0, 0o2775, 0, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_fchmodat, [0, 0, 0o1777, 0, 0, 0]), ALLOW);
        assert_eq!(run(libc::SYS_fchmodat, [0, 0, 0o755, 0, 0, 0]), ALLOW);
        assert_eq!(run(libc::SYS_fchmod, [3, 0o6755, 0, 0, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_fchmodat2, [0, 0, 0o4700, 0, 0, 0]), eperm);
        // Created with the bits: refused; opened without creating: the
        // mode argument is not looked at.
        assert_eq!(run(libc::SYS_openat, [0, 0, O_CREAT, 0o4755, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_openat, [0, 0, O_CREAT, 0o644, 0, 0]), ALLOW);
        assert_eq!(run(libc::SYS_openat, [0, 0, 0, 0o4755, 0, 0]), ALLOW);
        let tmpfile = libc::O_TMPFILE as u64;
        assert_eq!(run(libc::SYS_openat, [0, 0, tmpfile, 0o2700, 0, 0]), eperm);
        let regular = u64::from(libc::S_IFREG) | 0o4755;
        assert_eq!(run(libc::SYS_mknodat, [0, 0, regular, 0, 0, 0]), eperm);
        // openat2 goes to the supervisor, whatever its arguments.
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        assert_eq!(run(libc::SYS_openat2, [0, 0, 0, 24, 0, 0]), notify);
        // Everything else passes, whatever its arguments.
        assert_eq!(run(libc::SYS_read, [0, 0o7777, 0o7777, 0, 0, 0]), ALLOW);
        assert_eq!(run(libc::SYS_getpid, [0; 6]), ALLOW);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn covers_the_legacy_calls_and_other_abis() {
        let eperm = errno(libc::EPERM);
        assert_eq!(run(libc::SYS_chmod, [0, 0o4755, 0, 0, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_creat, [0, 0o2755, 0, 0, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_open, [0, O_CREAT, 0o4755, 0, 0, 0]), eperm);
        assert_eq!(run(libc::SYS_open, [0, 0, 0o4755, 0, 0, 0]), ALLOW);
        let enosys = errno(libc::ENOSYS);
        assert_eq!(run(libc::SYS_io_uring_setup, [0; 6]), enosys);
        // x32 and i386 (chmod is 15 there) cannot go around the filter.
        let x32_chmod = i64::from(X32_BIT) + libc::SYS_fchmodat;
        assert_eq!(run(x32_chmod, [0, 0, 0o4755, 0, 0, 0]), enosys);
        assert_eq!(
            verdict(
                &program(Scope::Command),
                0x4000_0003,
                15,
                [0, 0o4755, 0, 0, 0, 0]
            ),
            enosys
        );
    }

    #[test]
    fn a_file_server_may_not_create_with_the_bits() {
        let eperm = errno(libc::EPERM);
        assert_eq!(
            serve(libc::SYS_openat, [0, 0, O_CREAT, 0o4755, 0, 0]),
            eperm
        );
        assert_eq!(
            serve(libc::SYS_openat, [0, 0, O_CREAT, 0o2644, 0, 0]),
            eperm
        );
        assert_eq!(serve(libc::SYS_openat, [0, 0, O_CREAT, 0o644, 0, 0]), ALLOW);
        assert_eq!(serve(libc::SYS_openat, [0, 0, 0, 0o4755, 0, 0]), ALLOW);
        let regular = u64::from(libc::S_IFREG) | 0o2755;
        assert_eq!(serve(libc::SYS_mknodat, [0, 0, regular, 0, 0, 0]), eperm);
        // openat2 absent, so the server falls back to openat.
        let enosys = errno(libc::ENOSYS);
        assert_eq!(serve(libc::SYS_openat2, [0, 0, 0, 24, 0, 0]), enosys);
        // chmod passes (a 9p server sets a directory's inherited setgid
        // bit with it); so does io_uring, which the servers do not use to
        // make files.
        assert_eq!(serve(libc::SYS_fchmodat, [0, 0, 0o2755, 0, 0, 0]), ALLOW);
        assert_eq!(serve(libc::SYS_fchmod, [3, 0o4755, 0, 0, 0, 0]), ALLOW);
        assert_eq!(serve(libc::SYS_io_uring_setup, [0; 6]), ALLOW);
    }

    /// The file server's filter in a real process (perl, in a child that
    /// installs it before exec): the kernel refuses what the program says.
    #[test]
    fn a_file_server_filter_holds_in_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("perl");
        file_server(&mut cmd).current_dir(dir.path()).args([
            "-MFcntl",
            "-e",
            r#"umask 0;
            for (["setid", 04755], ["plain", 0644]) {
                my ($name, $mode) = @$_;
                my $ok = sysopen(my $f, $name, O_WRONLY | O_CREAT | O_EXCL, $mode);
                print "$name=", ($ok ? "ok" : $! + 0), "\n";
            }
            print "chmod=", (chmod(04755, "plain") ? "ok" : $! + 0), "\n";
            my ($dot, $how) = (".", pack("QQQ", 0, 0, 0));
            my $r = syscall(437, -100, $dot, $how, 24);
            print "openat2=", ($r < 0 ? $! + 0 : "ok"), "\n";"#,
        ]);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{out:?}");
        let want = format!(
            "setid={}\nplain=ok\nchmod=ok\nopenat2={}\n",
            libc::EPERM,
            libc::ENOSYS
        );
        assert_eq!(text, want);
        assert!(!dir.path().join("setid").exists());
    }
}

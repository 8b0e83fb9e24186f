//! The system call filter of every command in an environment: no file gets
//! a setuid or setgid bit from there. The project is the host user's own
//! directory, so such a bit would reach the host (where it is not inert,
//! as it is in the environment's `nosuid` mounts), whichever way the
//! project is shared. Refused with EPERM: `chmod` and friends with those
//! bits, and files created or made (`open`, `creat`, `mknod`) with them.
//! Refused as if absent (ENOSYS, which callers fall back from): io_uring,
//! whose operations a filter cannot read, and other system call ABIs
//! (i386, x32), whose numbers differ. `openat2` keeps its mode in memory a
//! filter cannot read, and bubblewrap 0.11 and later open every bind
//! source with it and do not fall back: the filter hands it to a
//! supervisor (see `supervisor`).

use std::os::fd::RawFd;

use libc::sock_filter;

/// The bits no command may set.
pub(super) const SET_ID: u32 = libc::S_ISUID | libc::S_ISGID;
/// Flags with which `open` uses its mode.
pub(super) const CREATE: u32 = (libc::O_CREAT | libc::O_TMPFILE) as u32;

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xC000_00B7;

/// A system call that takes a mode: its number, the argument with the
/// mode and, for `open`s, the one with the flags.
struct Moded {
    nr: libc::c_long,
    mode: u32,
    flags: Option<u32>,
}

const fn moded(nr: libc::c_long, mode: u32, flags: Option<u32>) -> Moded {
    Moded { nr, mode, flags }
}

#[cfg(target_arch = "x86_64")]
const MODED: [Moded; 9] = [
    moded(libc::SYS_chmod, 1, None),
    moded(libc::SYS_fchmod, 1, None),
    moded(libc::SYS_fchmodat, 2, None),
    moded(libc::SYS_fchmodat2, 2, None),
    moded(libc::SYS_creat, 1, None),
    moded(libc::SYS_open, 2, Some(1)),
    moded(libc::SYS_openat, 3, Some(2)),
    moded(libc::SYS_mknod, 1, None),
    moded(libc::SYS_mknodat, 2, None),
];
#[cfg(target_arch = "aarch64")]
const MODED: [Moded; 5] = [
    moded(libc::SYS_fchmod, 1, None),
    moded(libc::SYS_fchmodat, 2, None),
    moded(libc::SYS_fchmodat2, 2, None),
    moded(libc::SYS_openat, 3, Some(2)),
    moded(libc::SYS_mknodat, 2, None),
];
const ABSENT: [libc::c_long; 1] = [libc::SYS_io_uring_setup];
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

/// The filter's program.
pub fn program() -> Vec<sock_filter> {
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
    for nr in ABSENT {
        p.extend([
            jump(libc::BPF_JEQ, nr as u32, 0, 1),
            ret(errno(libc::ENOSYS)),
        ]);
    }
    // The supervisor reads the call and answers for it.
    p.extend([
        jump(libc::BPF_JEQ, libc::SYS_openat2 as u32, 0, 1),
        ret(libc::SECCOMP_RET_USER_NOTIF),
    ]);
    for m in MODED {
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

/// Installs `program` in the calling thread (which has `no_new_privs`);
/// returns the listener its supervisor answers `openat2` calls on.
///
/// # Safety
/// Only system calls: fit for a child forked from a threaded process.
pub unsafe fn install(program: &[sock_filter]) -> Result<RawFd, i32> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: a valid program for the kernel to copy.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd >= 0 {
        Ok(fd as RawFd)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
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
        verdict(&program(), ARCH, nr, args)
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
            verdict(&program(), 0x4000_0003, 15, [0, 0o4755, 0, 0, 0, 0]),
            enosys
        );
    }
}

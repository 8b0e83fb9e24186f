//! The supervisor of `openat2` (see `llima_box_setid_filter`): the filter
//! cannot read the mode of that call, which it keeps in an `open_how`
//! structure in the caller's memory, so the kernel hands each such call to
//! a thread of the process that started the command. It reads the
//! structure and refuses (EPERM) a file created with a setuid or setgid
//! bit; everything else goes on as the caller asked.
//!
//! The command installs the filter itself, just before exec, and sends the
//! filter's listener over a socket pair made before the fork ([`Channel`]).
//!
//! Known limit: the kernel reads `open_how` again once told to go on, so
//! another thread of the caller can change the mode in between. In the
//! project that wins nothing: the host's file server refuses to create the
//! file ("Operation not permitted"). Elsewhere (the environment's home and
//! `/tmp`, both `nosuid` and the guest's own) it wins an inert file.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use llima_box_setid_filter::{CREATE, SET_ID};

/// Both ends of the socket pair that carries a command's listener.
pub struct Channel {
    /// The command's end, closed in it by exec.
    child: OwnedFd,
    /// The supervisor's.
    parent: OwnedFd,
}

impl Channel {
    pub fn new() -> io::Result<Channel> {
        let mut fds = [0; 2];
        // SAFETY: fds is an out-array of two.
        crate::sys::check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: socketpair returned two descriptors nothing else owns.
        Ok(unsafe {
            Channel {
                child: OwnedFd::from_raw_fd(fds[0]),
                parent: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }

    /// The end the forked command sends its listener on.
    pub fn child_end(&self) -> RawFd {
        self.child.as_raw_fd()
    }

    /// After the fork, in the parent: a thread receives the command's
    /// listener and answers its calls until every process under the filter
    /// has ended. A command that ended before sending one ends the thread.
    pub fn supervise(self) -> io::Result<()> {
        let parent = self.parent_end();
        std::thread::Builder::new()
            .name("openat2".into())
            .spawn(move || {
                if let Some(listener) = receive(&parent) {
                    drop(parent);
                    serve(&listener, None);
                }
            })
            .map(drop)
    }

    /// As `supervise`, on this thread, until `until` (the command's pidfd)
    /// is readable: for a process that cannot start threads (it joined a
    /// PID namespace).
    pub fn supervise_until(self, until: &OwnedFd) {
        let parent = self.parent_end();
        if let Some(listener) = receive(&parent) {
            drop(parent);
            serve(&listener, Some(until.as_raw_fd()));
        }
    }

    /// Only the command's copy of its end is left, so a command that never
    /// sends closes the channel.
    fn parent_end(self) -> OwnedFd {
        drop(self.child);
        self.parent
    }
}

/// Runs `f` with a message of one byte and room for one descriptor: what
/// travels on the channel. Only the stack: fit for a forked child.
fn with_message<T>(f: impl FnOnce(&mut libc::msghdr) -> T) -> T {
    let mut control = [0u64; 4];
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set in it stay live
    // for `f`, and the control buffer holds one descriptor's message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: a computation on a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    f(&mut msg)
}

/// In the forked command: sends `listener` on `channel`.
///
/// # Safety
/// Only system calls, on descriptors open in this process: fit for a
/// child forked from a threaded process.
pub unsafe fn send(channel: RawFd, listener: RawFd) -> Result<(), i32> {
    with_message(|msg| {
        // SAFETY: the message has room for this one control header.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), listener);
            if libc::sendmsg(channel, msg, libc::MSG_NOSIGNAL) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
            }
        }
    })
}

/// The listener the command sent, if it sent one.
fn receive(channel: &OwnedFd) -> Option<OwnedFd> {
    with_message(|msg| {
        // SAFETY: the kernel fills the message; the descriptor read from it
        // is new to this process.
        unsafe {
            if libc::recvmsg(channel.as_raw_fd(), msg, libc::MSG_CMSG_CLOEXEC) != 1 {
                return None;
            }
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            if cmsg.is_null()
                || (*cmsg).cmsg_level != libc::SOL_SOCKET
                || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            {
                return None;
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            Some(OwnedFd::from_raw_fd(fd))
        }
    })
}

/// Answers the listener's notifications until no process is under its
/// filter any more (the listener then reports a hang-up), or `until` is
/// readable.
fn serve(listener: &OwnedFd, until: Option<RawFd>) {
    let fd = listener.as_raw_fd();
    loop {
        let mut pfds = [fd, until.unwrap_or(-1)].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: valid pollfds (poll skips a negative descriptor).
        if unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfds[0].revents & libc::POLLIN == 0 || pfds[1].revents != 0 {
            return;
        }
        // SAFETY: the kernel wants a zeroed structure to fill.
        let mut call: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: a structure of the size the request says.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut call) } != 0 {
            // The caller was interrupted or ended before it was read.
            continue;
        }
        let Some(answer) = answer(fd, &call) else {
            continue;
        };
        let resp = libc::seccomp_notif_resp {
            id: call.id,
            val: 0,
            error: answer.map_or(0, |e| -e),
            flags: if answer.is_none() {
                libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
            } else {
                0
            },
        };
        // SAFETY: as above. A caller gone since gets no answer (ENOENT).
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
    }
}

/// What to answer `call`: `Some(None)` to let it go on, `Some(Some(e))` to
/// fail it with `e`, `None` when its caller is gone.
fn answer(listener: RawFd, call: &libc::seccomp_notif) -> Option<Option<i32>> {
    let args = call.data.args;
    if call.data.nr != libc::SYS_openat2 as i32 || args[3] < 16 {
        // Only openat2 comes here; one this short the kernel refuses.
        return Some(None);
    }
    let mut how = [0u64; 2];
    let read = read_memory(call.pid, args[2], &mut how);
    // The pid may have been reused if the caller ended while it was read.
    // SAFETY: an ioctl on the listener with a pointer to the id.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &call.id) } != 0 {
        return None;
    }
    Some(match read {
        Ok(()) => refused(how[0], how[1]).then_some(libc::EPERM),
        // Unreadable for the caller too (EFAULT), or not for this process
        // to read: refused either way.
        Err(e) => Some(e),
    })
}

/// Whether an open with these `flags` and `mode` would make a setuid or
/// setgid file.
fn refused(flags: u64, mode: u64) -> bool {
    flags & u64::from(CREATE) != 0 && mode & u64::from(SET_ID) != 0
}

/// Reads `out` from `address` in process `pid`.
fn read_memory(pid: u32, address: u64, out: &mut [u64; 2]) -> Result<(), i32> {
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: size_of_val(out),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: size_of_val(out),
    };
    // SAFETY: the local buffer is `out`; the remote one is only read by the
    // kernel, checked against the other process's mappings.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n == size_of_val(out) as isize {
        Ok(())
    } else if n < 0 {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM))
    } else {
        Err(libc::EFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_set_id_bits_on_creation() {
        let creat = libc::O_CREAT as u64 | libc::O_WRONLY as u64;
        let tmpfile = libc::O_TMPFILE as u64 | libc::O_RDWR as u64;
        assert!(refused(creat, 0o4755));
        assert!(refused(creat, 0o2700));
        assert!(refused(tmpfile, 0o6000));
        assert!(!refused(creat, 0o1777));
        assert!(!refused(creat, 0o755));
        // Without a creating flag the kernel ignores the mode.
        assert!(!refused(libc::O_PATH as u64, 0o4755));
        assert!(!refused(libc::O_RDONLY as u64, 0o6777));
    }

    /// The listener travels from one end to the other as a descriptor of
    /// the same file.
    #[test]
    fn a_descriptor_crosses_the_channel() {
        let channel = Channel::new().unwrap();
        let file = tempfile::tempfile().unwrap();
        // SAFETY: both descriptors are open in this process.
        unsafe { send(channel.child_end(), file.as_raw_fd()) }.unwrap();
        let got = receive(&channel.parent).unwrap();
        let inode = |fd: RawFd| {
            // SAFETY: an out-pointer to a zeroed stat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
            (st.st_dev, st.st_ino)
        };
        assert_ne!(got.as_raw_fd(), file.as_raw_fd());
        assert_eq!(inode(got.as_raw_fd()), inode(file.as_raw_fd()));
        // A channel whose other end closed without sending: nothing.
        let Channel { child, parent } = Channel::new().unwrap();
        drop(child);
        assert!(receive(&parent).is_none());
    }

    #[test]
    fn reads_another_process_memory_or_says_why_not() {
        let value = [0x41u64, 0o4755];
        let mut out = [0u64; 2];
        read_memory(std::process::id(), value.as_ptr() as u64, &mut out).unwrap();
        assert_eq!(out, value);
        assert_eq!(
            read_memory(std::process::id(), 8, &mut out),
            Err(libc::EFAULT)
        );
    }
}

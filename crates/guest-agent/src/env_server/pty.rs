//! The command's terminal: a pseudo-terminal pair set up as the client's
//! terminal is (SSH's mode opcodes, RFC 4254 section 8).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use llima_box_proto::spawn::Pty;

/// Which termios field a flag opcode is in.
#[derive(Clone, Copy)]
enum Field {
    Input,
    Output,
    Local,
}

/// Control characters: opcode -> index in `c_cc`.
const CHARS: &[(u8, usize)] = &[
    (1, libc::VINTR),
    (2, libc::VQUIT),
    (3, libc::VERASE),
    (4, libc::VKILL),
    (5, libc::VEOF),
    (6, libc::VEOL),
    (7, libc::VEOL2),
    (8, libc::VSTART),
    (9, libc::VSTOP),
    (10, libc::VSUSP),
    (12, libc::VREPRINT),
    (13, libc::VWERASE),
    (14, libc::VLNEXT),
    (18, libc::VDISCARD),
];

/// Flags: opcode -> field and bit.
const FLAGS: &[(u8, Field, libc::tcflag_t)] = &[
    (30, Field::Input, libc::IGNPAR),
    (31, Field::Input, libc::PARMRK),
    (32, Field::Input, libc::INPCK),
    (33, Field::Input, libc::ISTRIP),
    (34, Field::Input, libc::INLCR),
    (35, Field::Input, libc::IGNCR),
    (36, Field::Input, libc::ICRNL),
    (38, Field::Input, libc::IXON),
    (39, Field::Input, libc::IXANY),
    (40, Field::Input, libc::IXOFF),
    (41, Field::Input, libc::IMAXBEL),
    (42, Field::Input, libc::IUTF8),
    (50, Field::Local, libc::ISIG),
    (51, Field::Local, libc::ICANON),
    (53, Field::Local, libc::ECHO),
    (54, Field::Local, libc::ECHOE),
    (55, Field::Local, libc::ECHOK),
    (56, Field::Local, libc::ECHONL),
    (57, Field::Local, libc::NOFLSH),
    (58, Field::Local, libc::TOSTOP),
    (59, Field::Local, libc::IEXTEN),
    (60, Field::Local, libc::ECHOCTL),
    (61, Field::Local, libc::ECHOKE),
    (70, Field::Output, libc::OPOST),
    (72, Field::Output, libc::ONLCR),
    (73, Field::Output, libc::OCRNL),
    (74, Field::Output, libc::ONOCR),
    (75, Field::Output, libc::ONLRET),
];

/// `t` with the client's modes applied; opcodes this side does not know
/// are left out, as sshd does.
fn apply(mut t: libc::termios, modes: &[(u8, u32)]) -> libc::termios {
    for &(op, value) in modes {
        if let Some(&(_, i)) = CHARS.iter().find(|c| c.0 == op) {
            t.c_cc[i] = value as libc::cc_t;
        } else if let Some(&(_, field, bit)) = FLAGS.iter().find(|f| f.0 == op) {
            let f = match field {
                Field::Input => &mut t.c_iflag,
                Field::Output => &mut t.c_oflag,
                Field::Local => &mut t.c_lflag,
            };
            if value != 0 { *f |= bit } else { *f &= !bit }
        }
    }
    t
}

/// A new terminal pair (master, slave) set up like the client's.
pub fn open(pty: &Pty) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: out-pointers to two ints; no name, termios or size passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: a valid descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: a zeroed termios is filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid terminal descriptor and termios.
    if unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let t = apply(t, &pty.modes);
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    resize(slave.as_raw_fd(), pty.rows, pty.cols)?;
    Ok((master, slave))
}

pub fn resize(fd: RawFd, rows: u32, cols: u32) -> io::Result<()> {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let size = libc::winsize {
        ws_row: clamp(rows),
        ws_col: clamp(cols),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a terminal descriptor and a valid winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_set_and_clear_bits_and_characters() {
        // SAFETY: plain data.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        t.c_lflag = libc::ECHO | libc::ICANON;
        let t = apply(t, &[(53, 0), (50, 1), (1, 3), (36, 1), (72, 1), (200, 1)]);
        assert_eq!(
            t.c_lflag,
            libc::ICANON | libc::ISIG,
            "ECHO cleared, ISIG set"
        );
        assert_eq!(t.c_cc[libc::VINTR], 3);
        assert_eq!(t.c_iflag, libc::ICRNL);
        assert_eq!(t.c_oflag, libc::ONLCR);
    }

    #[test]
    fn a_real_terminal_gets_size_and_modes() {
        let pty = Pty {
            term: "xterm".into(),
            cols: 132,
            rows: 43,
            modes: vec![(53, 0), (1, 7)],
        };
        let (_master, slave) = open(&pty).unwrap();
        // SAFETY: plain data filled by the kernel.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) },
            0
        );
        assert_eq!((size.ws_row, size.ws_col), (43, 132));
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut t) }, 0);
        assert_eq!(t.c_lflag & libc::ECHO, 0);
        assert_eq!(t.c_cc[libc::VINTR], 7);
    }
}

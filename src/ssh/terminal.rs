//! The local terminal during an interactive session: raw mode that is
//! undone on every way out (drop, panic, handled signal), and its size.

use std::io::IsTerminal;
use std::sync::{Mutex, Once};

use russh::Pty;
use rustix::termios::{
    InputModes, LocalModes, OptionalActions, OutputModes, SpecialCodeIndex as C, Termios,
    tcgetattr, tcgetwinsize, tcsetattr,
};

use super::Error;

/// The modes to restore, shared with the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether stdin is a terminal (then a PTY is requested, like `ssh -t`).
pub(crate) fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The terminal size of stdin as (columns, rows); `None` if unknown.
pub(super) fn window_size() -> Option<(u32, u32)> {
    let ws = tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

/// The local terminal's line settings for the remote PTY, as `ssh -t`
/// sends them, so that e.g. the erase key and UTF-8 line editing match.
/// Call it before entering raw mode.
pub(super) fn pty_modes() -> Vec<(Pty, u32)> {
    let Ok(t) = tcgetattr(std::io::stdin()) else {
        return Vec::new();
    };
    let chars = [
        (Pty::VINTR, C::VINTR),
        (Pty::VQUIT, C::VQUIT),
        (Pty::VERASE, C::VERASE),
        (Pty::VKILL, C::VKILL),
        (Pty::VEOF, C::VEOF),
        (Pty::VEOL, C::VEOL),
        (Pty::VEOL2, C::VEOL2),
        (Pty::VSTART, C::VSTART),
        (Pty::VSTOP, C::VSTOP),
        (Pty::VSUSP, C::VSUSP),
        (Pty::VREPRINT, C::VREPRINT),
        (Pty::VWERASE, C::VWERASE),
        (Pty::VLNEXT, C::VLNEXT),
        (Pty::VDISCARD, C::VDISCARD),
    ];
    let input = [
        (Pty::ICRNL, InputModes::ICRNL),
        (Pty::IXON, InputModes::IXON),
        (Pty::IXANY, InputModes::IXANY),
        (Pty::IXOFF, InputModes::IXOFF),
        (Pty::IMAXBEL, InputModes::IMAXBEL),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        (Pty::IUTF8, InputModes::IUTF8),
    ];
    let local = [
        (Pty::ISIG, LocalModes::ISIG),
        (Pty::ICANON, LocalModes::ICANON),
        (Pty::ECHO, LocalModes::ECHO),
        (Pty::ECHOE, LocalModes::ECHOE),
        (Pty::ECHOK, LocalModes::ECHOK),
        (Pty::ECHONL, LocalModes::ECHONL),
        (Pty::NOFLSH, LocalModes::NOFLSH),
        (Pty::TOSTOP, LocalModes::TOSTOP),
        (Pty::IEXTEN, LocalModes::IEXTEN),
        (Pty::ECHOCTL, LocalModes::ECHOCTL),
        (Pty::ECHOKE, LocalModes::ECHOKE),
    ];
    let output = [
        (Pty::OPOST, OutputModes::OPOST),
        (Pty::ONLCR, OutputModes::ONLCR),
    ];
    let mut modes: Vec<(Pty, u32)> = chars
        .into_iter()
        // The protocol says "disabled" with 255, whatever the local value.
        .map(|(p, i)| match t.special_codes[i] {
            libc::_POSIX_VDISABLE => (p, 255),
            c => (p, u32::from(c)),
        })
        .collect();
    modes.extend(input.map(|(p, f)| (p, u32::from(t.input_modes.contains(f)))));
    modes.extend(local.map(|(p, f)| (p, u32::from(t.local_modes.contains(f)))));
    modes.extend(output.map(|(p, f)| (p, u32::from(t.output_modes.contains(f)))));
    modes
}

/// Raw mode on stdin for as long as this value lives.
pub(super) struct RawMode(());

impl RawMode {
    pub(super) fn enable() -> Result<RawMode, Error> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(|e| Error::Terminal {
            what: "read the modes of",
            source: e.into(),
        })?;
        install_panic_hook();
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved.clone());
        let mut raw = saved;
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Drain, &raw).map_err(|e| {
            restore();
            Error::Terminal {
                what: "switch to raw mode",
                source: e.into(),
            }
        })?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the saved modes back, once; safe to call from the panic hook.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = saved {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &t);
    }
}

/// A panic message printed in raw mode is mangled and leaves the user's
/// shell unusable, so the terminal is restored before the message.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

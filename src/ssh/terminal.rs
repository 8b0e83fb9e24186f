//! The local terminal during an interactive session: raw mode that is
//! undone on every way out (drop, panic, handled signal), and its size.

use std::io::IsTerminal;
use std::sync::{Mutex, Once};

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};

use super::Error;

/// The modes to restore, shared with the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether stdin is a terminal (then a PTY is requested, like `ssh -t`).
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The terminal size of stdin as (columns, rows); `None` if unknown.
pub(super) fn window_size() -> Option<(u32, u32)> {
    let ws = tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
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

//! One connection to the guest for whoever in a process needs it (the
//! host agent's `vm shell` commands and its published ports), logged in
//! again when it is found closed (sshd restarted, the guest rebooted).

use std::sync::Arc;

use tokio::sync::Mutex;

use super::{ConnectOptions, Error, Session};

pub(crate) struct SharedSession {
    opts: ConnectOptions,
    slot: Mutex<Option<Arc<Session>>>,
}

impl SharedSession {
    /// Connects on first use, not here.
    pub(crate) fn new(opts: ConnectOptions) -> SharedSession {
        SharedSession {
            opts,
            slot: Mutex::new(None),
        }
    }

    pub(crate) fn opts(&self) -> &ConnectOptions {
        &self.opts
    }

    /// The held connection, or a new one when it has ended or `fresh`
    /// (the caller found it broken). Callers that come during a login
    /// wait for it rather than log in too.
    pub(crate) async fn get(&self, fresh: bool) -> Result<Arc<Session>, Error> {
        let mut slot = self.slot.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !fresh && !s.is_closed()) {
            return Ok(s.clone());
        }
        let s = Arc::new(Session::connect(self.opts.clone()).await?);
        *slot = Some(s.clone());
        Ok(s)
    }
}

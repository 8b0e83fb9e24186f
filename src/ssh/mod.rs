//! The SSH client that carries every byte into the guest.
//!
//! All russh types stay behind this module (russh breaks its API about every
//! month): callers see [`Session`], [`ConnectOptions`], [`RemoteExit`] and the
//! key helpers in [`keys`]. The guest's host key is pinned rather than
//! trusted on first use, because llima-box generates it and injects it
//! through cloud-init.

mod agent_forward;
mod connect;
mod error;
mod exec;
pub(crate) mod keys;
pub(crate) mod mux;
mod quote;
mod shared;
pub(crate) mod spawn;
mod terminal;

pub(crate) use connect::SocketStream;
pub use connect::{ConnectOptions, HostKeyPolicy, Session};
pub use error::Error;
pub use exec::RemoteExit;
pub use keys::KeyPair;
pub(crate) use keys::PublicKey;
pub(crate) use quote::quote_argv;
pub(crate) use shared::SharedSession;
pub(crate) use spawn::Spawn;
pub(crate) use terminal::stdin_is_tty;

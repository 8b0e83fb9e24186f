//! llima-box: one shared, Lima-compatible VM with an isolated environment per
//! project directory.
//!
//! Modules mirror the architecture: `cli` is the only place that prints for
//! humans; `vm` owns the Lima store, config and the VM lifecycle; `ssh` is the
//! client that carries every byte into the guest; `env` maps project paths to
//! environments.
//!
//! The modules are private and their items `pub(crate)` unless something
//! outside the crate uses them, so that the dead-code lint sees everything.
//! The public surface is [`main`] for the binary and, hidden, [`testing`] for
//! the integration tests and the bench example.

#![warn(unreachable_pub)]

mod async_runtime;
mod cli;
mod env;
mod errors;
mod ssh;
mod timeouts;
mod vm;

#[doc(hidden)]
pub mod testing;

pub use cli::main;

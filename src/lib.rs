//! llima-box: one shared, Lima-compatible VM with an isolated environment per
//! project directory.
//!
//! Modules mirror the architecture: `cli` is the only place that prints for
//! humans; `vm` owns the Lima store, config and the VM lifecycle; `ssh` is the
//! client that carries every byte into the guest; `env` maps project paths to
//! environments.

pub mod async_runtime;
pub mod cli;
pub mod env;
pub mod errors;
pub mod ssh;
pub mod timeouts;
pub mod vm;

#[doc(hidden)]
pub mod testing;

//! The host agent: a detached `llima-box hostagent DIR` process that owns
//! QEMU for one instance, serves `ha.sock`, writes events and shuts the
//! guest down gracefully.

pub mod api;
pub mod events;
pub mod ssh_config;

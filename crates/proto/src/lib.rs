//! What llima-box (on the host) and its guest agent (in the VM) must agree
//! on, written once and compiled into both: where things live in the guest,
//! the environment name rule, the frames on a stream and the typed requests
//! and replies carried in them, the spawn protocol of the environments, a
//! project's own settings and network policy, and where repositories are looked for in a
//! project.

pub mod domains;
pub mod frame;
pub mod git;
pub mod message;
pub mod names;
pub mod net;
pub mod paths;
pub mod settings;
pub mod spawn;
pub mod time;

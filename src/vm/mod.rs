//! The VM side: Lima's on-disk store, the lima.yaml model and the VM
//! lifecycle (images, disks, cidata, QEMU, host agent).

pub mod access;
pub mod cidata;
pub mod config;
pub mod dirs;
pub mod disk;
pub mod host;
pub mod hostagent;
pub mod image;
pub mod layout;
pub mod lifecycle;
pub mod qemu;
pub mod qmp;
pub mod store;
pub mod units;

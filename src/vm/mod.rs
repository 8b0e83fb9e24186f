//! The VM side: Lima's on-disk store, the lima.yaml model and the VM
//! lifecycle (images, disks, cidata, QEMU, host agent).

pub(crate) mod access;
pub(crate) mod cidata;
pub(crate) mod config;
pub(crate) mod dirs;
pub(crate) mod disk;
pub(crate) mod hostagent;
pub(crate) mod image;
pub mod layout;
pub(crate) mod lifecycle;
pub(crate) mod qemu;
pub(crate) mod qmp;
pub(crate) mod share;
pub(crate) mod store;
pub(crate) mod sys;
pub(crate) mod trust;
pub(crate) mod units;

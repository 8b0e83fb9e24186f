//! The cloud-init NoCloud seed (`cidata.iso`) for a Linux guest.

pub mod iso9660;

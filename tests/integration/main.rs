//! One integration binary, as ripgrep and just do: each file is a concern.

mod cli;
mod common;
mod env;
mod ssh;
mod ssh_mux;
mod ssh_support;
mod validate;
mod vm;
mod vm_failures;
mod vm_list;

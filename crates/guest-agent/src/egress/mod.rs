//! Restricted mode's way out (work in progress, not yet started by the
//! agent): a resolver that answers only allowed names and a proxy that
//! connects only to them. The guard redirects a restricted environment's
//! DNS to [`RESOLVER_PORT`] and its other TCP to [`PROXY_PORT`] (see
//! `guard::policy`), on the guest's side of its veth.
#![allow(dead_code)]

mod dns;
mod peek;

/// Where the resolver listens (UDP and TCP), on every address of the guest.
pub const RESOLVER_PORT: u16 = 10053;
/// Where the proxy listens.
pub const PROXY_PORT: u16 = 10080;

//! Agent forwarding: every agent channel the guest opens (one per `ssh-add`
//! or `git` run in it) gets its own connection to the local agent socket.

use std::path::PathBuf;

use russh::client::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

/// Accepts the guest's channel once the local agent answers, and copies
/// bytes both ways until either side closes.
pub(super) fn proxy(channel: Channel<Msg>, reply: ChannelOpenHandle, socket: PathBuf) {
    tokio::spawn(async move {
        let mut local = match tokio::net::UnixStream::connect(&socket).await {
            Ok(s) => s,
            // The agent went away: the guest's client sees a refused
            // channel, as with `ssh -A` and a dead agent.
            Err(_) => return reply.reject(ChannelOpenFailure::ConnectFailed).await,
        };
        reply.accept().await;
        let mut remote = channel.into_stream();
        let _ = tokio::io::copy_bidirectional(&mut remote, &mut local).await;
    });
}

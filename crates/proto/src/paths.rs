//! Where the guest agent and its records live in the guest.

/// The agent's executable, installed by the host.
pub const AGENT_PATH: &str = "/usr/local/libexec/llima-box/guest-agent";
/// The sha256 (hex) of the installed agent, written with it.
pub const AGENT_VERSION_PATH: &str = "/usr/local/libexec/llima-box/guest-agent.sha256";
/// The systemd unit that runs the agent.
pub const AGENT_UNIT: &str = "llima-box-agent.service";
/// The agent's socket: owned by the admin user, who reaches it through
/// sshd's `direct-streamlocal` channels; nobody else may connect.
pub const AGENT_SOCKET: &str = "/run/llima-box/agent.sock";

/// Root-only state: one directory per environment under [`ENVS_DIR`].
pub const STATE_DIR: &str = "/var/lib/llima-box";
pub const ENVS_DIR: &str = "/var/lib/llima-box/envs";
/// Environment users' homes: `/home/NAME`.
pub const HOMES_DIR: &str = "/home";

/// The uids (and gids) environment users get; nothing else uses them.
pub const ENV_UID_MIN: u32 = 60001;
pub const ENV_UID_MAX: u32 = 64999;

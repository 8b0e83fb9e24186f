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
/// Lock files: `NAME.lock` serialises all work on one environment,
/// `.users.lock` every change to the account files.
pub const LOCKS_DIR: &str = "/var/lib/llima-box/locks";
/// The environments' spawn sockets, `NAME.sock`.
pub const SOCKETS_DIR: &str = "/run/llima-box/sock";
/// An environment's holder unit is `PREFIX + NAME` (a claimed spare's is
/// recorded in its `unit` file instead).
pub const ENV_UNIT_PREFIX: &str = "llima-box-env-";
/// Environment users' homes: `/home/NAME`.
pub const HOMES_DIR: &str = "/home";

/// The uids (and gids) environment users get; nothing else uses them.
pub const ENV_UID_MIN: u32 = 60001;
pub const ENV_UID_MAX: u32 = 64999;

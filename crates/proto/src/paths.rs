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
/// The agent's spawn socket for the admin's own commands (`vm shell`),
/// served by the unit [`ADMIN_UNIT`].
pub const ADMIN_SOCKET: &str = "/run/llima-box/sock/.admin.sock";
pub const ADMIN_UNIT: &str = "llima-box-admin.service";
/// Where the spare environment's server listens until a first shell
/// claims it (then it moves to `NAME.sock`).
pub const SPARE_SOCKET: &str = "/run/llima-box/sock/spare.sock";
/// A second spare, ready behind the first: a claim moves it to
/// [`SPARE_SOCKET`] at once, so that a second new project right after the
/// first finds one too.
pub const STANDBY_SOCKET: &str = "/run/llima-box/sock/.standby.sock";
/// The holder's per-namespace scratch: the raw and remapped shares
/// (`raw/I`, `remap/I` for the I-th root) and the stashed home (`home`),
/// only ever visible inside an environment's mount namespace.
pub const STAGE_DIR: &str = "/run/llima-box/stage";
/// An environment's holder unit is `PREFIX + NAME` (a claimed spare's is
/// recorded in its `unit` file instead).
pub const ENV_UNIT_PREFIX: &str = "llima-box-env-";
/// Environment users' homes: `/home/NAME`.
pub const HOMES_DIR: &str = "/home";

/// The uids (and gids) new environment users get, each given out once: clear
/// of systemd's homed (60001-60513) and dynamic (61184-65519) users and
/// below the subordinate ids useradd hands out from 100000 on.
pub const ENV_UIDS: std::ops::RangeInclusive<u32> = 70000..=99999;
/// Where earlier versions made them; such users are still environments.
pub const LEGACY_ENV_UIDS: std::ops::RangeInclusive<u32> = 60001..=64999;

/// Whether `uid` is an environment user's.
pub fn is_env_uid(uid: u32) -> bool {
    ENV_UIDS.contains(&uid) || LEGACY_ENV_UIDS.contains(&uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_uids_avoid_systemd_and_subordinate_ranges() {
        for uid in [60001, 64999, 70000, 99999] {
            assert!(is_env_uid(uid), "{uid}");
        }
        // root, regular users, nobody, subordinate ids.
        for uid in [0, 1000, 60000, 65534, 69999, 100000] {
            assert!(!is_env_uid(uid), "{uid}");
        }
        // New uids stay clear of systemd's homed and dynamic users (the
        // legacy range overlaps them, which is why it is no longer used).
        for uid in [60001, 60513, 61184, 65519] {
            assert!(!ENV_UIDS.contains(&uid), "{uid}");
        }
        assert!(*ENV_UIDS.start() > 65535 && *ENV_UIDS.end() < 100000);
    }
}

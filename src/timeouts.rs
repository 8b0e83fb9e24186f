//! The `LLIMA_BOX_*` variables that lengthen or shorten waits, for slow
//! machines and tests. Each is a number of seconds (`30`, `2.5`); anything
//! else is an error, because silently waiting the default instead is what
//! the variable was set to prevent.

use std::time::Duration;

/// A wait that an environment variable can override.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeout {
    pub var: &'static str,
    pub default: Duration,
}

/// How long the CLI keeps trying to reach sshd (the VM may just have booted).
pub(crate) const SSH_DEADLINE: Timeout = Timeout {
    var: "LLIMA_BOX_SSH_DEADLINE_SECS",
    default: Duration::from_secs(20),
};

/// How long the host agent gives the guest to be ready after QEMU starts.
pub(crate) const BOOT: Timeout = Timeout {
    var: "LLIMA_BOX_BOOT_TIMEOUT",
    default: Duration::from_secs(600),
};

/// How long the guest gets to power off after the ACPI button.
pub(crate) const SHUTDOWN_GRACE: Timeout = Timeout {
    var: "LLIMA_BOX_SHUTDOWN_GRACE",
    default: Duration::from_secs(120),
};

/// How long `vm start` waits for the host agent to report the VM running.
/// Unset, it is a minute more than [`BOOT`], so that a slow boot ends with
/// the agent's own error, which says what the guest was still missing.
pub(crate) const START_VAR: &str = "LLIMA_BOX_START_TIMEOUT";

#[derive(Debug, thiserror::Error)]
#[error(
    "{var}={value:?} is not a number of seconds; set it to one (e.g. 30 or 2.5) or unset it for the default"
)]
pub(crate) struct TimeoutError {
    var: &'static str,
    value: String,
}

impl Timeout {
    /// The variable's value, or the default when it is unset.
    pub(crate) fn get(&self) -> Result<Duration, TimeoutError> {
        Ok(lookup(self.var)?.unwrap_or(self.default))
    }
}

/// `vm start`'s wait: [`START_VAR`], else [`BOOT`] plus a minute. Both
/// are read, so that a bad [`BOOT`] fails here rather than in the agent.
pub(crate) fn start() -> Result<Duration, TimeoutError> {
    Ok(start_or_after_boot(lookup(START_VAR)?, BOOT.get()?))
}

fn start_or_after_boot(start: Option<Duration>, boot: Duration) -> Duration {
    start.unwrap_or(boot + Duration::from_secs(60))
}

fn lookup(var: &'static str) -> Result<Option<Duration>, TimeoutError> {
    std::env::var_os(var)
        .map(|v| parse(var, &v.to_string_lossy()))
        .transpose()
}

fn parse(var: &'static str, value: &str) -> Result<Duration, TimeoutError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| TimeoutError {
            var,
            value: value.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_fractional_seconds() {
        assert_eq!(parse("V", "30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("V", "2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse("V", "0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn start_outlasts_the_agents_boot_timeout_unless_told_otherwise() {
        let boot = Duration::from_secs(900);
        assert_eq!(start_or_after_boot(None, boot), Duration::from_secs(960));
        let set = Some(Duration::from_secs(30));
        assert_eq!(start_or_after_boot(set, boot), Duration::from_secs(30));
    }

    #[test]
    fn garbage_is_an_error_that_names_the_variable() {
        for bad in ["", "garbage", "10s", "-1", "NaN", "inf"] {
            let err = parse("LLIMA_BOX_BOOT_TIMEOUT", bad)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("LLIMA_BOX_BOOT_TIMEOUT={bad:?} is not")),
                "{err}"
            );
        }
    }
}

//! A project's own settings for its environment, kept on the host (never in
//! the project, where the agent could widen them) and carried to the guest
//! agent, which records them with the environment and applies them at each
//! start: resource limits, whether the git metadata the host executes
//! is writable inside, and the network policy.

use serde::{Deserialize, Serialize};

use crate::net::NetPolicy;

/// Bounds of systemd's `CPUWeight=` and `IOWeight=`.
pub const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=10000;
/// Below this an environment cannot start its spawn server and a shell.
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MIN_TASKS: u32 = 16;
/// Below this a home cannot hold its shell's startup files and history.
pub const MIN_DISK: u64 = 16 << 20;

/// Each `None` is the default (see the README): memory half the guest's,
/// 4096 tasks, weight 100 for CPU and IO, the home's disk use a quarter of
/// the guest's disk, git metadata read-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Bytes of memory, its tmpfs included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u32>,
    /// Bytes the home may take on the guest's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_max: Option<u64>,
    /// The repositories' config and hooks writable inside.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub git_writes: bool,
    #[serde(default, skip_serializing_if = "NetPolicy::is_default")]
    pub net: NetPolicy,
}

impl Settings {
    /// What is out of bounds, said for a person.
    pub fn check(&self) -> Result<(), String> {
        self.net.check()?;
        if let Some(m) = self.memory_max.filter(|m| *m < MIN_MEMORY) {
            return Err(format!(
                "a memory limit of {m} bytes is below the {} MiB an environment needs",
                MIN_MEMORY >> 20
            ));
        }
        if let Some(t) = self.tasks_max.filter(|t| *t < MIN_TASKS) {
            return Err(format!(
                "a task limit of {t} is below the {MIN_TASKS} an environment needs"
            ));
        }
        if let Some(d) = self.disk_max.filter(|d| *d < MIN_DISK) {
            return Err(format!(
                "a disk limit of {d} bytes is below the {} MiB a home needs",
                MIN_DISK >> 20
            ));
        }
        for (what, w) in [("CPU", self.cpu_weight), ("IO", self.io_weight)] {
            if let Some(w) = w.filter(|w| !WEIGHTS.contains(w)) {
                return Err(format!(
                    "an {what} weight of {w} is outside {}-{}",
                    WEIGHTS.start(),
                    WEIGHTS.end()
                ));
            }
        }
        Ok(())
    }

    /// systemd unit properties for the limits that are set.
    pub fn unit_properties(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(m) = self.memory_max {
            p.push(format!("MemoryMax={m}"));
        }
        if let Some(t) = self.tasks_max {
            p.push(format!("TasksMax={t}"));
        }
        if let Some(w) = self.cpu_weight {
            p.push(format!("CPUWeight={w}"));
        }
        if let Some(w) = self.io_weight {
            p.push(format!("IOWeight={w}"));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_empty_and_round_trip() {
        let d = Settings::default();
        assert_eq!(serde_json::to_string(&d).unwrap(), "{}");
        assert!(d.check().is_ok() && d.unit_properties().is_empty());
        let s = Settings {
            memory_max: Some(1 << 30),
            tasks_max: Some(500),
            cpu_weight: Some(50),
            io_weight: None,
            disk_max: Some(1 << 32),
            git_writes: true,
            ..Default::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"memoryMax":1073741824,"tasksMax":500,"cpuWeight":50,"diskMax":4294967296,"gitWrites":true}"#
        );
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
        assert_eq!(
            s.unit_properties(),
            ["MemoryMax=1073741824", "TasksMax=500", "CPUWeight=50"]
        );
    }

    #[test]
    fn out_of_bounds_values_are_refused() {
        let bad = [
            Settings {
                memory_max: Some(1 << 20),
                ..Default::default()
            },
            Settings {
                tasks_max: Some(3),
                ..Default::default()
            },
            Settings {
                cpu_weight: Some(0),
                ..Default::default()
            },
            Settings {
                io_weight: Some(10001),
                ..Default::default()
            },
            Settings {
                disk_max: Some(MIN_DISK - 1),
                ..Default::default()
            },
        ];
        for s in bad {
            assert!(s.check().is_err(), "{s:?}");
        }
        let ok = Settings {
            memory_max: Some(MIN_MEMORY),
            tasks_max: Some(MIN_TASKS),
            cpu_weight: Some(1),
            io_weight: Some(10000),
            disk_max: Some(MIN_DISK),
            git_writes: false,
            ..Default::default()
        };
        assert!(ok.check().is_ok());
    }
}

//! `ensure`: an environment exists and runs. First use: its records, its
//! user (an id never given out before) and home; then, whenever its holder
//! is not alive (first use, after a VM reboot, after it died), the holder.
//! The caller holds the environment's lock.

pub mod net;
mod start;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use llima_box_proto::names::{valid_env_name, valid_path};
use llima_box_proto::paths::{ENV_UNIT_PREFIX, ENVS_DIR, STATE_DIR, is_env_uid};
use llima_box_proto::settings::Settings;
use llima_box_proto::time::rfc3339_secs;

use crate::accounts::{self, AddError};
use crate::guard::GuardError;
use crate::{list, tools};

pub use start::{start_holder, unit_active};

/// The last uid given out (see [`accounts::add_env_user`]).
pub const LAST_UID: &str = "/var/lib/llima-box/last-uid";

/// What to ensure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    /// The project's path in the guest, absolute and normalised.
    pub project: String,
    pub host_uid: u32,
    pub host_gid: u32,
    /// The admin user, who owns the environment's socket.
    pub admin: u32,
    /// The project's settings, recorded with the environment; none: the
    /// recorded ones (or the defaults) stay.
    pub settings: Option<Settings>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error("invalid request: {0}")]
    Usage(String),
    #[error("environment {name} already belongs to project {recorded:?}, not {project:?}")]
    OtherProject {
        name: String,
        recorded: String,
        project: String,
    },
    #[error("project directory {0:?} does not exist in the VM (is its parent shared with the VM?)")]
    NoProject(String),
    #[error("user {0} already exists and is not an environment; pick another name")]
    NotAnEnvUser(String),
    #[error("cannot create the environment's user: {0}")]
    User(#[from] AddError),
    #[error(transparent)]
    Home(#[from] crate::homes::HomesError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("the holder of environment {name} failed: {why}\n{log}")]
    Holder {
        name: String,
        why: String,
        log: String,
    },
    #[error("cannot remove what is left of a spare: {0}")]
    Teardown(#[from] crate::delete::DeleteError),
    #[error("{what}: {failure}")]
    Tool {
        what: &'static str,
        failure: tools::Failure,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl EnsureError {
    /// The exit status that says this failure (`env-run`'s: 2 bad usage,
    /// 3 a name taken by another project, 125 anything else).
    pub fn status(&self) -> u8 {
        match self {
            EnsureError::Usage(_) => 2,
            EnsureError::OtherProject { .. } => 3,
            _ => 125,
        }
    }
}

pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> EnsureError {
    move |source| EnsureError::Io { what, source }
}

/// The `host_ids` record of an environment or spare: the host user its
/// shares are remapped for.
pub const HOST_IDS: &str = "host_ids";

/// The text of a [`HOST_IDS`] record.
pub fn host_ids_text(uid: u32, gid: u32) -> String {
    format!("{uid} {gid}\n")
}

/// The uid and gid in the text of a [`HOST_IDS`] record.
pub fn parse_host_ids(text: &str) -> Option<(u32, u32)> {
    let (u, g) = text.trim().split_once(' ')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// The records directory of the environment `name`.
pub fn env_dir(name: &str) -> PathBuf {
    Path::new(ENVS_DIR).join(name)
}

/// Makes sure the environment of `req` exists and its holder runs; returns
/// the holder's pid. The caller holds the environment's lock.
pub fn ensure(req: &Request) -> Result<u32, EnsureError> {
    if !valid_env_name(&req.name) {
        return Err(EnsureError::Usage(format!(
            "invalid environment name {:?}",
            req.name
        )));
    }
    if !valid_path(&req.project) {
        return Err(EnsureError::Usage(format!(
            "project path must be absolute and normalised: {:?}",
            req.project
        )));
    }
    if req.host_uid == 0 || req.host_gid == 0 {
        return Err(EnsureError::Usage(
            "host uid and gid must be positive".into(),
        ));
    }
    if let Some(settings) = &req.settings {
        settings.check().map_err(EnsureError::Usage)?;
    }
    // Also for a holder that runs already (started before an upgrade).
    crate::guard::ensure(req.admin, false)?;
    let dir = env_dir(&req.name);
    match fs::read_to_string(dir.join("project")) {
        Ok(recorded) if recorded != req.project => {
            return Err(EnsureError::OtherProject {
                name: req.name.clone(),
                recorded,
                project: req.project.clone(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_records(req, &dir)?,
        Err(e) => return Err(io("cannot read the environment's records")(e)),
    }
    if let Some(settings) = &req.settings {
        record_settings(&dir, &req.name, settings)?;
    }
    // The host ids may change (another host user); the latest caller's are used.
    fs::write(
        dir.join(HOST_IDS),
        host_ids_text(req.host_uid, req.host_gid),
    )
    .map_err(io("cannot write the records"))?;
    match accounts::local_uid(&req.name) {
        Some(uid) if is_env_uid(uid) => {}
        Some(_) => return Err(EnsureError::NotAnEnvUser(req.name.clone())),
        None => {
            accounts::add_env_user(&req.name, Path::new(LAST_UID))?;
        }
    }
    match list::holder_pid(&dir) {
        Some(pid) => Ok(pid),
        None => start_holder(
            &dir,
            &format!("{ENV_UNIT_PREFIX}{}", req.name),
            &req.name,
            req.admin,
        ),
    }
}

/// Where an environment's settings are recorded, in its records directory.
const SETTINGS: &str = "settings.json";

/// The settings recorded with the environment in `dir`; the defaults when
/// there are none (or they cannot be read: the limits then are the
/// defaults, and the git metadata read-only).
pub fn recorded_settings(dir: &Path) -> Settings {
    fs::read(dir.join(SETTINGS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records `settings` in `dir`, the records of the environment `name`. A
/// changed network policy reaches the firewall first: a failure there
/// leaves the record as it was, so the next try changes it again.
fn record_settings(dir: &Path, name: &str, settings: &Settings) -> Result<(), EnsureError> {
    if recorded_settings(dir).net != settings.net {
        // No user yet: its holder's first start applies it.
        if let Some(uid) = accounts::local_uid(name).filter(|u| is_env_uid(*u)) {
            net::set_policy(uid, &settings.net)?;
        }
    }
    let tmp = dir.join(format!("{SETTINGS}.new"));
    let json = serde_json::to_vec(settings).expect("settings serialise");
    fs::write(&tmp, json)
        .and_then(|()| fs::rename(&tmp, dir.join(SETTINGS)))
        .map_err(io("cannot record the settings"))
}

/// Records `settings` with the environment `name` (used from its next
/// start on) and applies its limits to it if it runs: whether it exists,
/// and whether it runs.
pub fn configure(name: &str, settings: &Settings) -> Result<(bool, bool), EnsureError> {
    if !valid_env_name(name) {
        return Err(EnsureError::Usage(format!(
            "invalid environment name {name:?}"
        )));
    }
    settings.check().map_err(EnsureError::Usage)?;
    let _env =
        crate::lock::flock(&format!("{name}.lock")).map_err(io("cannot lock the environment"))?;
    let dir = env_dir(name);
    let project = match fs::read_to_string(dir.join("project")) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((false, false)),
        Err(e) => return Err(io("cannot read the environment's records")(e)),
    };
    let before = recorded_settings(&dir);
    record_settings(&dir, name, settings)?;
    if let Some(uid) = accounts::local_uid(name).filter(|u| is_env_uid(*u)) {
        crate::homes::set_cap(name, uid, settings.disk_max)?;
    }
    let Some(pid) = list::holder_pid(&dir) else {
        return Ok((true, false));
    };
    if before.git_writes != settings.git_writes {
        git_writes_in(pid, &project, settings.git_writes)?;
    }
    let unit = fs::read_to_string(dir.join("unit")).unwrap_or_default();
    // What is not set goes back to its default.
    let props = start::limit_properties(settings, start::guest_memory_kib()?);
    let unit = format!("{}.service", unit.trim());
    tools::run(
        Command::new("systemctl")
            .args(["set-property", "--runtime", &unit])
            .args(&props),
        None,
    )
    .map_err(|failure| EnsureError::Tool {
        what: "cannot change the running environment's limits",
        failure,
    })?;
    Ok((true, true))
}

/// Makes the git metadata of `project` writable (`allow`) or read-only in
/// the mount namespace of the environment whose first process is `pid`:
/// the agent's `protect-git`, started in that namespace.
fn git_writes_in(pid: u32, project: &str, allow: bool) -> Result<(), EnsureError> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(io("cannot open the environment's mount namespace"))?;
    let mut cmd = Command::new(llima_box_proto::paths::AGENT_PATH);
    cmd.arg("protect-git");
    if allow {
        cmd.arg("--undo");
    }
    cmd.arg(project);
    tools::in_namespace(&mut cmd, &ns, libc::CLONE_NEWNS);
    tools::run(&mut cmd, None).map_err(|failure| EnsureError::Tool {
        what: "cannot change the git metadata's protection in the environment",
        failure,
    })
}

/// The records of a new environment, complete before they appear (a user
/// without them is never taken for an environment).
fn create_records(req: &Request, dir: &Path) -> Result<(), EnsureError> {
    if !Path::new(&req.project).is_dir() {
        return Err(EnsureError::NoProject(req.project.clone()));
    }
    if accounts::local_uid(&req.name).is_some() {
        return Err(EnsureError::NotAnEnvUser(req.name.clone()));
    }
    let mkdir = io("cannot make the environment's records");
    fs::create_dir_all(ENVS_DIR).map_err(io("cannot make the records' directory"))?;
    for d in [STATE_DIR, ENVS_DIR] {
        fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io("cannot make the records' directory"))?;
    }
    let new = dir.with_extension("new");
    crate::delete::remove_tree(&new).map_err(|e| EnsureError::Io {
        what: "cannot clear a half-made record",
        source: std::io::Error::other(e.to_string()),
    })?;
    fs::create_dir(&new).map_err(mkdir)?;
    let write =
        |f: &str, text: &str| fs::write(new.join(f), text).map_err(io("cannot write the records"));
    write("project", &req.project)?;
    write(
        "created",
        &format!("{}\n", rfc3339_secs(std::time::SystemTime::now())),
    )?;
    write("last_used", "")?;
    fs::rename(&new, dir).map_err(io("cannot write the records"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, project: &str, ids: u32) -> Request {
        Request {
            name: name.into(),
            project: project.into(),
            host_uid: ids,
            host_gid: ids,
            admin: 1000,
            settings: None,
        }
    }

    #[test]
    fn host_ids_records_read_back() {
        assert_eq!(parse_host_ids(&host_ids_text(1000, 100)), Some((1000, 100)));
        for bad in ["", "1000", "1000 x", "a 1", "1 2 3"] {
            assert_eq!(parse_host_ids(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_touched() {
        let usage = |r: Request| matches!(ensure(&r), Err(EnsureError::Usage(_)));
        assert!(usage(req("../etc", "/p", 1000)));
        assert!(usage(req("app-1a2b3c4d", "p", 1000)));
        assert!(usage(req("app-1a2b3c4d", "/p/../etc", 1000)));
        assert!(usage(req("app-1a2b3c4d", "/p", 0)));
        assert_eq!(EnsureError::Usage(String::new()).status(), 2);
        let other = EnsureError::OtherProject {
            name: "a".into(),
            recorded: "/x".into(),
            project: "/y".into(),
        };
        assert_eq!(other.status(), 3);
        assert_eq!(EnsureError::NoProject("/p".into()).status(), 125);
    }
}

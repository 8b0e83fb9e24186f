//! The environment workflow that `shell`, `list` and `delete` share: where
//! a project is in the guest, the admin's connection to a running guest
//! with the guest agent current, and the two ways a command reaches an
//! environment (its spawn server, else `env-run` through an SSH session).
//! The commands keep what is theirs: arguments, questions, output, and
//! starting the VM.

use std::path::{Path, PathBuf};

use crate::ssh::{self, ConnectOptions, Session};
use crate::vm::access::{self, AccessError};
use crate::vm::{config, layout};

use super::guest_agent::{self, GuestAgentBinary};
use super::settings::{self, Settings};
use super::{EnvInfo, Error, ExecRequest, exec};

/// An admin connection to the running VM.
pub(crate) struct Guest {
    session: Session,
}

impl Guest {
    /// `Ok(None)` when the VM does not exist or is not running.
    pub(crate) async fn connect(
        lima_home: &Path,
        instance: &str,
        deadline: std::time::Duration,
    ) -> Result<Option<Guest>, Error> {
        let opts = match access::connect_options(lima_home, instance, deadline, None) {
            Ok((opts, _)) => opts,
            Err(AccessError::NotRunning { .. } | AccessError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::Access(Box::new(e))),
        };
        let session = Session::connect(opts)
            .await
            .map_err(|e| Error::Connect(Box::new(e)))?;
        Ok(Some(Guest { session }))
    }

    /// Every environment, from the guest agent, installed or upgraded
    /// first when needed.
    pub(crate) async fn list(&self) -> Result<Vec<EnvInfo>, Error> {
        guest_agent::ensure(&self.session, &GuestAgentBinary::load()?).await?;
        guest_agent::list(&self.session).await
    }

    /// Gives the environment `name` its project's `settings`: recorded with
    /// it and applied to it if it runs. Whether it exists, and whether it
    /// runs.
    pub(crate) async fn configure(
        &self,
        name: &str,
        settings: &Settings,
    ) -> Result<(bool, bool), Error> {
        guest_agent::ensure(&self.session, &GuestAgentBinary::load()?).await?;
        guest_agent::configure(&self.session, name, settings).await
    }

    /// The refused connection attempts of the environment `name` logged
    /// after `after` (0: all the guest's log holds), and the `after` for
    /// the next call.
    pub(crate) async fn net_log(
        &self,
        name: &str,
        after: u64,
    ) -> Result<(Vec<llima_box_proto::net::Denial>, u64), Error> {
        if after == 0 {
            guest_agent::ensure(&self.session, &GuestAgentBinary::load()?).await?;
        }
        guest_agent::net_log(&self.session, name, after).await
    }

    /// Deletes `name` through the guest agent, which [`Guest::list`]
    /// (always called first) has made current.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), Error> {
        guest_agent::delete(&self.session, name).await
    }
}

/// Where `project` (canonical) is in the guest of the instance in `dir`:
/// inside a writable mount of its configuration, or of the one `vm start`
/// will create it with.
pub(crate) fn guest_path(dir: &Path, lima_home: &Path, project: &Path) -> Result<String, Error> {
    let yaml = dir.join(layout::LIMA_YAML);
    let config = if yaml.exists() {
        config::load_instance(dir, lima_home)
    } else {
        let cx = config::FillContext {
            host: &config::HostFacts::current(),
            instance_dir: dir,
            file: &yaml,
            existing_version: config::existing_version(dir),
        };
        config::parse(config::default_instance_yaml(), &yaml)
            .and_then(|y| config::load(y, lima_home, &cx))
    }
    .map_err(|e| Error::Config {
        dir: dir.to_path_buf(),
        source: Box::new(e),
    })?;
    let mounts: Vec<(PathBuf, String, bool)> = config
        .mounts
        .iter()
        .map(|m| {
            let location = PathBuf::from(&m.location);
            let location = std::fs::canonicalize(&location).unwrap_or(location);
            let point = m.mount_point.clone().unwrap_or_else(|| m.location.clone());
            (location, point, m.writable.unwrap_or(false))
        })
        .collect();
    mount_for(&mounts, project, &yaml)
}

/// The guest path of `project` under the deepest mount containing it.
fn mount_for(
    mounts: &[(PathBuf, String, bool)],
    project: &Path,
    lima_yaml: &Path,
) -> Result<String, Error> {
    let found = mounts
        .iter()
        .filter_map(|(loc, point, writable)| {
            let rest = project.strip_prefix(loc).ok()?;
            Some((loc.components().count(), rest, point, *writable))
        })
        .max_by_key(|(depth, ..)| *depth);
    match found {
        Some((_, rest, point, true)) => Ok(Path::new(point)
            .join(rest)
            .to_str()
            .ok_or_else(|| Error::NotUtf8(project.to_path_buf()))?
            .trim_end_matches('/')
            .to_string()),
        Some((_, _, point, false)) => Err(Error::ReadOnlyShare {
            project: project.to_path_buf(),
            point: point.clone(),
            lima_yaml: lima_yaml.to_path_buf(),
        }),
        None => Err(Error::NotShared {
            project: project.to_path_buf(),
            lima_yaml: lima_yaml.to_path_buf(),
        }),
    }
}

/// A command in an environment, ready to go: the spawn server to ask (or
/// the spare that becomes the environment), and the SSH session's command
/// line for when neither answers.
pub(crate) struct Prepared {
    pub spawn: ssh::Spawn,
    pub script: String,
    agent: GuestAgentBinary,
}

impl Prepared {
    /// `argv` (none: a login shell) in the environment of the project at
    /// `guest_project` (canonical on the host: `project`), in the project,
    /// with the forwarded SSH agent when `agent`, with the project's
    /// settings (kept in `instance_dir`) and the guest agent this binary
    /// carries; `repositories` as the host found them (see [`ExecRequest`]).
    pub(crate) fn new(
        instance_dir: &Path,
        project: &Path,
        guest_project: &str,
        argv: &[String],
        agent: bool,
        repositories: Option<Vec<String>>,
    ) -> Result<Prepared, Error> {
        let name = super::env_name_of(project);
        let req = ExecRequest {
            settings: settings::load(instance_dir, &name)?.0,
            name,
            cwd: guest_project.to_string(),
            // Always: it creates the environment on first use and starts
            // its holder again after a VM reboot, in the same round trip as
            // the command.
            ensure: Some((
                guest_project.to_string(),
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            )),
            repositories,
            agent,
            argv: argv.to_vec(),
        };
        let binary = GuestAgentBinary::load()?;
        let script =
            ssh::quote_argv(&exec::exec_argv(&req)).map_err(|e| Error::Command(e.to_string()))?;
        Ok(Prepared {
            spawn: exec::spawn_target(&req, &binary.sha256),
            script,
            agent: binary,
        })
    }

    /// Whether the guest of the instance in `dir` is known to have this
    /// binary's guest agent (the guest's disk lives and dies with the
    /// instance directory, so a stamp there is enough).
    pub(crate) fn guest_is_current(&self, dir: &Path) -> bool {
        std::fs::read_to_string(dir.join(layout::AGENT_STAMP))
            .is_ok_and(|s| s.trim() == self.agent.sha256)
    }

    /// Connects, installs or upgrades the guest agent (a no-op in the guest
    /// when current), records that in `dir`, and returns the session, for
    /// the command to use rather than open another.
    pub(crate) async fn install(&self, dir: &Path, opts: ConnectOptions) -> Result<Session, Error> {
        let session = Session::connect(opts)
            .await
            .map_err(|e| Error::Connect(Box::new(e)))?;
        guest_agent::ensure(&session, &self.agent).await?;
        let stamp = dir.join(layout::AGENT_STAMP);
        std::fs::write(&stamp, &self.agent.sha256).map_err(|source| Error::Stamp {
            path: stamp,
            source,
        })?;
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_map_through_the_deepest_writable_mount() {
        let yaml = Path::new("/l/lima.yaml");
        let mounts = vec![
            (PathBuf::from("/home/u"), "/home/u".to_string(), true),
            (PathBuf::from("/home/u/ro"), "/mnt/ro".to_string(), false),
            (PathBuf::from("/data"), "/mnt/data".to_string(), true),
        ];
        assert_eq!(
            mount_for(&mounts, Path::new("/home/u/p q"), yaml).unwrap(),
            "/home/u/p q"
        );
        assert_eq!(
            mount_for(&mounts, Path::new("/data/x"), yaml).unwrap(),
            "/mnt/data/x"
        );
        assert_eq!(
            mount_for(&mounts, Path::new("/data"), yaml).unwrap(),
            "/mnt/data"
        );
        let e = mount_for(&mounts, Path::new("/home/u/ro/x"), yaml).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        let e = mount_for(&mounts, Path::new("/srv/p"), yaml).unwrap_err();
        assert!(e.to_string().contains("not shared with the VM"), "{e}");
        assert!(e.to_string().contains("location: \"/srv/p\""), "{e}");
        // A prefix that is not a path component does not count.
        assert!(mount_for(&mounts, Path::new("/home/u2"), yaml).is_err());
    }
}

//! Published ports: a host port on 127.0.0.1 that reaches a port on one
//! environment's own loopback. The table lives on the host, in the
//! instance directory (`ports.json`, private to the user), so it outlives
//! VM restarts and nothing inside an environment can change it; the host
//! agent listens for every row (see `vm::hostagent::ports`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Error;

const FILE: &str = "ports.json";

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Published {
    /// The environment's name.
    pub env: String,
    /// Its project, for people reading `port list`.
    pub project: String,
    pub env_port: u16,
    pub host_port: u16,
    /// The process id of the `shell --publish` it lasts for; `None` for
    /// one that stays until `unpublish` or `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<u32>,
}

impl Published {
    /// Whether it still stands: a shell's row goes with the shell, even
    /// one killed before it could remove it.
    pub(crate) fn live(&self) -> bool {
        self.shell
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }
}

/// `ENV_PORT[:HOST_PORT]`.
pub(crate) fn parse_spec(spec: &str) -> Result<(u16, Option<u16>), Error> {
    let port = |p: &str| -> Result<u16, Error> {
        match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(Error::PortSpec(format!(
                "{spec:?}: {p:?} is not a port (1-65535); write ENV_PORT or ENV_PORT:HOST_PORT, e.g. 3000 or 3000:8080"
            ))),
        }
    };
    match spec.split_once(':') {
        None => Ok((port(spec)?, None)),
        Some((env, host)) => Ok((port(env)?, Some(port(host)?))),
    }
}

/// The table in `instance_dir` (its live rows); empty when nothing was
/// ever published.
pub(crate) fn load(instance_dir: &Path) -> Result<Vec<Published>, Error> {
    let path = instance_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(text) => match serde_json::from_slice::<Vec<Published>>(&text) {
            Ok(rows) => Ok(rows.into_iter().filter(Published::live).collect()),
            Err(e) => Err(Error::Ports {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Ports { path, source }),
    }
}

/// Changes the table under a lock (two `port publish` at once must not
/// both take a port or lose each other's row); `change` decides on the
/// loaded rows and nothing is written when it fails.
pub(crate) fn update<T>(
    instance_dir: &Path,
    change: impl FnOnce(&mut Vec<Published>) -> Result<T, Error>,
) -> Result<T, Error> {
    let path = instance_dir.join(FILE);
    let err = |source| Error::Ports {
        path: path.clone(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(instance_dir.join("ports.lock"))
        .map_err(err)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| err(e.into()))?;
    let mut rows = load(instance_dir)?;
    let out = change(&mut rows)?;
    // Written even when unchanged, so that rows of ended shells go.
    super::host_file::write_json(&path, &rows).map_err(err)?;
    Ok(out)
}

/// Adds `row` (replacing the same environment port's earlier row), unless
/// another row has its host port. Returns the row it replaced.
pub(crate) fn add(rows: &mut Vec<Published>, row: Published) -> Result<Option<Published>, Error> {
    if let Some(other) = rows
        .iter()
        .find(|r| r.host_port == row.host_port && !(r.env == row.env && r.env_port == row.env_port))
    {
        return Err(Error::PortTaken {
            host_port: row.host_port,
            project: other.project.clone(),
            env_port: other.env_port,
        });
    }
    let old = rows
        .iter()
        .position(|r| r.env == row.env && r.env_port == row.env_port)
        .map(|i| rows.remove(i));
    rows.push(row);
    rows.sort_by_key(|r| r.host_port);
    Ok(old)
}

/// Removes environment `env`'s rows, all of them or `env_port`'s; returns
/// those removed.
pub(crate) fn remove(
    rows: &mut Vec<Published>,
    env: &str,
    env_port: Option<u16>,
) -> Vec<Published> {
    let (gone, kept) = std::mem::take(rows)
        .into_iter()
        .partition(|r| r.env == env && env_port.is_none_or(|p| p == r.env_port));
    *rows = kept;
    gone
}

/// A host port for a new row: `wanted` if it is free on 127.0.0.1, else
/// the error says who has it; without `wanted`, one the kernel picks that
/// no row has.
pub(crate) fn host_port(rows: &[Published], wanted: Option<u16>) -> Result<u16, Error> {
    if let Some(port) = wanted {
        return bindable(port).map(|_| port);
    }
    loop {
        let port = bindable(0)?;
        if !rows.iter().any(|r| r.host_port == port) {
            return Ok(port);
        }
    }
}

/// Binds 127.0.0.1:`port` and lets it go again: the port the kernel gave.
fn bindable(port: u16) -> Result<u16, Error> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).map_err(|source| Error::PortBusy { port, source })?;
    Ok(listener.local_addr().map_or(port, |a| a.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(env: &str, env_port: u16, host_port: u16) -> Published {
        Published {
            env: env.into(),
            project: format!("/home/u/{env}"),
            env_port,
            host_port,
            shell: None,
        }
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("3000").unwrap(), (3000, None));
        assert_eq!(parse_spec("3000:8080").unwrap(), (3000, Some(8080)));
        for bad in ["", "0", "3000:", ":80", "70000", "a:b", "1:2:3", "-1"] {
            let e = parse_spec(bad).unwrap_err().to_string();
            assert!(e.contains("ENV_PORT:HOST_PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_host_port_belongs_to_one_row() {
        let mut rows = vec![row("a", 3000, 8000)];
        let e = add(&mut rows, row("b", 3000, 8000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/home/u/a") && e.contains("8000"), "{e}");
        assert_eq!(rows, [row("a", 3000, 8000)]);
        // The same environment port moves to another host port.
        assert_eq!(
            add(&mut rows, row("a", 3000, 8001)).unwrap(),
            Some(row("a", 3000, 8000))
        );
        assert_eq!(rows, [row("a", 3000, 8001)]);
        // Publishing a row again changes nothing.
        assert_eq!(
            add(&mut rows, row("a", 3000, 8001)).unwrap(),
            Some(row("a", 3000, 8001))
        );
        add(&mut rows, row("b", 3000, 7000)).unwrap();
        assert_eq!(rows, [row("b", 3000, 7000), row("a", 3000, 8001)]);
    }

    #[test]
    fn removing_one_port_or_an_environment() {
        let mut rows = vec![row("a", 1, 10), row("a", 2, 20), row("b", 1, 30)];
        assert_eq!(remove(&mut rows, "a", Some(2)), [row("a", 2, 20)]);
        assert!(remove(&mut rows, "a", Some(2)).is_empty());
        assert_eq!(remove(&mut rows, "a", None), [row("a", 1, 10)]);
        assert_eq!(rows, [row("b", 1, 30)]);
    }

    #[test]
    fn host_ports_are_free_ones() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let e = host_port(&[], Some(taken)).unwrap_err().to_string();
        assert!(e.contains(&taken.to_string()), "{e}");
        let picked = host_port(&[], None).unwrap();
        assert_ne!(picked, taken);
        assert_ne!(picked, 0);
    }

    #[test]
    fn a_shells_rows_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let ended_pid = ended.id();
        ended.wait().unwrap();
        let of = |pid| Published {
            shell: Some(pid),
            ..row("a", 3000, 8000)
        };
        update(dir.path(), |rows| add(rows, of(ended_pid))).unwrap();
        assert_eq!(load(dir.path()).unwrap(), []);
        update(dir.path(), |rows| add(rows, of(std::process::id()))).unwrap();
        assert_eq!(load(dir.path()).unwrap(), [of(std::process::id())]);
    }

    #[test]
    fn the_table_survives_a_failed_change_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        update(dir.path(), |rows| add(rows, row("a", 3000, 8000))).unwrap();
        let failed = update(dir.path(), |rows| {
            rows.clear();
            add(rows, row("b", 1, 2))?;
            Err::<(), _>(Error::PortSpec("no".into()))
        });
        assert!(failed.is_err());
        assert_eq!(load(dir.path()).unwrap(), [row("a", 3000, 8000)]);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}

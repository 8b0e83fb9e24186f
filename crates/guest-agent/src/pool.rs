//! The spare pool: two environments kept ready for the host user, each a
//! user, home and holder whose every writable share is remapped; a spare's
//! spawn server turns it into the environment of the first new project
//! that asks (`env_server::claim`), and puts the second in its place. A first shell then costs about what a warm
//! one does, instead of the seconds that the user, the unit and the mounts
//! take under emulation. The keeper (its own unit, started by `ensure`)
//! refills it after each claim.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use llima_box_proto::paths::{
    AGENT_PATH, AGENT_VERSION_PATH, LOCKS_DIR, SOCKETS_DIR, SPARE_SOCKET, STANDBY_SOCKET, STATE_DIR,
};

use crate::ensure::{self, EnsureError, io};
use crate::{accounts, delete, list, lock, tools};

const SPARES_DIR: &str = "/var/lib/llima-box/spares";
const KEEPER_UNIT: &str = "llima-box-pool";
/// How long the keeper lets a claim settle before it makes a spare.
const BURST: Duration = Duration::from_secs(2);

/// A spare's unit (a spare's name ends in a number, never in the eight
/// hex digits of an environment's, so the two never clash).
fn unit_of(spare: &str) -> String {
    format!("llima-box-{spare}")
}

fn published(path: &str) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Both spares published.
fn full() -> bool {
    published(SPARE_SOCKET) && published(STANDBY_SOCKET)
}

/// Starts the keeper for `admin` and the host user outside any SSH
/// session, unless it runs already (a full pool may be of an older agent,
/// or for another host user: the keeper replaces it).
pub fn keep(admin: u32, host_uid: u32, host_gid: u32) {
    // systemd's record of the running transient unit: a stat rather than
    // a process to ask.
    if Path::new("/run/systemd/transient")
        .join(format!("{KEEPER_UNIT}.service"))
        .exists()
    {
        return;
    }
    tools::quiet(
        Command::new("systemd-run")
            .args([
                "--no-block",
                "--quiet",
                "--collect",
                &format!("--unit={KEEPER_UNIT}"),
                "-p",
                "Nice=10",
                "-p",
                "StandardOutput=null",
                "-p",
                "StandardError=journal",
                "--",
                AGENT_PATH,
                "pool-keeper",
            ])
            .args([admin, host_uid, host_gid].map(|i| i.to_string())),
    );
}

/// Starts the keeper for the host user the pool's spares were made for,
/// if there are any: after an upgrade of the agent (which stops the
/// keeper), they are replaced before a new project needs one.
pub fn resume(admin: u32) {
    let Ok(entries) = fs::read_dir(SPARES_DIR) else {
        return;
    };
    let ids = entries.flatten().find_map(|e| {
        ensure::parse_host_ids(&fs::read_to_string(e.path().join(ensure::HOST_IDS)).ok()?)
    });
    if let Some((host_uid, host_gid)) = ids {
        keep(admin, host_uid, host_gid);
    }
}

/// Refills the pool whenever it is not full (at start and after each
/// claim, which takes a spare away), and once a minute in case a spare
/// died; after a failure, a minute later. Never returns.
pub fn keeper(admin: u32, host_uid: u32, host_gid: u32) -> ! {
    let mut checked: Option<Instant> = None;
    loop {
        let due = checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        let mut pause = Duration::from_secs(1);
        if !full() && checked.is_some() {
            // A claim took a spare: new projects tend to come in bursts, and
            // making a spare under emulation slows the next claim down.
            std::thread::sleep(BURST);
        }
        if !full() || due {
            checked = Some(Instant::now());
            if let Err(e) = fill(admin, host_uid, host_gid) {
                eprintln!("llima-box-guest-agent pool-keeper: {e}");
                pause = Duration::from_secs(60);
            }
        }
        std::thread::sleep(pause);
    }
}

/// Makes sure two good spares (alive, of this agent and for this host
/// user) are published, at [`SPARE_SOCKET`] and [`STANDBY_SOCKET`]. The
/// pool's lock keeps claims away while it looks and publishes, not while
/// it makes a spare (seconds, while the published one stays claimable).
pub fn fill(admin: u32, host_uid: u32, host_gid: u32) -> Result<(), EnsureError> {
    for d in [STATE_DIR, LOCKS_DIR, SPARES_DIR] {
        fs::create_dir_all(d).map_err(io("cannot make the pool's directory"))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o700))
            .map_err(io("cannot make the pool's directory"))?;
    }
    let version = fs::read_to_string(AGENT_VERSION_PATH).unwrap_or_default();
    let ids = ensure::host_ids_text(host_uid, host_gid);
    loop {
        {
            let state = fs::File::open(STATE_DIR).map_err(io("cannot open the state directory"))?;
            let Some(_pool) = lock::try_flock_at(&state, ".pool.lock", false)
                .map_err(io("cannot lock the pool"))?
            else {
                return Ok(());
            };
            check(&version, &ids)?;
            if !published(SPARE_SOCKET) && published(STANDBY_SOCKET) {
                fs::rename(STANDBY_SOCKET, SPARE_SOCKET)
                    .map_err(io("cannot publish the standby"))?;
            }
            if full() {
                return Ok(());
            }
        }
        let (spare, own) = make(admin, &version, &ids)?;
        let _pool = lock::flock(".pool.lock").map_err(io("cannot lock the pool"))?;
        let at = match published(SPARE_SOCKET) {
            true => STANDBY_SOCKET,
            false => SPARE_SOCKET,
        };
        // Published only now that its records are complete.
        fs::rename(&own, at).map_err(io("cannot publish the spare"))?;
        eprintln!("llima-box-guest-agent pool-keeper: {spare} published");
    }
}

/// Leaves the pool as it is when each of its spares is alive, of this
/// `version` and host user (`ids`), and published (its own socket renamed
/// away), one per published path; else empties it, to be made afresh.
fn check(version: &str, ids: &str) -> Result<(), EnsureError> {
    let mut spares = Vec::new();
    for entry in fs::read_dir(SPARES_DIR).map_err(io("cannot read the pool"))? {
        let entry = entry.map_err(io("cannot read the pool"))?;
        if let Some(name) = entry.file_name().to_str() {
            spares.push((name.to_owned(), entry.path()));
        }
    }
    let good = |(spare, dir): &(String, std::path::PathBuf)| {
        list::holder_pid(dir).is_some()
            && fs::read_to_string(dir.join("version")).is_ok_and(|v| v == version)
            && fs::read_to_string(dir.join(ensure::HOST_IDS)).is_ok_and(|i| i == ids)
            && !own_socket(spare).exists()
    };
    let paths = [SPARE_SOCKET, STANDBY_SOCKET];
    if spares.iter().all(good) && spares.len() == paths.iter().filter(|p| published(p)).count() {
        return Ok(());
    }
    for p in paths {
        match fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot unpublish the old spares")(e));
            }
            _ => {}
        }
    }
    for (spare, dir) in &spares {
        delete::teardown(dir, &unit_of(spare), spare, &own_socket(spare))?;
    }
    Ok(())
}

/// A spare listens here until it is published.
fn own_socket(spare: &str) -> std::path::PathBuf {
    Path::new(SOCKETS_DIR).join(format!(".{spare}.sock"))
}

/// A new spare, running: its name and its own socket.
fn make(admin: u32, version: &str, ids: &str) -> Result<(String, std::path::PathBuf), EnsureError> {
    // A claimed spare's environment keeps its unit, named after the spare:
    // a new spare of that name would stop it when it clears leftovers.
    let spare = loop {
        let name = format!("spare-{:08x}", random());
        if accounts::local_uid(&name).is_none()
            && !Path::new(SPARES_DIR).join(&name).exists()
            && !ensure::unit_active(&unit_of(&name))
        {
            break name;
        }
    };
    let dir = Path::new(SPARES_DIR).join(&spare);
    fs::create_dir(&dir).map_err(io("cannot make the spare's records"))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io("cannot make the spare's records"))?;
    fs::write(dir.join(ensure::HOST_IDS), ids).map_err(io("cannot write the spare's records"))?;
    fs::write(dir.join("version"), version).map_err(io("cannot write the spare's records"))?;
    accounts::add_env_user(&spare, Path::new(ensure::LAST_UID))?;
    ensure::start_holder(&dir, &unit_of(&spare), &spare, admin)?;
    Ok((spare.clone(), own_socket(&spare)))
}

fn random() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: writes at most 4 bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_ne_bytes(b)
}

//! Claiming a spare: the pool keeps one environment ready (user, home,
//! namespace with every writable share remapped, this server listening on
//! the spare socket), and the first shell of a new project turns it into
//! that project's environment instead of waiting seconds for one to be
//! built. Only what the command needs happens before it starts (its view of
//! the project and home, its name in passwd and group); the rest
//! ([`Completion`]) overlaps with its start. A refusal is always safe: the
//! host then creates the environment the slow way.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};

use llima_box_proto::names::{valid_env_name, valid_path};
use llima_box_proto::paths::{HOMES_DIR, SOCKETS_DIR, SPARE_SOCKET, STAGE_DIR, STANDBY_SOCKET};
use llima_box_proto::spawn::Claim;

use super::{Identity, Server, within};
use crate::sys::{c, check};
use crate::{accounts, lock, protect_git, sys};

/// Where the spare's user is renamed before its first command starts, as
/// in [`accounts::NAME_FILES`]: any subordinate IDs an admin gave it
/// (`newuidmap` looks them up by name).
const SUBORDINATE_FILES: [&str; 2] = ["/etc/subuid", "/etc/subgid"];
/// The rest, renamed once the command runs: they only hold passwords,
/// which no environment user has or is asked for. Each file costs a few
/// milliseconds under emulation.
const PASSWORD_FILES: [&str; 2] = ["/etc/shadow", "/etc/gshadow"];

/// The rest of a claim, with the locks that keep others away until done.
pub struct Completion {
    old: String,
    root: String,
    _locks: Vec<lock::Guard>,
    _source: OwnedFd,
}

/// Whether `path` (relative to `dir`) exists, without following it.
fn exists_at(dir: &OwnedFd, path: &str) -> io::Result<bool> {
    match sys::lstat_at(dir, &c(path)?) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: a valid directory descriptor and NUL-terminated names.
    check(unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) })
}

fn write_at(dir: &OwnedFd, name: &str, text: &str) -> io::Result<()> {
    let n = c(name)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a descriptor nothing else owns.
    let mut f = unsafe { fs::File::from_raw_fd(fd) };
    io::Write::write_all(&mut f, text.as_bytes())
}

/// How long after a claim its account files are flushed to disk. At once,
/// the flush made the claim of a shell right after it (in another new
/// project, on the other spare) wait for the disk: that shell took 52 ms
/// (median of 7) against 45 ms with the flush a second later. Meanwhile
/// the kernel writes them back as it does any file.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Flushes the account files a claim changed, [`FLUSH_AFTER`] from now,
/// outside the account files' lock.
fn flush_later() {
    let flush = || {
        let all: Vec<&str> = accounts::NAME_FILES
            .iter()
            .chain(&SUBORDINATE_FILES)
            .chain(&PASSWORD_FILES)
            .copied()
            .collect();
        if let Err(e) = accounts::flush(&all) {
            eprintln!("llima-box env-server: cannot flush the account files: {e}");
        }
    };
    let later = std::thread::Builder::new().spawn(move || {
        std::thread::sleep(FLUSH_AFTER);
        flush();
    });
    if later.is_err() {
        flush();
    }
}

/// Where a claimed spare's socket waits, off the pool, until the
/// environment `name` is complete.
fn claimed(name: &str) -> String {
    format!("{SOCKETS_DIR}/.claimed-{name}.sock")
}

/// Removes the socket of a claim that failed, so nobody reaches the half
/// made environment and the pool's keeper replaces the spare.
fn unpublish(name: &str) {
    let _ = fs::remove_file(claimed(name));
}

/// A job for a [`Helper`].
type Job = Box<dyn FnOnce() + Send>;

/// A thread a spare starts while it waits, for the questions its claim asks
/// the share: each is a round trip to the host (a millisecond or more, up
/// to several after a pause), and meanwhile the claim does its own work.
/// Started at the claim, it would cost the claim 1.5-3 ms under emulation.
pub struct Helper(Mutex<Option<mpsc::Sender<Job>>>);

impl Helper {
    /// A helper waiting for one job: for a spare; none otherwise.
    pub fn start(spare: bool) -> Helper {
        let sender = spare.then(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let waiting = std::thread::Builder::new().spawn(move || {
                if let Ok(job) = rx.recv() {
                    job();
                }
            });
            waiting.is_ok().then_some(tx)
        });
        Helper(Mutex::new(sender.flatten()))
    }

    /// Runs `job` on the waiting thread, or on a new one once that is used.
    fn run(&self, job: Job) -> io::Result<()> {
        let waiting = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let job = match waiting {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        std::thread::Builder::new().spawn(job).map(drop)
    }
}

/// The repositories in the project (see `protect_git::repositories`).
type Found = mpsc::Receiver<io::Result<Vec<PathBuf>>>;

/// Opens the project exactly (see `sys::open_dir_exact`) and sends it on
/// `opened` at once; then, given `found`, looks for its repositories, in
/// it or, when `raw` is given, there, and sends them on `found`.
fn look(
    source: &str,
    raw: Option<&str>,
    opened: &mpsc::Sender<Result<OwnedFd, String>>,
    found: Option<&mpsc::Sender<io::Result<Vec<PathBuf>>>>,
) {
    let src = match sys::open_dir_exact(source) {
        Ok(Some(src)) => src,
        Ok(None) => {
            let _ = opened.send(Err("the project's path has a symbolic link in it".into()));
            return;
        }
        Err(_) => {
            let _ = opened.send(Err("the project is not a directory".into()));
            return;
        }
    };
    let copy = src.try_clone();
    let sent = opened.send(Ok(src));
    let Some(found) = found.filter(|_| sent.is_ok()) else {
        return;
    };
    let scan = match raw {
        Some(raw) => protect_git::open_dir(Path::new(raw)),
        None => copy.and_then(|dir| protect_git::reopen(&dir)),
    };
    let _ = found.send(scan.map(|dir| protect_git::repositories(&dir)));
}

/// The host's repositories (see [`Claim::repositories`]): paths that stay
/// inside the project ("" is the project itself, a bare repository).
fn relative_paths(known: &[String]) -> Result<Vec<PathBuf>, String> {
    known
        .iter()
        .map(|r| match r.is_empty() || valid_path(&format!("/{r}")) {
            true => Ok(PathBuf::from(r)),
            false => Err(format!("bad repository path {r:?}")),
        })
        .collect()
}

/// Turns this server's spare into `c`'s environment, or says why not.
/// `Ok(None)`: this server is that environment already.
pub fn claim(server: &Server, c: &Claim) -> Result<Option<Completion>, String> {
    let mut id = server.identity.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(project) = &id.project {
        if (c.name.as_str(), c.project.as_str()) != (id.name.as_str(), project.as_str()) {
            return Err("taken by another project".into());
        }
        return Ok(None);
    }
    let cfg = &server.config;
    if c.version != cfg.version {
        // Of no use any more: out of the way, so that the pool makes a new one.
        server.retire();
        return Err("made by another version of the agent".into());
    }
    if (c.host_uid, c.host_gid) != (cfg.host_uid, cfg.host_gid) {
        return Err("made for another host user".into());
    }
    if !valid_env_name(&c.name) || !valid_path(&c.project) {
        return Err("bad name or project path".into());
    }
    let Some((index, root)) = cfg
        .roots
        .iter()
        .enumerate()
        .filter(|(_, r)| within(&c.project, r))
        .max_by_key(|(_, r)| r.len())
    else {
        return Err("the project is on no share this spare remapped".into());
    };
    let rest = &c.project[root.len()..];
    let source = format!("{STAGE_DIR}/remap/{index}{rest}");
    let raw = format!("{STAGE_DIR}/raw/{index}{rest}");
    // Looked at by the helper meanwhile (through the raw share when the
    // remap is bindfs, whose directory reads cost several times as much),
    // searched only when the host did not say what it holds.
    let (opened_tx, opened) = mpsc::channel();
    let (found_tx, found) = mpsc::channel();
    let search = match &c.repositories {
        Some(known) => {
            let _ = found_tx.send(Ok(relative_paths(known)?));
            None
        }
        None => Some(found_tx),
    };
    let raw = (server.idmapped.get(index) != Some(&true)).then_some(raw);
    server
        .helper
        .run(Box::new(move || {
            look(&source, raw.as_deref(), &opened_tx, search.as_ref())
        }))
        .map_err(|e| format!("cannot look at the project: {e}"))?;
    // The environment's lock, as `ensure` takes it, and the pool's, so that
    // the pool's keeper never sees this spare half claimed (shared: the
    // standby's claim may come while this one completes).
    let mut locks = Vec::new();
    for (name, shared) in [
        (format!("{}.lock", c.name), false),
        (".pool.lock".into(), true),
    ] {
        match lock::try_flock_at(&server.dirs.state, &name, shared) {
            Ok(Some(g)) => locks.push(g),
            Ok(None) => return Err("the environment is being created".into()),
            Err(e) => return Err(format!("cannot take the lock {name}: {e}")),
        }
    }
    let taken = |e: io::Error| format!("cannot check for an existing environment: {e}");
    if exists_at(&server.dirs.state, &format!("envs/{}", c.name)).map_err(taken)?
        || exists_at(&server.dirs.homes, &c.name).map_err(taken)?
    {
        return Err("the environment exists".into());
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    if accounts::uid_of(&passwd, &c.name).is_some() {
        return Err("the user exists".into());
    }
    let src = opened
        .recv()
        .unwrap_or_else(|_| Err("the look at the project ended early".into()))?;
    let fd_path = sys::fd_path(&src);
    // Held only while this claim edits them: the standby's claim right
    // after must not wait for this one's completion.
    let accounts_lock =
        lock::account_files().map_err(|e| format!("the account files are locked: {e}"))?;
    // Off the pool, and the standby in its place at once.
    fs::rename(SPARE_SOCKET, claimed(&c.name))
        .map_err(|e| format!("cannot take the spare off the pool: {e}"))?;
    let _ = fs::rename(STANDBY_SOCKET, SPARE_SOCKET);
    let old = id.name.clone();
    if let Err(e) = claim_as(&mut id, c, &fd_path, &found) {
        unpublish(&c.name);
        return Err(format!("cannot take the spare on: {e}"));
    }
    drop(accounts_lock);
    Ok(Some(Completion {
        old,
        root: root.clone(),
        _locks: locks,
        _source: src,
    }))
}

/// What the command needs: its view of the project and home, and its name.
fn claim_as(id: &mut Identity, c: &Claim, source: &str, found: &Found) -> io::Result<()> {
    let home = format!("{HOMES_DIR}/{}", c.name);
    fs::create_dir_all(&home)?;
    // Moved, not bound again and unmounted: an unmount waits for every
    // CPU to pass a quiescent state, up to 5 ms under emulation.
    let old_home = id.home();
    sys::mount(Some(&old_home), &home, None, libc::MS_MOVE, None)?;
    fs::remove_dir(&old_home)?;
    fs::create_dir_all(&c.project)?;
    sys::bind(source, &c.project, false)?;
    let repositories = found
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the look at the project ended early")))?;
    protect_git::protect(Path::new(&c.project), &repositories)?;
    // Flushed a while after the command runs (`flush_later`).
    let files = [accounts::NAME_FILES, SUBORDINATE_FILES].concat();
    accounts::rename_account(&id.name, &c.name, &files, false)?;
    id.name = c.name.clone();
    id.project = Some(c.project.clone());
    // A spare's user is in its own group only.
    id.groups.truncate(1);
    Ok(())
}

impl Completion {
    /// The rest: account files, the home's directory, the records, and
    /// last the socket, since once it has the environment's name the
    /// environment is complete. A failure leaves the spare unpublished, so
    /// that nobody claims it again and the pool replaces it.
    pub fn complete(self, server: &Server) {
        let (name, project) = {
            let id = server.identity.lock().unwrap_or_else(|e| e.into_inner());
            (id.name.clone(), id.project.clone().unwrap_or_default())
        };
        if let Err(e) = self.finish(server, &name, &project) {
            eprintln!("llima-box env-server: claiming this spare as {name} failed: {e}");
            unpublish(&name);
        }
    }

    fn finish(&self, server: &Server, name: &str, project: &str) -> io::Result<()> {
        {
            let _accounts = lock::account_files()?;
            accounts::rename_account(&self.old, name, &PASSWORD_FILES, false)?;
            // For the next claim, which may come right after this one.
            if let Err(e) = accounts::prepare(&accounts::NAME_FILES) {
                eprintln!("llima-box env-server: cannot prepare the account files: {e}");
            }
        }
        flush_later();
        rename_at(&server.dirs.homes, &self.old, name)?;
        for (i, r) in server.config.roots.iter().enumerate() {
            // The project's share stays; the others' remaps go (each FUSE
            // process exits with its last mount).
            if *r != self.root {
                sys::detach(&format!("{STAGE_DIR}/remap/{i}"))?;
            }
        }
        let now = llima_box_proto::time::rfc3339_secs(std::time::SystemTime::now());
        for (file, text) in [("project", project), ("created", &now), ("last_used", "")] {
            write_at(&server.dirs.env, file, text)?;
        }
        let envs = c("envs")?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        match check(unsafe { libc::mkdirat(server.dirs.state.as_raw_fd(), envs.as_ptr(), 0o700) }) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        rename_at(
            &server.dirs.state,
            &format!("spares/{}", self.old),
            &format!("envs/{name}"),
        )?;
        let socket = format!("{SOCKETS_DIR}/{name}.sock");
        fs::rename(claimed(name), &socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_runs_every_job_it_is_given() {
        for spare in [true, false] {
            let helper = Helper::start(spare);
            let (tx, rx) = mpsc::channel();
            for i in 0..2 {
                let tx = tx.clone();
                helper.run(Box::new(move || tx.send(i).unwrap())).unwrap();
            }
            let mut ran: Vec<i32> = rx.iter().take(2).collect();
            ran.sort();
            assert_eq!(ran, [0, 1]);
        }
    }

    #[test]
    fn a_look_sends_the_project_then_its_repositories() {
        let d = std::env::temp_dir().join(format!("llb-look-{}", std::process::id()));
        fs::create_dir_all(d.join("p/sub/.git")).unwrap();
        fs::create_dir_all(d.join("p/.git")).unwrap();
        std::os::unix::fs::symlink(d.join("p"), d.join("link")).unwrap();
        let run = |source: &Path| {
            let (opened_tx, opened) = mpsc::channel();
            let (found_tx, found) = mpsc::channel();
            look(source.to_str().unwrap(), None, &opened_tx, Some(&found_tx));
            (opened.recv().unwrap(), found.try_recv().ok())
        };
        // Told what the project holds, it only opens it.
        let (opened_tx, opened) = mpsc::channel();
        look(d.join("p").to_str().unwrap(), None, &opened_tx, None);
        assert!(opened.recv().unwrap().is_ok());
        let (opened, found) = run(&d.join("p"));
        assert_eq!(
            fs::read_link(sys::fd_path(&opened.unwrap())).unwrap(),
            d.join("p")
        );
        let mut found = found.unwrap().unwrap();
        found.sort();
        assert_eq!(found, [PathBuf::from(".git"), PathBuf::from("sub/.git")]);
        let (opened, found) = run(&d.join("link"));
        assert_eq!(
            opened.unwrap_err(),
            "the project's path has a symbolic link in it"
        );
        assert!(found.is_none());
        let (opened, _) = run(&d.join("missing"));
        assert_eq!(opened.unwrap_err(), "the project is not a directory");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_hosts_repositories_must_stay_inside_the_project() {
        let known = ["", ".git", "sub/.git", "a b/.git/modules/x"].map(String::from);
        assert_eq!(relative_paths(&known).unwrap(), known.map(PathBuf::from));
        for bad in ["/etc", "../.git", "a/../../x", "a//b", "a/"] {
            let err = relative_paths(&[".git".into(), bad.into()]).unwrap_err();
            assert!(err.contains("bad repository path"), "{err}");
        }
    }

    #[test]
    fn paths_must_be_inside() {
        assert!(within("/a/b", "/a") && within("/a", "/a"));
        assert!(!within("/ab", "/a") && !within("/", "/a"));
    }
}

//! The admin's login environment, remembered: what `bash -l` sets up (its
//! variables and file mode mask) is the same from one command to the next
//! until a file it reads changes, and under emulation a login shell costs
//! more than a whole command should (about 100 ms: `/etc/profile`, its
//! `profile.d`, `~/.profile`, `~/.bashrc`). So a command runs as
//! `bash -c COMMAND` in the environment one login shell made, as sshd runs
//! a command in the environment of the session it set up; it is made again
//! whenever one of those files changes. Only for bash, whose login files
//! are known; other shells get a real login shell each time.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::env_server::child::{Command, Prepared, Stdio};
use crate::env_server::reaper::Reaper;

/// How long a login shell may take to print its environment.
const CAPTURE_WITHIN: Duration = Duration::from_secs(10);

/// What a login shell left: variables and the file mode mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginEnv {
    pub vars: Vec<(String, String)>,
    pub umask: u32,
}

/// A file's identity and version (absent: `None`).
type Stamp = (PathBuf, Option<(u64, u64, i64, i64, u64)>);

#[derive(Default)]
pub struct Cache {
    saved: Mutex<Option<(Vec<Stamp>, LoginEnv)>>,
}

/// Variables that belong to the shell that printed them, not to a login.
const OWN: [&str; 4] = ["PWD", "OLDPWD", "SHLVL", "_"];

/// The files a bash login shell reads for a user whose home is `home`
/// (and, through `/etc/passwd`, the user's shell and home themselves).
fn login_files(home: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "/etc/passwd",
        "/etc/group",
        "/etc/environment",
        "/etc/profile",
        "/etc/bash.bashrc",
        "/etc/profile.d",
    ]
    .map(PathBuf::from)
    .to_vec();
    if let Ok(entries) = std::fs::read_dir("/etc/profile.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in [".profile", ".bash_profile", ".bash_login", ".bashrc"] {
        files.push(Path::new(home).join(f));
    }
    files
}

fn stamps(files: Vec<PathBuf>) -> Vec<Stamp> {
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let version = m.map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
            (f, version)
        })
        .collect()
}

/// The variables and mask in what `umask; env -0` printed.
fn parse(out: &[u8]) -> Option<LoginEnv> {
    let newline = out.iter().position(|&b| b == b'\n')?;
    let umask = u32::from_str_radix(std::str::from_utf8(&out[..newline]).ok()?.trim(), 8).ok()?;
    let vars = out[newline + 1..]
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            let (k, v) = std::str::from_utf8(v).ok()?.split_once('=')?;
            (!OWN.contains(&k)).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect();
    Some(LoginEnv { vars, umask })
}

impl Cache {
    /// The login environment of `cmd`'s user (whose shell is `cmd.argv[0]`
    /// and home `home`), made with `cmd`'s variables; `None` when the
    /// shell is not bash or the login shell failed (then the caller runs a
    /// real one).
    pub fn get(&self, cmd: &Command, home: &str, reaper: &Reaper) -> Option<LoginEnv> {
        if !cmd.argv.first()?.ends_with("/bash") {
            return None;
        }
        let now = stamps(login_files(home));
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((stamps, env)) = saved.as_ref()
            && *stamps == now
        {
            return Some(env.clone());
        }
        let env = capture(cmd, reaper)?;
        *saved = Some((now, env.clone()));
        Some(env)
    }
}

/// Runs `cmd` (a login shell printing `umask; env -0`) and reads what it
/// printed; `None` when it failed or took too long.
fn capture(cmd: &Command, reaper: &Reaper) -> Option<LoginEnv> {
    let argv = [
        cmd.argv[0].clone(),
        "-l".into(),
        "-c".into(),
        "umask; env -0".into(),
    ];
    let prepared = Prepared::new(&Command {
        argv: &argv,
        ..*cmd
    })
    .ok()?;
    let (stdin, feed) = crate::sys::pipe().ok()?;
    drop(feed);
    let (mut out, write) = crate::sys::pipe().ok()?;
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .ok()?;
    let fds = [stdin.as_raw_fd(), write.as_raw_fd(), null.as_raw_fd()];
    let (pid, status) = reaper
        .fork(|| {
            // SAFETY: in the child just forked, with the descriptors open.
            unsafe { prepared.exec(&Stdio::Pipes(fds)) }
        })
        .ok()?;
    drop((stdin, write, null));
    let printed = read_within(&mut out, CAPTURE_WITHIN);
    if printed.is_none() {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut code = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::from(status), &mut code).ok()?;
    let code = i32::from_ne_bytes(code);
    (libc::WIFEXITED(code) && libc::WEXITSTATUS(code) == 0)
        .then(|| parse(&printed?))
        .flatten()
}

/// Everything `fd` delivers until its end, unless that takes longer than
/// `within`.
fn read_within(fd: &mut OwnedFd, within: Duration) -> Option<Vec<u8>> {
    let deadline = std::time::Instant::now() + within;
    let mut data = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
            return None;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Some(data),
            n if n > 0 => data.extend_from_slice(&buf[..n as usize]),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mask_and_variables_but_not_the_shells_own() {
        let out = b"0027\nPATH=/a:/b\0PWD=/home/a\0A=x=y\0EMPTY=\0SHLVL=1\0_=/usr/bin/env\0MULTI=l1\nl2\0";
        let env = parse(out).unwrap();
        assert_eq!(env.umask, 0o027);
        let v = |k: &str| {
            env.vars
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(v("PATH"), Some("/a:/b"));
        assert_eq!(v("A"), Some("x=y"));
        assert_eq!(v("EMPTY"), Some(""));
        assert_eq!(v("MULTI"), Some("l1\nl2"));
        for own in OWN {
            assert_eq!(v(own), None, "{own}");
        }
        assert_eq!(parse(b"not a mask\nA=b\0"), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn a_changed_login_file_changes_the_stamps() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        let before = stamps(login_files(home));
        assert!(before.iter().any(|(f, _)| f.ends_with(".profile")));
        assert_eq!(before, stamps(login_files(home)));
        std::fs::write(d.path().join(".bashrc"), "export X=1\n").unwrap();
        assert_ne!(before, stamps(login_files(home)), "a new ~/.bashrc");
    }
}

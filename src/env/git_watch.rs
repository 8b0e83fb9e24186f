//! What a shell left in the project's git repositories that would run
//! programs on the host.
//!
//! The project is shared read-write with its environment, so an agent in
//! it can write `.git/config` and `.git/hooks`, and the user's next `git
//! status` on the host would run what it put there (`core.fsmonitor`, a
//! filter, a pager, a hook...). [`Snapshot::take`] records the entries of
//! the repositories' config files that name programs (or pull in other
//! files) and the executable hooks; [`Snapshot::changes_since`] lists what
//! is new or changed, for the caller to warn about.
//!
//! The config files are parsed here, not by running `git`: git on a
//! hostile repository is the danger (even `git config --list` starts the
//! configured pager), and only reading is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use llima_box_proto::git::NOT_REPOSITORIES;
use sha2::{Digest, Sha256};

/// How far below the project nested repositories are looked for.
const MAX_DEPTH: usize = 3;
/// Directory entries looked at in all: a tree an agent filled must not
/// hold up the end of the shell.
const MAX_ENTRIES: usize = 100_000;
/// The largest config file or hook read (git's own configs are a few KiB).
const MAX_FILE: u64 = 8 << 20;

/// What git does with the value of a key, for the warning.
const RUNS: &str = "git runs it as a program";
const INCLUDES: &str = "git reads another config file from it";
const REMOTE_COMMANDS: &str = "it lets remote URLs run commands";
const WORK_TREE: &str = "it moves the work tree git writes to";

/// Which subsection a key of [`PROGRAM_KEYS`] has.
#[derive(Clone, Copy)]
enum Sub {
    /// `section.name` only.
    No,
    /// `section.<anything>.name` only.
    Yes,
    /// Either.
    Any,
}

/// Keys whose values name programs git runs, or otherwise decide what
/// runs, from git-config(1), git-interpret-trailers(1) and
/// git-send-email(1): section, subsection, variable names (`None`: every
/// variable), why. Lowercase, as keys compare.
const PROGRAM_KEYS: &[(&str, Sub, Option<&[&str]>, &str)] = &[
    (
        "core",
        Sub::No,
        Some(&[
            "fsmonitor",
            "hookspath",
            "sshcommand",
            "pager",
            "editor",
            "askpass",
            "gitproxy",
            "alternaterefscommand",
        ]),
        RUNS,
    ),
    ("core", Sub::No, Some(&["worktree"]), WORK_TREE),
    ("sequence", Sub::No, Some(&["editor"]), RUNS),
    ("diff", Sub::No, Some(&["external"]), RUNS),
    ("diff", Sub::Yes, Some(&["textconv", "command"]), RUNS),
    (
        "filter",
        Sub::Yes,
        Some(&["clean", "smudge", "process"]),
        RUNS,
    ),
    ("merge", Sub::Yes, Some(&["driver"]), RUNS),
    ("gpg", Sub::Any, Some(&["program"]), RUNS),
    ("gpg", Sub::Yes, Some(&["defaultkeycommand"]), RUNS),
    ("credential", Sub::Any, Some(&["helper"]), RUNS),
    // A plain alias can still carry `-c core.pager=...`.
    ("alias", Sub::Any, None, RUNS),
    ("pager", Sub::No, None, RUNS),
    ("interactive", Sub::No, Some(&["difffilter"]), RUNS),
    ("imap", Sub::No, Some(&["tunnel"]), RUNS),
    ("uploadpack", Sub::No, Some(&["packobjectshook"]), RUNS),
    (
        "remote",
        Sub::Yes,
        Some(&["uploadpack", "receivepack"]),
        RUNS,
    ),
    ("mergetool", Sub::Yes, Some(&["cmd", "path"]), RUNS),
    ("difftool", Sub::Yes, Some(&["cmd", "path"]), RUNS),
    ("man", Sub::Yes, Some(&["cmd", "path"]), RUNS),
    ("browser", Sub::Yes, Some(&["cmd", "path"]), RUNS),
    ("guitool", Sub::Yes, Some(&["cmd"]), RUNS),
    ("instaweb", Sub::No, Some(&["httpd", "browser"]), RUNS),
    ("web", Sub::No, Some(&["browser"]), RUNS),
    ("trailer", Sub::Yes, Some(&["command", "cmd"]), RUNS),
    (
        "sendemail",
        Sub::Any,
        Some(&["smtpserver", "sendmailcmd", "tocmd", "cccmd", "headercmd"]),
        RUNS,
    ),
    // Hooks defined in config (newer git).
    ("hook", Sub::Yes, Some(&["command"]), RUNS),
    ("include", Sub::No, Some(&["path"]), INCLUDES),
    ("includeif", Sub::Yes, Some(&["path"]), INCLUDES),
    // `ext::` URLs run a command once the protocol is allowed.
    ("protocol", Sub::Any, Some(&["allow"]), REMOTE_COMMANDS),
];

/// Why git would run something from `key = value`, if it would. `key` is
/// as git spells it (see [`Entry`]).
fn program_key(key: &[u8], value: Option<&[u8]>) -> Option<&'static str> {
    // Split as git does: the section ends at the first dot, the variable
    // starts after the last one, and the subsection is what is between.
    let first = key.iter().position(|&b| b == b'.')?;
    let last = key.iter().rposition(|&b| b == b'.')?;
    let section = &key[..first];
    let name = &key[last + 1..];
    let has_sub = first < last;
    // `submodule.<name>.update = !command` runs the command; the other
    // update modes run git.
    if section == b"submodule" && has_sub && name == b"update" {
        return value.filter(|v| v.starts_with(b"!")).map(|_| RUNS);
    }
    PROGRAM_KEYS.iter().find_map(|&(s, sub, names, why)| {
        let sub_ok = match sub {
            Sub::No => !has_sub,
            Sub::Yes => has_sub,
            Sub::Any => true,
        };
        let name_ok = names.is_none_or(|n| n.iter().any(|n| n.as_bytes() == name));
        (section == s.as_bytes() && sub_ok && name_ok).then_some(why)
    })
}

/// A config file that does not parse, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub(crate) struct ParseError {
    line: usize,
    what: &'static str,
}

/// One `key = value` of a config file. The key is spelled as git spells
/// it: the section and the variable lowercased, a subsection as written
/// (`[a "Sub"] k` is `a.Sub.k`), the legacy `[a.Sub]` lowercased whole.
/// No value (a bare `key`) means true. Bytes: a config need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// The bytes of a config file as git's reader hands them out: CR LF as
/// LF, and LF for ever at the end (with `eof` set).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    /// The line of the byte last returned, for errors.
    at: usize,
    eof: bool,
}

/// git's `isspace`: ASCII blanks without vertical tab and form feed.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

impl Reader<'_> {
    fn next(&mut self) -> u8 {
        self.at = self.line;
        let Some(&c) = self.bytes.get(self.pos) else {
            self.eof = true;
            return b'\n';
        };
        self.pos += 1;
        let c = if c == b'\r' && self.bytes.get(self.pos) == Some(&b'\n') {
            self.pos += 1;
            b'\n'
        } else {
            c
        };
        if c == b'\n' {
            self.line += 1;
        }
        c
    }

    fn error(&self, what: &'static str) -> ParseError {
        ParseError {
            line: self.at,
            what,
        }
    }

    /// After `[`: the section as the prefix of its keys, `name.` or
    /// `name.subsection.`.
    fn section(&mut self) -> Result<Vec<u8>, ParseError> {
        let mut prefix = Vec::new();
        loop {
            let c = self.next();
            if self.eof {
                return Err(self.error("unterminated section header"));
            }
            if c == b']' {
                break;
            }
            if is_space(c) {
                self.subsection(&mut prefix, c)?;
                break;
            }
            if !is_key_char(c) && c != b'.' {
                return Err(self.error("bad character in a section name"));
            }
            prefix.push(c.to_ascii_lowercase());
        }
        if prefix.is_empty() {
            return Err(self.error("empty section name"));
        }
        prefix.push(b'.');
        Ok(prefix)
    }

    /// After the blank `c` in a header: ` "subsection"]`, the subsection
    /// kept as written (`\x` is `x`).
    fn subsection(&mut self, prefix: &mut Vec<u8>, mut c: u8) -> Result<(), ParseError> {
        while is_space(c) {
            if c == b'\n' {
                return Err(self.error("unterminated section header"));
            }
            c = self.next();
        }
        if c != b'"' {
            return Err(self.error("a subsection must be in double quotes"));
        }
        prefix.push(b'.');
        loop {
            let mut c = self.next();
            if c == b'\n' {
                return Err(self.error("unterminated subsection"));
            }
            if c == b'"' {
                break;
            }
            if c == b'\\' {
                c = self.next();
                if c == b'\n' {
                    return Err(self.error("unterminated subsection"));
                }
            }
            prefix.push(c);
        }
        if self.next() != b']' {
            return Err(self.error("expected `]` after the subsection"));
        }
        Ok(())
    }

    /// After a key's first letter: the rest of the name (into `key`) and
    /// the value, `None` for a bare key.
    fn key_and_value(&mut self, key: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ParseError> {
        let mut c;
        loop {
            c = self.next();
            if self.eof || !is_key_char(c) {
                break;
            }
            key.push(c.to_ascii_lowercase());
        }
        while c == b' ' || c == b'\t' {
            c = self.next();
        }
        if c == b'\n' {
            return Ok(None);
        }
        if c != b'=' {
            return Err(self.error("expected `=` after the key"));
        }
        self.value().map(Some)
    }

    /// After `=`: the value, unquoted and unescaped. Blanks around it go,
    /// blanks inside stay; `#` and `;` start a comment outside quotes.
    fn value(&mut self) -> Result<Vec<u8>, ParseError> {
        let mut value = Vec::new();
        let (mut quoted, mut comment) = (false, false);
        // Where trailing blanks outside quotes began, to cut them at the end.
        let mut trim: Option<usize> = None;
        loop {
            let c = self.next();
            if c == b'\n' {
                if quoted {
                    return Err(self.error("unterminated quoted value"));
                }
                if let Some(t) = trim {
                    value.truncate(t);
                }
                // git keeps values as C strings: a NUL ends them.
                if let Some(nul) = value.iter().position(|&b| b == 0) {
                    value.truncate(nul);
                }
                return Ok(value);
            }
            if comment {
                continue;
            }
            if is_space(c) && !quoted {
                if !value.is_empty() {
                    trim.get_or_insert(value.len());
                    value.push(c);
                }
                continue;
            }
            if !quoted && (c == b'#' || c == b';') {
                comment = true;
                continue;
            }
            trim = None;
            match c {
                b'\\' => match self.next() {
                    // A continuation line.
                    b'\n' => {}
                    b't' => value.push(b'\t'),
                    b'b' => value.push(0x08),
                    b'n' => value.push(b'\n'),
                    c @ (b'\\' | b'"') => value.push(c),
                    _ => return Err(self.error("unknown escape in a value")),
                },
                b'"' => quoted = !quoted,
                c => value.push(c),
            }
        }
    }
}

/// Every entry of a config file, in order, as git reads it; an error
/// where git would refuse the file.
fn parse(bytes: &[u8]) -> Result<Vec<Entry>, ParseError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut r = Reader {
        bytes,
        pos: 0,
        line: 1,
        at: 1,
        eof: false,
    };
    let mut prefix = Vec::new();
    let mut entries = Vec::new();
    let mut comment = false;
    loop {
        let c = r.next();
        if c == b'\n' {
            if r.eof {
                return Ok(entries);
            }
            comment = false;
            continue;
        }
        if comment || is_space(c) {
            continue;
        }
        match c {
            b'#' | b';' => comment = true,
            b'[' => prefix = r.section()?,
            c if c.is_ascii_alphabetic() => {
                let mut key = prefix.clone();
                key.push(c.to_ascii_lowercase());
                let value = r.key_and_value(&mut key)?;
                entries.push(Entry { key, value });
            }
            _ => return Err(r.error("expected a section, a key or a comment")),
        }
    }
}

/// A regular file's metadata and up to `limit` bytes, or `None` when
/// there is nothing at `path`. Opened without blocking and checked after
/// opening, so that a FIFO or device an agent put there, or swapped in
/// after a check, cannot hang or feed the reader.
fn read_regular(path: &Path, limit: u64) -> io::Result<Option<(Metadata, Vec<u8>)>> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(Some((meta, bytes)))
}

/// What a config file held that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConfigState {
    /// The entries that run programs, with why.
    Entries(Vec<(Entry, &'static str)>),
    /// Unreadable or unparseable: what went wrong.
    Unchecked(String),
}

/// An executable hook as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hook {
    Content {
        len: u64,
        sha256: [u8; 32],
    },
    /// Too large to hash: the change time, which a write always moves.
    Large {
        len: u64,
        ctime: (i64, i64),
    },
    /// Executable but not readable by us (git can still run a binary).
    Unreadable(String),
}

/// The state of a project's repositories at one moment.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The git directories found (canonical).
    git_dirs: BTreeSet<PathBuf>,
    configs: BTreeMap<PathBuf, ConfigState>,
    hooks: BTreeMap<PathBuf, Hook>,
    /// The search stopped at [`MAX_ENTRIES`].
    incomplete: bool,
}

/// Something new since the earlier snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// `file` gained `key = value` (new, or another value than before).
    Key {
        file: PathBuf,
        key: String,
        value: Option<String>,
        why: &'static str,
    },
    /// A new or changed executable hook.
    Hook { path: PathBuf },
    /// A config file that changed into something that cannot be checked.
    Unchecked { file: PathBuf, reason: String },
    /// The search for repositories stopped early.
    Incomplete,
}

impl Snapshot {
    /// The program-running entries of every config file and the
    /// executable hooks of the repositories in `project` (canonical): its
    /// own, nested ones up to [`MAX_DEPTH`] below it, and the submodules,
    /// linked worktrees and common directories they lead to inside it.
    /// What cannot be read is recorded as such; this never fails.
    pub(crate) fn take(project: &Path) -> Snapshot {
        let mut search = Search {
            project,
            budget: MAX_ENTRIES,
            git_dirs: BTreeSet::new(),
        };
        search.tree(project, 0);
        let mut snapshot = Snapshot {
            incomplete: search.budget == 0,
            ..Snapshot::default()
        };
        for git_dir in &search.git_dirs {
            for name in ["config", "config.worktree"] {
                let path = git_dir.join(name);
                if let Some(state) = config_state(&path) {
                    snapshot.configs.insert(path, state);
                }
            }
            snapshot.read_hooks(&git_dir.join("hooks"));
        }
        snapshot.git_dirs = search.git_dirs;
        snapshot
    }

    /// The git directories found in `project` (the one taken), relative to
    /// it; `None` when the search stopped early or a path is not UTF-8.
    pub(crate) fn repositories(&self, project: &Path) -> Option<Vec<String>> {
        if self.incomplete {
            return None;
        }
        self.git_dirs
            .iter()
            .map(|d| Some(d.strip_prefix(project).ok()?.to_str()?.to_string()))
            .collect()
    }

    fn read_hooks(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        // An agent could fill the directory; git only runs known names, so
        // the first thousand are plenty for a real one.
        for entry in entries.take(1000).flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "sample") {
                continue;
            }
            if let Some(hook) = hook_state(&path) {
                self.hooks.insert(path, hook);
            }
        }
    }

    /// What is in `self` and was not in `before`: program-running entries
    /// that are new or have another value, new or changed hooks, config
    /// files that became unreadable. Nothing for what went away.
    pub(crate) fn changes_since(&self, before: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        for (file, state) in &self.configs {
            match (state, before.configs.get(file)) {
                (ConfigState::Entries(now), old) => {
                    let mut old: Vec<&Entry> = match old {
                        Some(ConfigState::Entries(old)) => old.iter().map(|(e, _)| e).collect(),
                        _ => Vec::new(),
                    };
                    for (entry, why) in now {
                        // As a multiset: a second identical value is new too.
                        if let Some(i) = old.iter().position(|o| *o == entry) {
                            old.swap_remove(i);
                            continue;
                        }
                        changes.push(Change::Key {
                            file: file.clone(),
                            key: String::from_utf8_lossy(&entry.key).into_owned(),
                            value: entry
                                .value
                                .as_deref()
                                .map(|v| String::from_utf8_lossy(v).into_owned()),
                            why,
                        });
                    }
                }
                (ConfigState::Unchecked(reason), old) => {
                    if old != Some(state) {
                        changes.push(Change::Unchecked {
                            file: file.clone(),
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        for (path, hook) in &self.hooks {
            if before.hooks.get(path) != Some(hook) {
                changes.push(Change::Hook { path: path.clone() });
            }
        }
        if self.incomplete {
            changes.push(Change::Incomplete);
        }
        changes
    }
}

fn config_state(path: &Path) -> Option<ConfigState> {
    let bytes = match read_regular(path, MAX_FILE + 1) {
        Ok(None) => return None,
        Ok(Some((_, bytes))) if bytes.len() as u64 > MAX_FILE => {
            return Some(ConfigState::Unchecked(format!(
                "larger than {} MiB",
                MAX_FILE >> 20
            )));
        }
        Ok(Some((_, bytes))) => bytes,
        Err(e) => return Some(ConfigState::Unchecked(e.to_string())),
    };
    Some(match parse(&bytes) {
        Ok(entries) => ConfigState::Entries(
            entries
                .into_iter()
                .filter_map(|e| program_key(&e.key, e.value.as_deref()).map(|why| (e, why)))
                .collect(),
        ),
        Err(e) => ConfigState::Unchecked(format!("git cannot parse it ({e})")),
    })
}

/// The state of the hook at `path` when it is an executable file.
fn hook_state(path: &Path) -> Option<Hook> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return None;
    }
    Some(match read_regular(path, MAX_FILE) {
        Ok(None) => return None,
        Ok(Some((meta, _))) if meta.len() > MAX_FILE => Hook::Large {
            len: meta.len(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        },
        Ok(Some((meta, bytes))) => Hook::Content {
            len: meta.len(),
            sha256: Sha256::digest(&bytes).into(),
        },
        // git can still run an executable it cannot read (a binary).
        Err(e) => Hook::Unreadable(e.to_string()),
    })
}

/// The search for git directories in a project.
struct Search<'a> {
    project: &'a Path,
    budget: usize,
    git_dirs: BTreeSet<PathBuf>,
}

impl Search<'_> {
    /// Counts one directory entry; false once the budget is spent.
    fn spend(&mut self) -> bool {
        self.budget = self.budget.saturating_sub(1);
        self.budget > 0
    }

    /// `dir`'s repository and those below it, `depth` levels below the
    /// project.
    fn tree(&mut self, dir: &Path, depth: usize) {
        self.dot_git(dir);
        // A bare repository (or a `.git` put there under another name):
        // git uses it when run inside, and its contents are no tree.
        if is_git_dir(dir) {
            self.add(dir);
            return;
        }
        if depth == MAX_DEPTH {
            return;
        }
        self.subdirs(dir, |search, sub, name| {
            if name != ".git" && !NOT_REPOSITORIES.contains(&name) {
                search.tree(sub, depth + 1);
            }
        });
    }

    /// Calls `f` with each subdirectory (not a symlink) of `dir` and its
    /// name, within the budget.
    fn subdirs(&mut self, dir: &Path, mut f: impl FnMut(&mut Self, &Path, &str)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            if !self.spend() {
                return;
            }
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name();
                f(self, &entry.path(), &name.to_string_lossy());
            }
        }
    }

    /// `dir/.git`: a directory (or a link to one), or a `gitdir: PATH`
    /// file as submodules and linked worktrees have.
    fn dot_git(&mut self, dir: &Path) {
        let dot_git = dir.join(".git");
        let Ok(meta) = std::fs::metadata(&dot_git) else {
            return;
        };
        if meta.is_dir() {
            self.add(&dot_git);
        } else if let Some(target) = pointer(&dot_git, Some("gitdir:")) {
            self.add(&dir.join(target));
        }
    }

    /// Records the git directory `dir` if it is inside the project (the
    /// environment cannot write elsewhere), and those it leads to.
    fn add(&mut self, dir: &Path) {
        let Ok(dir) = std::fs::canonicalize(dir) else {
            return;
        };
        if !dir.starts_with(self.project) || !dir.is_dir() || !self.git_dirs.insert(dir.clone()) {
            return;
        }
        // A linked worktree's git directory: the repository's is there.
        if let Some(common) = pointer(&dir.join("commondir"), None) {
            self.add(&dir.join(common));
        }
        // Linked worktrees' own directories (config.worktree).
        self.subdirs(&dir.join("worktrees"), |search, sub, _| search.add(sub));
        self.modules(&dir.join("modules"), 0);
    }

    /// Submodules' git directories under `modules` (names may contain
    /// slashes, so at any depth, within reason).
    fn modules(&mut self, dir: &Path, depth: usize) {
        if depth > 8 {
            return;
        }
        self.subdirs(dir, |search, sub, _| {
            if is_git_dir(sub) {
                search.add(sub);
            } else {
                search.modules(sub, depth + 1);
            }
        });
    }
}

/// Whether git would take `dir` for a git directory: `HEAD`, `objects`
/// and `refs`.
fn is_git_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join("HEAD")).is_ok_and(|m| m.is_file())
        && dir.join("objects").is_dir()
        && dir.join("refs").is_dir()
}

/// The path a small pointer file holds (`.git`'s `gitdir: PATH`, a
/// `commondir`), after `prefix` if one is required.
fn pointer(path: &Path, prefix: Option<&str>) -> Option<PathBuf> {
    let (_, bytes) = read_regular(path, 4096).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    let text = text.trim_end_matches(['\n', '\r']);
    let target = match prefix {
        Some(p) => text.strip_prefix(p)?.trim_start(),
        None => text,
    };
    (!target.is_empty()).then(|| PathBuf::from(target))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    /// `git ARGS` in `cwd`, reading no config but what it is given.
    fn git(cwd: &Path, args: &[&str]) -> std::process::Output {
        Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CEILING_DIRECTORIES", cwd.parent().unwrap_or(cwd))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git must be installed (scripts/install-deps installs it)")
    }

    fn git_ok(cwd: &Path, args: &[&str]) {
        let out = git(cwd, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The entries of `file` as git itself lists them, `None` when git
    /// refuses the file.
    fn git_list(file: &Path) -> Option<Vec<Entry>> {
        let out = git(
            file.parent().unwrap(),
            &[
                "config",
                "--file",
                file.to_str().unwrap(),
                "--null",
                "--list",
            ],
        );
        if !out.status.success() {
            return None;
        }
        let mut entries = Vec::new();
        let mut rest = &out.stdout[..];
        while let Some(end) = rest.iter().position(|&b| b == 0) {
            let item = &rest[..end];
            rest = &rest[end + 1..];
            entries.push(match item.iter().position(|&b| b == b'\n') {
                Some(nl) => Entry {
                    key: item[..nl].to_vec(),
                    value: Some(item[nl + 1..].to_vec()),
                },
                None => Entry {
                    key: item.to_vec(),
                    value: None,
                },
            });
        }
        Some(entries)
    }

    fn entry(key: &str, value: Option<&str>) -> Entry {
        Entry {
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_parser_reads_sections_quotes_escapes_and_continuations() {
        let text = b"\xef\xbb\xbf# comment\n\
            ; another\n\
            [Core]\n\
            \tEditor = vim -f   # trailing comment\n\
            \tbare\n\
            [Filter \"LFS.x\"] Clean = \"git  lfs\" clean ; c\n\
            [Alias.Sub]\n\
            st = \"!sh -c \\\"echo \\\\\\\"\\\"\" \n\
            long = one \\\n   two\r\n\
            q = \"a;b#c\" d\\te\\nf\n";
        let entries = parse(text).unwrap();
        assert_eq!(
            entries,
            vec![
                entry("core.editor", Some("vim -f")),
                entry("core.bare", None),
                entry("filter.LFS.x.clean", Some("git  lfs clean")),
                entry("alias.sub.st", Some("!sh -c \"echo \\\"\"")),
                entry("alias.sub.long", Some("one    two")),
                entry("alias.sub.q", Some("a;b#c d\te\nf")),
            ]
        );
    }

    #[test]
    fn the_parser_refuses_what_git_refuses_and_says_where() {
        for (text, line) in [
            (&b"[core]\n\tkey # comment\n"[..], 2),
            (b"[core]\n\tk = \\q\n", 2),
            (b"[core]\n\tk = \"open\n", 2),
            (b"[]\nk = v\n", 1),
            (b"[a \"b\"x]\n", 1),
            (b"[a \"b\nc\"]\n", 1),
            (b"[a]\n1k = v\n", 2),
            (b"[a]\nk_x = v\n", 2),
            (b"[a]\n\n\n[b", 4),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{:?}: {e}", String::from_utf8_lossy(text));
        }
    }

    /// The same file read by git and by the parser gives the same entries,
    /// or is refused by both.
    #[test]
    fn the_parser_agrees_with_git_on_tricky_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        let cases: &[&[u8]] = &[
            b"foo = before any section\n[a]k=v\n",
            b"[core] editor = vim\n",
            b"[core]\n\tkey\n\tother=\n",
            b"[a \"x\\\\y\\\"z\\q\"]\n k = v\n",
            b"[A.B.C]\n K = v\n",
            b"[a.b \"C\"]\n k = v\n",
            b"[a \"Sub\"]\n k = a\t \tb  c  \n",
            b"[a]\n k = x\\\n  y\n",
            b"[a]\n k = \"x\\\n  y\"\n",
            b"[a]\n k = a;b\n k = \"a;b\" # c\n",
            b"[a]\n k = \"\"  x\n j = x  \"\"\n",
            b"[a]\r\n k = v\r\n l = v\rw\n",
            b"[a]\n k = v\x0bw\x0c\n",
            b"[a]\n k =\x0bv\x0c\n",
            b"[a]\n k = v\x00w\n",
            b"[a]\n k = \"a\\tb\\nc\\bd\"\n",
            b"[a]k=v\n[b]# c\nk=w",
            b"[a]\n k = \xff\xfe\n",
            b"[ \"x\"]\n k = v\n",
            b"[a]\n k = \\\n",
            b"[a \"b\" ]\n k = v\n",
            b"[a]\n k = \\r\n",
            b"[a]\n k = \"unterminated\n",
            b"[a]\n 1k = v\n",
            b"[a]\n k # c\n",
            b"[a\n",
            b"[a]\n\xe2\x80\x8bk = v\n",
        ];
        // Git before 2.46 (Debian 12 has 2.39) read every whitespace byte
        // of a value as a space and dropped it at the ends; newer git keeps
        // what is not a plain space. Compared the old way, so both count.
        let old_style = |entries: Option<Vec<Entry>>| {
            entries.map(|v| {
                v.into_iter()
                    .map(|mut e| {
                        if let Some(value) = &mut e.value {
                            for c in value.iter_mut() {
                                if matches!(*c, b'\t' | b'\r' | 0x0b | 0x0c) {
                                    *c = b' ';
                                }
                            }
                            let start =
                                value.iter().position(|c| *c != b' ').unwrap_or(value.len());
                            let end = value
                                .iter()
                                .rposition(|c| *c != b' ')
                                .map_or(start, |i| i + 1);
                            *value = value[start..end].to_vec();
                        }
                        e
                    })
                    .collect::<Vec<_>>()
            })
        };
        for &text in cases {
            std::fs::write(&file, text).unwrap();
            let ours = old_style(parse(text).ok());
            let git = old_style(git_list(&file));
            assert_eq!(ours, git, "{:?}", String::from_utf8_lossy(text));
        }
    }

    /// What `git config` writes, the parser reads back as git does.
    #[test]
    fn the_parser_reads_what_git_config_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        let f = file.to_str().unwrap();
        let writes = [
            ("core.fsmonitor", "/tmp/x y/run.sh --flag"),
            ("Core.Pager", "less -R # not a comment"),
            ("alias.st", "!f() { echo \"$1\\n\"; }; f"),
            ("alias.semi", "log; rm -rf ~ ;"),
            ("filter.My.Driver.clean", "sed 's/\\\\/\\//g'"),
            ("credential.https://Example.COM/a b.helper", "  padded  "),
            ("includeIf.gitdir/i:~/Work/.path", "~/.x\"y"),
            ("diff.tab.textconv", "a\tb"),
            ("sequence.editor", "line1\nline2"),
            ("remote.Origin.uploadpack", "\"quoted\""),
        ];
        for (key, value) in writes {
            git_ok(dir.path(), &["config", "--file", f, "--add", key, value]);
        }
        let ours = parse(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(Some(ours.clone()), git_list(&file));
        let keys: Vec<String> = ours
            .iter()
            .map(|e| String::from_utf8_lossy(&e.key).into_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "core.fsmonitor",
                "core.pager",
                "alias.st",
                "alias.semi",
                "filter.My.Driver.clean",
                "credential.https://Example.COM/a b.helper",
                "includeif.gitdir/i:~/Work/.path",
                "diff.tab.textconv",
                "sequence.editor",
                "remote.Origin.uploadpack",
            ]
        );
        for (e, (_, value)) in ours.iter().zip(writes) {
            assert_eq!(e.value.as_deref(), Some(value.as_bytes()));
            assert!(
                program_key(&e.key, e.value.as_deref()).is_some(),
                "{:?}",
                String::from_utf8_lossy(&e.key)
            );
        }
    }

    #[test]
    fn keys_that_run_programs_are_told_from_the_rest() {
        let runs = [
            ("core.fsmonitor", "true"),
            ("core.hookspath", "h"),
            ("core.sshcommand", "ssh"),
            ("core.pager", "less"),
            ("core.editor", "vi"),
            ("core.askpass", "x"),
            ("core.gitproxy", "x for example.com"),
            ("core.alternaterefscommand", "x"),
            ("core.worktree", "/home/u"),
            ("sequence.editor", "vi"),
            ("diff.external", "x"),
            ("diff.Drv.textconv", "x"),
            ("diff.drv.command", "x"),
            ("filter.lfs.clean", "x"),
            ("filter.lfs.smudge", "x"),
            ("filter.lfs.process", "x"),
            ("merge.drv.driver", "x"),
            ("gpg.program", "x"),
            ("gpg.ssh.program", "x"),
            ("gpg.ssh.defaultkeycommand", "x"),
            ("credential.helper", "x"),
            ("credential.https://h.helper", "x"),
            ("alias.st", "status"),
            ("alias.x", "!sh"),
            ("pager.log", "x"),
            ("interactive.difffilter", "x"),
            ("imap.tunnel", "x"),
            ("uploadpack.packobjectshook", "x"),
            ("remote.origin.uploadpack", "x"),
            ("remote.origin.receivepack", "x"),
            ("mergetool.t.cmd", "x"),
            ("difftool.t.path", "x"),
            ("man.t.cmd", "x"),
            ("browser.t.path", "x"),
            ("guitool.t.cmd", "x"),
            ("instaweb.httpd", "x"),
            ("web.browser", "x"),
            ("trailer.sign.command", "x"),
            ("trailer.sign.cmd", "x"),
            ("sendemail.smtpserver", "/usr/bin/x"),
            ("sendemail.work.tocmd", "x"),
            ("hook.lint.command", "x"),
            ("include.path", "x"),
            ("includeif.onbranch:main.path", "x"),
            ("protocol.allow", "always"),
            ("protocol.ext.allow", "always"),
            ("submodule.s.update", "!sh -c x"),
        ];
        for (key, value) in runs {
            assert!(
                program_key(key.as_bytes(), Some(value.as_bytes())).is_some(),
                "{key}"
            );
        }
        let harmless = [
            ("core.autocrlf", Some("true")),
            ("core.x.editor", Some("vi")),
            ("user.name", Some("x")),
            ("remote.origin.url", Some("git@h:r")),
            ("diff.drv.external", Some("x")),
            ("filter.clean", Some("x")),
            ("include.x.path", Some("x")),
            ("includeif.path", Some("x")),
            ("submodule.s.update", Some("rebase")),
            ("submodule.s.update", None),
            ("fsmonitor", Some("x")),
            ("core", None),
        ];
        for (key, value) in harmless {
            assert!(
                program_key(key.as_bytes(), value.map(str::as_bytes)).is_none(),
                "{key}"
            );
        }
    }

    /// A project with a repository, as `git init` makes it (hooks/*.sample
    /// included), and its canonical path.
    fn project() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let project = std::fs::canonicalize(dir.path()).unwrap().join("p");
        std::fs::create_dir(&project).unwrap();
        git_ok(&project, &["init", "-q"]);
        (dir, project)
    }

    fn set(repo: &Path, key: &str, value: &str) {
        git_ok(repo, &["config", key, value]);
    }

    /// The config files under `project` with keys new or changed since `before`.
    fn changed_files(project: &Path, before: &Snapshot) -> BTreeSet<PathBuf> {
        keys(&Snapshot::take(project).changes_since(before))
            .into_iter()
            .map(|(file, ..)| file)
            .collect()
    }

    fn keys(changes: &[Change]) -> Vec<(PathBuf, String, Option<String>)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Key {
                    file, key, value, ..
                } => Some((file.clone(), key.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn new_and_changed_program_keys_are_reported_and_nothing_else() {
        let (_d, p) = project();
        set(&p, "core.editor", "vim");
        set(&p, "user.name", "me");
        set(&p, "credential.helper", "store");
        set(&p, "alias.gone", "!true");
        let before = Snapshot::take(&p);
        assert_eq!(before.changes_since(&before), []);
        assert_eq!(Snapshot::take(&p).changes_since(&before), []);

        set(&p, "Core.FSMonitor", "touch /tmp/owned");
        set(&p, "alias.st", "!sh -c 'echo \"owned\"'");
        set(&p, "filter.Evil.clean", "evil");
        set(&p, "core.editor", "evil");
        // A second, identical helper is one more program to run.
        git_ok(&p, &["config", "--add", "credential.helper", "store"]);
        set(&p, "user.email", "me@example.com");
        set(&p, "core.autocrlf", "true");
        git_ok(&p, &["config", "--unset", "alias.gone"]);
        let config = p.join(".git/config");
        assert_eq!(
            keys(&Snapshot::take(&p).changes_since(&before)),
            [
                ("core.editor", "evil"),
                ("core.fsmonitor", "touch /tmp/owned"),
                ("credential.helper", "store"),
                ("alias.st", "!sh -c 'echo \"owned\"'"),
                ("filter.Evil.clean", "evil"),
            ]
            .map(|(k, v)| (config.clone(), k.to_string(), Some(v.to_string())))
        );
    }

    #[test]
    fn nested_repositories_are_watched_down_to_three_levels() {
        let (_d, p) = project();
        let mut repos = Vec::new();
        for sub in [
            "a",
            "a/b/c",
            "a/b/c/d",
            "node_modules/m",
            "target/x",
            "x/.git/y",
        ] {
            let repo = p.join(sub);
            std::fs::create_dir_all(&repo).unwrap();
            git_ok(&repo, &["init", "-q"]);
            repos.push(repo);
        }
        // A bare repository, which git uses when run inside it.
        let bare = p.join("s/bare.git");
        git_ok(&p, &["init", "-q", "--bare", "s/bare.git"]);
        repos.push(bare.clone());
        let before = Snapshot::take(&p);
        // What a spare's claim makes read-only.
        assert_eq!(
            before.repositories(&p).unwrap(),
            [".git", "a/.git", "a/b/c/.git", "s/bare.git", "x/.git"]
        );
        for repo in &repos {
            set(repo, "core.pager", "evil");
        }
        let found = changed_files(&p, &before);
        assert_eq!(
            found,
            BTreeSet::from([
                p.join("a/.git/config"),
                p.join("a/b/c/.git/config"),
                bare.join("config"),
            ])
        );
    }

    #[test]
    fn a_repository_made_during_the_shell_is_checked_whole() {
        let (_d, p) = project();
        let before = Snapshot::take(&p);
        let repo = p.join("new");
        std::fs::create_dir(&repo).unwrap();
        git_ok(&repo, &["init", "-q"]);
        set(&repo, "core.sshcommand", "evil");
        assert_eq!(
            keys(&Snapshot::take(&p).changes_since(&before)),
            [(
                repo.join(".git/config"),
                "core.sshcommand".to_string(),
                Some("evil".to_string())
            )]
        );
    }

    #[test]
    fn submodules_worktrees_and_common_dirs_inside_the_project_are_followed() {
        let (d, p) = project();
        // A submodule's `.git` file and its git directory (a name with a slash).
        let modules = p.join(".git/modules/lib/one");
        std::fs::create_dir_all(p.join("lib/one")).unwrap();
        std::fs::create_dir_all(&modules).unwrap();
        git_ok(&modules, &["init", "-q", "--bare", "."]);
        std::fs::write(
            p.join("lib/one/.git"),
            "gitdir: ../../.git/modules/lib/one\n",
        )
        .unwrap();
        // A `.git` file leading out of the project: not the agent's to write.
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        git_ok(&outside, &["init", "-q"]);
        std::fs::create_dir(p.join("out")).unwrap();
        std::fs::write(
            p.join("out/.git"),
            format!("gitdir: {}\n", outside.join(".git").display()),
        )
        .unwrap();
        // A linked worktree of a repository too deep to be found by itself:
        // its commondir leads there.
        let deep = p.join("1/2/3/4/main");
        std::fs::create_dir_all(&deep).unwrap();
        git_ok(&deep, &["init", "-q"]);
        git_ok(&deep, &["commit", "-q", "--allow-empty", "-m", "x"]);
        git_ok(&deep, &["config", "extensions.worktreeConfig", "true"]);
        git_ok(
            &deep,
            &["worktree", "add", "-q", p.join("wt").to_str().unwrap()],
        );

        let before = Snapshot::take(&p);
        set(&modules, "core.fsmonitor", "evil");
        set(&outside, "core.fsmonitor", "evil");
        set(&deep, "core.fsmonitor", "evil");
        git_ok(
            &p.join("wt"),
            &["config", "--worktree", "core.pager", "evil"],
        );
        let found = changed_files(&p, &before);
        assert_eq!(
            found,
            BTreeSet::from([
                modules.join("config"),
                deep.join(".git/config"),
                deep.join(".git/worktrees/wt/config.worktree"),
            ])
        );
    }

    fn write_hook(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn new_and_changed_executable_hooks_are_reported() {
        let (_d, p) = project();
        let hooks = p.join(".git/hooks");
        assert!(
            hooks.join("pre-commit.sample").exists(),
            "git init makes samples"
        );
        write_hook(&hooks.join("pre-push"), "#!/bin/sh\nmine\n", 0o755);
        write_hook(&hooks.join("post-merge"), "#!/bin/sh\nmine\n", 0o755);
        write_hook(&hooks.join("post-checkout"), "#!/bin/sh\nmine\n", 0o644);
        let before = Snapshot::take(&p);
        assert_eq!(Snapshot::take(&p).changes_since(&before), []);

        write_hook(&hooks.join("pre-commit"), "#!/bin/sh\nevil\n", 0o755);
        write_hook(&hooks.join("pre-push"), "#!/bin/sh\nevil\n", 0o755);
        // Made executable: it runs now.
        std::fs::set_permissions(
            hooks.join("post-checkout"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Neither runs: git ignores samples, and needs the executable bit.
        write_hook(&hooks.join("pre-rebase.sample"), "evil", 0o755);
        write_hook(&hooks.join("commit-msg"), "evil", 0o644);
        // Rewritten unchanged.
        write_hook(&hooks.join("post-merge"), "#!/bin/sh\nmine\n", 0o755);
        let changes = Snapshot::take(&p).changes_since(&before);
        assert_eq!(
            changes,
            ["post-checkout", "pre-commit", "pre-push"].map(|h| Change::Hook {
                path: hooks.join(h)
            })
        );
    }

    #[test]
    fn a_config_that_cannot_be_read_or_parsed_is_reported_once() {
        let (_d, p) = project();
        let config = p.join(".git/config");
        let before = Snapshot::take(&p);
        std::fs::write(&config, "[core]\n\tfsmonitor # evil\n").unwrap();
        let broken = Snapshot::take(&p);
        assert_eq!(
            broken.changes_since(&before),
            [Change::Unchecked {
                file: config.clone(),
                reason: "git cannot parse it (line 2: expected `=` after the key)".into()
            }]
        );
        assert_eq!(Snapshot::take(&p).changes_since(&broken), []);

        // A FIFO would block a plain read for ever.
        std::fs::remove_file(&config).unwrap();
        let c = std::ffi::CString::new(config.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let project = p.clone();
        std::thread::spawn(move || tx.send(Snapshot::take(&project)).unwrap());
        let fifo = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a FIFO config must not block the snapshot");
        assert_eq!(
            fifo.changes_since(&before),
            [Change::Unchecked {
                file: config,
                reason: "not a regular file".into()
            }]
        );
    }

    #[test]
    fn a_huge_tree_ends_the_search_and_says_so() {
        let (_d, p) = project();
        let before = Snapshot::take(&p);
        assert!(!before.incomplete);
        let mut search = Search {
            project: &p,
            budget: 3,
            git_dirs: BTreeSet::new(),
        };
        for i in 0..5 {
            std::fs::create_dir(p.join(format!("d{i}"))).unwrap();
        }
        search.tree(&p, 0);
        assert_eq!(search.budget, 0);
        let cut = Snapshot {
            incomplete: true,
            ..Snapshot::default()
        };
        assert_eq!(cut.changes_since(&before), [Change::Incomplete]);
        // A spare then searches for itself.
        assert_eq!(cut.repositories(&p), None);
    }
}

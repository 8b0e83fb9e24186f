//! A small ISO9660 writer with Rock Ridge names and modes, for the cidata seed.
//!
//! Only what a NoCloud seed needs: one primary volume descriptor, L and M path
//! tables, directory records and 2048-byte aligned file extents. Rock Ridge
//! (SUSP `SP`/`ER` in the root, `NM` and `PX` everywhere) carries the real
//! names and modes, because the plain ISO9660 names are upper-case 8.3-style
//! identifiers that would mangle `user-data` or `boot.essential.Linux`. The
//! output depends only on the tree and the given timestamp.

use std::collections::BTreeMap;

const SECTOR: usize = 2048;
/// Names longer than this would need a SUSP continuation area; cidata names
/// are far shorter, so a clear error is better than the extra machinery.
pub(crate) const MAX_NAME_LEN: usize = 100;

/// Why a tree could not be turned into an ISO image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum IsoError {
    #[error("invalid ISO path `{path}`: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("cannot add `{path}` to the ISO: a file and a directory would share that path")]
    Conflict { path: String },
    #[error("file `{path}` is too large for ISO9660 (4 GiB limit)")]
    TooLarge { path: String },
}

/// An in-memory directory tree to be written as an ISO image.
#[derive(Debug, Clone, Default)]
pub(crate) struct IsoTree {
    root: Dir,
}

#[derive(Debug, Clone)]
struct Dir {
    mode: u32,
    entries: BTreeMap<String, Node>,
}

impl Default for Dir {
    fn default() -> Self {
        Dir {
            mode: 0o755,
            entries: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Node {
    File { data: Vec<u8>, mode: u32 },
    Dir(Dir),
}

impl IsoTree {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file; missing parent directories are created 0755.
    /// `path` is relative, `/`-separated; `mode` holds the permission bits.
    pub(crate) fn add_file(
        &mut self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), IsoError> {
        if data.len() > u32::MAX as usize {
            return Err(IsoError::TooLarge { path: path.into() });
        }
        let (parent, name) = self.parent_of(path)?;
        if let Some(Node::Dir(_)) = parent.entries.get(name) {
            return Err(IsoError::Conflict { path: path.into() });
        }
        parent.entries.insert(
            name.to_string(),
            Node::File {
                data,
                mode: mode & 0o7777,
            },
        );
        Ok(())
    }

    /// Walks to the parent directory of `path`, creating directories on the way.
    fn parent_of<'a>(&mut self, path: &'a str) -> Result<(&mut Dir, &'a str), IsoError> {
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts {
            check_name(path, part)?;
        }
        let (name, dirs) = parts.split_last().expect("split yields at least one part");
        let mut dir = &mut self.root;
        for part in dirs {
            let node = dir
                .entries
                .entry(part.to_string())
                .or_insert_with(|| Node::Dir(Dir::default()));
            dir = match node {
                Node::Dir(d) => d,
                Node::File { .. } => return Err(IsoError::Conflict { path: path.into() }),
            };
        }
        Ok((dir, name))
    }

    /// Writes the image with volume id `volume_id` and every timestamp set to
    /// `unix_seconds` (UTC), so equal inputs give byte-identical images.
    pub(crate) fn write(&self, volume_id: &str, unix_seconds: u64) -> Vec<u8> {
        let stamp = DateTime::from_unix(unix_seconds);
        let dirs = flatten(&self.root);

        // Record sizes do not depend on locations, so the layout is computed
        // first and the bytes are written in one pass afterwards.
        let path_table: usize = dirs
            .iter()
            .map(|d| 8 + d.ident.len() + d.ident.len() % 2)
            .sum();
        let path_table_sectors = path_table.div_ceil(SECTOR);
        let l_table = 18;
        let m_table = l_table + path_table_sectors;
        let mut next = m_table + path_table_sectors;
        let dir_sizes: Vec<usize> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| dir_extent_size(d, i == 0))
            .collect();
        let mut dir_lba = Vec::with_capacity(dirs.len());
        for size in &dir_sizes {
            dir_lba.push(next);
            next += size / SECTOR;
        }
        let mut file_lba: Vec<Vec<usize>> = Vec::with_capacity(dirs.len());
        for d in &dirs {
            let mut lbas = Vec::new();
            for child in &d.children {
                match child.node {
                    Node::File { data, .. } if !data.is_empty() => {
                        lbas.push(next);
                        next += data.len().div_ceil(SECTOR);
                    }
                    // Empty files and directories own no extent of their own.
                    _ => lbas.push(0),
                }
            }
            file_lba.push(lbas);
        }
        let total_sectors = next;

        let mut img = vec![0u8; total_sectors * SECTOR];
        write_pvd(
            &mut img[16 * SECTOR..17 * SECTOR],
            volume_id,
            total_sectors,
            path_table,
            l_table,
            m_table,
            &root_record(dir_lba[0], dir_sizes[0], &stamp),
            &stamp,
        );
        let term = &mut img[17 * SECTOR..18 * SECTOR];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;

        let (mut l, mut m) = (Vec::new(), Vec::new());
        for (i, d) in dirs.iter().enumerate() {
            for (table, big) in [(&mut l, false), (&mut m, true)] {
                table.push(d.ident.len() as u8);
                table.push(0);
                let (lba, parent) = (dir_lba[i] as u32, (d.parent + 1) as u16);
                if big {
                    table.extend_from_slice(&lba.to_be_bytes());
                    table.extend_from_slice(&parent.to_be_bytes());
                } else {
                    table.extend_from_slice(&lba.to_le_bytes());
                    table.extend_from_slice(&parent.to_le_bytes());
                }
                table.extend_from_slice(&d.ident);
                if d.ident.len() % 2 == 1 {
                    table.push(0);
                }
            }
        }
        img[l_table * SECTOR..][..l.len()].copy_from_slice(&l);
        img[m_table * SECTOR..][..m.len()].copy_from_slice(&m);

        for (i, d) in dirs.iter().enumerate() {
            let parent = &dirs[d.parent];
            let mut records = vec![
                Record {
                    ident: vec![0],
                    lba: dir_lba[i],
                    size: dir_sizes[i],
                    is_dir: true,
                    susp: dot_susp(d, i == 0),
                },
                Record {
                    ident: vec![1],
                    lba: dir_lba[d.parent],
                    size: dir_sizes[d.parent],
                    is_dir: true,
                    susp: px(parent.mode | S_IFDIR, parent.nlink()),
                },
            ];
            for (j, child) in d.children.iter().enumerate() {
                let (lba, size) = match child.node {
                    Node::Dir(_) => {
                        let k = child.dir_index.expect("directories are indexed");
                        (dir_lba[k], dir_sizes[k])
                    }
                    Node::File { data, .. } => (file_lba[i][j], data.len()),
                };
                records.push(Record {
                    ident: child.ident.clone(),
                    lba,
                    size,
                    is_dir: matches!(child.node, Node::Dir(_)),
                    susp: child_susp(child),
                });
            }
            let extent = &mut img[dir_lba[i] * SECTOR..][..dir_sizes[i]];
            let mut pos = 0;
            for r in &records {
                let bytes = r.encode(&stamp);
                if pos % SECTOR + bytes.len() > SECTOR {
                    pos = pos.next_multiple_of(SECTOR);
                }
                extent[pos..pos + bytes.len()].copy_from_slice(&bytes);
                pos += bytes.len();
            }
            for (j, child) in d.children.iter().enumerate() {
                if let Node::File { data, .. } = child.node {
                    img[file_lba[i][j] * SECTOR..][..data.len()].copy_from_slice(data);
                }
            }
        }
        img
    }
}

fn check_name(path: &str, name: &str) -> Result<(), IsoError> {
    let reason = if name.is_empty() {
        "empty path component (leading, trailing or doubled `/`)"
    } else if name == "." || name == ".." {
        "`.` and `..` are not allowed"
    } else if name.len() > MAX_NAME_LEN {
        "a path component is longer than 100 bytes"
    } else if name.bytes().any(|b| b == 0) {
        "NUL byte in name"
    } else {
        return Ok(());
    };
    Err(IsoError::InvalidPath {
        path: path.into(),
        reason,
    })
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// A directory in breadth-first order, as path tables require.
struct FlatDir<'a> {
    /// ISO9660 identifier (`[0]` for the root).
    ident: Vec<u8>,
    mode: u32,
    /// Index of the parent in the flat list (the root is its own parent).
    parent: usize,
    children: Vec<Child<'a>>,
}

impl FlatDir<'_> {
    fn nlink(&self) -> u32 {
        let subdirs = self
            .children
            .iter()
            .filter(|c| matches!(c.node, Node::Dir(_)))
            .count();
        2 + subdirs as u32
    }
}

struct Child<'a> {
    name: &'a str,
    ident: Vec<u8>,
    node: &'a Node,
    /// For directories: their index in the flat list.
    dir_index: Option<usize>,
}

fn flatten(root: &Dir) -> Vec<FlatDir<'_>> {
    let mut out = vec![FlatDir {
        ident: vec![0],
        mode: root.mode,
        parent: 0,
        children: Vec::new(),
    }];
    let mut queue = vec![(0usize, root)];
    let mut head = 0;
    while head < queue.len() {
        let (index, dir) = queue[head];
        head += 1;
        let mut children = iso_identifiers(dir);
        // Path tables order directories of one level by parent then name, which
        // a breadth-first walk over sorted children yields.
        for child in &mut children {
            if let Node::Dir(sub) = child.node {
                child.dir_index = Some(out.len());
                out.push(FlatDir {
                    ident: child.ident.clone(),
                    mode: sub.mode,
                    parent: index,
                    children: Vec::new(),
                });
                queue.push((out.len() - 1, sub));
            }
        }
        out[index].children = children;
    }
    out
}

/// Unique, sorted ISO9660 identifiers for the entries of one directory:
/// `NAME.EXT;1` for files and `NAME` for directories, in d-characters.
fn iso_identifiers(dir: &Dir) -> Vec<Child<'_>> {
    fn clean(s: &str, max: usize) -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .take(max)
            .collect()
    }
    let mut used = std::collections::HashSet::new();
    let mut children: Vec<Child> = dir
        .entries
        .iter()
        .map(|(name, node)| {
            let (stem, ext) = match node {
                Node::Dir(_) => (clean(name, 24), String::new()),
                Node::File { .. } => match name.rsplit_once('.') {
                    Some((s, e)) if !s.is_empty() => (clean(s, 20), clean(e, 3)),
                    _ => (clean(name, 20), String::new()),
                },
            };
            let mut n = 0;
            let ident = loop {
                let s = if n == 0 {
                    stem.clone()
                } else {
                    format!("{}_{n}", &stem[..stem.len().min(16)])
                };
                let full = match node {
                    Node::Dir(_) => s,
                    Node::File { .. } => format!("{s}.{ext};1"),
                };
                if used.insert(full.clone()) {
                    break full;
                }
                n += 1;
            };
            Child {
                name,
                ident: ident.into_bytes(),
                node,
                dir_index: None,
            }
        })
        .collect();
    children.sort_by(|a, b| a.ident.cmp(&b.ident));
    children
}

struct Record {
    ident: Vec<u8>,
    lba: usize,
    size: usize,
    is_dir: bool,
    susp: Vec<u8>,
}

impl Record {
    fn encode(&self, stamp: &DateTime) -> Vec<u8> {
        let pad = self.ident.len().is_multiple_of(2) as usize;
        let len = 33 + self.ident.len() + pad + self.susp.len();
        assert!(len <= 255, "directory record too long ({len} bytes)");
        let mut r = Vec::with_capacity(len);
        r.push(len as u8);
        r.push(0);
        r.extend_from_slice(&both32(self.lba as u32));
        r.extend_from_slice(&both32(self.size as u32));
        r.extend_from_slice(&stamp.record());
        r.push(if self.is_dir { 2 } else { 0 });
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&both16(1));
        r.push(self.ident.len() as u8);
        r.extend_from_slice(&self.ident);
        r.resize(r.len() + pad, 0);
        r.extend_from_slice(&self.susp);
        r
    }
}

fn root_record(lba: usize, size: usize, stamp: &DateTime) -> Vec<u8> {
    Record {
        ident: vec![0],
        lba,
        size,
        is_dir: true,
        susp: Vec::new(),
    }
    .encode(stamp)
}

fn dir_extent_size(d: &FlatDir, is_root: bool) -> usize {
    let mut lens = vec![34 + dot_susp(d, is_root).len(), 34 + px(0, 0).len()];
    for c in &d.children {
        lens.push(
            33 + c.ident.len() + c.ident.len().is_multiple_of(2) as usize + child_susp(c).len(),
        );
    }
    let mut pos = 0;
    for len in lens {
        if pos % SECTOR + len > SECTOR {
            pos = pos.next_multiple_of(SECTOR);
        }
        pos += len;
    }
    pos.next_multiple_of(SECTOR)
}

/// The `.` record's system use area: the root also announces SUSP and RRIP.
fn dot_susp(d: &FlatDir, is_root: bool) -> Vec<u8> {
    let mut s = Vec::new();
    if is_root {
        s.extend_from_slice(&[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
    }
    s.extend(px(d.mode | S_IFDIR, d.nlink()));
    if is_root {
        const ID: &[u8] = b"RRIP_1991A";
        const DESC: &[u8] = b"ROCK RIDGE INTERCHANGE PROTOCOL: POSIX NAMES AND MODES";
        const SRC: &[u8] = b"SEE IEEE P1282";
        s.extend_from_slice(&[
            b'E',
            b'R',
            (8 + ID.len() + DESC.len() + SRC.len()) as u8,
            1,
            ID.len() as u8,
            DESC.len() as u8,
            SRC.len() as u8,
            1,
        ]);
        s.extend_from_slice(ID);
        s.extend_from_slice(DESC);
        s.extend_from_slice(SRC);
    }
    s
}

fn child_susp(c: &Child) -> Vec<u8> {
    let mut s = match c.node {
        Node::Dir(d) => {
            let subdirs = d
                .entries
                .values()
                .filter(|n| matches!(n, Node::Dir(_)))
                .count();
            px(d.mode | S_IFDIR, 2 + subdirs as u32)
        }
        Node::File { mode, .. } => px(mode | S_IFREG, 1),
    };
    s.extend_from_slice(&[b'N', b'M', (5 + c.name.len()) as u8, 1, 0]);
    s.extend_from_slice(c.name.as_bytes());
    s
}

/// RRIP 1.10 `PX`: mode, links, uid 0, gid 0.
fn px(mode: u32, nlink: u32) -> Vec<u8> {
    let mut s = vec![b'P', b'X', 36, 1];
    for v in [mode, nlink, 0, 0] {
        s.extend_from_slice(&both32(v));
    }
    s
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

#[allow(clippy::too_many_arguments)]
fn write_pvd(
    s: &mut [u8],
    volume_id: &str,
    total_sectors: usize,
    path_table: usize,
    l_table: usize,
    m_table: usize,
    root: &[u8],
    stamp: &DateTime,
) {
    s[0] = 1;
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;
    let padded = |s: &mut [u8], text: &str| {
        s.fill(b' ');
        let n = text.len().min(s.len());
        s[..n].copy_from_slice(&text.as_bytes()[..n]);
    };
    padded(&mut s[8..40], "LINUX");
    padded(&mut s[40..72], volume_id);
    s[80..88].copy_from_slice(&both32(total_sectors as u32));
    s[120..124].copy_from_slice(&both16(1));
    s[124..128].copy_from_slice(&both16(1));
    s[128..132].copy_from_slice(&both16(SECTOR as u16));
    s[132..140].copy_from_slice(&both32(path_table as u32));
    s[140..144].copy_from_slice(&(l_table as u32).to_le_bytes());
    s[148..152].copy_from_slice(&(m_table as u32).to_be_bytes());
    s[156..190].copy_from_slice(root);
    for range in [
        190..318,
        318..446,
        446..574,
        574..702,
        702..739,
        739..776,
        776..813,
    ] {
        padded(&mut s[range], "");
    }
    let long = stamp.long();
    s[813..830].copy_from_slice(&long);
    s[830..847].copy_from_slice(&long);
    // Expiration and effective dates "not specified": all digits zero.
    for range in [847..863, 864..880] {
        s[range].fill(b'0');
    }
    s[881] = 1;
}

/// A UTC calendar time, for the two ISO9660 date formats.
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        // Civil-from-days over 400-year eras (proleptic Gregorian calendar).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + (month <= 2) as i64;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The 7-byte directory record form (years since 1900, UTC).
    fn record(&self) -> [u8; 7] {
        let y = (self.year - 1900).clamp(0, 255) as u8;
        [
            y,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte volume descriptor form: `YYYYMMDDHHMMSScc` and offset 0.
    fn long(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year.clamp(0, 9999),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second
        );
        let mut out = [0; 17];
        out[..16].copy_from_slice(text.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngExt, SeedableRng, rngs::StdRng};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;

    /// What a tree should look like after extraction: path -> (mode, content)
    /// with `None` content for directories.
    type Expect = BTreeMap<String, (u32, Option<Vec<u8>>)>;

    fn xorriso(args: &[&str]) -> String {
        let out = Command::new("xorriso")
            .args(args)
            .output()
            .expect("xorriso must be installed to test the ISO writer");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "xorriso {args:?} failed:\n{text}");
        for bad in ["WARNING", "SORRY", "FAILURE", "FATAL"] {
            assert!(!text.contains(bad), "xorriso {args:?} complained:\n{text}");
        }
        text
    }

    /// Extracts `iso` with xorriso and returns what is on disk.
    fn extract(iso: &[u8]) -> Expect {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.iso");
        std::fs::write(&image, iso).unwrap();
        let out = dir.path().join("out");
        xorriso(&[
            "-abort_on",
            "WARNING",
            "-indev",
            image.to_str().unwrap(),
            "-osirrox",
            "on",
            "-extract",
            "/",
            out.to_str().unwrap(),
        ]);
        let mut found = Expect::new();
        walk(&out, &out, &mut found);
        found
    }

    fn walk(root: &Path, dir: &Path, found: &mut Expect) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                found.insert(rel, (mode, None));
                walk(root, &path, found);
            } else {
                found.insert(rel, (mode, Some(std::fs::read(&path).unwrap())));
            }
        }
    }

    fn build(files: &[(&str, &[u8], u32)]) -> (IsoTree, Expect) {
        let mut tree = IsoTree::new();
        let mut expect = Expect::new();
        for (path, data, mode) in files {
            tree.add_file(path, data.to_vec(), *mode).unwrap();
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                expect
                    .entry(p.to_str().unwrap().to_string())
                    .or_insert((0o755, None));
                parent = p.parent();
            }
            expect.insert(path.to_string(), (*mode, Some(data.to_vec())));
        }
        (tree, expect)
    }

    #[test]
    fn round_trips_names_contents_and_modes_through_xorriso() {
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let (tree, expect) = build(&[
            ("user-data", b"#cloud-config\n", 0o644),
            ("meta-data", b"instance-id: iid-1\n", 0o600),
            (
                "boot.essential.Linux/00-alpine-user-group.sh",
                b"#!/bin/sh\n",
                0o755,
            ),
            ("provision.system/00000000", b"echo hi\n", 0o755),
            ("empty", b"", 0o644),
            ("a/b/c/d/big.bin", &big, 0o640),
            ("exactly-one-sector", &[7u8; 2048], 0o644),
            ("UPPER.lower.Mixed.tar.gz", b"x", 0o644),
        ]);
        let iso = tree.write("cidata", 1_700_000_000);
        assert_eq!(iso.len() % SECTOR, 0);
        assert_eq!(extract(&iso), expect);
    }

    #[test]
    fn xorriso_lists_rock_ridge_names() {
        let (tree, _) = build(&[("boot.essential.Linux/00-x.sh", b"#!/bin/sh\n", 0o755)]);
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.iso");
        std::fs::write(&image, tree.write("cidata", 0)).unwrap();
        let out = xorriso(&[
            "-indev",
            image.to_str().unwrap(),
            "-find",
            "/",
            "-exec",
            "lsdl",
        ]);
        assert!(out.contains("'/boot.essential.Linux/00-x.sh'"), "{out}");
        assert!(out.contains("-rwxr-xr-x"), "{out}");
        assert!(out.contains("Volume id    : 'cidata'"), "{out}");
    }

    #[test]
    fn a_directory_with_many_entries_spans_several_sectors() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("provision-script.number-{i:08}"))
            .collect();
        let files: Vec<(&str, &[u8], u32)> = names
            .iter()
            .map(|n| (n.as_str(), n.as_bytes(), 0o644))
            .collect();
        let (tree, expect) = build(&files);
        let root_size = {
            let dirs = flatten(&tree.root);
            dir_extent_size(&dirs[0], true)
        };
        assert!(root_size >= 4 * SECTOR, "root is only {root_size} bytes");
        assert_eq!(extract(&tree.write("cidata", 0)), expect);
    }

    #[test]
    fn random_trees_round_trip() {
        let mut rng = StdRng::seed_from_u64(0x0150_9660);
        const ALPHABET: &[u8] = b"abcXYZ019-_.+~";
        const MODES: [u32; 4] = [0o644, 0o755, 0o600, 0o700];
        for round in 0..12 {
            let mut owned: Vec<(String, Vec<u8>, u32)> = Vec::new();
            let mut taken: BTreeMap<String, bool> = BTreeMap::new(); // path -> is_dir
            for _ in 0..rng.random_range(1..60) {
                let depth = rng.random_range(1..5);
                let parts: Vec<String> = (0..depth)
                    .map(|_| {
                        loop {
                            let len = rng.random_range(1..40);
                            let s: String = (0..len)
                                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                                .collect();
                            if s != "." && s != ".." {
                                break s;
                            }
                        }
                    })
                    .collect();
                let path = parts.join("/");
                // Skip paths that collide with an existing file/dir role.
                let prefixes_ok =
                    (1..parts.len()).all(|k| taken.get(&parts[..k].join("/")) != Some(&false));
                if !prefixes_ok || taken.contains_key(&path) {
                    continue;
                }
                for k in 1..parts.len() {
                    taken.insert(parts[..k].join("/"), true);
                }
                taken.insert(path.clone(), false);
                let size = match rng.random_range(0..4) {
                    0 => 0,
                    1 => rng.random_range(1..100),
                    2 => 2048 * rng.random_range(1..3),
                    _ => rng.random_range(1..9000),
                };
                let mut data = vec![0u8; size];
                rng.fill_bytes(&mut data);
                owned.push((path, data, MODES[rng.random_range(0..MODES.len())]));
            }
            let files: Vec<(&str, &[u8], u32)> = owned
                .iter()
                .map(|(p, d, m)| (p.as_str(), d.as_slice(), *m))
                .collect();
            let (tree, expect) = build(&files);
            let iso = tree.write("cidata", round);
            assert_eq!(
                iso,
                tree.write("cidata", round),
                "output is not deterministic"
            );
            assert_eq!(extract(&iso), expect, "round {round}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn blkid_sees_the_cidata_label() {
        let (tree, _) = build(&[("user-data", b"x", 0o644)]);
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.iso");
        std::fs::write(&image, tree.write("cidata", 1_700_000_000)).unwrap();
        let blkid = ["/sbin/blkid", "/usr/sbin/blkid", "blkid"]
            .into_iter()
            .find(|b| !b.contains('/') || Path::new(b).exists())
            .unwrap();
        let out = Command::new(blkid)
            .args(["-p", "-o", "export"])
            .arg(&image)
            .output()
            .expect("blkid must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l == "LABEL=cidata"), "{text}");
        assert!(text.lines().any(|l| l == "TYPE=iso9660"), "{text}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let d = DateTime::from_unix(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!(&d.long()[..16], b"2023111422132000");
        assert_eq!(
            DateTime::from_unix(951_782_400).record(),
            [100, 2, 29, 0, 0, 0, 0]
        );
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut t = IsoTree::new();
        assert!(matches!(
            t.add_file("", vec![], 0),
            Err(IsoError::InvalidPath { .. })
        ));
        assert!(matches!(
            t.add_file("a//b", vec![], 0),
            Err(IsoError::InvalidPath { .. })
        ));
        assert!(matches!(
            t.add_file("a/../b", vec![], 0),
            Err(IsoError::InvalidPath { .. })
        ));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            t.add_file(&long, vec![], 0),
            Err(IsoError::InvalidPath { .. })
        ));
        t.add_file("f", vec![], 0o644).unwrap();
        assert_eq!(
            t.add_file("f/g", vec![], 0o644),
            Err(IsoError::Conflict { path: "f/g".into() })
        );
        t.add_file("d/x", vec![], 0o644).unwrap();
        assert_eq!(
            t.add_file("d", vec![], 0o644),
            Err(IsoError::Conflict { path: "d".into() })
        );
    }

    #[test]
    fn longest_allowed_name_fits_in_a_record() {
        let long = "n".repeat(MAX_NAME_LEN);
        let (tree, expect) = build(&[(&format!("{long}/{long}"), b"x", 0o644)]);
        assert_eq!(extract(&tree.write("cidata", 0)), expect);
    }
}

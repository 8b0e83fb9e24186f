//! Fetching a location into Lima's shared download cache
//! (`<cache>/download/by-url-sha256/<sha256(url)>/{url,data,time,type,<algo>.digest}`)
//! and copying it out, decompressed, to a destination. Every file is written
//! to a temporary name and renamed, so a half-written file is never taken
//! for a finished one; the per-URL directory is `flock`ed while it is
//! checked or filled, so concurrent starts (and Lima itself) cooperate.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ImageError;
use super::compress::decoder;
use super::digest::{Expected, Hasher, sha256_hex};
use super::progress::Progress;

/// What [`Downloader::fetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// The destination existed already; nothing was checked.
    Skipped,
    /// Copied from a local path.
    Local,
    /// Copied out of the cache without downloading.
    Cached,
    Downloaded,
}

pub(crate) struct Downloader {
    cache_root: PathBuf,
    agent: ureq::Agent,
}

/// Lima's cache root: `$XDG_CACHE_HOME/lima` or `~/.cache/lima` on Linux,
/// `~/Library/Caches/lima` on macOS.
pub(crate) fn default_cache_root() -> Result<PathBuf, ImageError> {
    dirs::cache_dir()
        .map(|d| d.join("lima"))
        .ok_or(ImageError::NoCacheDir)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name(path: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fills a temporary file next to `dest` with `fill`, then renames it into
/// place; on any error the temporary file is removed.
fn write_atomic(
    dest: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let tmp = tmp_name(dest);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        fill(&mut f)?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_small(dest: &Path, text: &str) -> Result<(), ImageError> {
    write_atomic(dest, |f| f.write_all(text.as_bytes()).map_err(io_err(dest)))
}

/// A reader that hashes and reports what passes through it.
struct Tap<'a, R> {
    inner: R,
    hasher: Option<Hasher>,
    progress: &'a dyn Progress,
    done: u64,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.done += n as u64;
        self.progress.update(self.done);
        Ok(n)
    }
}

/// A local location: a path (with `~` expanded) or an absolute `file://`.
fn local_path(location: &str) -> Result<Option<PathBuf>, ImageError> {
    if let Some(rest) = location.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(ImageError::BadLocation(location.to_string()));
        }
        return Ok(Some(PathBuf::from(rest)));
    }
    if location.contains("://") {
        return Ok(None);
    }
    if location == "~" || location.starts_with("~/") {
        let home = crate::vm::dirs::home_dir().map_err(io_err(Path::new("~")))?;
        return Ok(Some(
            home.join(location.trim_start_matches('~').trim_start_matches('/')),
        ));
    }
    Ok(Some(PathBuf::from(location)))
}

impl Downloader {
    pub(crate) fn new(cache_root: PathBuf) -> Downloader {
        Downloader {
            cache_root,
            agent: ureq::Agent::new_with_defaults(),
        }
    }

    /// The per-URL cache directory.
    pub(crate) fn url_dir(&self, url: &str) -> PathBuf {
        self.cache_root
            .join("download/by-url-sha256")
            .join(sha256_hex(url))
    }

    /// Puts `location` at `dest` (decompressed when `decompress`), through
    /// the cache for remote URLs. `digest` ("sha256:…") is verified.
    pub(crate) fn fetch(
        &self,
        location: &str,
        digest: Option<&str>,
        dest: &Path,
        decompress: bool,
        progress: &dyn Progress,
    ) -> Result<Fetched, ImageError> {
        if dest.exists() {
            return Ok(Fetched::Skipped);
        }
        let expected = digest.map(Expected::parse).transpose()?;
        if let Some(src) = local_path(location)? {
            let f = File::open(&src).map_err(io_err(&src))?;
            let total = f.metadata().ok().map(|m| m.len());
            progress.start(location, total);
            self.copy_out(location, f, expected.as_ref(), dest, decompress, progress)?;
            progress.finish();
            return Ok(Fetched::Local);
        }

        let dir = self.url_dir(location);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        set_mode_0700(&dir)?;
        let lock = File::open(&dir).map_err(io_err(&dir))?;
        lock.lock().map_err(io_err(&dir))?;

        let data = dir.join("data");
        let digest_file = expected
            .as_ref()
            .map(|e| dir.join(format!("{}.digest", e.algo)));
        let verified = match (&expected, &digest_file) {
            (Some(e), Some(p)) => std::fs::read_to_string(p).is_ok_and(|s| s == e.text),
            _ => false,
        };
        let fresh = data.exists() && (verified || self.unchanged(location, &dir));
        let outcome = if fresh {
            Fetched::Cached
        } else {
            self.download(location, &dir, expected.as_ref(), progress)?;
            Fetched::Downloaded
        };
        // A just-verified download or a matching digest file needs no
        // second hash; a cache entry without one is checked while copying.
        let recheck = if outcome == Fetched::Cached && !verified {
            expected.as_ref()
        } else {
            None
        };
        let f = File::open(&data).map_err(io_err(&data))?;
        let total = f.metadata().ok().map(|m| m.len());
        progress.start(&format!("{location} (from cache)"), total);
        self.copy_out(location, f, recheck, dest, decompress, progress)?;
        progress.finish();
        if let (Some(e), Some(p), Some(_)) = (&expected, &digest_file, recheck) {
            write_small(p, &e.text)?;
        }
        Ok(outcome)
    }

    /// Without a digest to trust, the cache is fresh when the server's
    /// `Last-Modified` equals the cached `time`; if the server cannot be
    /// asked, the cache is used.
    fn unchanged(&self, url: &str, dir: &Path) -> bool {
        let cached = match std::fs::read_to_string(dir.join("time")) {
            Ok(t) if !t.is_empty() => t,
            _ => return false,
        };
        match self.agent.head(url).call() {
            Ok(resp) => resp
                .headers()
                .get("last-modified")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == cached),
            Err(_) => true,
        }
    }

    fn download(
        &self,
        url: &str,
        dir: &Path,
        expected: Option<&Expected>,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let http = |e: ureq::Error| ImageError::Http {
            url: url.to_string(),
            reason: e.to_string(),
        };
        write_small(&dir.join("url"), url)?;
        let resp = self.agent.get(url).call().map_err(http)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (time, ctype) = (header("last-modified"), header("content-type"));
        let body = resp.into_body();
        progress.start(url, body.content_length());
        let mut tap = Tap {
            inner: body.into_reader(),
            hasher: expected.map(Expected::hasher),
            progress,
            done: 0,
        };
        let data = dir.join("data");
        write_atomic(&data, |f| {
            io::copy(&mut tap, f).map_err(|e| ImageError::Http {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            match (expected, tap.hasher.take()) {
                (Some(e), Some(h)) => e.check(h, url),
                _ => Ok(()),
            }
        })?;
        progress.finish();
        write_small(&dir.join("time"), &time)?;
        write_small(&dir.join("type"), &ctype)?;
        if let Some(e) = expected {
            write_small(&dir.join(format!("{}.digest", e.algo)), &e.text)?;
        }
        Ok(())
    }

    fn copy_out(
        &self,
        location: &str,
        src: File,
        expected: Option<&Expected>,
        dest: &Path,
        decompress: bool,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let copy_err = |source| ImageError::Copy {
            from: location.to_string(),
            to: dest.to_path_buf(),
            source,
        };
        let mut tap = Tap {
            inner: src,
            hasher: expected.map(Expected::hasher),
            progress,
            done: 0,
        };
        write_atomic(dest, |f| {
            if decompress {
                io::copy(&mut decoder(location, &mut tap).map_err(copy_err)?, f)
            } else {
                io::copy(&mut tap, f)
            }
            .map_err(copy_err)?;
            // Decoders may stop before the end of the input (trailing
            // padding); the digest covers the whole file.
            io::copy(&mut tap, &mut io::sink()).map_err(copy_err)?;
            match (expected, tap.hasher.take()) {
                (Some(e), Some(h)) => e.check(h, location),
                _ => Ok(()),
            }
        })
    }
}

fn set_mode_0700(dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

//! Getting the guest image (and its kernel and initrd) into the instance
//! dir, through Lima's shared download cache ([`cache`]).

pub(crate) mod cache;
mod compress;
mod digest;
pub(crate) mod progress;

use crate::vm::layout;
use std::path::{Path, PathBuf};

pub(crate) use cache::{Downloader, default_cache_root};
pub(crate) use progress::{BarReporter, NoProgress, Progress};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits> or sha512:<128 hex digits>")]
    BadDigest(String),
    #[error("{what}: expected digest {expected}, got {got}")]
    DigestMismatch {
        what: String,
        expected: String,
        got: String,
    },
    #[error("cannot download {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("invalid location {0:?}: a file:// location must be an absolute path")]
    BadLocation(String),
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        from: String,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the user cache directory: set HOME (or XDG_CACHE_HOME)")]
    NoCacheDir,
    #[error("no image in `images` is for arch {0}: add one with `arch: {0}`")]
    NoImageForArch(String),
    #[error("no image could be fetched: {}", .0.join("; "))]
    AllFailed(Vec<String>),
}

/// One downloadable file of an `images[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileSpec {
    pub location: String,
    /// None matches any arch (Lima fills in the instance's arch).
    pub arch: Option<String>,
    pub digest: Option<String>,
}

/// One `images[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageSpec {
    pub file: FileSpec,
    pub kernel: Option<FileSpec>,
    pub kernel_cmdline: Option<String>,
    pub initrd: Option<FileSpec>,
}

/// Lima's `Prepare` image step: unless `$D/image` or `$D/disk` exists,
/// try the entries for `arch` in order and keep the first that fetches
/// completely: the image to `$D/image` and the kernel to `$D/kernel` (both
/// decompressed), `$D/kernel.cmdline`, the initrd to `$D/initrd` (as is).
/// Returns whether anything was fetched.
pub(crate) fn prepare(
    dl: &Downloader,
    instance_dir: &Path,
    arch: &str,
    images: &[ImageSpec],
    progress: &dyn Progress,
) -> Result<bool, ImageError> {
    if instance_dir.join(layout::IMAGE).exists() || instance_dir.join(layout::DISK).exists() {
        return Ok(false);
    }
    let candidates: Vec<&ImageSpec> = images
        .iter()
        .filter(|i| i.file.arch.as_deref().is_none_or(|a| a == arch))
        .collect();
    if candidates.is_empty() {
        return Err(ImageError::NoImageForArch(arch.to_string()));
    }
    let mut errors = Vec::new();
    for img in candidates {
        match fetch_entry(dl, instance_dir, img, progress) {
            Ok(()) => return Ok(true),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(ImageError::AllFailed(errors))
}

fn fetch_entry(
    dl: &Downloader,
    d: &Path,
    img: &ImageSpec,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let get = |f: &FileSpec, name: &str, decompress: bool| {
        dl.fetch(
            &f.location,
            f.digest.as_deref(),
            &d.join(name),
            decompress,
            progress,
        )
        .map(drop)
    };
    let result = (|| {
        get(&img.file, layout::IMAGE, true)?;
        if let Some(k) = &img.kernel {
            get(k, layout::KERNEL, true)?;
            if let Some(c) = img.kernel_cmdline.as_deref().filter(|c| !c.is_empty()) {
                let p = d.join(layout::KERNEL_CMDLINE);
                std::fs::write(&p, c).map_err(|source| ImageError::Io { path: p, source })?;
            }
        }
        if let Some(i) = &img.initrd {
            get(i, layout::INITRD, false)?;
        }
        Ok(())
    })();
    // A half-fetched entry must not make the next entry (or the next
    // start) skip its files.
    if result.is_err() {
        for name in [
            layout::IMAGE,
            layout::KERNEL,
            layout::KERNEL_CMDLINE,
            layout::INITRD,
        ] {
            let _ = std::fs::remove_file(d.join(name));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::cache::Fetched;
    use super::compress::tests::{XZ_HELLO, gzip};
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Site {
        /// path -> (body, Last-Modified)
        files: HashMap<String, (Vec<u8>, String)>,
        /// "GET /path" / "HEAD /path", in order.
        log: Vec<String>,
    }

    /// A tiny HTTP/1.1 server on loopback: one request per connection.
    fn serve(site: Arc<Mutex<Site>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
                let mut site = site.lock().unwrap();
                site.log.push(format!("{method} {path}"));
                let head = match site.files.get(path) {
                    Some((body, lm)) => {
                        let h = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {lm}\r\nContent-Type: application/x-test\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let mut out = h.into_bytes();
                        if method == "GET" {
                            out.extend_from_slice(body);
                        }
                        out
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&head);
            }
        });
        base
    }

    fn sha256(data: &[u8]) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Option<u64>, u64)>>);

    impl Progress for Recorder {
        fn start(&self, name: &str, total: Option<u64>) {
            self.0.lock().unwrap().push((name.to_string(), total, 0));
        }
        fn update(&self, done: u64) {
            self.0.lock().unwrap().last_mut().unwrap().2 = done;
        }
        fn finish(&self) {}
    }

    #[test]
    fn download_fills_lima_cache_layout_and_reuses_it() {
        let payload = b"qcow2 image bytes".repeat(1000);
        let packed = gzip(&payload);
        let site = Arc::new(Mutex::new(Site::default()));
        site.lock().unwrap().files.insert(
            "/img.qcow2.gz".into(),
            (packed.clone(), "Mon, 01 Jan 2024 00:00:00 GMT".into()),
        );
        let base = serve(site.clone());
        let url = format!("{base}/img.qcow2.gz");
        let tmp = tempfile::tempdir().unwrap();
        let dl = Downloader::new(tmp.path().join("cache"));
        let digest = sha256(&packed);
        let rec = Recorder::default();

        let dest = tmp.path().join(layout::IMAGE);
        assert_eq!(
            dl.fetch(&url, Some(&digest), &dest, true, &rec).unwrap(),
            Fetched::Downloaded
        );
        assert_eq!(std::fs::read(&dest).unwrap(), payload);
        let dir = dl.url_dir(&url);
        assert!(dir.starts_with(tmp.path().join("cache/download/by-url-sha256")));
        assert_eq!(
            dir.file_name().unwrap().to_str().unwrap(),
            super::digest::sha256_hex(&url)
        );
        let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
        assert_eq!(read("url"), url.as_bytes());
        assert_eq!(read("data"), packed, "the cache keeps the compressed bytes");
        assert_eq!(read("time"), b"Mon, 01 Jan 2024 00:00:00 GMT");
        assert_eq!(read("type"), b"application/x-test");
        assert_eq!(read("sha256.digest"), digest.as_bytes());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 5, "no temporary files left: {names:?}");
        assert_eq!(
            rec.0.lock().unwrap()[0],
            (url.clone(), Some(packed.len() as u64), packed.len() as u64)
        );

        // Second time: the digest file matches, so no request at all.
        let dest2 = tmp.path().join("image2");
        assert_eq!(
            dl.fetch(&url, Some(&digest), &dest2, true, &rec).unwrap(),
            Fetched::Cached
        );
        assert_eq!(std::fs::read(&dest2).unwrap(), payload);
        // An existing destination is skipped.
        assert_eq!(
            dl.fetch(&url, Some(&digest), &dest2, true, &rec).unwrap(),
            Fetched::Skipped
        );
        assert_eq!(site.lock().unwrap().log, vec!["GET /img.qcow2.gz"]);
    }

    #[test]
    fn without_digest_last_modified_decides_freshness() {
        let site = Arc::new(Mutex::new(Site::default()));
        site.lock()
            .unwrap()
            .files
            .insert("/k".into(), (b"v1".to_vec(), "T1".into()));
        let base = serve(site.clone());
        let url = format!("{base}/k");
        let tmp = tempfile::tempdir().unwrap();
        let dl = Downloader::new(tmp.path().to_path_buf());
        let fetch = |n: &str| {
            let dest = tmp.path().join(n);
            let how = dl.fetch(&url, None, &dest, false, &NoProgress).unwrap();
            (how, std::fs::read(dest).unwrap())
        };
        assert_eq!(fetch("a"), (Fetched::Downloaded, b"v1".to_vec()));
        assert_eq!(fetch("b"), (Fetched::Cached, b"v1".to_vec()));
        site.lock()
            .unwrap()
            .files
            .insert("/k".into(), (b"v2".to_vec(), "T2".into()));
        assert_eq!(fetch("c"), (Fetched::Downloaded, b"v2".to_vec()));
        assert_eq!(
            site.lock().unwrap().log,
            vec!["GET /k", "HEAD /k", "HEAD /k", "GET /k"]
        );
    }

    #[test]
    fn digest_mismatch_and_http_errors_cache_nothing() {
        let site = Arc::new(Mutex::new(Site::default()));
        site.lock()
            .unwrap()
            .files
            .insert("/img".into(), (b"evil".to_vec(), "T".into()));
        let base = serve(site);
        let tmp = tempfile::tempdir().unwrap();
        let dl = Downloader::new(tmp.path().join("c"));
        let url = format!("{base}/img");
        let want = sha256(b"good");
        let dest = tmp.path().join(layout::IMAGE);
        let err = dl
            .fetch(&url, Some(&want), &dest, true, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("expected digest {want}, got {}", sha256(b"evil"))),
            "{err}"
        );
        assert!(!dest.exists());
        let entries: Vec<_> = std::fs::read_dir(dl.url_dir(&url))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec!["url"], "only the url file stays");

        let err = dl
            .fetch(&format!("{base}/missing"), None, &dest, true, &NoProgress)
            .unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        assert!(!dl.url_dir(&format!("{base}/missing")).join("data").exists());
    }

    #[test]
    fn local_sources_are_decompressed_straight_to_the_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("img.xz");
        std::fs::write(&src, XZ_HELLO).unwrap();
        let dl = Downloader::new(tmp.path().join("cache"));
        for (i, loc) in [
            src.display().to_string(),
            format!("file://{}", src.display()),
        ]
        .iter()
        .enumerate()
        {
            let dest = tmp.path().join(format!("out{i}"));
            let how = dl
                .fetch(loc, Some(&sha256(XZ_HELLO)), &dest, true, &NoProgress)
                .unwrap();
            assert_eq!(how, Fetched::Local);
            assert_eq!(std::fs::read(&dest).unwrap(), b"hello xz\n");
        }
        assert!(
            !tmp.path().join("cache").exists(),
            "local files are not cached"
        );
        let err = dl
            .fetch(
                "file://rel/x",
                None,
                &tmp.path().join("o"),
                true,
                &NoProgress,
            )
            .unwrap_err();
        assert!(matches!(err, ImageError::BadLocation(_)));
        let err = dl
            .fetch(
                &src.display().to_string(),
                Some(&sha256(b"x")),
                &tmp.path().join("o"),
                true,
                &NoProgress,
            )
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
        assert!(!tmp.path().join("o").exists());
    }

    #[test]
    fn prepare_tries_entries_for_the_arch_in_order() {
        let site = Arc::new(Mutex::new(Site::default()));
        {
            let mut s = site.lock().unwrap();
            s.files
                .insert("/good.img".into(), (b"disk".to_vec(), "T".into()));
            s.files
                .insert("/vmlinuz.gz".into(), (gzip(b"kernel"), "T".into()));
            s.files
                .insert("/initrd.gz".into(), (gzip(b"initrd"), "T".into()));
        }
        let base = serve(site.clone());
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("inst");
        std::fs::create_dir(&d).unwrap();
        let dl = Downloader::new(tmp.path().join("cache"));
        let file = |p: &str, arch: Option<&str>| FileSpec {
            location: format!("{base}{p}"),
            arch: arch.map(str::to_string),
            digest: None,
        };
        let images = vec![
            ImageSpec {
                file: file("/other-arch.img", Some("aarch64")),
                ..Default::default()
            },
            ImageSpec {
                file: file("/good.img", Some("x86_64")),
                kernel: Some(file("/missing-kernel", None)),
                ..Default::default()
            },
            ImageSpec {
                file: file("/good.img", Some("x86_64")),
                kernel: Some(file("/vmlinuz.gz", None)),
                kernel_cmdline: Some("console=ttyS0".into()),
                initrd: Some(file("/initrd.gz", None)),
            },
        ];
        assert!(prepare(&dl, &d, "x86_64", &images, &NoProgress).unwrap());
        let read = |n: &str| std::fs::read(d.join(n)).unwrap();
        assert_eq!(read("image"), b"disk");
        assert_eq!(read("kernel"), b"kernel", "kernel decompressed");
        assert_eq!(read("kernel.cmdline"), b"console=ttyS0");
        assert_eq!(read("initrd"), gzip(b"initrd"), "initrd kept as is");
        let log = site.lock().unwrap().log.clone();
        assert!(!log.iter().any(|l| l.contains("other-arch")), "{log:?}");
        assert!(log.contains(&"GET /missing-kernel".to_string()), "{log:?}");
        // The image exists now: nothing more is fetched.
        assert!(!prepare(&dl, &d, "x86_64", &images, &NoProgress).unwrap());

        let d2 = tmp.path().join("inst2");
        std::fs::create_dir(&d2).unwrap();
        let err = prepare(&dl, &d2, "x86_64", &images[..2], &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no image could be fetched: cannot download"),
            "{err}"
        );
        assert!(
            !d2.join(layout::IMAGE).exists(),
            "a half-fetched entry is removed"
        );
        let err = prepare(&dl, &d2, "riscv64", &images, &NoProgress).unwrap_err();
        assert!(matches!(err, ImageError::NoImageForArch(_)));
    }
}

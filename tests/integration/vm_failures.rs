//! `vm start` failures that need no guest: each gives a clear error and
//! leaves no instance behind, so the next attempt starts clean.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Serves `body` for every GET (and HEAD) on 127.0.0.1 until the test ends.
fn serve(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            if request.starts_with("GET") {
                let _ = conn.write_all(&body);
            }
        }
    });
    port
}

fn template(dir: &TestDir, location: &str, digest: Option<&str>) -> std::path::PathBuf {
    let digest = digest
        .map(|d| format!("  digest: {d}\n"))
        .unwrap_or_default();
    dir.write(
        "template.yaml",
        &format!(
            "images:\n- location: {location}\n  arch: {}\n{digest}",
            llima_box::testing::vm::sys::host_arch()
        ),
    )
}

/// `vm start --template` with a private cache.
fn start_cmd(home: &VmHome, template: &Path) -> Command {
    let mut cmd = home.cmd(&["--instance", "fail", "vm", "start", "--template"]);
    cmd.arg(template)
        .env("XDG_CACHE_HOME", home.path().join("_cache"));
    cmd
}

/// Runs `start_cmd`; returns (success, stderr).
fn start(home: &VmHome, template: &Path, path_env: Option<&str>) -> (bool, String) {
    let mut cmd = start_cmd(home, template);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), text(&out).1)
}

fn assert_nothing_left(home: &VmHome) {
    let left: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            !["_cache", "template.yaml", "bin"].contains(&n.as_str()) && !n.ends_with(".lock")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_image_digest_is_refused_and_nothing_is_cached() {
    let home = VmHome::without_guest();
    let port = serve(vec![7u8; 64 * 1024]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let t = template(
        home.dir(),
        &format!("http://127.0.0.1:{port}/disk.img"),
        Some(&wrong),
    );
    let (ok, stderr) = start(&home, &t, None);
    assert!(!ok);
    assert!(stderr.contains("expected digest"), "{stderr}");
    assert_nothing_left(&home);
    // The download cache holds no data file for that URL.
    let cached = walk(&home.path().join("_cache"));
    assert!(
        !cached.iter().any(|p| p.ends_with("data")),
        "cached: {cached:?}"
    );
}

#[test]
fn unreachable_image_location_fails_clearly() {
    let home = VmHome::without_guest();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/disk.img");
    let t = template(home.dir(), &url, None);
    let (ok, stderr) = start(&home, &t, None);
    assert!(!ok);
    assert!(stderr.contains(&url), "{stderr}");
    assert_nothing_left(&home);
}

#[test]
fn missing_qemu_is_reported_before_any_download() {
    let home = VmHome::without_guest();
    let bin = home.dir().mkdir("bin");
    // qemu-img is there, qemu-system-* is not.
    std::os::unix::fs::symlink("/usr/bin/qemu-img", bin.join("qemu-img")).unwrap();
    let port = serve(vec![0u8; 1024]);
    let t = template(
        home.dir(),
        &format!("http://127.0.0.1:{port}/disk.img"),
        None,
    );
    let (ok, stderr) = start(&home, &t, Some(bin.to_str().unwrap()));
    assert!(!ok);
    assert!(stderr.contains("qemu-system-"), "{stderr}");
    assert!(stderr.contains("install"), "{stderr}");
    assert_nothing_left(&home);
    assert!(walk(&home.path().join("_cache")).is_empty());
}

#[test]
fn a_timeout_that_is_not_seconds_is_refused_before_anything_is_made() {
    let home = VmHome::without_guest();
    let out = home
        .cmd(&["--instance", "fail", "vm", "start"])
        .env("LLIMA_BOX_BOOT_TIMEOUT", "10m")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("LLIMA_BOX_BOOT_TIMEOUT=\"10m\" is not a number of seconds"),
        "{stderr}"
    );
    assert_nothing_left(&home);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Serves a large body slowly, so that a download is still running when
/// the test interrupts it.
fn serve_slowly() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let total = 64 << 20;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                let _ = conn.write_all(head.as_bytes());
                for _ in 0..(total / 4096) {
                    if conn.write_all(&[1u8; 4096]).is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
        }
    });
    port
}

#[test]
fn ctrl_c_during_a_first_start_leaves_nothing_that_breaks_the_next() {
    let home = VmHome::without_guest();
    let port = serve_slowly();
    let t = template(
        home.dir(),
        &format!("http://127.0.0.1:{port}/disk.img"),
        None,
    );
    let mut cmd = start_cmd(&home, &t);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // As from a terminal: a launcher that ran these tests as a background
    // job left SIGINT ignored, which the start would inherit.
    // SAFETY: signal() is async-signal-safe; nothing else runs in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // Interrupt once the download is under way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !walk(&home.path().join("_cache")).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("data.tmp"))
    }) {
        assert!(std::time::Instant::now() < deadline, "download never began");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGINT to the whole process group, as a terminal's Ctrl-C does.
    let pid = child.id();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(!status.success());
    // No instance: listing shows none, and the next start is not blocked by
    // leftovers (it fails only on its own bad digest, and cleans up).
    assert!(!home.path().join("fail").exists());
    let names = home.ok(&["vm", "list", "--names-only"]);
    assert!(names.trim().is_empty());
    let fast = serve(vec![3u8; 1024]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let t = template(
        home.dir(),
        &format!("http://127.0.0.1:{fast}/disk.img"),
        Some(&wrong),
    );
    let (ok, stderr) = start(&home, &t, None);
    assert!(!ok);
    assert!(stderr.contains("expected digest"), "{stderr}");
    assert_nothing_left(&home);
}

//! The instance's boot disk in Lima's current layout: the downloaded
//! `$D/image` becomes `$D/disk` in place (or, for an ISO9660 image, `$D/iso`
//! plus a blank qcow2 `$D/disk`), and the disk is grown to the configured
//! size. Old instances (`basedisk`/`diffdisk`) are migrated with symlinks so
//! older Lima versions can still use them. qemu-img runs through [`Host`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::vm::layout;
use crate::vm::sys::Sys;
use crate::vm::units::format_bytes;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskError {
    #[error("cannot run qemu-img: {0} (install qemu-utils, e.g. apt-get install qemu-utils)")]
    QemuImgMissing(io::Error),
    #[error("`qemu-img {args}` failed: {stderr}")]
    QemuImg { args: String, stderr: String },
    #[error("cannot read `qemu-img info` output for {path}: {reason}")]
    Info { path: PathBuf, reason: String },
    #[error(
        "{path} has a backing file ({backing}); only standalone images can be used as the VM disk"
    )]
    BackingFile { path: PathBuf, backing: String },
    #[error(
        "disk shrinking is not supported: {path} is {current} but the configured disk is {wanted}; set `disk` to at least {current}"
    )]
    Shrink {
        path: PathBuf,
        current: String,
        wanted: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The fields of `qemu-img info --output=json` this module needs.
#[derive(Debug, Deserialize)]
struct ImageInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
}

fn qemu_img(host: &dyn Sys, args: &[&str]) -> Result<Vec<u8>, DiskError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = host
        .run("qemu-img", &args)
        .map_err(DiskError::QemuImgMissing)?;
    if !out.success {
        return Err(DiskError::QemuImg {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn info(host: &dyn Sys, path: &Path) -> Result<ImageInfo, DiskError> {
    let p = path.to_string_lossy();
    let out = qemu_img(host, &["info", "--output=json", "--force-share", &p])?;
    serde_json::from_slice(&out).map_err(|e| DiskError::Info {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// True when `path` is an ISO9660 image: "CD001" at byte 32769.
pub(crate) fn is_iso9660(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(32769))?;
    let mut magic = [0u8; 5];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"CD001"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lima ≤ 2.0 kept `basedisk` + a `diffdisk` overlay. Point the current
/// names at them (relative symlinks) and delete nothing, so both versions
/// keep working.
pub(crate) fn migrate_layout(dir: &Path) -> Result<(), DiskError> {
    let disk = dir.join(layout::DISK);
    if !disk.exists() && dir.join(layout::DIFF_DISK).exists() {
        std::os::unix::fs::symlink(layout::DIFF_DISK, &disk).map_err(io_err(&disk))?;
    }
    let basedisk = dir.join(layout::BASE_DISK);
    let iso = dir.join(layout::ISO);
    if basedisk.exists() && !iso.exists() && is_iso9660(&basedisk).map_err(io_err(&basedisk))? {
        std::os::unix::fs::symlink(layout::BASE_DISK, &iso).map_err(io_err(&iso))?;
    }
    Ok(())
}

/// Turns `$D/image` into the boot disk unless `$D/disk` exists already:
/// an ISO is kept as `$D/iso` and a blank qcow2 disk of `size_bytes` is
/// created; any other image is renamed to `$D/disk` and used in place.
pub(crate) fn ensure_disk(host: &dyn Sys, dir: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let disk = dir.join(layout::DISK);
    if disk.exists() {
        return Ok(());
    }
    let image = dir.join(layout::IMAGE);
    let info = info(host, &image)?;
    if let Some(backing) = info.backing_filename {
        return Err(DiskError::BackingFile {
            path: image,
            backing,
        });
    }
    if is_iso9660(&image).map_err(io_err(&image))? {
        let iso = dir.join(layout::ISO);
        std::fs::rename(&image, &iso).map_err(io_err(&iso))?;
        let d = disk.to_string_lossy();
        qemu_img(
            host,
            &["create", "-f", "qcow2", &d, &size_bytes.to_string()],
        )?;
    } else {
        std::fs::rename(&image, &disk).map_err(io_err(&disk))?;
    }
    Ok(())
}

/// Grows `$D/disk` to `size_bytes` (nothing to do when it is absent or
/// already that size). Shrinking would destroy guest data, so it is refused.
pub(crate) fn ensure_size(host: &dyn Sys, dir: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let disk = dir.join(layout::DISK);
    if !disk.exists() {
        return Ok(());
    }
    let info = info(host, &disk)?;
    if info.virtual_size == size_bytes {
        return Ok(());
    }
    if size_bytes < info.virtual_size {
        return Err(DiskError::Shrink {
            path: disk,
            current: format_bytes(info.virtual_size),
            wanted: format_bytes(size_bytes),
        });
    }
    let d = disk.to_string_lossy();
    qemu_img(
        host,
        &["resize", "-f", &info.format, &d, &size_bytes.to_string()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::sys::fake::{FakeSys, ok};
    use crate::vm::sys::{Output, RealSys};

    fn info_json(format: &str, size: u64) -> String {
        format!(r#"{{"format": "{format}", "virtual-size": {size}, "filename": "x"}}"#)
    }

    #[test]
    fn qcow2_image_is_renamed_to_disk_and_grown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(layout::IMAGE), b"qcow2 bytes").unwrap();
        let host = FakeSys::new(|_, _| ok(&info_json("qcow2", 1 << 30)));
        ensure_disk(&host, dir.path(), 100 << 30).unwrap();
        assert!(!dir.path().join(layout::IMAGE).exists());
        assert_eq!(
            std::fs::read(dir.path().join(layout::DISK)).unwrap(),
            b"qcow2 bytes"
        );
        ensure_size(&host, dir.path(), 100 << 30).unwrap();
        let d = dir.path().display();
        assert_eq!(
            host.calls(),
            vec![
                format!("qemu-img info --output=json --force-share {d}/image"),
                format!("qemu-img info --output=json --force-share {d}/disk"),
                format!("qemu-img resize -f qcow2 {d}/disk 107374182400"),
            ]
        );
    }

    #[test]
    fn iso_image_becomes_iso_plus_blank_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut iso = vec![0u8; 34816];
        iso[32769..32774].copy_from_slice(b"CD001");
        std::fs::write(dir.path().join(layout::IMAGE), &iso).unwrap();
        let host = FakeSys::new(|_, _| ok(&info_json("raw", 34816)));
        ensure_disk(&host, dir.path(), 1 << 30).unwrap();
        assert!(dir.path().join(layout::ISO).exists());
        let d = dir.path().display();
        assert_eq!(
            host.calls()[1],
            format!("qemu-img create -f qcow2 {d}/disk 1073741824")
        );
    }

    #[test]
    fn existing_disk_is_left_alone_and_same_size_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(layout::DISK), b"").unwrap();
        let host = FakeSys::new(|_, _| ok(&info_json("raw", 4096)));
        ensure_disk(&host, dir.path(), 4096).unwrap();
        ensure_size(&host, dir.path(), 4096).unwrap();
        assert_eq!(
            host.calls().len(),
            1,
            "only the info call: {:?}",
            host.calls()
        );
    }

    #[test]
    fn shrinking_and_backing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(layout::DISK), b"").unwrap();
        let host = FakeSys::new(|_, _| ok(&info_json("qcow2", 10 << 30)));
        let err = ensure_size(&host, dir.path(), 5 << 30).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("disk shrinking is not supported"),
            "{err}"
        );
        assert!(err.to_string().contains("10GiB"), "{err}");

        std::fs::remove_file(dir.path().join(layout::DISK)).unwrap();
        std::fs::write(dir.path().join(layout::IMAGE), b"").unwrap();
        let host = FakeSys::new(|_, _| {
            ok(r#"{"format":"qcow2","virtual-size":1,"backing-filename":"/b"}"#)
        });
        let err = ensure_disk(&host, dir.path(), 1).unwrap_err();
        assert!(matches!(err, DiskError::BackingFile { .. }), "{err}");
    }

    #[test]
    fn qemu_img_failure_carries_stderr() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(layout::DISK), b"").unwrap();
        let host = FakeSys::new(|_, _| {
            Ok(Output {
                success: false,
                stdout: Vec::new(),
                stderr: b"Could not open: bad\n".to_vec(),
            })
        });
        let err = ensure_size(&host, dir.path(), 1).unwrap_err();
        assert!(
            err.to_string().ends_with("failed: Could not open: bad"),
            "{err}"
        );
    }

    #[test]
    fn legacy_layout_gets_relative_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(layout::DIFF_DISK), b"overlay").unwrap();
        let mut iso = vec![0u8; 34816];
        iso[32769..32774].copy_from_slice(b"CD001");
        std::fs::write(dir.path().join(layout::BASE_DISK), &iso).unwrap();
        migrate_layout(dir.path()).unwrap();
        let link = |n: &str| std::fs::read_link(dir.path().join(n)).unwrap();
        assert_eq!(link(layout::DISK), PathBuf::from(layout::DIFF_DISK));
        assert_eq!(link(layout::ISO), PathBuf::from(layout::BASE_DISK));
        assert!(
            dir.path().join(layout::DIFF_DISK).exists()
                && dir.path().join(layout::BASE_DISK).exists()
        );
        // Idempotent: a second run changes nothing.
        migrate_layout(dir.path()).unwrap();
    }

    #[test]
    fn real_qemu_img_grows_a_qcow2_disk() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(layout::IMAGE);
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("1M")
            .status()
            .expect("qemu-img must be installed for this test");
        assert!(st.success());
        ensure_disk(&RealSys, dir.path(), 4 << 20).unwrap();
        ensure_size(&RealSys, dir.path(), 4 << 20).unwrap();
        let info = info(&RealSys, &dir.path().join(layout::DISK)).unwrap();
        assert_eq!(
            (info.format.as_str(), info.virtual_size),
            ("qcow2", 4 << 20)
        );
        let err = ensure_size(&RealSys, dir.path(), 2 << 20).unwrap_err();
        assert!(matches!(err, DiskError::Shrink { .. }));
    }
}

//! Creating an instance: everything happens in a dot-prefixed staging
//! directory (invisible to Lima's and our listing) that is renamed into
//! place only when complete, so an interrupted first start (Ctrl-C, a
//! failed download, a full disk) never leaves a half-made instance.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::LifecycleError;
use crate::vm::cidata;
use crate::vm::config;
use crate::vm::image::{self, Progress};
use crate::vm::layout;
use crate::vm::units::format_bytes;

/// What `lima-version` records: the Lima release whose layout and defaults
/// we follow, so limactl reads our instances with the same defaults
/// (guest home, mount type, SSH port) as we do.
pub(crate) const LIMA_VERSION: &str = "v2.2.0";

/// Linux's `UNIX_PATH_MAX`, less the room OpenSSH needs for the random
/// suffix of a ControlMaster socket (Lima's own create-time rule).
#[cfg(target_os = "macos")]
const UNIX_PATH_MAX: usize = 104;
#[cfg(not(target_os = "macos"))]
const UNIX_PATH_MAX: usize = 108;

/// Creates `$LIMA_HOME/<name>` from `template` (bases already embedded)
/// or the built-in config, fetching the image and making the disk. The
/// caller holds the instance lock.
pub(super) fn create(
    lima_home: &Path,
    name: &str,
    template: Option<&str>,
    progress: &dyn Progress,
) -> Result<PathBuf, LifecycleError> {
    let dir = crate::vm::store::instance_dir(lima_home, name)?;
    let sock_len = dir
        .join(format!("{}.1234567890123456", layout::SSH_SOCK))
        .as_os_str()
        .len();
    if sock_len >= UNIX_PATH_MAX {
        return Err(LifecycleError::PathTooLong {
            dir,
            max: UNIX_PATH_MAX,
        });
    }
    let staging = lima_home.join(format!(".{name}.creating"));
    // Left by an interrupted create; we hold the lock, so nobody is using it.
    remove_dir_if_present(&staging)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)
        .map_err(io("create", &staging))?;
    let guard = RemoveOnDrop(Some(staging.clone()));

    let yaml = template.map_or_else(default_instance_yaml, str::to_string);
    write(&staging.join(layout::LIMA_YAML), &yaml, 0o644)?;
    write(&staging.join(layout::LIMA_VERSION), LIMA_VERSION, 0o444)?;
    let key = cidata::generate_host_key()?;
    write(&staging.join(layout::HOST_KEY), &key.private_openssh, 0o600)?;
    write(
        &staging.join(layout::HOST_KEY_PUB),
        &key.public_openssh,
        0o644,
    )?;

    let cfg = config::load_instance(&staging, lima_home)?;
    prepare_disk(&staging, &cfg, progress)?;

    std::fs::rename(&staging, &dir).map_err(io("move into place", &dir))?;
    std::mem::forget(guard);
    Ok(dir)
}

/// Fetches the image (when the instance has no disk yet), turns it into
/// the disk and grows it to `disk:`; run at every start as Lima does.
pub(super) fn prepare_disk(
    dir: &Path,
    cfg: &config::LimaYaml,
    progress: &dyn Progress,
) -> Result<(), LifecycleError> {
    let host = crate::vm::sys::RealSys;
    crate::vm::disk::migrate_layout(dir)?;
    let arch = cfg.arch.clone().unwrap_or_default();
    let images: Vec<image::ImageSpec> = cfg.images.iter().map(image_spec).collect();
    let dl = image::Downloader::new(image::default_cache_root()?);
    image::prepare(&dl, dir, &arch, &images, progress)?;
    let size = cfg
        .disk
        .as_deref()
        .and_then(crate::vm::units::parse_bytes)
        .unwrap_or(100 << 30);
    crate::vm::disk::ensure_disk(&host, dir, size)?;
    crate::vm::disk::ensure_size(&host, dir, size)?;
    Ok(())
}

fn image_spec(i: &config::Image) -> image::ImageSpec {
    let file = |f: &config::File| image::FileSpec {
        location: f.location.clone(),
        arch: f.arch.clone(),
        digest: f.digest.clone(),
    };
    image::ImageSpec {
        file: file(&i.file),
        kernel: i.kernel.as_ref().map(|k| file(&k.file)),
        kernel_cmdline: i.kernel.as_ref().and_then(|k| k.cmdline.clone()),
        initrd: i.initrd.as_ref().map(file),
    }
}

/// The embedded config with resources sized for several agents at once but
/// never beyond this host: at most its CPU count and half its memory.
fn default_instance_yaml() -> String {
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let memory = (crate::vm::config::HostFacts::current().memory_bytes / 2).min(8 << 30);
    config::default_instance_yaml()
        .replace("cpus: null", &format!("cpus: {cpus}"))
        .replace("memory: null", &format!("memory: {}", format_bytes(memory)))
}

/// Creates `path` (in the fresh staging directory) with `mode` from the
/// start, so that the host key is never readable by others, not even
/// between its creation and a chmod; the final chmod makes the mode exact
/// whatever the umask took away.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), LifecycleError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(text.as_bytes()).map_err(io("write", path))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("set permissions of", path))
}

fn remove_dir_if_present(p: &Path) -> Result<(), LifecycleError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", p)(e)),
        _ => Ok(()),
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LifecycleError {
    let path = path.to_path_buf();
    move |source| LifecycleError::Io { what, path, source }
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

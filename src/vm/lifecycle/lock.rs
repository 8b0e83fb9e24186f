//! One start (or stop, or delete) of an instance at a time. The lock file
//! sits beside the instance directory, dot-prefixed so that neither Lima
//! nor we list it, and survives the directory's own creation and removal.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::LifecycleError;

pub(crate) struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Blocks until no other llima-box process holds the instance's lock.
    /// The lock is released when the value is dropped or the process dies.
    pub(crate) fn acquire(lima_home: &Path, name: &str) -> Result<Self, LifecycleError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LifecycleError::Io { what, path, source }
        };
        crate::vm::dirs::create_private(lima_home).map_err(io("create", lima_home))?;
        let path = lima_home.join(format!(".{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(InstanceLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn excludes_concurrent_holders() {
        let home = tempfile::tempdir().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (home, inside, max_seen) =
                    (home.path().to_path_buf(), inside.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    let _l = InstanceLock::acquire(&home, "x").unwrap();
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    }
}

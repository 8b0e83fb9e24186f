//! Projects' own settings on the host: one file per environment in the
//! instance directory (`projects/NAME.json`, private to the user), never
//! in the project, where the agent inside could widen them. They outlive
//! the environment (a new one of the project gets them) and go with the
//! VM's instance.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub(crate) use llima_box_proto::settings::Settings;

use super::Error;

fn file(instance_dir: &Path, name: &str) -> PathBuf {
    instance_dir.join("projects").join(format!("{name}.json"))
}

/// The settings of the environment `name`; `None` when it has none.
pub(crate) fn load(instance_dir: &Path, name: &str) -> Result<Option<Settings>, Error> {
    let path = file(instance_dir, name);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Settings { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::Settings {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Saves `settings` for `name` (the defaults: removes the file).
pub(crate) fn save(instance_dir: &Path, name: &str, settings: &Settings) -> Result<(), Error> {
    let path = file(instance_dir, name);
    let err = |source| Error::Settings {
        path: path.clone(),
        source,
    };
    if *settings == Settings::default() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        };
    }
    let dir = path.parent().expect("a directory");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(err)?;
    super::host_file::write_json(&path, settings).map_err(err)
}

/// `SIZE` as bytes: a number with an optional K, M, G or T (powers of
/// 1024, an optional trailing `i`/`iB`/`B` accepted).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512M, 4G)"))?;
    let shift = match unit.trim_end_matches("iB").trim_end_matches(['i', 'B']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("{text:?} is not a size (e.g. 512M, 4G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2k"), Ok(2048));
        for bad in ["", "G", "4X", "-1G", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn saved_settings_load_back_privately_and_defaults_remove_the_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), "app-1").unwrap(), None);
        let s = Settings {
            memory_max: Some(1 << 30),
            git_writes: true,
            ..Default::default()
        };
        save(d.path(), "app-1", &s).unwrap();
        assert_eq!(load(d.path(), "app-1").unwrap(), Some(s));
        let f = file(d.path(), "app-1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        save(d.path(), "app-1", &Settings::default()).unwrap();
        assert!(!f.exists());
        assert_eq!(load(d.path(), "app-1").unwrap(), None);
        std::fs::write(&f, "{oops").unwrap();
        assert!(load(d.path(), "app-1").is_err());
    }
}

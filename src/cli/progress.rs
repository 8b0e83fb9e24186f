//! Progress for slow work: a stage line with elapsed time on stderr.

use std::time::{Duration, Instant};

/// Prints each stage once, with the time since the command began.
pub(super) struct Stages {
    begin: Instant,
    quiet: bool,
    last: Option<String>,
}

impl Stages {
    pub(super) fn new(quiet: bool) -> Self {
        Stages {
            begin: Instant::now(),
            quiet,
            last: None,
        }
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.begin.elapsed()
    }

    /// Announces `stage` unless it is the one already shown.
    pub(super) fn stage(&mut self, stage: &str) {
        if self.last.as_deref() == Some(stage) {
            return;
        }
        self.last = Some(stage.to_string());
        if !self.quiet {
            eprintln!("[{:>5.1}s] {stage}", self.begin.elapsed().as_secs_f64());
        }
    }
}

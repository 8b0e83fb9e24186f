//! Progress for slow work: a stage line with elapsed time on stderr, and
//! an indicatif bar for downloads. Hidden with `--quiet`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Prints each stage once, with the time since the command began.
pub struct Stages {
    begin: Instant,
    quiet: bool,
    last: Option<String>,
}

impl Stages {
    pub fn new(quiet: bool) -> Self {
        Stages {
            begin: Instant::now(),
            quiet,
            last: None,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.begin.elapsed()
    }

    /// Announces `stage` unless it is the one already shown.
    pub fn stage(&mut self, stage: &str) {
        if self.last.as_deref() == Some(stage) {
            return;
        }
        self.last = Some(stage.to_string());
        if !self.quiet {
            eprintln!("[{:>5.1}s] {stage}", self.begin.elapsed().as_secs_f64());
        }
    }
}

/// A byte-counting bar with rate and ETA, or a spinner when the size is
/// unknown.
pub fn download_bar(what: &str, total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(what.to_string());
    bar
}

//! Progress reporting for downloads: the core calls a [`Progress`]; the CLI
//! passes a [`BarReporter`] (an indicatif bar with bytes, rate and ETA).

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) trait Progress {
    /// A transfer named `name` begins; `total` bytes if known.
    fn start(&self, name: &str, total: Option<u64>);
    /// `done` bytes so far.
    fn update(&self, done: u64);
    fn finish(&self);
}

/// Reports nothing.
pub(crate) struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn update(&self, _: u64) {}
    fn finish(&self) {}
}

/// One indicatif bar per transfer on stderr (hidden when stderr is not a
/// terminal, as indicatif does).
#[derive(Default)]
pub(crate) struct BarReporter {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for BarReporter {
    fn start(&self, name: &str, total: Option<u64>) {
        let (bar, template) = match total {
            Some(t) => (
                ProgressBar::new(t),
                "{msg}\n{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ),
            None => (ProgressBar::no_length(), "{msg}\n{bytes} {bytes_per_sec}"),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(name.to_string());
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn update(&self, done: u64) {
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

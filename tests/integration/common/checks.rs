//! Named checks that share one expensive setup (a booted VM): a failing
//! check does not hide the ones after it. Each runs with its panic caught
//! and reported by name; the test fails at the end, listing every check
//! that failed or could not run.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

enum Outcome {
    Passed,
    Failed(String),
    NotRun(String),
}

struct Done {
    name: String,
    outcome: Outcome,
    /// How long it took, when it ran.
    took: Option<Duration>,
}

#[derive(Default)]
pub struct Checks {
    done: Vec<Done>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Runs check `name`; its value when it passed.
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> Option<T> {
        eprintln!("---- check {name}");
        let started = Instant::now();
        let (outcome, value) = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => {
                eprintln!("---- check {name} passed in {:.1?}", started.elapsed());
                (Outcome::Passed, Some(v))
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(a panic without a message)".to_string());
                eprintln!("---- check {name} FAILED: {msg}");
                (Outcome::Failed(msg), None)
            }
        };
        self.done.push(Done {
            name: name.to_string(),
            outcome,
            took: Some(started.elapsed()),
        });
        value
    }

    /// Runs check `name` if every check in `needs` passed; otherwise
    /// records it as not run (it would test nothing, or the wrong thing).
    pub fn run_after<T>(&mut self, name: &str, needs: &[&str], f: impl FnOnce() -> T) -> Option<T> {
        let unmet: Vec<&str> = needs.iter().copied().filter(|n| !self.passed(n)).collect();
        if unmet.is_empty() {
            return self.run(name, f);
        }
        let why = format!("needs {}", unmet.join(", "));
        eprintln!("---- check {name} NOT RUN: {why}");
        self.done.push(Done {
            name: name.to_string(),
            outcome: Outcome::NotRun(why),
            took: None,
        });
        None
    }

    fn passed(&self, name: &str) -> bool {
        self.done
            .iter()
            .any(|d| d.name == name && matches!(d.outcome, Outcome::Passed))
    }

    /// Fails the test unless every check passed.
    pub fn finish(self) {
        // Where a suite's time goes, for whoever trims it: on stderr itself,
        // which the test harness does not capture, so a passing run says it.
        let mut ran: Vec<(&str, Duration)> = (self.done.iter())
            .filter_map(|d| Some((d.name.as_str(), d.took?)))
            .collect();
        ran.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        let slowest: Vec<String> = (ran.iter().take(6))
            .map(|(name, took)| format!("{name} {}s", took.as_secs()))
            .collect();
        let total: Duration = ran.iter().map(|(_, t)| *t).sum();
        let _ = writeln!(
            std::io::stderr(),
            "{}: {} checks in {}s; slowest: {}",
            std::thread::current().name().unwrap_or("checks"),
            ran.len(),
            total.as_secs(),
            slowest.join(", ")
        );
        let mut report = String::new();
        let mut bad = 0;
        for Done { name, outcome, .. } in &self.done {
            bad += usize::from(!matches!(outcome, Outcome::Passed));
            match outcome {
                Outcome::Passed => {}
                Outcome::Failed(msg) => report.push_str(&format!("\n{name}: FAILED: {msg}")),
                Outcome::NotRun(why) => report.push_str(&format!("\n{name}: NOT RUN: {why}")),
            }
        }
        assert!(
            report.is_empty(),
            "{} of {} checks did not pass:{report}",
            bad,
            self.done.len()
        );
    }
}

#[test]
fn every_check_runs_and_each_failure_is_reported() {
    let mut checks = Checks::new();
    assert_eq!(checks.run("first", || 1), Some(1));
    assert_eq!(
        checks.run("second", || -> u8 { panic!("boom {}", 2) }),
        None
    );
    let mut ran = false;
    checks.run_after("third", &["second"], || ran = true);
    assert!(!ran, "a check whose dependency failed ran");
    checks.run_after("fourth", &["first"], || ran = true);
    assert!(ran, "a check whose dependency passed did not run");
    checks.run("fifth", || panic!("static"));
    let report = std::panic::catch_unwind(AssertUnwindSafe(|| checks.finish()))
        .expect_err("finish passed with failed checks");
    let report = report.downcast_ref::<String>().unwrap();
    assert!(
        report.starts_with("3 of 5 checks did not pass:"),
        "{report}"
    );
    assert!(report.contains("\nsecond: FAILED: boom 2"), "{report}");
    assert!(
        report.contains("\nthird: NOT RUN: needs second"),
        "{report}"
    );
    assert!(report.contains("\nfifth: FAILED: static"), "{report}");
    assert!(
        !report.contains("first") && !report.contains("fourth"),
        "{report}"
    );
}

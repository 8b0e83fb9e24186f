//! Human output: colour only on a terminal and never with `NO_COLOR`,
//! verbosity, and error chains printed one cause per line.

use std::io::IsTerminal;

pub(crate) struct Output {
    verbose: u8,
    quiet: bool,
    color: bool,
}

impl Output {
    pub(crate) fn new(verbose: u8, quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Output {
            verbose,
            quiet,
            color: !no_color && std::io::stderr().is_terminal(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// A progress or status line on stderr, hidden by `--quiet`.
    pub(crate) fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// Detail shown only with `-v`.
    pub(crate) fn debug(&self, msg: &str) {
        if self.verbose > 0 {
            eprintln!("{}", self.paint("2", msg));
        }
    }

    pub(crate) fn warn(&self, msg: &str) {
        eprintln!("{} {msg}", self.paint("33", "warning:"));
    }

    pub(crate) fn error(&self, err: &anyhow::Error) {
        eprintln!("{} {err}", self.paint("31;1", "error:"));
        for cause in causes(err) {
            eprintln!("  {} {cause}", self.paint("2", "caused by:"));
        }
    }
}

/// What `err` has to say below its own message; a cause whose parent's
/// message already quotes it is not said twice.
fn causes(err: &anyhow::Error) -> Vec<String> {
    let mut said = err.to_string();
    let mut out = Vec::new();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            out.push(text.clone());
        }
        said = text;
    }
    out
}

/// `s` with control characters escaped (`\n`, `\u{1b}`): project paths and
/// values read from a project's files may contain anything an agent put
/// there, and an escape sequence in them must not reach the terminal.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoted = anyhow::Error::new(crate::env::Error::Ports {
            path: "/x/ports.json".into(),
            source: io(),
        });
        assert_eq!(causes(&quoted), Vec::<String>::new());
        let with_context = anyhow::Error::new(io()).context("cannot start");
        assert_eq!(causes(&with_context), ["no such file"]);
    }
}

//! Questions to the person at the terminal.

use std::io::{BufRead, Write};

/// Asks `question` on stderr and reads the answer from stdin: yes only for
/// "y" or "yes". Callers decide what no terminal means.
pub(super) fn ask_yes_no(question: &str) -> std::io::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

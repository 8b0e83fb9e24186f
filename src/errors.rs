//! Error text for places that can only carry a string: `vm list`'s
//! `errors`, the host agent's log and events, replies to the CLI.

/// An error and its causes on one line, `outer: cause: root cause`.
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read lima.yaml")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_every_cause() {
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(
            super::one_line(&e),
            "cannot read lima.yaml: permission denied"
        );
    }
}

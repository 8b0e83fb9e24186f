//! A minimal YAML emitter for cloud-init's documents.
//!
//! cloud-init parses with PyYAML, i.e. YAML 1.1, where plain scalars such as
//! `yes`, `off` or `12:34:56` (a MAC address made of digits!) are booleans and
//! base-60 integers. serde's YAML writer only guards against YAML 1.2
//! ambiguities, so strings here stay plain only when they are unambiguous in
//! both versions; everything else is double-quoted, or a literal block for
//! multi-line text such as scripts and keys.

/// A YAML node. Keys are fixed identifiers chosen by this module's callers.
#[derive(Debug, Clone)]
pub(super) enum Yaml {
    Str(String),
    Bool(bool),
    Int(u64),
    Seq(Vec<Yaml>),
    Map(Vec<(&'static str, Yaml)>),
}

impl From<&str> for Yaml {
    fn from(s: &str) -> Self {
        Yaml::Str(s.to_string())
    }
}

impl From<String> for Yaml {
    fn from(s: String) -> Self {
        Yaml::Str(s)
    }
}

/// Renders a document whose root is a mapping.
pub(super) fn to_string(root: &Yaml) -> String {
    let mut out = String::new();
    match root {
        Yaml::Map(entries) => map(&mut out, entries, 0, false),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// `after_dash`: the mapping is a sequence item, so its first key follows `- `.
fn map(out: &mut String, entries: &[(&'static str, Yaml)], indent: usize, after_dash: bool) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 || !after_dash {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(key);
        out.push(':');
        value_after_key(out, value, indent);
    }
}

fn value_after_key(out: &mut String, value: &Yaml, indent: usize) {
    match value {
        Yaml::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            map(out, entries, indent + 2, false);
        }
        Yaml::Seq(items) if !items.is_empty() => {
            out.push('\n');
            seq(out, items, indent + 2);
        }
        Yaml::Str(s) if block_safe(s) => literal(out, s, indent + 2),
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn seq(out: &mut String, items: &[Yaml], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            Yaml::Map(entries) if !entries.is_empty() => map(out, entries, indent + 2, true),
            Yaml::Str(s) if block_safe(s) => {
                out.pop();
                literal(out, s, indent + 2);
            }
            other => {
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

/// Flow-style rendering for scalars, empty collections and nested sequences.
fn inline(value: &Yaml) -> String {
    match value {
        Yaml::Str(s) => scalar(s),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Int(n) => n.to_string(),
        Yaml::Seq(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Yaml::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{k}: {}", inline(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// A single-line scalar: plain when unambiguous in YAML 1.1 and 1.2 (and in
/// flow context), otherwise double-quoted with every non-printable escaped.
fn scalar(s: &str) -> String {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
    ];
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.@=+-".contains(c))
        && !WORDS.contains(&s);
    if plain {
        return s.to_string();
    }
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters YAML does not allow raw, or reads as line breaks.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// Multi-line text that a literal block reproduces exactly: printable, no
/// leading blank (which would change the detected indentation) and no
/// whitespace-only lines (which a block would read back as empty).
fn block_safe(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && s.chars()
            .all(|c| c == '\n' || c == '\t' || !needs_escape(c))
        && s.split('\n')
            .all(|l| l.is_empty() || !l.chars().all(|c| c == ' ' || c == '\t'))
}

fn literal(out: &mut String, s: &str, indent: usize) {
    let body = s.trim_end_matches('\n');
    let chomp = match s.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    out.push_str(" |");
    out.push_str(chomp);
    out.push('\n');
    for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
        if !line.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn round_trip(s: &str) -> Value {
        let doc = Yaml::Map(vec![
            ("k", Yaml::from(s)),
            (
                "seq",
                Yaml::Seq(vec![Yaml::from(s), Yaml::Seq(vec![Yaml::from(s)])]),
            ),
            (
                "items",
                Yaml::Seq(vec![Yaml::Map(vec![
                    ("a", Yaml::from(s)),
                    ("b", Yaml::from(s)),
                ])]),
            ),
        ]);
        let text = to_string(&doc);
        let v: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for got in [
            &v["k"],
            &v["seq"][0],
            &v["seq"][1][0],
            &v["items"][0]["a"],
            &v["items"][0]["b"],
        ] {
            assert_eq!(got.as_str(), Some(s), "{text}");
        }
        v
    }

    #[test]
    fn strings_round_trip_exactly() {
        for s in [
            "",
            "plain",
            "/home/alice.guest",
            "ALL=(ALL) NOPASSWD:ALL",
            "52:55:55:12:34:56",
            "501",
            "0",
            "yes",
            "off",
            "~",
            "-",
            "a: b",
            "x #y",
            "'single' \"double\" \\back",
            "tab\there",
            "ctl\u{7}bell",
            "#!/bin/sh\necho hi\n",
            "no trailing newline\nsecond",
            "many trailing\n\n\n",
            "  leading spaces\nline",
            "line\n   \nwhitespace-only line",
            "\nleading newline",
            "unicode é ✓\n",
            "[flow], {x}",
            "del\u{7f} nel\u{85} ls\u{2028} bom\u{feff}",
            "multi\nline with nel\u{85}\n",
        ] {
            round_trip(s);
        }
    }

    #[test]
    fn yaml_1_1_ambiguous_strings_are_quoted() {
        for s in [
            "52:55:55:12:34:56",
            "yes",
            "On",
            "501",
            "1e3",
            "0x10",
            "=",
            "~",
        ] {
            assert!(scalar(s).starts_with('"'), "{s} -> {}", scalar(s));
        }
        for s in ["eth0", "/bin/bash", "iid-1", "lima-0123abcd", "9p"] {
            let out = scalar(s);
            assert_eq!(out == s, !s.starts_with(char::is_numeric), "{s} -> {out}");
        }
    }

    #[test]
    fn scripts_become_literal_blocks() {
        let doc = Yaml::Map(vec![("cmd", Yaml::Seq(vec![Yaml::from("a\n  b\n")]))]);
        assert_eq!(to_string(&doc), "cmd:\n  - |\n    a\n      b\n");
    }

    #[test]
    fn scalars_and_empty_collections() {
        let doc = Yaml::Map(vec![
            ("b", Yaml::Bool(true)),
            ("n", Yaml::Int(200)),
            ("e", Yaml::Seq(vec![])),
            ("m", Yaml::Map(vec![])),
        ]);
        assert_eq!(to_string(&doc), "b: true\nn: 200\ne: []\nm: {}\n");
    }
}

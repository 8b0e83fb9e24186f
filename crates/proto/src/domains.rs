//! Domain names in a network policy's allow and deny lists, and the one
//! decision made from them: whether an environment may reach a name. The
//! host checks the lists when they are set; the guest's resolver and proxy
//! decide with [`NameLists::allows`] for each query and connection.
//!
//! A pattern is a name (`example.com`: that name only) or a wildcard
//! (`*.example.com`: any name below it, not the name itself). Deny beats
//! allow; a name no pattern matches is denied.

use serde::{Deserialize, Serialize};

/// At most this many patterns in each list.
pub const MAX_PATTERNS: usize = 256;
/// RFC 1035's bounds, in the dotted text form without a final dot.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// `text` as a pattern is kept (lower case, no final dot), or why it is
/// not one, said for a person.
pub fn pattern(text: &str) -> Result<String, String> {
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let bad = |why: &str| Err(format!("{text:?} is not a domain name: {why}"));
    if !text.is_ascii() {
        return bad("write an international name in its xn-- form");
    }
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return bad("each part between dots has 1 to 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a part cannot begin or end with '-'");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return bad(&match c {
                '*' => "'*' only as the first part, as in *.example.com".to_string(),
                c => format!("{c:?} is not allowed in a name"),
            });
        }
    }
    if !name.contains('.') {
        return bad("a top-level domain alone would match too much; name a domain under it");
    }
    Ok(lower)
}

/// Whether `name` (any case, with or without a final dot) matches
/// `pattern` (as [`pattern`] keeps it).
pub fn matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(parent) => {
            name.len() > parent.len() + 1
                && name.as_bytes()[name.len() - parent.len() - 1] == b'.'
                && name[name.len() - parent.len()..].eq_ignore_ascii_case(parent)
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// The allow and deny lists of a policy; each sorted, each pattern once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameLists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl NameLists {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether an environment may reach `name`: some allowed pattern
    /// matches it and no denied one does.
    pub fn allows(&self, name: &str) -> bool {
        self.allow.iter().any(|p| matches(p, name)) && !self.deny.iter().any(|p| matches(p, name))
    }

    /// Allows `text` (and takes it off the deny list).
    pub fn allow(&mut self, text: &str) -> Result<(), String> {
        let p = pattern(text)?;
        self.deny.retain(|d| *d != p);
        insert(&mut self.allow, p);
        Ok(())
    }

    /// Denies `text` (and takes it off the allow list).
    pub fn deny(&mut self, text: &str) -> Result<(), String> {
        let p = pattern(text)?;
        self.allow.retain(|a| *a != p);
        insert(&mut self.deny, p);
        Ok(())
    }

    /// Takes `text` off whichever list has it; whether one had.
    pub fn remove(&mut self, text: &str) -> bool {
        let Ok(p) = pattern(text) else {
            return false;
        };
        let before = self.allow.len() + self.deny.len();
        self.allow.retain(|a| *a != p);
        self.deny.retain(|d| *d != p);
        before != self.allow.len() + self.deny.len()
    }

    /// What is out of bounds in lists read from a file, said for a person.
    pub fn check(&self) -> Result<(), String> {
        for (what, list) in [("allowed", &self.allow), ("denied", &self.deny)] {
            if list.len() > MAX_PATTERNS {
                return Err(format!(
                    "{} {what} names; at most {MAX_PATTERNS} are",
                    list.len()
                ));
            }
            for p in list {
                if pattern(p)? != *p {
                    return Err(format!("{what} name {p:?} is not written as kept"));
                }
            }
            if !list.is_sorted() || list.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("the {what} names must be sorted, each once"));
            }
        }
        match self.allow.iter().find(|a| self.deny.contains(a)) {
            Some(both) => Err(format!("{both:?} is both allowed and denied")),
            None => Ok(()),
        }
    }
}

fn insert(list: &mut Vec<String>, p: String) {
    if let Err(i) = list.binary_search(&p) {
        list.insert(i, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_kept_lower_case_without_the_final_dot() {
        assert_eq!(pattern("GitHub.com.").unwrap(), "github.com");
        assert_eq!(pattern("*.Example.org").unwrap(), "*.example.org");
        assert_eq!(pattern("_dmarc.x-y.example").unwrap(), "_dmarc.x-y.example");
        for (bad, why) in [
            ("", "empty"),
            ("*.", "first part"),
            ("com", "top-level"),
            ("*.com", "top-level"),
            ("a..b", "1 to 63"),
            ("-a.com", "begin or end"),
            ("a.*.com", "first part"),
            ("*example.com", "first part"),
            ("exa mple.com", "' '"),
            ("bücher.de", "xn--"),
        ] {
            let err = pattern(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(pattern(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(pattern(&format!("{}com", "a.".repeat(127))).is_err());
    }

    #[test]
    fn wildcards_match_below_the_name_only() {
        assert!(matches("github.com", "GitHub.com."));
        assert!(!matches("github.com", "api.github.com"));
        assert!(matches("*.github.com", "api.github.com"));
        assert!(matches("*.github.com", "a.b.GITHUB.com."));
        assert!(!matches("*.github.com", "github.com"));
        assert!(!matches("*.github.com", "evilgithub.com"));
        assert!(!matches("*.github.com", ".github.com"));
    }

    #[test]
    fn deny_beats_allow_and_nothing_listed_is_denied() {
        let mut l = NameLists::default();
        assert!(!l.allows("example.com"));
        l.allow("*.example.com").unwrap();
        l.allow("example.com").unwrap();
        l.deny("secret.example.com").unwrap();
        assert!(l.allows("example.com") && l.allows("www.example.com"));
        assert!(!l.allows("secret.example.com"));
        assert!(l.allows("a.secret.example.com"));
        l.deny("*.example.com").unwrap();
        assert!(!l.allows("www.example.com") && l.allows("example.com"));
        assert_eq!(l.allow, ["example.com"]);
        assert_eq!(l.deny, ["*.example.com", "secret.example.com"]);
        assert!(l.check().is_ok());
        assert!(l.remove("Secret.Example.com."));
        assert!(!l.remove("secret.example.com"));
        assert!(l.allow("*").is_err());
    }

    #[test]
    fn lists_read_from_a_file_are_checked() {
        let lists = |allow: &[&str], deny: &[&str]| NameLists {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        assert!(lists(&["a.com", "b.com"], &["c.com"]).check().is_ok());
        for bad in [
            lists(&["b.com", "a.com"], &[]),
            lists(&["a.com", "a.com"], &[]),
            lists(&["A.com"], &[]),
            lists(&["a.com"], &["a.com"]),
            lists(&[], &["com"]),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("h{i:03}.com")).collect();
        let l = NameLists {
            allow: many,
            deny: vec![],
        };
        assert!(l.check().unwrap_err().contains("at most"));
        let json = serde_json::to_string(&lists(&["a.com"], &[])).unwrap();
        assert_eq!(json, r#"{"allow":["a.com"]}"#);
    }
}

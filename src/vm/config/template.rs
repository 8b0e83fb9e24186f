//! The subset of Go `text/template` that lima.yaml paths use: `{{.Var}}`
//! and `{{.Param.KEY}}`. Anything else is refused with a clear message
//! rather than half-interpreted.

use std::collections::BTreeMap;

/// Variables available to one expansion.
pub(crate) struct Vars<'a> {
    pub vars: BTreeMap<&'static str, String>,
    pub param: &'a BTreeMap<String, String>,
}

/// Expands every `{{.Name}}` in `text`; the error says what is unsupported.
pub(crate) fn expand(text: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in {text:?}"))?;
        let action = after[..end].trim();
        out.push_str(&lookup(action, vars).ok_or_else(|| {
            format!(
                "uses template syntax `{{{{{action}}}}}` that llima-box does not support \
                 (only simple variables such as `{{{{.Home}}}}` or `{{{{.Param.KEY}}}}` are)"
            )
        })?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(action: &str, vars: &Vars) -> Option<String> {
    let name = action.strip_prefix('.')?;
    if let Some(key) = name.strip_prefix("Param.") {
        return vars.param.get(key).cloned();
    }
    vars.vars.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(param: &BTreeMap<String, String>) -> Vars<'_> {
        Vars {
            vars: [("Home", "/home/u".to_string()), ("UID", "1000".to_string())].into(),
            param,
        }
    }

    #[test]
    fn expands_simple_variables() {
        let p = BTreeMap::from([("dir".to_string(), "x".to_string())]);
        assert_eq!(
            expand("{{.Home}}/a/{{ .UID }}/{{.Param.dir}}", &vars(&p)).unwrap(),
            "/home/u/a/1000/x"
        );
        assert_eq!(expand("plain", &vars(&p)).unwrap(), "plain");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let p = BTreeMap::new();
        let e = expand("{{if .Home}}x{{end}}", &vars(&p)).unwrap_err();
        assert!(e.contains("`{{if .Home}}`"), "{e}");
        assert!(expand("{{.Nope}}", &vars(&p)).is_err());
        assert!(expand("{{.Home", &vars(&p)).is_err());
    }
}

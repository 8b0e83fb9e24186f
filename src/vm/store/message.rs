//! Rendering an instance's `message:` the way Lima's list does, for the
//! part of Go's text/template that messages use in practice: `{{.Field}}`
//! and `{{.Param.key}}` with `{{-`/`-}}` trimming and comments. Control
//! structures are not interpreted; such a message is shown unrendered
//! rather than marking a healthy instance Broken.

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rendered {
    Text(String),
    /// Valid-looking template that uses more than fields.
    Unsupported,
}

/// Errors that make Lima mark the instance Broken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum MessageError {
    #[error("message template is not valid: unclosed `{{{{` action")]
    Unclosed,
    #[error("message template refers to unknown field `.{0}`")]
    UnknownField(String),
}

/// `field` resolves a dotted Go field path without the leading dot
/// (`Name`, `Param.key`) to its text, or `None` if the field does not exist.
pub(super) fn render(
    template: &str,
    field: &dyn Fn(&str) -> Option<String>,
) -> Result<Rendered, MessageError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let text = &rest[..open];
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(MessageError::Unclosed)?;
        let mut action = &after[..close];
        rest = &after[close + 2..];
        // Go only treats "{{- " and " -}}" (with the space) as trim markers.
        if let Some(a) = action.strip_prefix("- ") {
            action = a;
            out.push_str(text.trim_end());
        } else {
            out.push_str(text);
        }
        if let Some(a) = action.strip_suffix(" -") {
            action = a;
            rest = rest.trim_start();
        }
        let action = action.trim();
        if action.starts_with("/*") && action.ends_with("*/") {
            continue;
        }
        let Some(path) = action.strip_prefix('.') else {
            return Ok(Rendered::Unsupported);
        };
        if path.is_empty()
            || !path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return Ok(Rendered::Unsupported);
        }
        match field(path) {
            Some(v) => out.push_str(&v),
            None => return Err(MessageError::UnknownField(path.to_string())),
        }
    }
    out.push_str(rest);
    Ok(Rendered::Text(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(path: &str) -> Option<String> {
        match path {
            "Name" => Some("default".into()),
            "Dir" => Some("/h/.lima/default".into()),
            "Param.url" => Some("https://x".into()),
            // Go prints a missing map key as "<no value>".
            p if p.starts_with("Param.") => Some("<no value>".into()),
            _ => None,
        }
    }

    #[test]
    fn fields_params_and_trimming() {
        let r = render(
            "docker context create lima-{{.Name}} --docker host=unix://{{.Dir}}/sock\n  {{- /* c */ -}}  \n{{.Param.url}} {{.Param.nope}}",
            &fields,
        );
        assert_eq!(
            r,
            Ok(Rendered::Text(
                "docker context create lima-default --docker host=unix:///h/.lima/default/sockhttps://x <no value>".into()
            ))
        );
        assert_eq!(render("plain", &fields), Ok(Rendered::Text("plain".into())));
    }

    #[test]
    fn broken_and_unsupported() {
        assert_eq!(render("x {{.Name", &fields), Err(MessageError::Unclosed));
        assert_eq!(
            render("{{.Nope}}", &fields),
            Err(MessageError::UnknownField("Nope".into()))
        );
        assert_eq!(
            render("{{if .Param.url}}y{{end}}", &fields),
            Ok(Rendered::Unsupported)
        );
    }
}

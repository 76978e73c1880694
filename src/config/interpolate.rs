//! `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$$` inside string values.
//!
//! Interpolation runs after parsing, on string values only, so an environment variable can never
//! change the structure of a config (or smuggle in keys).

use super::{FieldError, FieldPath, Seg};

/// Expands one string. `lookup` answers environment variables.
pub fn interpolate_str(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (String, Option<String>)> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err((
                    "unclosed `${` in string".into(),
                    Some("close it with `}`, or write `$$` for a literal `$`".into()),
                ));
            };
            let expr = &after[..end];
            if expr.contains("${") {
                return Err((
                    "nested `${…}` inside a substitution is not supported".into(),
                    Some("use one variable per substitution, e.g. `${A:-/default/path}`".into()),
                ));
            }
            rest = &after[end + 1..];
            let (name, op, arg) = match expr.find([':']) {
                Some(i) if expr[i..].starts_with(":-") => (&expr[..i], "-", &expr[i + 2..]),
                Some(i) if expr[i..].starts_with(":?") => (&expr[..i], "?", &expr[i + 2..]),
                Some(_) => {
                    return Err((
                        format!("`${{{expr}}}` is not a valid substitution"),
                        Some("use `${VAR}`, `${VAR:-default}` or `${VAR:?message}`".into()),
                    ));
                }
                None => (expr, "", ""),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((
                    format!("`{name}` is not an environment variable name"),
                    Some("names use letters, digits and `_`".into()),
                ));
            }
            let value = lookup(name).filter(|v| !v.is_empty() || op.is_empty());
            match (value, op) {
                (Some(v), _) => out.push_str(&v),
                (None, "-") => out.push_str(arg),
                (None, "?") => {
                    return Err((format!("environment variable {name} is not set: {arg}"), None));
                }
                (None, _) => {
                    return Err((
                        format!("environment variable {name} is not set"),
                        Some(format!("set {name}, or give a default: `${{{name}:-value}}`")),
                    ));
                }
            }
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string inside `value`; errors carry the path below `base`.
pub fn interpolate_value(
    value: &mut toml::Value,
    base: &FieldPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<FieldError>,
) {
    match value {
        toml::Value::String(s) => match interpolate_str(s, lookup) {
            Ok(v) => *s = v,
            Err((message, help)) => {
                let mut e = FieldError::new(base.clone(), message);
                e.help = help;
                errors.push(e);
            }
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let mut p = base.clone();
                p.0.push(Seg::Index(i));
                interpolate_value(item, &p, lookup, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                interpolate_value(item, &base.clone().child(k), lookup, errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/u".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(interpolate_str("${HOME}/x", &env).unwrap(), "/home/u/x");
        assert_eq!(interpolate_str("${NOPE:-d}/x", &env).unwrap(), "d/x");
        assert_eq!(interpolate_str("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate_str("cost $$5 and $x", &env).unwrap(), "cost $5 and $x");
    }

    #[test]
    fn reports_missing_and_malformed() {
        let (msg, help) = interpolate_str("${NOPE}", &env).unwrap_err();
        assert!(msg.contains("NOPE is not set"));
        assert!(help.unwrap().contains("${NOPE:-value}"));
        assert!(interpolate_str("${NOPE:?give a dir}", &env).unwrap_err().0.contains("give a dir"));
        assert!(interpolate_str("${HOME", &env).is_err());
        assert!(interpolate_str("${A B}", &env).is_err());
        assert!(interpolate_str("${A:-${HOME}}/x", &env).unwrap_err().0.contains("nested"));
    }
}

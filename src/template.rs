//! Path templates such as `out/%Y-%m-%d/{sessionID}.jsonl`, confined to a base directory.
//!
//! `{field}` takes a field of the event (`Event::field`: `sessionID`, `kind`, `headers.x`, …;
//! `_kind` and `_source` name the metadata); `%Y`, `%m`, `%d`, `%H`… are the event's UTC date
//! parts. Substituted values cannot contain `/` or start with `.`, and the template's literal
//! parts cannot contain `..`, so a rendered path never leaves the base directory.

use std::path::{Component, Path, PathBuf};

use chrono::format::{Item, StrftimeItems};

use crate::event::Event;

#[derive(Debug, Clone)]
enum Part {
    /// Literal text; may hold strftime specifiers.
    Literal {
        text: String,
        has_date: bool,
    },
    Field(String),
}

#[derive(Debug, Clone)]
pub struct PathTemplate {
    base: PathBuf,
    /// Joined in front of relative rendered paths.
    root: PathBuf,
    parts: Vec<Part>,
}

/// Why a template was rejected, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub message: String,
    pub help: String,
}

impl PathTemplate {
    /// Parses `template`. `base_dir`, when given, is where files may go; otherwise it is the
    /// directory before the first placeholder. Relative paths are returned relative; resolve them
    /// with [`PathTemplate::resolved`].
    pub fn parse(template: &str, base_dir: Option<&str>) -> Result<PathTemplate, TemplateError> {
        // `~/` is the home directory here as in every other path option.
        let home = |p: &str| crate::component::expand_home(p).to_string_lossy().into_owned();
        let template = &home(template);
        let base_dir = base_dir.map(home);
        let base_dir = base_dir.as_deref();
        let err = |m: String, h: &str| TemplateError { message: m, help: h.to_string() };
        if template.is_empty() {
            return Err(err("the path template is empty".into(), "e.g. path = \"out/{sessionID}.jsonl\""));
        }
        let mut parts = Vec::new();
        for piece in pieces(template)? {
            parts.push(match piece {
                Piece::Text(t) => literal(&t)?,
                Piece::Field(f) => Part::Field(f),
            });
        }
        if template.split('/').any(|c| c == "..") {
            return Err(err(
                format!("path template `{template}` contains `..` and could escape its base directory"),
                "write the path without `..`; set `base_dir` to the directory files may go in",
            ));
        }
        if template.ends_with('/') {
            return Err(err(format!("path template `{template}` names a directory"), "end it with a file name"));
        }
        // The literal prefix before the first placeholder or date part.
        let dynamic_at = template.find(['{', '%']).unwrap_or(template.len());
        let prefix_dir = match template[..dynamic_at].rfind('/') {
            Some(i) => &template[..i.max(1)],
            None => ".",
        };
        let base = match base_dir {
            None => PathBuf::from(prefix_dir),
            Some(b) => {
                let b = Path::new(b);
                if b.components().any(|c| c == Component::ParentDir) {
                    return Err(err(format!("base_dir `{}` contains `..`", b.display()), "use a path without `..`"));
                }
                if Path::new(template).is_absolute() && !Path::new(prefix_dir).starts_with(b) {
                    return Err(err(
                        format!("path template `{template}` is outside base_dir `{}`", b.display()),
                        "make the path relative (it is then inside base_dir) or move base_dir",
                    ));
                }
                b.to_path_buf()
            }
        };
        // With an explicit base, relative templates are relative to it.
        let root = if base_dir.is_some() && !Path::new(template).is_absolute() { base.clone() } else { PathBuf::new() };
        Ok(PathTemplate { base, root, parts })
    }

    /// Resolves relative paths with `resolve` (e.g. against the working directory).
    pub fn resolved(mut self, resolve: impl Fn(&str) -> PathBuf) -> Self {
        self.base = resolve(&self.base.to_string_lossy());
        self.root = resolve(&self.root.to_string_lossy());
        self
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The template is a fixed path (no fields, no date parts).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal { has_date: false, .. }))
    }

    pub fn render(&self, event: &Event) -> PathBuf {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal { text, has_date: false } => out.push_str(text),
                Part::Literal { text, has_date: true } => out.push_str(&event.meta.timestamp.format(text).to_string()),
                Part::Field(name) => match event.field(name) {
                    Some(v) => out.push_str(&sanitize(&v)),
                    None => out.push_str("_unknown"),
                },
            }
        }
        let path = self.root.join(out);
        debug_assert!(path.components().all(|c| c != Component::ParentDir));
        path
    }
}

#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Field(String),
}

/// Splits a template into literal text and `{field}` placeholders.
fn pieces(template: &str) -> Result<Vec<Piece>, TemplateError> {
    let err = |m: String, h: &str| TemplateError { message: m, help: h.to_string() };
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(err(format!("unclosed `{{` in template `{template}`"), "close the field with `}`"));
        };
        let name = rest[open + 1..open + close].trim();
        if name.is_empty() {
            return Err(err(format!("empty `{{}}` in template `{template}`"), "name a field, e.g. {sessionID}"));
        }
        out.push(Piece::Field(name.to_string()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

/// How a broker's topics are written: what separates levels and which characters are
/// wildcards. A substituted value cannot add levels or wildcards: those become `_`.
#[derive(Debug, Clone, Copy)]
pub struct TopicSyntax {
    /// What a broker calls it, for errors.
    pub name: &'static str,
    /// Characters a value cannot contain (separator, wildcards).
    pub reserved: &'static [char],
    /// Wildcards, refused in the template's own text.
    pub wildcards: &'static [char],
    pub example: &'static str,
}

impl TopicSyntax {
    /// MQTT: `a/b/c`, wildcards `+` and `#`.
    pub const MQTT: TopicSyntax =
        TopicSyntax { name: "topic", reserved: &['/', '+', '#'], wildcards: &['+', '#'], example: "opencode/status" };
    /// NATS: `a.b.c`, wildcards `*` and `>`, no whitespace.
    pub const NATS: TopicSyntax = TopicSyntax {
        name: "subject",
        reserved: &['.', '*', '>', ' ', '\t'],
        wildcards: &['*', '>', ' ', '\t'],
        example: "ocpipe.{_kind}.{host}",
    };
}

/// A topic or subject with `{field}` placeholders (`opencode/{port}/{sessionID}`,
/// `ocpipe.{_kind}.{host}`); a missing field is `_`.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    pieces: Vec<Piece>,
    syntax: TopicSyntax,
}

impl TopicTemplate {
    /// An MQTT topic.
    pub fn parse(template: &str) -> Result<TopicTemplate, TemplateError> {
        Self::parse_as(template, TopicSyntax::MQTT)
    }

    pub fn parse_as(template: &str, syntax: TopicSyntax) -> Result<TopicTemplate, TemplateError> {
        let err = |m: String, h: String| TemplateError { message: m, help: h };
        if template.is_empty() {
            return Err(err(format!("the {} is empty", syntax.name), format!("e.g. \"{}\"", syntax.example)));
        }
        let pieces = pieces(template)?;
        for p in &pieces {
            if let Piece::Text(t) = p
                && (t.contains(syntax.wildcards) || t.contains('\0'))
            {
                let shown: Vec<String> = syntax.wildcards.iter().map(|c| format!("{c:?}")).collect();
                return Err(err(
                    format!("{} `{template}` contains a wildcard or a space ({})", syntax.name, shown.join(", ")),
                    format!("publishing names one {}; use {{field}} placeholders for the parts that vary", syntax.name),
                ));
            }
        }
        Ok(TopicTemplate { pieces, syntax })
    }

    /// `{name}` becomes `value` (made safe), not a field of the event.
    pub fn with_value(mut self, name: &str, value: &str) -> Self {
        let safe = self.safe(value);
        for p in &mut self.pieces {
            if matches!(p, Piece::Field(f) if f == name) {
                *p = Piece::Text(safe.clone());
            }
        }
        self
    }

    fn safe(&self, value: &str) -> String {
        if value.is_empty() {
            return "_".into();
        }
        value.chars().map(|c| if self.syntax.reserved.contains(&c) || c.is_control() { '_' } else { c }).collect()
    }

    /// The template with each placeholder as `*` (the template's own text has no wildcards):
    /// the shape of every rendering, to check it against a stream's subjects.
    pub fn shape(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Field(_) => "*",
            })
            .collect()
    }

    pub fn render(&self, event: &Event) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(name) => match event.field(name) {
                    Some(v) => out.push_str(&self.safe(&v)),
                    None => out.push('_'),
                },
            }
        }
        out
    }
}

fn literal(text: &str) -> Result<Part, TemplateError> {
    let has_date = text.contains('%');
    if has_date && StrftimeItems::new(text).any(|i| matches!(i, Item::Error)) {
        return Err(TemplateError {
            message: format!("`{text}` has an invalid date specifier"),
            help: "use strftime parts such as %Y, %m, %d, %H; write %% for a literal %".into(),
        });
    }
    Ok(Part::Literal { text: text.to_string(), has_date })
}

/// Makes a field value safe as one path component.
fn sanitize(value: &str) -> String {
    let mut s: String = value
        .chars()
        .take(128)
        .map(|c| if c == '/' || c == '\\' || c == '\0' || c.is_control() { '_' } else { c })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use chrono::TimeZone;

    fn ev(json: serde_json::Value) -> Event {
        let ts = chrono::Utc.with_ymd_and_hms(2026, 4, 25, 2, 41, 9).unwrap();
        Event::new("src".into(), ts, Payload::Json(json))
    }

    #[test]
    fn renders_fields_and_dates_under_the_base() {
        let t = PathTemplate::parse("out/%Y-%m-%d/{sessionID}.jsonl", None).unwrap();
        assert_eq!(t.base(), Path::new("out"));
        let p = t.render(&ev(serde_json::json!({"sessionID": "ses_1"})));
        assert_eq!(p, PathBuf::from("out/2026-04-25/ses_1.jsonl"));
        let t = t.resolved(|p| Path::new("/work").join(p));
        assert_eq!(t.base(), Path::new("/work/out"));
        assert_eq!(t.render(&ev(serde_json::json!({"sessionID": "s"}))), PathBuf::from("/work/out/2026-04-25/s.jsonl"));
        // `~/` is the home directory, as in every path option (not a folder named `~`).
        let home = crate::component::home_dir();
        let t = PathTemplate::parse("~/out/{sessionID}.jsonl", None).unwrap().resolved(|p| Path::new("/work").join(p));
        assert_eq!(t.base(), home.join("out"));
        assert_eq!(t.render(&ev(serde_json::json!({"sessionID": "s"}))), home.join("out/s.jsonl"));
    }

    #[test]
    fn field_values_cannot_escape() {
        let t = PathTemplate::parse("{sessionID}.jsonl", Some("/data")).unwrap();
        let p = t.render(&ev(serde_json::json!({"sessionID": "../../etc/passwd"})));
        assert_eq!(p, PathBuf::from("/data/_.._.._etc_passwd.jsonl"));
        assert!(p.starts_with("/data"));
        let p = t.render(&ev(serde_json::json!({})));
        assert_eq!(p, PathBuf::from("/data/_unknown.jsonl"));
    }

    #[test]
    fn topics_take_fields_without_adding_levels() {
        let t = TopicTemplate::parse("opencode/{port}/{sessionID}").unwrap();
        assert_eq!(t.render(&ev(serde_json::json!({"port": 4096, "sessionID": "a/b+#"}))), "opencode/4096/a_b__");
        assert_eq!(t.render(&ev(serde_json::json!({"port": 4096}))), "opencode/4096/_");
        assert!(TopicTemplate::parse("opencode/+/x").is_err());
        assert!(TopicTemplate::parse("").is_err());
        assert!(TopicTemplate::parse("a/{x").is_err());
    }

    #[test]
    fn templates_that_could_escape_are_rejected() {
        assert!(PathTemplate::parse("out/../{x}.jsonl", None).unwrap_err().message.contains("could escape"));
        assert!(PathTemplate::parse("/tmp/{x}.jsonl", Some("/data")).unwrap_err().message.contains("outside base_dir"));
        assert!(PathTemplate::parse("out/{x", None).is_err());
        assert!(PathTemplate::parse("out/%Q{x}", None).is_err());
        assert!(PathTemplate::parse("/data/sub/{x}.jsonl", Some("/data")).is_ok());
    }
}

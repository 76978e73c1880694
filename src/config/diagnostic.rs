//! Config diagnostics, rendered like a compiler's:
//!
//! ```text
//! error: unknown input `tracez`
//!   --> pipelines/trace.toml:9:11 (transforms.redact.inputs[0])
//!    |
//!  9 | inputs = ["tracez"]
//!    |           ^^^^^^^^
//!    = help: components that can be inputs: traces
//! ```

use std::fmt::{self, Write};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Index into [`SourceFiles`].
    pub file: Option<usize>,
    pub span: Option<Range<usize>>,
    /// The config path, e.g. `sinks.out.buffer.when_full`.
    pub path: Option<String>,
    pub help: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            file: None,
            span: None,
            path: None,
            help: Vec::new(),
        }
    }
    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(message) }
    }
    pub fn at(mut self, file: usize, span: Option<Range<usize>>) -> Self {
        self.file = Some(file);
        self.span = span;
        self
    }
    pub fn path(mut self, path: impl ToString) -> Self {
        self.path = Some(path.to_string());
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help.push(help.into());
        self
    }
}

/// The text of every loaded file, to quote lines in diagnostics.
#[derive(Debug, Default, Clone)]
pub struct SourceFiles {
    files: Vec<(String, String)>,
}

impl SourceFiles {
    pub fn add(&mut self, name: String, text: String) -> usize {
        self.files.push((name, text));
        self.files.len() - 1
    }

    pub fn name(&self, file: usize) -> &str {
        &self.files[file].0
    }

    pub fn text(&self, file: usize) -> &str {
        &self.files[file].1
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: usize, offset: usize) -> (usize, usize) {
        let text = self.text(file);
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, text[line_start..offset].chars().count() + 1)
    }
}

/// Diagnostics with the files they point into; `Display` renders all of them.
#[derive(Debug, Clone)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    pub files: SourceFiles,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            render(d, &self.files, f)?;
        }
        let errors = self.errors().count();
        if errors > 0 {
            writeln!(f, "{errors} error{} in the configuration", if errors == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

fn render(d: &Diagnostic, files: &SourceFiles, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let label = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    writeln!(f, "{label}: {}", d.message)?;
    let mut gutter = String::from("  ");
    if let Some(file) = d.file {
        let name = files.name(file);
        let mut location = String::new();
        match &d.span {
            Some(span) => {
                let (line, col) = files.line_col(file, span.start);
                write!(location, "{name}:{line}:{col}")?;
                let line_text = files.text(file).lines().nth(line - 1).unwrap_or("");
                let width = line.to_string().len();
                gutter = " ".repeat(width + 1);
                let path = d.path.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
                writeln!(f, "{gutter}--> {location}{path}")?;
                writeln!(f, "{gutter}|")?;
                writeln!(f, "{line:>width$} | {line_text}")?;
                let start = span.start - files.text(file)[..span.start].rfind('\n').map_or(0, |i| i + 1);
                let marked = &files.text(file)[span.start..span.end.min(span.start + line_text.len())];
                let marked = marked.split('\n').next().unwrap_or("");
                let pad = line_text.get(..start).map_or(start, |s| s.chars().count());
                let carets = marked.chars().count().max(1);
                writeln!(f, "{gutter}| {}{}", " ".repeat(pad), "^".repeat(carets))?;
            }
            None => {
                let path = d.path.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
                writeln!(f, "  --> {name}{path}")?;
            }
        }
    } else if let Some(path) = &d.path {
        writeln!(f, "  --> {path}")?;
    }
    for h in &d.help {
        writeln!(f, "{gutter}= help: {h}")?;
    }
    writeln!(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_and_caret() {
        let mut files = SourceFiles::default();
        let text = "a = 1\ninputs = [\"x\"]\n";
        let id = files.add("p.toml".into(), text.into());
        let start = text.find("\"x\"").unwrap();
        let d = Diagnostic::error("unknown input `x`")
            .at(id, Some(start..start + 3))
            .path("sinks.s.inputs[0]")
            .help("components that can be inputs: a");
        let out = Report { diagnostics: vec![d], files }.to_string();
        assert!(out.contains("--> p.toml:2:11 (sinks.s.inputs[0])"), "{out}");
        assert!(out.contains("          ^^^"), "{out}");
        assert!(out.contains("= help: components that can be inputs: a"), "{out}");
        assert!(out.ends_with("1 error in the configuration\n"), "{out}");
    }
}

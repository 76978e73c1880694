//! `tasks/issues.json`: the tasks a capture runs, checked up front. Every problem is reported
//! with the file, line and column and the task's field.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    #[default]
    Safe,
    Mild,
    Severe,
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RiskLevel::Safe => "safe",
            RiskLevel::Mild => "mild",
            RiskLevel::Severe => "severe",
        })
    }
}

/// One task: what the agent is asked to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub risk_level: RiskLevel,
    pub title: String,
    pub prompt: String,
    /// Files of the project the task is about (relative to the project).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// A problem in the task file, located.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    pub line: usize,
    pub column: usize,
    /// e.g. `[2].risk_level`
    pub field: String,
    pub message: String,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({}): {}", self.line, self.column, self.field, self.message)
    }
}

/// Reads and checks the task file: every problem at once, each with its place.
pub fn load_tasks(path: &Path, project: &Path) -> Result<Vec<Task>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (write a JSON list of {{id, risk_level, title, prompt, files?}}, or pass --tasks)",
            path.display()
        )
    })?;
    parse_tasks(&text, project).map_err(|errs| {
        let mut out = format!("{} problem(s) in {}:", errs.len(), path.display());
        for e in errs {
            out.push_str(&format!("\n  {}:{e}", path.display()));
        }
        out
    })
}

pub fn parse_tasks(text: &str, project: &Path) -> Result<Vec<Task>, Vec<TaskError>> {
    let at = |offset: usize, field: String, message: String| {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        TaskError { line, column, field, message }
    };
    let offset_of = |raw: &RawValue| raw.get().as_ptr() as usize - text.as_ptr() as usize;
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![TaskError {
                line: e.line(),
                column: e.column(),
                field: "(file)".into(),
                message: format!("{e}; the file is a JSON list of tasks"),
            }]);
        }
    };
    let mut errors = Vec::new();
    let mut tasks = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in items.iter().enumerate() {
        let fields: HashMap<String, &RawValue> = match serde_json::from_str(raw.get()) {
            Ok(f) => f,
            Err(_) => {
                errors.push(at(
                    offset_of(raw),
                    format!("[{i}]"),
                    "a task is an object {id, risk_level, title, prompt, files?}".into(),
                ));
                continue;
            }
        };
        let here = |name: &str| fields.get(name).map_or(offset_of(raw), |v| offset_of(v));
        let string = |name: &str, errors: &mut Vec<TaskError>, required: bool| -> String {
            match fields.get(name).map(|v| serde_json::from_str::<String>(v.get())) {
                Some(Ok(s)) if !s.trim().is_empty() || !required => s,
                Some(Ok(_)) => {
                    errors.push(at(here(name), format!("[{i}].{name}"), format!("`{name}` is empty")));
                    String::new()
                }
                Some(Err(_)) => {
                    errors.push(at(here(name), format!("[{i}].{name}"), format!("`{name}` must be a string")));
                    String::new()
                }
                None if required => {
                    errors.push(at(offset_of(raw), format!("[{i}].{name}"), format!("missing `{name}`")));
                    String::new()
                }
                None => String::new(),
            }
        };
        let id = string("id", &mut errors, true);
        let title = string("title", &mut errors, false);
        let prompt = string("prompt", &mut errors, true);
        let risk = string("risk_level", &mut errors, true);
        let risk_level = match risk.as_str() {
            "safe" => RiskLevel::Safe,
            "mild" => RiskLevel::Mild,
            "severe" => RiskLevel::Severe,
            "" => RiskLevel::Safe,
            other => {
                errors.push(at(
                    here("risk_level"),
                    format!("[{i}].risk_level"),
                    format!("unknown risk level `{other}`; use safe, mild or severe"),
                ));
                RiskLevel::Safe
            }
        };
        if !id.is_empty() && !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            errors.push(at(
                here("id"),
                format!("[{i}].id"),
                format!("id `{id}` may use letters, digits, `_` and `-` only (it names a folder)"),
            ));
        }
        if let Some(first) = seen.get(&id).filter(|_| !id.is_empty()) {
            errors.push(at(here("id"), format!("[{i}].id"), format!("duplicate id `{id}` (also task [{first}])")));
        }
        seen.entry(id.clone()).or_insert(i);
        let mut files = Vec::new();
        if let Some(v) = fields.get("files") {
            match serde_json::from_str::<Vec<String>>(v.get()) {
                Ok(list) => {
                    for (j, f) in list.into_iter().enumerate() {
                        if !inside(project, &f) {
                            errors.push(at(
                                here("files"),
                                format!("[{i}].files[{j}]"),
                                format!(
                                    "`{f}` is outside the project ({}); name files relative to it",
                                    project.display()
                                ),
                            ));
                        }
                        files.push(f);
                    }
                }
                Err(_) => {
                    errors.push(at(here("files"), format!("[{i}].files"), "`files` must be a list of paths".into()))
                }
            }
        }
        for name in fields.keys() {
            if !["id", "risk_level", "title", "prompt", "files"].contains(&name.as_str()) {
                errors.push(at(
                    here(name),
                    format!("[{i}].{name}"),
                    format!("unknown field `{name}` (known: id, risk_level, title, prompt, files)"),
                ));
            }
        }
        tasks.push(Task { id, risk_level, title, prompt, files });
    }
    if items.is_empty() {
        errors.push(at(0, "(file)".into(), "no tasks: add at least one".into()));
    }
    errors.sort_by_key(|e| (e.line, e.column));
    if errors.is_empty() { Ok(tasks) } else { Err(errors) }
}

/// Whether a relative path stays inside the project (no `..` out of it, not absolute).
fn inside(project: &Path, file: &str) -> bool {
    let p = Path::new(file);
    if p.is_absolute() {
        return p.starts_with(project);
    }
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_located() {
        let text = r#"[
  {"id": "fix_math", "risk_level": "safe", "title": "Fix", "prompt": "fix it", "files": ["src/m.py"]},
  {"id": "fix_math", "risk_level": "hi", "title": "Again", "prompt": "x"},
  {"id": "no_prompt", "risk_level": "mild", "title": "T", "files": ["../../etc/passwd"]}
]"#;
        let errs = parse_tasks(text, Path::new("/p")).unwrap_err();
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(got[0].starts_with("3:10 ([1].id): duplicate id `fix_math`"), "{got:#?}");
        assert!(got[1].starts_with("3:36 ([1].risk_level): unknown risk level `hi`"), "{got:#?}");
        assert!(got[2].starts_with("4:3 ([2].prompt): missing `prompt`"), "{got:#?}");
        assert!(got[3].contains("([2].files[0]): `../../etc/passwd` is outside the project"), "{got:#?}");
        let ok = parse_tasks(r#"[{"id": "a", "risk_level": "severe", "title": "t", "prompt": "p"}]"#, Path::new("/p"))
            .unwrap();
        assert_eq!(ok[0].risk_level, RiskLevel::Severe);
    }
}

//! Whether what a test's pipeline gave meets its `outputs` and `no_outputs_from`; each failure
//! says what was expected and shows what came (a line diff for `equals`).

use serde_json::Value;

use super::TestSpec;
use super::run::Captured;
use crate::event::Event;

/// Events of a failure shown at most.
const SHOWN: usize = 10;

pub struct Outcome {
    /// One text per unmet expectation.
    pub failures: Vec<String>,
}

fn pretty(events: &[Event]) -> String {
    if events.is_empty() {
        return "(nothing)".into();
    }
    let mut out: Vec<String> = events.iter().take(SHOWN).map(|e| e.to_json().to_string()).collect();
    if events.len() > SHOWN {
        out.push(format!("… and {} more", events.len() - SHOWN));
    }
    out.join("\n")
}

fn diff(expected: &[Value], got: &[Event]) -> String {
    let text = |v: &Value| serde_json::to_string_pretty(v).expect("JSON values print");
    let want: String = expected.iter().map(|v| text(v) + "\n").collect();
    let have: String = got.iter().map(|e| text(&e.to_json()) + "\n").collect();
    similar::TextDiff::from_lines(&want, &have).unified_diff().context_radius(3).header("expected", "got").to_string()
}

pub fn check(test: &TestSpec, got: &Captured) -> Outcome {
    let mut failures = Vec::new();
    let none = Vec::new();
    for out in &test.outputs {
        let events = got.get(&out.extract_from).unwrap_or(&none);
        let from = &out.extract_from;
        if let Some(n) = out.count
            && events.len() != n
        {
            failures.push(format!("`{from}`: expected {n} events, got {}:\n{}", events.len(), pretty(events)));
        }
        if let Some(expected) = &out.equals {
            let same = expected.len() == events.len() && expected.iter().zip(events).all(|(w, e)| *w == e.to_json());
            if !same {
                failures.push(format!("`{from}`: events differ\n{}", diff(expected, events)));
            }
        }
        if !out.conditions.is_empty() {
            let programs: Vec<_> = out.conditions.iter().map(|c| crate::jq::compile(c).ok()).collect();
            let holds = |i: usize, e: &Event| programs[i].as_ref().is_some_and(|p| p.holds(e).unwrap_or(false));
            let any = events.iter().any(|e| (0..programs.len()).all(|i| holds(i, e)));
            if !any {
                let mut text = format!("`{from}`: no event satisfies all the conditions:");
                for (i, c) in out.conditions.iter().enumerate() {
                    let n = events.iter().filter(|e| holds(i, e)).count();
                    text.push_str(&format!("\n  {c}    (true for {n} of {})", events.len()));
                }
                text.push_str(&format!("\ngot:\n{}", pretty(events)));
                failures.push(text);
            }
        }
    }
    for id in &test.no_outputs_from {
        let events = got.get(id).unwrap_or(&none);
        if !events.is_empty() {
            failures.push(format!("`{id}`: expected nothing, got {}:\n{}", events.len(), pretty(events)));
        }
    }
    Outcome { failures }
}

//! `ocpipe test FILE...`: the `[[tests]]` of each pipeline, run without its real sources and
//! sinks (`run.rs`), each checked (`check.rs`) and printed as one line, with what was expected
//! and what came for a failure.

mod check;
mod run;
mod spec;

use std::path::{Path, PathBuf};

pub use check::{Outcome, check};
pub use spec::{TestInput, TestOutput, TestSpec};

/// The files tested together: a pipeline and, beside it, `NAME.tests.toml` when there is one.
pub fn groups(files: &[PathBuf]) -> Vec<Vec<PathBuf>> {
    let mut groups: Vec<Vec<PathBuf>> = Vec::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (pipeline, tests) = match name.strip_suffix(".tests.toml") {
            Some(stem) => (f.with_file_name(format!("{stem}.toml")), Some(f.clone())),
            None => {
                let sibling = f.with_file_name(name.replace(".toml", ".tests.toml"));
                (f.clone(), sibling.is_file().then_some(sibling))
            }
        };
        let group: Vec<PathBuf> = std::iter::once(pipeline).chain(tests).collect();
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// Runs every test of every group; prints a line per test (and the details of a failure).
/// Returns whether all passed (a group that does not load fails).
pub fn run_files(files: &[PathBuf], load: &dyn Fn(&[PathBuf]) -> Result<crate::config::Pipeline, String>) -> bool {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return false;
        }
    };
    let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let (mut passed, mut failed) = (0usize, 0usize);
    for group in groups(files) {
        let names: Vec<String> = group.iter().map(|p| p.display().to_string()).collect();
        println!("{}", names.join(" + "));
        let tests = match load(&group) {
            Ok(p) => p.tests,
            Err(report) => {
                eprint!("{report}");
                failed += 1;
                continue;
            }
        };
        if tests.is_empty() {
            println!("  (no [[tests]])");
        }
        for test in &tests {
            let outcome = load(&group)
                .map_err(|e| anyhow::anyhow!(e))
                .and_then(|pipeline| rt.block_on(run::run(test, pipeline, &base_dir)));
            match outcome.map(|got| check(test, &got)) {
                Ok(Outcome { failures, .. }) if failures.is_empty() => {
                    passed += 1;
                    println!("  ok    {}", test.name);
                }
                Ok(Outcome { failures, .. }) => {
                    failed += 1;
                    println!("  FAIL  {}", test.name);
                    for f in failures {
                        println!("{}", indent(&f, 8));
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("  FAIL  {}\n{}", test.name, indent(&format!("could not run: {e:#}"), 8));
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    failed == 0
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")
}

/// A path relative to the working directory, for messages.
pub fn shown(p: &Path) -> String {
    p.display().to_string()
}

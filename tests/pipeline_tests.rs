//! `ocpipe test`: every checked-in pipeline's `[[tests]]` pass (what CI runs as `ocpipe test
//! pipelines/*.toml`); a failing test exits 1 with expected against got; tests in a separate
//! `NAME.tests.toml` are found and their mistakes located; several components chained, with a
//! user plugin among them.

mod common;

use std::path::Path;

use common::*;

fn ocpipe_test(dir: &Path, files: &[&str]) -> (bool, String, String) {
    let out = ocpipe(dir, &[&["test"], files].concat());
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn every_checked_in_pipeline_passes_its_tests() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    files.sort();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = ocpipe_test(&root(), &args);
    assert!(ok, "{stdout}{stderr}");
    for f in &files {
        let section = stdout.split(&format!("{f}\n")).nth(1).unwrap_or("");
        assert!(section.trim_start().starts_with("ok"), "{f} has tests, all passing:\n{stdout}");
    }
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

const CHAIN: &str = r#"
[sources.in]
type = "exec"
command = ["true"]

[transforms.double]
type = "exec"
inputs = ["in"]
command = ["python3", "-c", "import json, sys\nfor l in sys.stdin:\n    e = json.loads(l)\n    print(json.dumps({'n': e['n'] * 2}))\n    print(json.dumps({'n': e['n'] * 2 + 1}))\n    print(flush=True)"]

[transforms.big]
type = "filter"
inputs = ["double"]
condition = ".n >= 4"

[sinks.out]
type = "jsonl"
inputs = ["big"]
path = "never-written.jsonl"
"#;

#[test]
fn a_chain_with_a_plugin_is_tested_and_a_failure_shows_expected_against_got() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let tests = r#"
[[tests]]
name = "doubles and keeps the big ones"
[[tests.inputs]]
insert_at = "in"
events = [{ n = 1 }, { n = 2 }, { n = 3 }]
[[tests.outputs]]
extract_from = "double"
count = 6
[[tests.outputs]]
extract_from = "out"
equals = [{ n = 4 }, { n = 5 }, { n = 6 }, { n = 7 }]

[[tests]]
name = "a wrong expectation"
no_outputs_from = ["big"]
[[tests.inputs]]
insert_at = "big"
event = { n = 9 }
[[tests.outputs]]
extract_from = "out"
equals = [{ n = 8 }]
conditions = [".n == 10"]
"#;
    std::fs::write(dir.path().join("chain.toml"), CHAIN).unwrap();
    std::fs::write(dir.path().join("chain.tests.toml"), tests).unwrap();
    let (ok, stdout, _) = ocpipe_test(dir.path(), &["chain.toml"]);
    assert!(!ok, "a failing test exits 1");
    assert!(stdout.starts_with("chain.toml + chain.tests.toml\n"), "{stdout}");
    assert!(stdout.contains("  ok    doubles and keeps the big ones\n"), "{stdout}");
    assert!(stdout.contains("  FAIL  a wrong expectation\n"), "{stdout}");
    assert!(
        stdout.contains("--- expected\n") && stdout.contains("-  \"n\": 8\n") && stdout.contains("+  \"n\": 9\n"),
        "{stdout}"
    );
    assert!(stdout.contains(".n == 10    (true for 0 of 1)"), "{stdout}");
    assert!(stdout.contains("`big`: expected nothing, got 1:\n") && stdout.contains("{\"n\":9}"), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    assert!(!dir.path().join("never-written.jsonl").exists(), "the real sink never ran");
    // Naming the tests file finds its pipeline the same way.
    assert!(ocpipe_test(dir.path(), &["chain.tests.toml"]).1.starts_with("chain.toml + chain.tests.toml\n"));
}

#[test]
fn mistakes_in_tests_are_located_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chain.toml"), CHAIN).unwrap();
    let tests = "[[tests]]\nname = \"typos\"\n[[tests.inputs]]\ninsert_at = \"dobule\"\nkind = \"message\"\n\
                 events = [{ id = 3 }]\n[[tests.outputs]]\nextract_from = \"out\"\nconditions = [\".n ==\"]\n";
    std::fs::write(dir.path().join("chain.tests.toml"), tests).unwrap();
    let (ok, _, stderr) = ocpipe_test(dir.path(), &["chain.toml"]);
    assert!(!ok);
    for want in [
        "no component `dobule` in this pipeline",
        "chain.tests.toml:4:13 (tests[0].inputs[0].insert_at)",
        "did you mean `double`?",
        "not a message event",
        "chain.tests.toml:6:11 (tests[0].inputs[0].events[0])",
        "conditions does not compile",
        "chain.tests.toml:9:15 (tests[0].outputs[0].conditions[0])",
        "3 errors in the configuration",
    ] {
        assert!(stderr.contains(want), "{want}:\n{stderr}");
    }
}

//! Cost where OpenCode stored none: `ocpipe stats` and the `aggregate` price such messages from
//! the built-in table (models.dev) or the user's own prices, and say which part came from where.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const FIXTURE: &str = "fixtures/storage/v1.18.33-fork";

/// The fixture's messages (mock/mock-1, no stored cost): tokens outside fork copies.
const INPUT: f64 = 8334.0;
const OUTPUT_AND_REASONING: f64 = 64.0 + 28.0;
const CACHE_READ: f64 = 6100.0;

fn stats(args: &[&str]) -> Value {
    let data = root().join(FIXTURE).display().to_string();
    stats_json(&[&["--data-dir", &data, "--by", "model"], args].concat())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

#[test]
fn stats_says_what_it_could_not_price_and_prices_with_the_users_table() {
    let t = &stats(&[])["totals"];
    assert_eq!((t["cost"].as_f64(), t["unpriced_messages"].as_u64()), (Some(0.0), Some(6)), "{t}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.toml");
    std::fs::write(&file, "[prices.\"mock/mock-1\"]\ninput = 1\noutput = 2\ncache_read = 0.5\ncache_write = 4\n")
        .unwrap();
    let doc = stats(&["--prices", &file.display().to_string()]);
    let t = &doc["totals"];
    let want = (INPUT * 1.0 + OUTPUT_AND_REASONING * 2.0 + CACHE_READ * 0.5) / 1e6;
    assert!(close(t["cost_priced"].as_f64().unwrap(), want), "{t} vs {want}");
    assert!(close(t["cost"].as_f64().unwrap(), want));
    assert_eq!((t["cost_stored"].as_f64(), t["unpriced_messages"].as_u64()), (Some(0.0), Some(0)));
    assert!(close(doc["groups"][0]["cost_priced"].as_f64().unwrap(), want));
    assert!(doc["prices"].as_str().unwrap().starts_with("your 1 price and models.dev"), "{}", doc["prices"]);

    let data = root().join(FIXTURE).display().to_string();
    let text =
        common::text(&ocpipe(&root(), &["stats", "--data-dir", &data, "--prices", &file.display().to_string()]).stdout);
    assert!(text.lines().any(|l| l.starts_with("Cost ") && l.ends_with("$0.01 *")), "{text}");
    assert!(
        text.contains("* Cost: $0.00 as OpenCode stored it + $0.01 estimated for the messages it stored none for"),
        "{text}"
    );
}

#[test]
fn a_price_file_with_a_mistake_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.toml");
    std::fs::write(&file, "[prices.\"mock/mock-1\"]\ninput = 1\noutptu = 2\n").unwrap();
    let data = root().join(FIXTURE).display().to_string();
    let out = ocpipe(Path::new("/"), &["stats", "--data-dir", &data, "--prices", &file.display().to_string()]);
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(err.contains("prices.toml: TOML parse error at line 3, column 1") && err.contains("outptu"), "{err}");
}

/// The aggregate in a pipeline, through `ocpipe test`: a stored cost stays, a message of a
/// model in the built-in table is priced from it, the pipeline's own `[prices]` price theirs,
/// and a model nobody prices is counted as unknown.
#[test]
fn the_aggregate_keeps_stored_priced_and_unknown_apart() {
    let dir = tempfile::tempdir().unwrap();
    let m = |id: &str, provider: &str, model: &str, cost: f64| {
        format!(
            "{{ id = \"{id}\", sessionID = \"s\", role = \"assistant\", providerID = \"{provider}\", modelID = \"{model}\", \
             tokens = {{ input = 1000000, output = 100000, reasoning = 0, cache_read = 0, cache_write = 0 }}, cost = {cost}, timeCreated = 1764800000000 }}"
        )
    };
    let pipeline = format!(
        "[prices.\"local/llama\"]\ninput = 0.5\noutput = 1\n\n\
         [sources.opencode]\ntype = \"exec\"\ncommand = [\"true\"]\nkind = \"message\"\n\n\
         [transforms.usage]\ntype = \"aggregate\"\ninputs = [\"opencode\"]\ngroup_by = [\"all\", \"model\"]\n\n\
         [sinks.out]\ntype = \"jsonl\"\ninputs = [\"usage\"]\npath = \"unused.jsonl\"\n\n\
         [[tests]]\nname = \"costs by where they came from\"\n[[tests.inputs]]\ninsert_at = \"opencode\"\nkind = \"message\"\n\
         events = [{}, {}, {}, {}]\n\
         [[tests.outputs]]\nextract_from = \"usage\"\nconditions = [\
         '.groupBy == \"all\" and .costStored == 0.25 and .costPriced == 5.1 and .unpricedMessages == 1 and .cost == 5.35']\n\
         [[tests.outputs]]\nextract_from = \"usage\"\nconditions = ['.key == \"anthropic/claude-sonnet-4-5\" and .costPriced == 4.5 and .costStored == 0.25']\n\
         [[tests.outputs]]\nextract_from = \"usage\"\nconditions = ['.key == \"local/llama\" and .cost == 0.6']\n",
        m("m1", "anthropic", "claude-sonnet-4-5", 0.0),
        m("m2", "local", "llama", 0.0),
        m("m3", "anthropic", "claude-sonnet-4-5", 0.25),
        m("m4", "nobody", "sells-this", 0.0),
    );
    std::fs::write(dir.path().join("p.toml"), pipeline).unwrap();
    let out = ocpipe(dir.path(), &["test", "p.toml"]);
    assert!(out.status.success(), "{}{}", common::text(&out.stdout), common::text(&out.stderr));
    assert!(common::text(&out.stdout).contains("ok    costs by where they came from"));
}

//! `ocpipe stats`: the token-statistics views without writing a pipeline.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::Local;
use clap::{ArgMatches, Args, FromArgMatches};
use serde_json::json;

use super::catalog::Catalog;
use super::index;
use super::store::Location;
use std::sync::Arc;

use crate::usage::{GroupBy, PriceOverrides, Prices, RangeName, Usage, Window, parse_date};

/// Token usage from OpenCode's storage (every generation), fork copies counted once.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Group by session, project, model, agent or day (default: an overview with the top models).
    #[arg(long, value_enum)]
    pub by: Option<GroupBy>,
    /// today, week (last 7 days), month or all; local time zone.
    #[arg(long, value_enum, default_value = "all")]
    pub range: RangeName,
    /// First day (YYYY-MM-DD, local); overrides --range.
    #[arg(long)]
    pub since: Option<String>,
    /// Last day (YYYY-MM-DD, local), inclusive; overrides --range.
    #[arg(long)]
    pub until: Option<String>,
    /// OpenCode's data directory (default $XDG_DATA_HOME/opencode or ~/.local/share/opencode).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// One database file to read instead (otherwise OPENCODE_DB, or every opencode*.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    #[arg(long)]
    pub csv: bool,
    /// Count the history forks copy from their parents again, as OpenCode's own sums do.
    #[arg(long)]
    pub include_fork_copies: bool,
    /// How many models the overview lists.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Read everything again instead of using ocpipe's index of already-read rows.
    #[arg(long)]
    pub no_index: bool,
    /// Your own model prices over the built-in table, for messages OpenCode stored no cost for:
    /// a TOML file of `[prices."provider/model"]` tables (input, output, cache_read, cache_write
    /// in dollars per million tokens), as a pipeline's top-level `prices`.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

/// The built-in prices with the ones in `file` over them.
fn load_prices(file: Option<&std::path::Path>) -> anyhow::Result<Arc<Prices>> {
    let builtin = Prices::builtin();
    let Some(file) = file else { return Ok(builtin) };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PriceFile {
        prices: PriceOverrides,
    }
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let parsed: PriceFile = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}write [prices.\"provider/model\"] tables with input, output, cache_read, cache_write (dollars per million tokens)",
            file.display()
        )
    })?;
    Ok(Arc::new(builtin.with(&parsed.prices)))
}

fn command() -> clap::Command {
    StatsArgs::augment_args(
        clap::Command::new("stats")
            .about("Token usage from OpenCode's storage: overview, or --by session|project|model|agent|day"),
    )
}

fn run(m: &ArgMatches) -> ExitCode {
    let args = match StatsArgs::from_arg_matches(m) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match stats(&args, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`ocpipe stats | head -1`): nothing more to say.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

crate::register_command!("stats", command, run);

pub fn stats(args: &StatsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let since = args.since.as_deref().map(parse_date).transpose().map_err(anyhow::Error::msg)?;
    let until = args.until.as_deref().map(parse_date).transpose().map_err(anyhow::Error::msg)?;
    let window = Window::resolve(args.range, since, until, Local::now());
    let loc = Location::find(args.data_dir.as_deref(), args.db.as_deref());
    let prices = load_prices(args.prices.as_deref())?;
    let q = Question { args, loc: &loc, window, prices: &prices };
    if args.no_index {
        answer(&q, &Catalog::load(&loc), out)
    } else {
        // The index is written while the answer is worked out and printed.
        index::with_catalog(&loc, |cat| answer(&q, cat, out))
    }
}

/// What was asked, and how messages without a stored cost are priced.
struct Question<'a> {
    args: &'a StatsArgs,
    loc: &'a Location,
    window: Window,
    prices: &'a Prices,
}

fn answer(q: &Question<'_>, cat: &Catalog, out: &mut dyn Write) -> anyhow::Result<()> {
    let Question { args, loc, window, prices } = *q;
    for w in &cat.report.warnings {
        eprintln!("warning: {w}");
    }
    if !cat.report.unreadable.is_empty() {
        for u in &cat.report.unreadable {
            eprintln!("error: {u}");
        }
        anyhow::bail!(
            "{} of OpenCode's databases could not be read, so totals would be wrong; nothing is printed",
            cat.report.unreadable.len()
        );
    }
    if cat.messages.is_empty() && cat.sessions.is_empty() {
        eprintln!("note: no OpenCode data found: {}", loc.explain_empty());
    }
    let group = args.by.unwrap_or(GroupBy::Model);
    let (mut rows, totals, forks) = cat.aggregate(group, window, args.include_fork_copies, prices);
    if args.by.is_none() {
        rows.truncate(args.top);
    }
    let range_name = window.name;
    if args.json {
        let titles = cat.titles();
        let groups: Vec<_> = rows
            .iter()
            .map(|(k, u)| {
                let mut v = json!({"key": k});
                if group == GroupBy::Session {
                    v["title"] = json!(titles.get(k.as_str()));
                }
                merge(&mut v, u);
                v
            })
            .collect();
        let doc = json!({
            "range": range_name,
            "since": args.since, "until": args.until,
            "group_by": args.by.map(GroupBy::name).unwrap_or("overview"),
            "include_fork_copies": args.include_fork_copies,
            "totals": totals,
            "fork_copies": forks,
            "groups": groups,
            "sources": {"dbs": loc.dbs, "storage": loc.storage},
            "prices": prices.origin,
            "warnings": cat.report.warnings,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else if args.csv {
        writeln!(
            out,
            "key,sessions,messages,responses,input,output,reasoning,cache_read,cache_write,total,cost,cost_stored,cost_priced,unpriced_messages"
        )?;
        for (k, u) in rows.iter().chain(std::iter::once(&("TOTAL".to_string(), totals.clone()))) {
            let t = &u.tokens;
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{}",
                csv_field(k),
                u.sessions,
                u.messages,
                u.responses,
                t.input,
                t.output,
                t.reasoning,
                t.cache_read,
                t.cache_write,
                u.total,
                u.cost,
                u.cost_stored,
                u.cost_priced,
                u.unpriced_messages
            )?;
        }
    } else {
        let sums = Sums {
            range: range_name,
            rows: &rows,
            t: &totals,
            forks: &forks,
            included: args.include_fork_copies,
            prices: &prices.origin,
        };
        match args.by {
            None => overview(out, loc, &sums)?,
            Some(_) => table(out, cat, group, &sums)?,
        }
    }
    Ok(())
}

/// What a text answer prints: the range, its rows, totals and fork copies (counted in or not).
#[derive(Clone, Copy)]
struct Sums<'a> {
    range: &'a str,
    rows: &'a [(String, Usage)],
    t: &'a Usage,
    forks: &'a Usage,
    included: bool,
    /// Where the estimated costs' prices came from.
    prices: &'a str,
}

fn merge(v: &mut serde_json::Value, u: &Usage) {
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), json!(u)) {
        obj.extend(extra);
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn range_title(range: &str) -> &str {
    match range {
        "all" => "all time",
        "today" => "today",
        "week" => "last 7 days",
        "month" => "this month",
        _ => "selected days",
    }
}

/// Where the cost came from, when not all of it was stored by OpenCode.
fn cost_note(out: &mut dyn Write, t: &Usage, prices: &str) -> std::io::Result<()> {
    if t.cost_priced > 0.0 {
        writeln!(
            out,
            "\n* Cost: ${:.2} as OpenCode stored it + ${:.2} estimated for the messages it stored none for, from {prices}.",
            t.cost_stored, t.cost_priced
        )?;
    }
    if t.unpriced_messages > 0 {
        writeln!(
            out,
            "{}{} message{} with tokens but no stored cost and no known price counted as $0 (give prices with --prices FILE).",
            if t.cost_priced > 0.0 { "  " } else { "\n* " },
            thousands(t.unpriced_messages),
            if t.unpriced_messages == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn fork_note(out: &mut dyn Write, forks: &Usage, included: bool) -> std::io::Result<()> {
    if included {
        writeln!(out, "\nFork copies are counted (--include-fork-copies), as OpenCode's own sums do.")
    } else if forks.messages > 0 {
        writeln!(
            out,
            "\nFork copies, counted once above: {} copied messages ({} tokens) in {} forked session{}; --include-fork-copies counts them again, as OpenCode does.",
            thousands(forks.messages),
            thousands(forks.total),
            forks.sessions,
            if forks.sessions == 1 { "" } else { "s" }
        )
    } else {
        Ok(())
    }
}

fn overview(out: &mut dyn Write, loc: &Location, sums: &Sums<'_>) -> std::io::Result<()> {
    let Sums { range, rows: models, t, forks, included, prices } = *sums;
    writeln!(out, "OpenCode token usage, {}", range_title(range))?;
    let sources: Vec<String> = loc.dbs.iter().chain(loc.storage.iter()).map(|p| p.display().to_string()).collect();
    writeln!(
        out,
        "from {}\n",
        if sources.is_empty() { loc.data_dir.display().to_string() } else { sources.join(", ") }
    )?;
    let w = thousands(t.total.max(t.messages)).len().max(5);
    writeln!(out, "Sessions     {:>w$}", thousands(t.sessions))?;
    writeln!(out, "Messages     {:>w$}   ({} responses)\n", thousands(t.messages), thousands(t.responses))?;
    for (label, v) in [
        ("Input", t.tokens.input),
        ("Output", t.tokens.output),
        ("Reasoning", t.tokens.reasoning),
        ("Cache read", t.tokens.cache_read),
        ("Cache write", t.tokens.cache_write),
    ] {
        writeln!(out, "{label:<12} {:>w$}", thousands(v))?;
    }
    writeln!(out, "{}", "─".repeat(13 + w))?;
    writeln!(out, "{:<12} {:>w$}", "Total", thousands(t.total))?;
    let estimated = if t.cost_priced > 0.0 || t.unpriced_messages > 0 { " *" } else { "" };
    writeln!(out, "{:<12} {:>w$}{estimated}", "Cost", format!("${:.2}", t.cost))?;
    if !models.is_empty() {
        writeln!(out, "\nTop models")?;
        let kw = models.iter().map(|m| m.0.chars().count()).max().unwrap_or(0);
        for (k, u) in models {
            let pct = if t.total > 0 { 100.0 * u.total as f64 / t.total as f64 } else { 0.0 };
            writeln!(
                out,
                "  {k:<kw$}  {pct:>5.1}%  ({} tokens, {} responses)",
                thousands(u.total),
                thousands(u.responses)
            )?;
        }
    }
    cost_note(out, t, prices)?;
    fork_note(out, forks, included)
}

#[allow(clippy::too_many_arguments)]
fn table(out: &mut dyn Write, cat: &Catalog, group: GroupBy, sums: &Sums<'_>) -> std::io::Result<()> {
    let Sums { range, rows, t, forks, included, prices } = *sums;
    writeln!(out, "OpenCode token usage by {}, {}\n", group.name(), range_title(range))?;
    let titles = cat.titles();
    let label = |k: &str| -> String {
        match (group, titles.get(k).copied()) {
            (GroupBy::Session, Some(title)) if !title.is_empty() => {
                let short: String = title.chars().take(32).collect();
                format!("{k}  {short}")
            }
            _ => k.to_string(),
        }
    };
    let labels: Vec<String> = rows.iter().map(|r| label(&r.0)).collect();
    let kw = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(group.name().len()).max(5);
    let cells = |u: &Usage| {
        [
            u.sessions,
            u.messages,
            u.tokens.input,
            u.tokens.output,
            u.tokens.reasoning,
            u.tokens.cache_read,
            u.tokens.cache_write,
            u.total,
        ]
        .map(thousands)
    };
    let heads = ["SESSIONS", "MESSAGES", "INPUT", "OUTPUT", "REASONING", "CACHE READ", "CACHE WRITE", "TOTAL"];
    let mut widths = heads.map(str::len);
    for u in rows.iter().map(|r| &r.1).chain(std::iter::once(t)) {
        for (i, c) in cells(u).iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |out: &mut dyn Write, key: &str, cols: &[String], cost: &str| -> std::io::Result<()> {
        write!(out, "{:<kw$}", key)?;
        for (i, c) in cols.iter().enumerate() {
            write!(out, "  {:>w$}", c, w = widths[i])?;
        }
        writeln!(out, "  {cost:>9}")
    };
    line(out, &group.name().to_uppercase(), &heads.map(String::from), "COST")?;
    for (l, (_, u)) in labels.iter().zip(rows) {
        line(out, l, &cells(u), &format!("${:.2}", u.cost))?;
    }
    writeln!(out, "{}", "─".repeat(kw + widths.iter().map(|w| w + 2).sum::<usize>() + 11))?;
    line(out, "TOTAL", &cells(t), &format!("${:.2}", t.cost))?;
    cost_note(out, t, prices)?;
    fork_note(out, forks, included)
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_digits_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}

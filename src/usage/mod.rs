//! The vocabulary of token usage, shared by everything that counts it (the `aggregate`
//! transform, the storage source's `ocpipe stats`): groupings, time ranges in the local time
//! zone, and the sums of a group.

mod keeper;
mod ledger;
pub mod prices;
pub mod state;

pub use keeper::{FLUSH_EVERY, Keeper};
pub use ledger::{Ledger, MessageRow, SessionSummary, Summary};
pub use prices::{CostSource, MessageCost, Price, PriceOverrides, Prices};

use chrono::{DateTime, Datelike, Local, NaiveDate, TimeZone};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{SessionInfo, Tokens};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// One group for everything.
    All,
    Session,
    /// The project's worktree, or `(global)` outside a project.
    Project,
    /// `provider/model`.
    Model,
    Agent,
    /// The local date the message was created.
    Day,
}

impl GroupBy {
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::All => "all",
            GroupBy::Session => "session",
            GroupBy::Project => "project",
            GroupBy::Model => "model",
            GroupBy::Agent => "agent",
            GroupBy::Day => "day",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RangeName {
    /// Since local midnight.
    Today,
    /// The last 7 days, today included.
    Week,
    /// Since the first of this month.
    Month,
    #[default]
    All,
}

/// A resolved time window in epoch milliseconds: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub name: &'static str,
}

impl Window {
    pub fn contains(&self, ms: i64) -> bool {
        self.start.is_none_or(|s| ms >= s) && self.end.is_none_or(|e| ms < e)
    }

    /// The window for a range name, or `since`/`until` dates (`YYYY-MM-DD`, local time, both
    /// inclusive), now being `now`.
    pub fn resolve(
        range: RangeName,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
        now: DateTime<Local>,
    ) -> Window {
        let midnight = |d: NaiveDate| {
            Local.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap()).earliest().map(|t| t.timestamp_millis())
        };
        if since.is_some() || until.is_some() {
            return Window {
                start: since.and_then(midnight),
                end: until.and_then(|u| u.succ_opt()).and_then(midnight),
                name: "custom",
            };
        }
        let today = now.date_naive();
        match range {
            RangeName::All => Window { start: None, end: None, name: "all" },
            RangeName::Today => Window { start: midnight(today), end: None, name: "today" },
            RangeName::Week => Window { start: midnight(today - chrono::Days::new(6)), end: None, name: "week" },
            RangeName::Month => Window { start: midnight(today.with_day(1).unwrap()), end: None, name: "month" },
        }
    }
}

pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("`{s}` is not a date (YYYY-MM-DD): {e}"))
}

/// Local days of times (days from the common era), looked up once per quarter hour: every time
/// zone's offset is a multiple of one, so a quarter never straddles a local midnight.
#[derive(Debug, Default)]
pub struct LocalDays(rustc_hash::FxHashMap<i64, Option<i32>>);

impl LocalDays {
    pub fn day(&mut self, ms: i64) -> Option<i32> {
        *self
            .0
            .entry(ms.div_euclid(900_000))
            .or_insert_with(|| Local.timestamp_millis_opt(ms).earliest().map(|t| t.date_naive().num_days_from_ce()))
    }
}

/// `provider/model` as `ocpipe stats` names a model: the model alone without a provider,
/// `unknown` without either.
pub fn model_name(provider: &str, model: &str) -> String {
    match (provider, model) {
        ("", "") => "unknown".into(),
        ("", m) => m.into(),
        (p, m) => format!("{p}/{m}"),
    }
}

pub fn local_day(ms: i64) -> String {
    Local
        .timestamp_millis_opt(ms)
        .earliest()
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The project key of a session: its worktree, or `(global)`.
pub fn project_key(s: &SessionInfo) -> String {
    match &s.project {
        Some(p) => p.clone(),
        None if s.project_id == "global" || s.project_id.is_empty() => "(global)".into(),
        None => s.project_id.clone(),
    }
}

/// Sums for one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub sessions: u64,
    pub messages: u64,
    /// Assistant messages.
    pub responses: u64,
    #[serde(flatten)]
    pub tokens: Tokens,
    pub total: u64,
    /// Dollars: as OpenCode stored them, plus the price table's estimate where it stored none
    /// (the two parts below).
    pub cost: f64,
    /// The part OpenCode stored.
    pub cost_stored: f64,
    /// The part estimated from the price table.
    pub cost_priced: f64,
    /// Messages with tokens but neither a stored cost nor a known price (counted as 0).
    pub unpriced_messages: u64,
}

impl Usage {
    pub fn add_message(&mut self, tokens: &Tokens, cost: MessageCost, assistant: bool) {
        self.messages += 1;
        self.responses += u64::from(assistant);
        self.tokens.add(tokens);
        self.total = self.tokens.total();
        self.add_cost(cost, 1.0);
    }

    /// Takes a message added before back out (it was updated).
    pub fn remove_message(&mut self, tokens: &Tokens, cost: MessageCost, assistant: bool) {
        self.messages = self.messages.saturating_sub(1);
        self.responses = self.responses.saturating_sub(u64::from(assistant));
        self.tokens.sub(tokens);
        self.total = self.tokens.total();
        self.add_cost(cost, -1.0);
    }

    fn add_cost(&mut self, cost: MessageCost, sign: f64) {
        self.cost += sign * cost.dollars;
        match cost.source {
            CostSource::Stored => self.cost_stored += sign * cost.dollars,
            CostSource::Priced => self.cost_priced += sign * cost.dollars,
            CostSource::Unknown if sign > 0.0 => self.unpriced_messages += 1,
            CostSource::Unknown => self.unpriced_messages = self.unpriced_messages.saturating_sub(1),
            CostSource::Free => {}
        }
    }

    /// Where the cost came from, in a word: `stored`, `priced`, `stored+priced`, or with
    /// `+unknown` when some messages had no price.
    pub fn cost_source(&self) -> String {
        let mut parts = Vec::new();
        if self.cost_stored > 0.0 {
            parts.push("stored");
        }
        if self.cost_priced > 0.0 {
            parts.push("priced");
        }
        if self.unpriced_messages > 0 {
            parts.push("unknown");
        }
        if parts.is_empty() { "stored".into() } else { parts.join("+") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_local_calendar() {
        let now = Local.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap();
        let day = |y, m, d| Local.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap().timestamp_millis();
        let w = Window::resolve(RangeName::Month, None, None, now);
        assert!(w.contains(day(2026, 3, 1)) && !w.contains(day(2026, 3, 1) - 1));
        let w = Window::resolve(RangeName::Week, None, None, now);
        assert!(w.contains(day(2026, 3, 9)) && !w.contains(day(2026, 3, 9) - 1));
        let w = Window::resolve(RangeName::All, parse_date("2026-03-02").ok(), parse_date("2026-03-03").ok(), now);
        assert!(w.contains(day(2026, 3, 3) + 1) && !w.contains(day(2026, 3, 4)) && !w.contains(day(2026, 3, 2) - 1));
    }
}

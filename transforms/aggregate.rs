//! `aggregate`: token usage of OpenCode messages grouped by session, project, model, agent or
//! day, over a time range. Emits a `rollup` event for each group when it changes (at most once
//! per `throttle_ms`) and all changed groups when its input ends.
//!
//! A message seen again (OpenCode fills in tokens at completion) replaces its earlier
//! contribution. Fork copies (`fork_copy`) are counted apart unless `include_fork_copies`.
//! The grouping and range rules here are also what `ocpipe stats` uses.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Local, NaiveDate, TimeZone};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::component::{ComponentFuture, Context, Input, Output, TaskTransform, Transform, TransformConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::{Event, MessageInfo, Payload, Rollup, SessionInfo, Tokens};

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
    pub cost: f64,
}

impl Usage {
    pub fn add_message(&mut self, tokens: &Tokens, cost: f64, assistant: bool) {
        self.messages += 1;
        self.responses += u64::from(assistant);
        self.tokens.add(tokens);
        self.total = self.tokens.total();
        self.cost += cost;
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct AggregateConfig {
    /// Groupings to keep: `all`, `session`, `project`, `model`, `agent`, `day`.
    #[serde(default = "default_groups")]
    pub group_by: Vec<GroupBy>,
    /// `today`, `week` (last 7 days), `month` or `all`, in the local time zone.
    #[serde(default)]
    pub range: RangeName,
    /// First day counted (YYYY-MM-DD, local); overrides `range`.
    pub since: Option<String>,
    /// Last day counted (YYYY-MM-DD, local); overrides `range`.
    pub until: Option<String>,
    /// Emit changed rollups at most this often, in milliseconds.
    #[serde(default = "default_throttle")]
    pub throttle_ms: u64,
    /// Count the history a fork copies from its parent again (OpenCode's own sums do).
    #[serde(default)]
    pub include_fork_copies: bool,
}

fn default_groups() -> Vec<GroupBy> {
    vec![GroupBy::All, GroupBy::Session, GroupBy::Project, GroupBy::Model, GroupBy::Agent, GroupBy::Day]
}
fn default_throttle() -> u64 {
    1000
}

const EXAMPLE: &str = r#"group_by = ["model", "day"]
range = "all"
throttle_ms = 1000
"#;

crate::register_component!(
    transform AggregateConfig,
    "aggregate",
    "Rolls up OpenCode token usage by session, project, model, agent or day over a time range",
    EXAMPLE
);

impl TransformConfig for AggregateConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (name, v) in [("since", &self.since), ("until", &self.until)] {
            if let Some(Err(e)) = v.as_deref().map(parse_date) {
                errs.push(FieldError::new(FieldPath::key(name), e).help("e.g. \"2026-01-31\""));
            }
        }
        if self.group_by.is_empty() {
            errs.push(
                FieldError::new(FieldPath::key("group_by"), "`group_by` is empty").help("e.g. [\"model\", \"day\"]"),
            );
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Transform> {
        let since = self.since.as_deref().map(parse_date).transpose().map_err(anyhow::Error::msg)?;
        let until = self.until.as_deref().map(parse_date).transpose().map_err(anyhow::Error::msg)?;
        Ok(Transform::Task(Box::new(Aggregator {
            state: Rollups::new(self.group_by.clone(), self.range, since, until, self.include_fork_copies),
            throttle: Duration::from_millis(self.throttle_ms.max(1)),
            cx: cx.clone(),
        })))
    }
}

/// A message's part in the sums, kept so an update can take it back out.
#[derive(Debug, Clone)]
struct Contribution {
    keys: Vec<(GroupBy, String)>,
    session: String,
    tokens: Tokens,
    cost: f64,
    assistant: bool,
    fork_copy: bool,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    usage: Usage,
    sessions: HashMap<String, u64>,
    fork_copy_messages: u64,
}

/// Incremental rollups (the state of the `aggregate` transform).
pub struct Rollups {
    group_by: Vec<GroupBy>,
    range: RangeName,
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
    include_fork_copies: bool,
    sessions: HashMap<String, (String, String)>,
    messages: HashMap<String, Contribution>,
    groups: HashMap<(GroupBy, String), Acc>,
    dirty: HashSet<(GroupBy, String)>,
}

impl Rollups {
    pub fn new(
        group_by: Vec<GroupBy>,
        range: RangeName,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
        include_fork_copies: bool,
    ) -> Self {
        Rollups {
            group_by,
            range,
            since,
            until,
            include_fork_copies,
            sessions: HashMap::new(),
            messages: HashMap::new(),
            groups: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    fn window(&self) -> Window {
        Window::resolve(self.range, self.since, self.until, Local::now())
    }

    pub fn session(&mut self, s: &SessionInfo) {
        self.sessions.insert(s.id.clone(), (project_key(s), s.title.clone()));
    }

    pub fn message(&mut self, m: &MessageInfo) {
        if let Some(old) = self.messages.remove(&m.id) {
            self.apply(&old, false);
        }
        if !self.window().contains(m.time_created) {
            return;
        }
        let project = self.sessions.get(&m.session_id).map(|s| s.0.clone()).unwrap_or_else(|| "(unknown)".into());
        let keys = self
            .group_by
            .iter()
            .map(|g| {
                let key = match g {
                    GroupBy::All => "all".to_string(),
                    GroupBy::Session => m.session_id.clone(),
                    GroupBy::Project => project.clone(),
                    GroupBy::Model => m.model_key(),
                    GroupBy::Agent => m.agent.clone().unwrap_or_else(|| "unknown".into()),
                    GroupBy::Day => local_day(m.time_created),
                };
                (*g, key)
            })
            .collect();
        let c = Contribution {
            keys,
            session: m.session_id.clone(),
            tokens: m.tokens,
            cost: m.cost,
            assistant: m.role == "assistant",
            fork_copy: m.fork_copy && !self.include_fork_copies,
        };
        self.apply(&c, true);
        self.messages.insert(m.id.clone(), c);
    }

    fn apply(&mut self, c: &Contribution, add: bool) {
        for key in &c.keys {
            let acc = self.groups.entry(key.clone()).or_default();
            if c.fork_copy {
                acc.fork_copy_messages =
                    if add { acc.fork_copy_messages + 1 } else { acc.fork_copy_messages.saturating_sub(1) };
            } else if add {
                acc.usage.add_message(&c.tokens, c.cost, c.assistant);
                *acc.sessions.entry(c.session.clone()).or_default() += 1;
            } else {
                let u = &mut acc.usage;
                u.messages = u.messages.saturating_sub(1);
                u.responses = u.responses.saturating_sub(u64::from(c.assistant));
                u.tokens.sub(&c.tokens);
                u.total = u.tokens.total();
                u.cost -= c.cost;
                if let Some(n) = acc.sessions.get_mut(&c.session) {
                    *n -= 1;
                    if *n == 0 {
                        acc.sessions.remove(&c.session);
                    }
                }
            }
            acc.usage.sessions = acc.sessions.len() as u64;
            self.dirty.insert(key.clone());
        }
    }

    /// The rollups that changed since the last call.
    pub fn take_changed(&mut self) -> Vec<Rollup> {
        let range = self.window().name;
        let mut out: Vec<Rollup> = self
            .dirty
            .drain()
            .filter_map(|k| {
                let acc = self.groups.get(&k)?;
                Some(Rollup {
                    group_by: k.0.name().to_string(),
                    range: range.to_string(),
                    key: k.1.clone(),
                    sessions: acc.usage.sessions,
                    messages: acc.usage.messages,
                    responses: acc.usage.responses,
                    tokens: acc.usage.tokens,
                    total: acc.usage.total,
                    cost: acc.usage.cost,
                    fork_copy_messages: acc.fork_copy_messages,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.group_by, &a.key).cmp(&(&b.group_by, &b.key)));
        out
    }
}

struct Aggregator {
    state: Rollups,
    throttle: Duration,
    cx: Context,
}

impl Aggregator {
    async fn emit(&mut self, out: &mut Output) {
        for r in self.state.take_changed() {
            let id = r.natural_id();
            out.send(Event::new(self.cx.id.clone(), chrono::Utc::now(), Payload::Rollup(Box::new(r))).with_id(id))
                .await;
        }
    }
}

impl TaskTransform for Aggregator {
    fn run(mut self: Box<Self>, mut input: Input, mut out: Output) -> ComponentFuture {
        Box::pin(async move {
            let mut tick = tokio::time::interval(self.throttle);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = input.recv() => match ev {
                        Some(ev) => {
                            match &ev.payload {
                                Payload::Session(s) => self.state.session(s),
                                Payload::Message(m) => self.state.message(m),
                                // Nothing to sum: discarded on purpose.
                                _ => self.cx.metrics.dropped(1),
                            }
                            // The input event is consumed here: it is delivered.
                        }
                        None => break,
                    },
                    _ = tick.tick() => self.emit(&mut out).await,
                }
            }
            self.emit(&mut out).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn msg(id: &str, session: &str, model: &str, input: u64, fork_copy: bool) -> MessageInfo {
        MessageInfo {
            id: id.into(),
            session_id: session.into(),
            role: "assistant".into(),
            provider_id: Some("p".into()),
            model_id: Some(model.into()),
            agent: Some("build".into()),
            tokens: Tokens { input, output: 1, ..Default::default() },
            cost: 0.5,
            time_created: chrono::Utc::now().timestamp_millis(),
            fork_copy,
            ..Default::default()
        }
    }

    fn ev(p: Payload) -> Event {
        Event::new("s".into(), chrono::Utc::now(), p)
    }

    #[test]
    fn updates_replace_and_forks_count_apart() {
        let mut r = Rollups::new(vec![GroupBy::Model, GroupBy::All], RangeName::All, None, None, false);
        r.message(&msg("m1", "s1", "a", 10, false));
        r.message(&msg("m1", "s1", "a", 100, false)); // completed: tokens arrive
        r.message(&msg("m2", "s2", "b", 5, false));
        r.message(&msg("m3", "s3", "b", 5, true));
        let all = r.take_changed();
        let total = all.iter().find(|x| x.group_by == "all").unwrap();
        assert_eq!((total.messages, total.tokens.input, total.sessions, total.fork_copy_messages), (2, 105, 2, 1));
        let a = all.iter().find(|x| x.key == "p/a").unwrap();
        assert_eq!((a.messages, a.tokens.input, a.total, a.cost), (1, 100, 101, 0.5));
        assert!(r.take_changed().is_empty(), "nothing changed since");
    }

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

    #[tokio::test]
    async fn emits_rollups_when_its_input_ends() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: AggregateConfig = toml::from_str("group_by = [\"project\"]\nthrottle_ms = 60000").unwrap();
        let session = SessionInfo {
            id: "s1".into(),
            project_id: "p1".into(),
            project: Some("/w/app".into()),
            ..Default::default()
        };
        let events = vec![
            ev(Payload::Session(Box::new(session))),
            ev(Payload::Message(Box::new(msg("m1", "s1", "a", 7, false)))),
        ];
        let out = testing::run_transform(&cfg, events, dir.path()).await;
        let rollups: Vec<_> = out
            .events
            .iter()
            .map(|e| match &e.payload {
                Payload::Rollup(r) => (r.key.clone(), r.tokens.input),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(rollups, [("/w/app".to_string(), 7)]);
        assert_eq!(out.events[0].meta.id.as_deref(), Some("rollup:project:all:/w/app"));
    }
}

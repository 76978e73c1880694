//! `aggregate`: token usage of OpenCode messages grouped by session, project, model, agent or
//! day, over a time range. Emits a `rollup` event for each group when it changes (at most once
//! per `throttle_ms`) and all changed groups when its input ends.
//!
//! A message seen again (OpenCode fills in tokens at completion) replaces its earlier
//! contribution. Fork copies (`fork_copy`) are counted apart unless `include_fork_copies`.
//! The grouping and range rules here are also what `ocpipe stats` uses.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{Local, NaiveDate};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Output, TaskTransform, Transform, TransformConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, MessageInfo, Payload, Rollup, SessionInfo, Tokens};
use crate::metrics::DropReason;
use crate::telemetry::UsageRow;
use crate::usage::state::Record;
use crate::usage::{CostSource, MessageCost, Prices};
use crate::usage::{FLUSH_EVERY, Keeper};
pub use crate::usage::{GroupBy, RangeName, Usage, Window, local_day, parse_date, project_key};
use std::sync::Arc;

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
    fn input(&self) -> DataType {
        DataType::SESSION | DataType::MESSAGE
    }
    fn outputs(&self, _: DataType) -> DataType {
        DataType::ROLLUP
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (name, v) in [("since", &self.since), ("until", &self.until)] {
            if let Some(Err(e)) = v.as_deref().map(parse_date) {
                errs.push(FieldError::new(FieldPath::key(name), e).help("e.g. \"2026-01-31\""));
            }
        }
        let mut seen = HashSet::new();
        for (i, g) in self.group_by.iter().enumerate() {
            if !seen.insert(*g) {
                errs.push(
                    FieldError::new(FieldPath::key("group_by").index(i), format!("`{}` is listed twice", g.name()))
                        .help("list each grouping once"),
                );
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
            state: Rollups::new(self.group_by.clone(), self.range, since, until, self.include_fork_copies)
                .priced_by(cx.prices().clone()),
            keeper: Keeper::new(cx)?,
            throttle: Duration::from_millis(self.throttle_ms.max(1)),
            cx: cx.clone(),
        })))
    }
}

/// A message's part in the sums, kept so an update can take it back out. Group keys and
/// sessions are interned (a message costs about 100 bytes, whatever its strings).
#[derive(Debug, Clone)]
struct Contribution {
    /// One key per `group_by` entry, in order (at most one entry per grouping).
    keys: [u32; GROUPINGS],
    session: u32,
    /// provider, model, agent, project: the labels of the pipeline's token metrics.
    labels: [u32; 4],
    /// Saturated to `TOKEN_MAX` (u32) like every stored count.
    tokens: [u32; 5],
    cost: MessageCost,
    assistant: bool,
    fork_copy: bool,
}

/// How many groupings there are (`GroupBy`'s variants).
const GROUPINGS: usize = 6;

#[derive(Debug, Default, Clone)]
struct Acc {
    usage: Usage,
    /// Messages counted per session.
    sessions: HashMap<u32, u32>,
    fork_copy_messages: u64,
}

/// Strings kept once, named by a number.
#[derive(Default)]
struct Names {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Names {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), i);
        i
    }
    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

/// Incremental rollups (the state of the `aggregate` transform).
pub struct Rollups {
    group_by: Vec<GroupBy>,
    range: RangeName,
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
    include_fork_copies: bool,
    names: Names,
    /// session -> its project key
    sessions: HashMap<u32, u32>,
    /// By a hash of the message id.
    messages: HashMap<u64, Contribution>,
    groups: HashMap<(GroupBy, u32), Acc>,
    dirty: HashSet<(GroupBy, u32)>,
    /// Usage by provider, model, agent and project (fork copies apart), for `/metrics`.
    labelled: HashMap<[u32; 4], UsageRow>,
    labelled_dirty: bool,
    /// What a message without a stored cost costs.
    prices: Arc<Prices>,
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
            names: Names::default(),
            sessions: HashMap::new(),
            messages: HashMap::new(),
            groups: HashMap::new(),
            dirty: HashSet::new(),
            labelled: HashMap::new(),
            labelled_dirty: false,
            prices: Prices::builtin(),
        }
    }

    /// Messages without a stored cost are priced with `prices`.
    pub fn priced_by(mut self, prices: Arc<Prices>) -> Self {
        self.prices = prices;
        self
    }

    fn window(&self) -> Window {
        Window::resolve(self.range, self.since, self.until, Local::now())
    }

    /// Messages counted now.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn session(&mut self, s: &SessionInfo) {
        let id = self.names.id(&s.id);
        let project = self.names.id(&project_key(s));
        self.sessions.insert(id, project);
    }

    pub fn message(&mut self, m: &MessageInfo) {
        let key = xxhash_rust::xxh3::xxh3_64(m.id.as_bytes());
        if let Some(old) = self.messages.remove(&key) {
            self.apply(&old, false);
        }
        if !self.window().contains(m.time_created) {
            return;
        }
        let session = self.names.id(&m.session_id);
        let project = match self.sessions.get(&session) {
            Some(&p) => p,
            None => self.names.id("(unknown)"),
        };
        let mut keys = [0u32; GROUPINGS];
        for (i, g) in self.group_by.clone().iter().take(GROUPINGS).enumerate() {
            keys[i] = match g {
                GroupBy::All => self.names.id("all"),
                GroupBy::Session => session,
                GroupBy::Project => project,
                GroupBy::Model => self.names.id(&m.model_key()),
                GroupBy::Agent => self.names.id(m.agent.as_deref().unwrap_or("unknown")),
                GroupBy::Day => self.names.id(&local_day(m.time_created)),
            };
        }
        let labels = [
            self.names.id(m.provider_id.as_deref().unwrap_or("unknown")),
            self.names.id(m.model_id.as_deref().unwrap_or("unknown")),
            self.names.id(m.agent.as_deref().unwrap_or("unknown")),
            project,
        ];
        let c = Contribution {
            labels,
            keys,
            session,
            tokens: m.tokens.packed(),
            cost: self.prices.cost(m.provider_id.as_deref(), m.model_id.as_deref(), m.cost, &m.tokens),
            assistant: m.role == "assistant",
            fork_copy: m.fork_copy && !self.include_fork_copies,
        };
        self.apply(&c, true);
        self.messages.insert(key, c);
    }

    fn apply(&mut self, c: &Contribution, add: bool) {
        if !c.fork_copy {
            self.label(c, add);
        }
        for (g, &k) in self.group_by.iter().zip(c.keys.iter()) {
            let key = (*g, k);
            let acc = self.groups.entry(key).or_default();
            if c.fork_copy {
                acc.fork_copy_messages =
                    if add { acc.fork_copy_messages + 1 } else { acc.fork_copy_messages.saturating_sub(1) };
            } else if add {
                acc.usage.add_message(&Tokens::from_packed(c.tokens), c.cost, c.assistant);
                *acc.sessions.entry(c.session).or_default() += 1;
            } else {
                acc.usage.remove_message(&Tokens::from_packed(c.tokens), c.cost, c.assistant);
                if let Some(n) = acc.sessions.get_mut(&c.session) {
                    *n -= 1;
                    if *n == 0 {
                        acc.sessions.remove(&c.session);
                    }
                }
            }
            acc.usage.sessions = acc.sessions.len() as u64;
            self.dirty.insert(key);
        }
    }

    fn label(&mut self, c: &Contribution, add: bool) {
        let names = &self.names;
        let row = self.labelled.entry(c.labels).or_insert_with(|| UsageRow {
            provider: names.name(c.labels[0]).to_string(),
            model: names.name(c.labels[1]).to_string(),
            agent: names.name(c.labels[2]).to_string(),
            project: names.name(c.labels[3]).to_string(),
            ..Default::default()
        });
        let tokens = Tokens::from_packed(c.tokens);
        let sign = if add { 1.0 } else { -1.0 };
        if add {
            row.messages += 1;
            row.tokens.add(&tokens);
        } else {
            row.messages = row.messages.saturating_sub(1);
            row.tokens.sub(&tokens);
        }
        match c.cost.source {
            CostSource::Stored => row.cost.stored += sign * c.cost.dollars,
            CostSource::Priced => row.cost.priced += sign * c.cost.dollars,
            CostSource::Unknown | CostSource::Free => {}
        }
        self.labelled_dirty = true;
    }

    /// Usage by provider, model, agent and project, when it changed since the last call.
    pub fn take_labelled(&mut self) -> Option<Vec<UsageRow>> {
        if !std::mem::take(&mut self.labelled_dirty) {
            return None;
        }
        let mut rows: Vec<UsageRow> = self.labelled.values().filter(|r| r.messages > 0).cloned().collect();
        rows.sort_by(|a, b| {
            (&a.provider, &a.model, &a.agent, &a.project).cmp(&(&b.provider, &b.model, &b.agent, &b.project))
        });
        Some(rows)
    }

    /// The rollups that changed since the last call.
    pub fn take_changed(&mut self) -> Vec<Rollup> {
        let range = self.window().name;
        let mut out: Vec<Rollup> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|k| {
                let acc = self.groups.get(&k)?;
                Some(Rollup {
                    group_by: k.0.name().to_string(),
                    range: range.to_string(),
                    key: self.names.name(k.1).to_string(),
                    sessions: acc.usage.sessions,
                    messages: acc.usage.messages,
                    responses: acc.usage.responses,
                    tokens: acc.usage.tokens,
                    total: acc.usage.total,
                    cost: acc.usage.cost,
                    cost_stored: acc.usage.cost_stored,
                    cost_priced: acc.usage.cost_priced,
                    unpriced_messages: acc.usage.unpriced_messages,
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
    /// What was taken in, written before the input events are released.
    keeper: Keeper,
    throttle: Duration,
    cx: Context,
}

impl Aggregator {
    /// Replays the state file into the rollups.
    async fn restore(&mut self) -> anyhow::Result<()> {
        let empty = Rollups::new(vec![], RangeName::All, None, None, false).priced_by(self.cx.prices().clone());
        let rollups = std::mem::replace(&mut self.state, empty);
        self.state = self
            .keeper
            .restore(rollups, |r, rec| match rec {
                Record::Session(s) => r.session(&s),
                Record::Message(m) => r.message(&m),
            })
            .await?;
        let messages = self.state.len();
        if messages > 0 {
            tracing::info!(
                component = &*self.cx.id,
                messages,
                "rollups restored from {}",
                self.keeper.path().display()
            );
        }
        Ok(())
    }

    fn take(&mut self, mut ev: Event) {
        // A version from another machine older than one already summed: moot.
        if !self.keeper.current(&ev) {
            self.cx.metrics.dropped(DropReason::Intentional, 1);
            return;
        }
        match &ev.payload {
            Payload::Session(s) => self.state.session(s),
            Payload::Message(m) => self.state.message(m),
            // Nothing to sum: discarded on purpose.
            _ => {
                self.cx.metrics.dropped(DropReason::Intentional, 1);
                return;
            }
        }
        // Delivered once what it brought is on disk.
        self.keeper.keep(&mut ev);
    }

    async fn flush(&mut self) {
        self.keeper.flush().await;
    }

    async fn emit(&mut self, out: &mut Output) {
        if let Some(rows) = self.state.take_labelled() {
            self.cx.telemetry().set_usage(&self.cx.id, rows);
        }
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
            self.restore().await?;
            let mut tick = tokio::time::interval(self.throttle);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = input.recv() => match ev {
                        Some(ev) => {
                            self.take(ev);
                            if self.keeper.pending() >= FLUSH_EVERY {
                                self.flush().await;
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        self.flush().await;
                        self.emit(&mut out).await;
                    }
                }
            }
            self.flush().await;
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

    #[tokio::test]
    async fn an_older_version_from_another_machine_is_ignored_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: AggregateConfig = toml::from_str("group_by = [\"all\"]\nthrottle_ms = 60000").unwrap();
        let version = |input: u64, revision: u64| {
            let mut e = ev(Payload::Message(Box::new(msg("m1", "s1", "a", input, false))));
            e.meta.revision = Some(revision);
            e
        };
        let input = |out: &testing::Outcome| match &out.events.last().expect("a rollup").payload {
            Payload::Rollup(r) => (r.messages, r.tokens.input),
            other => panic!("{other:?}"),
        };
        // Redelivered after its successor: ignored, and counted as dropped on purpose.
        let out = testing::run_transform(&cfg, vec![version(100, 20), version(5, 10)], dir.path()).await;
        assert_eq!(input(&out), (1, 100));
        // Restarted on the same state: the revision came back with the message.
        let out = testing::run_transform(&cfg, vec![version(6, 15), version(2, 1)], dir.path()).await;
        assert_eq!(input(&out), (1, 100));
        let out = testing::run_transform(&cfg, vec![version(130, 21)], dir.path()).await;
        assert_eq!(input(&out), (1, 130));
    }
}

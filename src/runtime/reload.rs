//! Reloading a running pipeline (Vector's behaviour): only components whose options, inputs or
//! buffer changed are rebuilt; the others keep their state, buffers and connections.
//!
//! 1. Everything new or changed is built first. One that fails because its old instance holds
//!    what it needs (a port) is tried again after that instance stopped; if a build still fails,
//!    the reload is rolled back: nothing new starts, stopped instances are started again.
//! 2. New transforms and sinks start; removed components stop upstream first (a source as at
//!    shutdown, a transform or sink after reading its buffer to the end).
//! 3. Changed transforms and sinks, downstream first, hand their buffer (with what is in it) to
//!    their successor, which starts at once — so an upstream one blocked on a full buffer is
//!    always drained by a running successor.
//! 4. Sources last, once everything downstream runs again: a changed one stops as at shutdown
//!    (its checkpoint covers what was delivered) and its successor, built again now, resumes
//!    from there; then new sources start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::slot::{Built, Slot, StopHow};
use super::{Joined, Topology};
use crate::config::{ComponentDef, Pipeline};
use crate::registry::Kind;
use crate::telemetry::ApiConfig;
use crate::usage::PriceOverrides;

/// A request to reload: the new pipeline (already loaded and checked), and where to answer.
pub struct Reload {
    pub(super) pipeline: Box<Pipeline>,
    pub(super) reply: oneshot::Sender<Result<String, String>>,
}

/// Pipeline-wide options a reload does not apply in place.
#[derive(PartialEq)]
pub(super) struct TopLevel {
    data_dir: Option<PathBuf>,
    api: Option<ApiConfig>,
    prices: PriceOverrides,
}

impl TopLevel {
    pub fn of(p: &Pipeline) -> TopLevel {
        TopLevel { data_dir: p.data_dir.clone(), api: p.api.clone(), prices: p.prices.clone() }
    }
}

/// How long a reload waits for an instance to stop before it aborts it.
const STOP_LIMIT: Duration = Duration::from_secs(30);

fn same(old: &ComponentDef, new: &ComponentDef) -> bool {
    old.options == new.options && old.inputs == new.inputs && old.buffer == new.buffer
}

/// What a reload changes.
#[derive(Default)]
struct Plan {
    changed: Vec<ComponentDef>,
    added: Vec<ComponentDef>,
    removed: Vec<String>,
    unchanged: usize,
}

/// Each component's distance from the sources (the longest path), over `edges` (id → inputs).
fn depths(edges: &HashMap<String, Vec<String>>) -> HashMap<String, usize> {
    fn depth(id: &str, edges: &HashMap<String, Vec<String>>, memo: &mut HashMap<String, usize>, seen: usize) -> usize {
        if let Some(&d) = memo.get(id) {
            return d;
        }
        // The graph has no cycles (the loader refuses them); `seen` bounds a broken one anyway.
        let d = match edges.get(id) {
            Some(inputs) if seen < edges.len() => {
                inputs.iter().map(|i| depth(i, edges, memo, seen + 1) + 1).max().unwrap_or(0)
            }
            _ => 0,
        };
        memo.insert(id.to_string(), d);
        d
    }
    let mut memo = HashMap::new();
    for id in edges.keys() {
        depth(id, edges, &mut memo, 0);
    }
    memo
}

impl Topology {
    /// What changed between the running graph and `components`.
    fn plan(&self, components: Vec<ComponentDef>) -> Plan {
        let new_ids: Vec<String> = components.iter().map(|d| d.id.clone()).collect();
        let mut plan = Plan::default();
        let mut kept = Vec::new();
        for def in components {
            match self.slot(&def.id) {
                Some(old) if old.def.kind == def.kind && same(&old.def, &def) => kept.push(def),
                Some(old) if old.def.kind == def.kind => plan.changed.push(def),
                // Another kind under the same id: the old one goes, the new one comes.
                Some(_) => {
                    plan.removed.push(def.id.clone());
                    plan.added.push(def);
                }
                None => plan.added.push(def),
            }
        }
        plan.removed.extend(self.slots.iter().filter(|s| !new_ids.contains(&s.def.id)).map(|s| s.def.id.clone()));
        // A consumer that has finished (its producers ended) starts again when one of its
        // producers is (re)started: its old buffer is closed.
        loop {
            let live: Vec<String> = plan.changed.iter().chain(&plan.added).map(|d| d.id.clone()).collect();
            let Some(i) = kept.iter().position(|d| {
                self.slot(&d.id).is_some_and(|s| !s.alive()) && d.inputs.iter().any(|i| live.contains(i))
            }) else {
                break;
            };
            plan.changed.push(kept.remove(i));
        }
        plan.unchanged = kept.len();
        plan
    }

    pub(super) async fn reload(&mut self, new: Pipeline, set: &mut JoinSet<Joined>) -> Result<String, String> {
        let top = TopLevel::of(&new);
        if top.data_dir != self.top.data_dir {
            return Err("`data_dir` changed: restart ocpipe to move its state; nothing was reloaded".into());
        }
        let mut notes = Vec::new();
        if top.api != self.top.api {
            notes.push("`api` changed: the metrics server moves at the next restart".to_string());
        }
        if top.prices != self.top.prices {
            notes.push("`prices` changed: they apply at the next restart".to_string());
        }
        let shutdown_timeout = new.shutdown_timeout;
        let Plan { changed, added, removed, unchanged } = self.plan(new.components);
        let added_ids: Vec<String> = added.iter().map(|d| d.id.clone()).collect();
        if changed.is_empty() && added.is_empty() && removed.is_empty() {
            self.shutdown_timeout = shutdown_timeout;
            notes.insert(0, "no component changed".into());
            return Ok(notes.join("; "));
        }
        let held = self.hold_inputs();

        // 1. Build what is new, while the old instances run.
        let mut fresh: Vec<(Slot, anyhow::Result<Built>)> = Vec::new();
        for def in changed.into_iter().chain(added) {
            let keep = self.slot(&def.id).filter(|s| s.def.kind == def.kind && !removed.contains(&s.def.id));
            let slot = Slot::new(def, &self.resources, &self.opts, keep);
            let built = slot.build(&self.sources_token);
            fresh.push((slot, built));
        }
        // A failure may be the old instance holding what the new one needs: stop it, try again.
        let mut built_late: Vec<String> = Vec::new();
        for (slot, built) in fresh.iter_mut().filter(|(_, b)| b.is_err()) {
            let id = slot.def.id.clone();
            let Some(old) = self.slots.iter_mut().find(|s| s.def.id == id && !removed.contains(&id)) else { continue };
            let why = built.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
            tracing::info!(component = %id, "building the new instance failed ({why}); trying again with the old one stopped");
            old.stop(StopHow::HandOver, STOP_LIMIT).await;
            built_late.push(id);
            *built = slot.build(&self.sources_token);
        }
        let errors: Vec<String> = fresh
            .iter()
            .filter_map(|(slot, b)| b.as_ref().err().map(|e| format!("{}: {e:#}", slot.describe())))
            .collect();
        if !errors.is_empty() {
            drop(fresh);
            self.restart_old(&built_late, set);
            drop(held);
            return Err(format!("the reload was rolled back; the pipeline runs as before:\n  {}", errors.join("\n  ")));
        }

        // The new graph: replaced and removed slots leave it (their instances still run).
        let mut replaced: Vec<Slot> = Vec::new();
        let mut gone: Vec<Slot> = Vec::new();
        let mut built_new: HashMap<String, Built> = HashMap::new();
        for (slot, built) in fresh {
            built_new.insert(slot.def.id.clone(), built.expect("no errors"));
            match self.slots.iter().position(|s| s.def.id == slot.def.id) {
                Some(i) if !removed.contains(&slot.def.id) => {
                    replaced.push(std::mem::replace(&mut self.slots[i], slot))
                }
                Some(i) => gone.push(std::mem::replace(&mut self.slots[i], slot)),
                None => self.slots.push(slot),
            }
        }
        for id in &removed {
            if let Some(i) = self.slots.iter().position(|s| &s.def.id == id && !built_new.contains_key(id)) {
                gone.push(self.slots.remove(i));
            }
        }
        let edges: HashMap<String, Vec<String>> =
            self.slots.iter().chain(&gone).map(|s| (s.def.id.clone(), s.def.inputs.clone())).collect();
        let depth = depths(&edges);
        let is_source = |s: &Slot| s.def.kind == Kind::Source;
        // The new buffers stay open too until their producers hold them.
        let held_new = self.hold_inputs();
        self.rewire();

        // 2. New transforms and sinks run; removed components stop, upstream first.
        let new_consumers: Vec<String> =
            added_ids.iter().filter(|id| self.slot(id).is_some_and(|s| !is_source(s))).cloned().collect();
        for id in &new_consumers {
            self.start_new(id, built_new.remove(id).expect("built"), false, true, set);
        }
        gone.sort_by_key(|s| depth.get(&s.def.id).copied().unwrap_or(0));
        for slot in gone.iter_mut() {
            slot.stop(StopHow::Drain, STOP_LIMIT).await;
            if let Some(inbox) = &slot.inbox {
                match inbox.close(STOP_LIMIT).await {
                    Some(failed @ 1..) => tracing::warn!(
                        component = %slot.def.id, failed,
                        "removed with events still buffered: they failed, so their sources read them again"
                    ),
                    Some(0) => {}
                    None => tracing::error!(component = %slot.def.id, "its buffer was not let go of; left open"),
                }
            }
            if self.slot(&slot.def.id).is_none() {
                self.resources.telemetry.forget(&slot.def.id);
            }
        }

        // 3. Changed transforms and sinks, downstream first; then 4. sources.
        let mut held_resized = Vec::new();
        replaced.sort_by_key(|s| (is_source(s), std::cmp::Reverse(depth.get(&s.def.id).copied().unwrap_or(0))));
        for old in replaced.iter_mut() {
            old.stop(StopHow::HandOver, STOP_LIMIT).await;
            let id = old.def.id.clone();
            let again = !built_late.contains(&id);
            let slot = self.slots.iter_mut().find(|s| s.def.id == id).expect("in the new graph");
            match slot.take_resized() {
                // A new buffer size: the successor reads the new buffer, what the old one
                // held moves in first, then producers send to it.
                Some(before) => {
                    let now = slot.inbox.clone().expect("resized");
                    // Open until the reload ends, like the others (its producers restart).
                    held_resized.extend(now.sender());
                    self.start_new(&id, built_new.remove(&id).expect("built"), again, false, set);
                    let moved = before.move_into(&now).await;
                    tracing::debug!(component = %id, moved, "moved its buffer into one of the new size");
                    self.rewire();
                    self.release_inputs();
                }
                None => self.start_new(&id, built_new.remove(&id).expect("built"), again, true, set),
            }
        }
        for id in added_ids.iter().filter(|id| !new_consumers.contains(id)) {
            self.start_new(id, built_new.remove(id).expect("built"), false, true, set);
        }
        drop((held, held_new, held_resized));
        self.publish_handles();
        self.shutdown_timeout = shutdown_timeout;

        let ids = |list: &[Slot]| list.iter().map(|s| s.def.id.clone()).collect::<Vec<_>>();
        let mut parts = Vec::new();
        for (what, list) in [("rebuilt", ids(&replaced)), ("added", added_ids), ("removed", ids(&gone))] {
            if !list.is_empty() {
                parts.push(format!("{what} {}", list.join(", ")));
            }
        }
        let mut summary = format!("reloaded: {}; {unchanged} unchanged", parts.join("; "));
        for n in notes {
            summary.push_str("; ");
            summary.push_str(&n);
        }
        Ok(summary)
    }

    /// Starts the new instance of `id` (built again first when `again`: built while its old
    /// instance ran, it may have read state that instance wrote since, like a checkpoint), and
    /// points producers at it when `wire`.
    fn start_new(&mut self, id: &str, built: Built, again: bool, wire: bool, set: &mut JoinSet<Joined>) {
        let token = self.sources_token.clone();
        let slot = self.slots.iter_mut().find(|s| s.def.id == id).expect("in the new graph");
        let built = if again { rebuild(slot, built, &token) } else { built };
        self.generation += 1;
        let s = slot.start(built, self.generation);
        self.starting.push(s);
        if wire {
            self.rewire();
            self.release_inputs();
        }
        self.spawn_starting(set);
    }

    /// A rolled-back reload: the instances stopped for a second try run again. One that cannot
    /// be built again fails the pipeline (it would otherwise swallow what reaches it).
    fn restart_old(&mut self, ids: &[String], set: &mut JoinSet<Joined>) {
        for id in ids {
            let slot = self.slots.iter_mut().find(|s| &s.def.id == id).expect("stopped for a retry");
            match slot.build(&self.sources_token) {
                Ok(b) => {
                    self.generation += 1;
                    let s = slot.start(b, self.generation);
                    self.starting.push(s);
                }
                Err(e) => {
                    tracing::error!(component = %id, "could not start the old instance again: {e:#}");
                    slot.close_input();
                    self.failed.push((id.clone(), format!("restarting it after a rolled-back reload: {e:#}")));
                    self.sources_token.cancel();
                }
            }
        }
        self.rewire();
        self.spawn_starting(set);
    }
}

/// `slot` built again now that its old instance has stopped; the first build if that fails.
fn rebuild(slot: &Slot, first: Built, sources_token: &tokio_util::sync::CancellationToken) -> Built {
    match slot.build(sources_token) {
        Ok(second) => second,
        Err(e) => {
            tracing::warn!(component = %slot.def.id, "building it again after its old instance stopped failed ({e:#}); starting the first build");
            first
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_the_longest_path_from_a_source() {
        let edges: HashMap<String, Vec<String>> =
            [("s", vec![]), ("t1", vec!["s"]), ("t2", vec!["t1", "s"]), ("k", vec!["t2", "s"])]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
                .collect();
        let d = depths(&edges);
        assert_eq!((d["s"], d["t1"], d["t2"], d["k"]), (0, 1, 2, 3));
    }
}

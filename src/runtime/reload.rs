//! Reloading a running pipeline (Vector's behaviour): only components whose options, inputs or
//! buffer changed are rebuilt; the others keep their state, buffers and connections.
//!
//! 1. Everything new or changed is built first. One that fails because its old instance holds
//!    what it needs (a port) is tried again after that instance stopped; if a build still fails,
//!    the reload is rolled back: nothing new starts, stopped instances are started again.
//! 2. Transforms and sinks: changed ones hand their buffer, with what is in it, to their
//!    successor; removed ones read theirs to the end; producers are pointed at the new graph.
//! 3. Sources last, once everything downstream runs again: a changed one stops as at shutdown
//!    (its checkpoint covers what was delivered) and its successor resumes from there.

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

impl Topology {
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
        self.shutdown_timeout = new.shutdown_timeout;

        // What changed.
        let new_ids: Vec<String> = new.components.iter().map(|d| d.id.clone()).collect();
        let (mut changed, mut added, mut unchanged) = (Vec::new(), Vec::new(), 0usize);
        let mut removed: Vec<String> = Vec::new();
        for def in new.components {
            match self.slot(&def.id) {
                Some(old) if old.def.kind == def.kind && same(&old.def, &def) => unchanged += 1,
                Some(old) if old.def.kind == def.kind => changed.push(def),
                // Another kind under the same id: the old one goes, the new one comes.
                Some(_) => {
                    removed.push(def.id.clone());
                    added.push(def);
                }
                None => added.push(def),
            }
        }
        removed.extend(self.slots.iter().filter(|s| !new_ids.contains(&s.def.id)).map(|s| s.def.id.clone()));
        let added_ids: Vec<String> = added.iter().map(|d| d.id.clone()).collect();
        if changed.is_empty() && added.is_empty() && removed.is_empty() {
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
        let mut stopped_early: Vec<String> = Vec::new();
        for (slot, built) in fresh.iter_mut().filter(|(_, b)| b.is_err()) {
            let id = slot.def.id.clone();
            let Some(old) = self.slots.iter_mut().find(|s| s.def.id == id && !removed.contains(&id)) else { continue };
            tracing::info!(component = %id, "building the new instance failed ({:#}); trying again with the old one stopped", built.as_ref().err().expect("filtered"));
            old.stop(StopHow::HandOver, STOP_LIMIT).await;
            stopped_early.push(id);
            *built = slot.build(&self.sources_token);
        }
        let errors: Vec<String> = fresh
            .iter()
            .filter_map(|(slot, b)| b.as_ref().err().map(|e| format!("{}: {e:#}", slot.describe())))
            .collect();
        if !errors.is_empty() {
            // Roll back: nothing new starts; what was stopped for a second try runs again.
            drop(fresh);
            for id in &stopped_early {
                let slot = self.slots.iter_mut().find(|s| &s.def.id == id).expect("stopped above");
                match slot.build(&self.sources_token) {
                    Ok(b) => {
                        self.generation += 1;
                        let s = slot.start(b, self.generation);
                        self.starting.push(s);
                    }
                    Err(e) => tracing::error!(component = %id, "could not start the old instance again: {e:#}"),
                }
            }
            self.spawn_starting(set);
            drop(held);
            return Err(format!("the reload was rolled back; the pipeline runs as before:\n  {}", errors.join("\n  ")));
        }

        // The new graph: replaced and removed slots leave it (their instances still run).
        let mut replaced: Vec<Slot> = Vec::new();
        let mut gone: Vec<Slot> = Vec::new();
        let mut built_new: Vec<(String, Built)> = Vec::new();
        let rebuilt_early = stopped_early;
        for (slot, built) in fresh {
            built_new.push((slot.def.id.clone(), built.expect("no errors")));
            match self.slots.iter().position(|s| s.def.id == slot.def.id) {
                Some(i) if !removed.contains(&slot.def.id) => {
                    replaced.push(std::mem::replace(&mut self.slots[i], slot))
                }
                Some(i) => {
                    gone.push(std::mem::replace(&mut self.slots[i], slot));
                }
                None => self.slots.push(slot),
            }
        }
        for id in &removed {
            if let Some(i) = self.slots.iter().position(|s| &s.def.id == id && !built_new.iter().any(|(b, _)| b == id))
            {
                gone.push(self.slots.remove(i));
            }
        }
        self.rewire();

        // 2. Transforms and sinks, then 3. sources.
        for phase in [false, true] {
            let is_phase = |s: &Slot| (s.def.kind == Kind::Source) == phase;
            let mut stops = Vec::new();
            for s in replaced.iter_mut().filter(|s| is_phase(s)) {
                stops.push(s.stop(StopHow::HandOver, STOP_LIMIT));
            }
            for s in gone.iter_mut().filter(|s| is_phase(s)) {
                stops.push(s.stop(StopHow::Drain, STOP_LIMIT));
            }
            futures::future::join_all(stops).await;
            self.rewire();
            let ids: Vec<String> = self.slots.iter().filter(|s| is_phase(s)).map(|s| s.def.id.clone()).collect();
            for (id, built) in std::mem::take(&mut built_new) {
                if !ids.contains(&id) {
                    built_new.push((id, built));
                    continue;
                }
                let slot = self.slots.iter_mut().find(|s| s.def.id == id).expect("in the new graph");
                // Built while its old instance ran, it may have read state that instance has
                // written since (a source's checkpoint): built again now that it has stopped.
                let again = replaced.iter().chain(&gone).any(|r| r.def.id == id) && !rebuilt_early.contains(&id);
                let built = if again { rebuild(slot, built, &self.sources_token) } else { built };
                self.generation += 1;
                let s = slot.start(built, self.generation);
                self.starting.push(s);
            }
            self.rewire();
            self.release_inputs();
            self.spawn_starting(set);
        }
        for slot in &gone {
            if !self.slots.iter().any(|s| s.def.id == slot.def.id) {
                self.resources.telemetry.forget(&slot.def.id);
            }
            if let Some(inbox) = &slot.inbox {
                let failed = inbox.close().await;
                if failed > 0 {
                    tracing::warn!(component = %slot.def.id, failed, "removed with events still buffered: their sources will read them again");
                }
            }
        }
        drop(held);
        self.publish_handles();

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

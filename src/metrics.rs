//! The counters every component has. The host counts what crosses component boundaries
//! (received, sent, drops at a full buffer); components add intentional drops and errors.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct ComponentMetrics {
    received: AtomicU64,
    sent: AtomicU64,
    dropped: [AtomicU64; 3],
    errors: AtomicU64,
    caught_up: AtomicBool,
    /// Events put into this component's input buffer (so the fill is this less `received`).
    enqueued: AtomicU64,
    state: AtomicU8,
}

/// Where a component's task is (for `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Built,
    Running,
    Finished,
    Failed,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Built => "built",
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Failed => "failed",
        }
    }
}

/// Why an event was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A full `drop_newest` buffer or backlog had no room.
    Full,
    /// On purpose: a filter said no, or there was nothing to do with it (no target configured).
    Intentional,
    /// It could not be handled or delivered (an expression failed, a broker never took it).
    Error,
}

/// Drops by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Dropped {
    pub full: u64,
    pub intentional: u64,
    pub error: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.full + self.intentional + self.error
    }
}

/// A point-in-time copy of a component's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    pub received: u64,
    pub sent: u64,
    pub dropped: Dropped,
    pub errors: u64,
    /// A source has read what was there when it started and now follows what comes.
    pub caught_up: bool,
}

impl ComponentMetrics {
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    /// Events discarded, and why.
    pub fn dropped(&self, why: DropReason, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }
    pub fn error(&self) {
        self.errors(1);
    }
    pub fn errors(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }
    /// A source says it has read what was there when it started and now follows changes
    /// (`ocpipe top` shows it; tests wait for it before they write).
    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }
    /// An event was put into this component's input buffer.
    pub fn enqueued(&self) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
    }
    /// Events waiting in the input buffer now.
    pub fn buffered(&self) -> u64 {
        let received = self.received.load(Ordering::Relaxed);
        self.enqueued.load(Ordering::Relaxed).saturating_sub(received)
    }
    pub fn set_state(&self, state: RunState) {
        self.state.store(state as u8, Ordering::Release);
    }
    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            1 => RunState::Running,
            2 => RunState::Finished,
            3 => RunState::Failed,
            _ => RunState::Built,
        }
    }
    pub fn snapshot(&self) -> MetricsSnapshot {
        let dropped = |why: DropReason| self.dropped[why as usize].load(Ordering::Relaxed);
        MetricsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: Dropped {
                full: dropped(DropReason::Full),
                intentional: dropped(DropReason::Intentional),
                error: dropped(DropReason::Error),
            },
            errors: self.errors.load(Ordering::Relaxed),
            caught_up: self.caught_up(),
        }
    }
}

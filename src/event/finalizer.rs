//! End-to-end delivery tracking.
//!
//! A source attaches a [`Finalizer`] to each event whose delivery it wants to know about (for
//! example to move a checkpoint). Copies of the event share it; when the last copy is gone —
//! written by every sink, or dropped on purpose by a filter or a full `drop_newest` buffer — the
//! source's callback runs once with the final [`Status`]. A sink that cannot deliver an event
//! calls [`Event::fail`](super::Event::fail) before dropping it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How an event's journey ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every copy was delivered or intentionally dropped.
    Delivered,
    /// At least one sink failed to deliver a copy.
    Failed,
}

type Callback = Box<dyn FnOnce(Status) + Send + Sync>;

struct Inner {
    failed: AtomicBool,
    callback: Option<Callback>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(cb) = self.callback.take() {
            let status = if self.failed.load(Ordering::Acquire) { Status::Failed } else { Status::Delivered };
            cb(status);
        }
    }
}

/// Shared by all copies of one event; runs its callback when the last copy is dropped.
#[derive(Clone)]
pub struct Finalizer(Arc<Inner>);

impl Finalizer {
    pub fn new(callback: impl FnOnce(Status) + Send + Sync + 'static) -> Self {
        Finalizer(Arc::new(Inner { failed: AtomicBool::new(false), callback: Some(Box::new(callback)) }))
    }

    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

impl fmt::Debug for Finalizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finalizer").field("failed", &self.0.failed.load(Ordering::Relaxed)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn callback_runs_once_after_last_copy() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let f = Finalizer::new(move |st| s.lock().unwrap().push(st));
        let g = f.clone();
        drop(f);
        assert!(seen.lock().unwrap().is_empty());
        g.fail();
        drop(g);
        assert_eq!(*seen.lock().unwrap(), vec![Status::Failed]);
    }
}

/// Tracks batches of events for sources whose checkpoint is a position per batch (for example
/// "read the change feed up to row 812"). [`BatchTracker::committed`] is the mark of the latest
/// batch that, with every batch before it, has been delivered.
pub struct BatchTracker<M> {
    batches: std::collections::VecDeque<(M, Arc<std::sync::atomic::AtomicUsize>, Arc<AtomicBool>)>,
}

impl<M: Clone> Default for BatchTracker<M> {
    fn default() -> Self {
        BatchTracker { batches: Default::default() }
    }
}

/// Hands out the finalizers of one batch.
pub struct Batch {
    pending: Arc<std::sync::atomic::AtomicUsize>,
    failed: Arc<AtomicBool>,
}

impl Batch {
    pub fn finalizer(&self) -> Finalizer {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let (pending, failed) = (self.pending.clone(), self.failed.clone());
        Finalizer::new(move |status| {
            if status == Status::Failed {
                failed.store(true, Ordering::Release);
            }
            pending.fetch_sub(1, Ordering::AcqRel);
        })
    }
}

impl<M: Clone> BatchTracker<M> {
    /// Starts a batch that, once delivered, moves the checkpoint to `mark`.
    pub fn batch(&mut self, mark: M) -> Batch {
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        self.batches.push_back((mark, pending.clone(), failed.clone()));
        Batch { pending, failed }
    }

    /// The newest mark whose batch and all earlier ones are delivered; a failed batch stops
    /// the checkpoint before it.
    pub fn committed(&mut self) -> Option<M> {
        let mut mark = None;
        while let Some((m, pending, failed)) = self.batches.front() {
            if pending.load(Ordering::Acquire) != 0 || failed.load(Ordering::Acquire) {
                break;
            }
            mark = Some(m.clone());
            self.batches.pop_front();
        }
        mark
    }

    pub fn in_flight(&self) -> bool {
        !self.batches.is_empty()
    }

    /// The oldest batch failed and nothing of it is pending: the checkpoint cannot move.
    pub fn stuck(&self) -> bool {
        self.batches.front().is_some_and(|(_, p, f)| f.load(Ordering::Acquire) && p.load(Ordering::Acquire) == 0)
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn marks_advance_in_order_once_delivered() {
        let mut t = BatchTracker::default();
        let a = t.batch(1);
        let fa = a.finalizer();
        let b = t.batch(2);
        let fb = b.finalizer();
        let _empty = t.batch(3);
        drop(fb);
        assert_eq!(t.committed(), None, "batch 1 is still in flight");
        drop(fa);
        assert_eq!(t.committed(), Some(3));
        let c = t.batch(4);
        let fc = c.finalizer();
        fc.fail();
        drop(fc);
        assert_eq!(t.committed(), None);
        assert!(t.in_flight());
    }
}

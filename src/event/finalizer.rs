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
            let status = if self.failed.load(Ordering::Acquire) {
                Status::Failed
            } else {
                Status::Delivered
            };
            cb(status);
        }
    }
}

/// Shared by all copies of one event; runs its callback when the last copy is dropped.
#[derive(Clone)]
pub struct Finalizer(Arc<Inner>);

impl Finalizer {
    pub fn new(callback: impl FnOnce(Status) + Send + Sync + 'static) -> Self {
        Finalizer(Arc::new(Inner {
            failed: AtomicBool::new(false),
            callback: Some(Box::new(callback)),
        }))
    }

    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

impl fmt::Debug for Finalizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finalizer")
            .field("failed", &self.0.failed.load(Ordering::Relaxed))
            .finish()
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

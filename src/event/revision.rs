//! The order of a record's versions when they travel between machines.
//!
//! Versions of one record (an OpenCode message gaining its tokens, a session's status) leave an
//! agent in order, but a hop through a cluster can reorder them: a message the aggregator
//! could not store is redelivered after later ones, an acknowledgement lost on the way brings
//! an old version back. The sending side stamps each event with a revision (`next`: wall-clock
//! nanoseconds, strictly increasing within the process; the sender keeps the last one on disk
//! and starts above it (`at_least`), so a restarted agent's versions are later than its previous
//! run's even when its clock was set back); a receiver keeps the newest revision per record
//! (`Revisions`) and ignores an older version instead of letting it overwrite a newer one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

static LAST: AtomicU64 = AtomicU64::new(0);

/// A revision later than every one this process gave before.
pub fn next() -> u64 {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX).max(0) as u64;
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    if prev < now { now } else { LAST.fetch_add(1, Ordering::Relaxed) + 1 }
}

/// Every later revision is above `floor` (the last one a previous run gave).
pub fn at_least(floor: u64) {
    LAST.fetch_max(floor, Ordering::Relaxed);
}

/// The last revision given (0 before any).
pub fn last() -> u64 {
    LAST.load(Ordering::Relaxed)
}

/// The newest revision taken in per record (about 32 bytes a record).
#[derive(Debug, Default)]
pub struct Revisions {
    seen: HashMap<u64, u64>,
}

impl Revisions {
    fn key(record: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(record.as_bytes())
    }

    /// Whether a version of `record` with `revision` is current (not older than one taken in
    /// before), remembering it. A version without a revision (read on this machine) always is.
    pub fn admit(&mut self, record: &str, revision: Option<u64>) -> bool {
        let Some(rev) = revision else { return true };
        let seen = self.seen.entry(Self::key(record)).or_default();
        if rev < *seen {
            return false;
        }
        *seen = rev;
        true
    }

    /// Whether no revision was taken in (everything came from this machine).
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The newest revision of `record` taken in (0 when none).
    pub fn get(&self, record: &str) -> u64 {
        self.seen.get(&Self::key(record)).copied().unwrap_or(0)
    }

    /// Remembers `revision` for `record` (restoring from a state file).
    pub fn remember(&mut self, record: &str, revision: u64) {
        if revision > 0 {
            let seen = self.seen.entry(Self::key(record)).or_default();
            *seen = (*seen).max(revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_only_grow() {
        let mut last = 0;
        for _ in 0..10_000 {
            let r = next();
            assert!(r > last, "{r} after {last}");
            last = r;
        }
    }

    #[test]
    fn a_floor_from_a_previous_run_lifts_every_later_revision() {
        let far = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64 + 3_600_000_000_000;
        at_least(far);
        assert!(next() > far, "a clock set back an hour still gives later revisions");
        assert!(last() > far);
    }

    #[test]
    fn an_older_version_is_refused_and_a_local_one_always_taken() {
        let mut r = Revisions::default();
        assert!(r.admit("message:m1", Some(20)));
        assert!(!r.admit("message:m1", Some(10)));
        assert!(r.admit("message:m1", Some(20)), "the same version again (a redelivery) is current");
        assert!(r.admit("message:m2", Some(5)), "records are apart");
        assert!(r.admit("message:m1", None));
        assert_eq!(r.get("message:m1"), 20);
        r.remember("message:m3", 7);
        assert!(!r.admit("message:m3", Some(6)));
    }
}

//! Giving memory back after a burst.
//!
//! After a backfill (100k messages read, indexed and sent) the allocator keeps the freed heap
//! for reuse; a process that then idles all day would hold it for nothing. [`trim`] asks glibc
//! to return what it can to the system; the runtime calls it every few seconds.

/// Allocator settings for a long-running process with a few busy threads: two arenas instead
/// of eight per core, so memory freed on one thread is not stranded in another's arena.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the system (glibc `malloc_trim`; elsewhere nothing).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

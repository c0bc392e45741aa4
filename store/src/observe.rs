//! What the daemon's metrics read of the store: the latency of each write from its proposal to
//! its application on the proposing node (handed to an observer the daemon sets), and the size
//! of the last snapshot built, installed or loaded. Process-wide: a process runs one node.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Called with the time from proposal to application of each write this node proposed.
pub type CommitObserver = fn(Duration);

static COMMIT: OnceLock<CommitObserver> = OnceLock::new();
static SNAPSHOT_BYTES: AtomicU64 = AtomicU64::new(0);

/// Sets the commit observer (once per process; later calls are ignored).
pub fn set_commit_observer(f: CommitObserver) {
    let _ = COMMIT.set(f);
}

/// The size in bytes of the last snapshot this process built, installed or loaded (0: none yet).
pub fn snapshot_bytes() -> u64 {
    SNAPSHOT_BYTES.load(Ordering::Relaxed)
}

pub(crate) fn committed(d: Duration) {
    if let Some(f) = COMMIT.get() {
        f(d);
    }
}

pub(crate) fn snapshot(bytes: usize) {
    SNAPSHOT_BYTES.store(bytes as u64, Ordering::Relaxed);
}

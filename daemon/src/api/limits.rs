//! Caps that keep one client from taking the API server for itself: concurrent connections per
//! client address, concurrent watches per user, and requests in flight (kube-apiserver's
//! `--max-requests-inflight` / `--max-mutating-requests-inflight`). Every slot is held by a guard,
//! so a connection or watch that ends for any reason (client gone, error, cancel) frees it.
//!
//! Over a cap: a connection is closed before its TLS handshake; a watch or request gets 429 Too
//! Many Requests as a Status with `Retry-After`. Each refusal is counted in
//! `shoal_api_refused_total{reason}`.
use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::status::ApiError;

/// Defaults of the `[api]` caps (see docs/security.md).
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 200;
pub const DEFAULT_MAX_WATCHES_PER_USER: usize = 500;
/// kube-apiserver's `--max-requests-inflight` and `--max-mutating-requests-inflight` defaults.
pub const DEFAULT_MAX_REQUESTS_INFLIGHT: usize = 400;
pub const DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT: usize = 200;

/// What the 429s tell a client to wait before retrying, in seconds (upstream's value).
const RETRY_AFTER_SECS: u64 = 1;

/// Why a connection or request was refused (the `reason` label of `shoal_api_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ConnectionsPerClient,
    WatchesPerUser,
    ReadOnlyInflight,
    MutatingInflight,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionsPerClient => "connections_per_client",
            Refusal::WatchesPerUser => "watches_per_user",
            Refusal::ReadOnlyInflight => "readonly_inflight",
            Refusal::MutatingInflight => "mutating_inflight",
        }
    }

    fn count(self) {
        if crate::metrics::enabled() {
            crate::metrics::global().api.refused(self.label());
        }
    }
}

/// Counted slots per key (a client address, a user name), at most `max` per key; `max` 0: no cap.
pub(crate) struct Slots<K> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One slot of a [`Slots`], given back when dropped.
pub(crate) struct Slot<K: Hash + Eq> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots { max, held: Mutex::new(HashMap::new()) })
    }

    /// A slot for `key`, or None when `key` holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), key })
    }

    /// How many slots `key` holds now.
    #[cfg(test)]
    pub(crate) fn held(&self, key: &K) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The caps of one API server.
pub(crate) struct Limits {
    pub connections: Arc<Slots<std::net::IpAddr>>,
    pub watches: Arc<Slots<String>>,
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
}

/// The caps an API server applies (`[api]` in the configuration); 0: no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_connections_per_client: usize,
    pub max_watches_per_user: usize,
    pub max_requests_inflight: usize,
    pub max_mutating_requests_inflight: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            max_watches_per_user: DEFAULT_MAX_WATCHES_PER_USER,
            max_requests_inflight: DEFAULT_MAX_REQUESTS_INFLIGHT,
            max_mutating_requests_inflight: DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT,
        }
    }
}

fn semaphore(max: usize) -> Option<Arc<Semaphore>> {
    (max > 0).then(|| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
}

impl Limits {
    pub(crate) fn new(caps: Caps) -> Limits {
        Limits {
            connections: Slots::new(caps.max_connections_per_client),
            watches: Slots::new(caps.max_watches_per_user),
            read_only: semaphore(caps.max_requests_inflight),
            mutating: semaphore(caps.max_mutating_requests_inflight),
        }
    }

    /// A connection slot for a client address; None (counted) over the cap.
    pub(crate) fn connection(&self, ip: std::net::IpAddr) -> Option<Slot<std::net::IpAddr>> {
        let slot = self.connections.take(ip);
        if slot.is_none() {
            Refusal::ConnectionsPerClient.count();
        }
        slot
    }

    /// A watch slot for a user; 429 (counted) over the cap.
    pub(crate) fn watch(&self, user: &str) -> Result<Slot<String>, ApiError> {
        self.watches.take(user.to_string()).ok_or_else(|| {
            Refusal::WatchesPerUser.count();
            too_many(format!(
                "Too many watches, please try again later: user {user:?} has reached its limit of concurrent watches"
            ))
        })
    }

    /// A slot among the requests in flight (long-running ones are not counted, as upstream);
    /// 429 (counted) when all are taken.
    pub(crate) fn inflight(&self, mutating: bool) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let (sem, refusal) = if mutating {
            (&self.mutating, Refusal::MutatingInflight)
        } else {
            (&self.read_only, Refusal::ReadOnlyInflight)
        };
        let Some(sem) = sem else { return Ok(None) };
        match sem.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => {
                refusal.count();
                Err(too_many("Too many requests, please try again later.".to_string()))
            }
        }
    }
}

/// Upstream's 429: reason TooManyRequests, `details.retryAfterSeconds` (the response carries the
/// same in `Retry-After`).
fn too_many(message: String) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", message);
    e.details = Some(serde_json::json!({"retryAfterSeconds": RETRY_AFTER_SECS}));
    e
}

/// A byte stream that holds a slot for as long as it lives: the connection slot of a client
/// stays taken while the socket is open, an upgraded (exec, port-forward) connection included.
pub(crate) struct Held<T, S> {
    pub io: T,
    _slot: S,
}

impl<T, S> Held<T, S> {
    pub(crate) fn new(io: T, slot: S) -> Self {
        Held { io, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin, S: Unpin> AsyncRead for Held<T, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, S: Unpin> AsyncWrite for Held<T, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_come_back_when_dropped() {
        let slots = Slots::new(2);
        let a1 = slots.take("a").expect("first");
        let a2 = slots.take("a").expect("second");
        assert!(slots.take("a").is_none(), "a third slot for the same key is refused");
        let b = slots.take("b").expect("another key is not affected");
        drop(a1);
        assert_eq!(slots.held(&"a"), 1);
        let a3 = slots.take("a").expect("a dropped slot comes back");
        drop((a2, a3, b));
        assert_eq!(slots.held(&"a"), 0);
        assert!(slots.held.lock().unwrap().is_empty(), "no entry is left for keys without slots");
    }

    #[test]
    fn zero_means_no_cap() {
        let slots = Slots::new(0);
        let held: Vec<_> = (0..1000).map(|_| slots.take(1u8).expect("no cap")).collect();
        assert_eq!(slots.held(&1), 1000);
        drop(held);
        assert_eq!(slots.held(&1), 0);
    }

    #[test]
    fn inflight_is_refused_with_429_and_retry_after_when_full() {
        let limits =
            Limits::new(Caps { max_requests_inflight: 1, max_mutating_requests_inflight: 1, ..Caps::default() });
        let p = limits.inflight(false).expect("first").expect("a permit");
        let e = limits.inflight(false).expect_err("full");
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        assert_eq!(e.details.as_ref().and_then(|d| d["retryAfterSeconds"].as_u64()), Some(1));
        let m = limits.inflight(true).expect("mutating has its own pool");
        drop((p, m));
        assert!(limits.inflight(false).is_ok(), "the permit came back");
    }
}

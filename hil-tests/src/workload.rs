//! Clients that write and read registers through the cluster while faults happen, recording
//! everything in a [`History`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use crate::history::{Call, History, Operation, Outcome};
use crate::rig::Rig;
use crate::shoal;

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent clients.
    pub clients: u32,
    /// Registers the clients share (`hil/k0` ...).
    pub keys: u32,
    /// Timeout of one operation; an operation past it has an unknown outcome.
    pub op_timeout: Duration,
    /// Pause after an operation that was not acknowledged.
    pub backoff: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions { clients: 2, keys: 8, op_timeout: Duration::from_secs(5), backoff: Duration::from_millis(100) }
    }
}

/// The register names a workload uses.
pub fn keys(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("hil/k{i}")).collect()
}

/// Running clients. Stop them with [`Workload::stop`].
pub struct Workload<'scope> {
    pub history: History,
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<String>>>,
    handles: Vec<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Workload<'scope> {
    /// Starts the clients in `scope`; each operation goes to the next host of `targets`.
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        rig: &'env dyn Rig,
        targets: Vec<String>,
        opts: WorkloadOptions,
        history: History,
    ) -> Workload<'scope> {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(targets));
        let mut handles = Vec::new();
        for client in 0..opts.clients {
            let (stop, targets, history, opts) = (stop.clone(), targets.clone(), history.clone(), opts.clone());
            handles.push(scope.spawn(move || {
                let keys = keys(opts.keys);
                let mut seq: u64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let host = {
                        let t = targets.lock().unwrap_or_else(|p| p.into_inner());
                        if t.is_empty() {
                            None
                        } else {
                            Some(t[(seq as usize + client as usize) % t.len()].clone())
                        }
                    };
                    let Some(host) = host else {
                        std::thread::sleep(opts.backoff);
                        continue;
                    };
                    let key = keys[((seq * 7 + u64::from(client) * 3) % u64::from(opts.keys.max(1))) as usize].clone();
                    let call = if seq % 2 == 1 {
                        Call::Put { key, value: format!("c{client}-{seq}") }
                    } else {
                        Call::Get { key }
                    };
                    let outcome = history.record(client, call, |call| match call {
                        Call::Put { key, value } => shoal::kv_put(rig, &host, key, value, opts.op_timeout),
                        Call::Get { key } => shoal::kv_get(rig, &host, key, opts.op_timeout),
                    });
                    if !matches!(outcome, Outcome::Ok(_)) {
                        std::thread::sleep(opts.backoff);
                    }
                }
            }));
        }
        Workload { history, stop, targets, handles }
    }

    /// Changes the hosts the clients talk to.
    pub fn set_targets(&self, targets: Vec<String>) {
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    /// Stops the clients and waits for their last operations.
    pub fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
        self.history
    }
}

/// Reads every register through every host in `hosts` and records the reads (client ids from 1000).
pub fn final_reads(rig: &dyn Rig, hosts: &[String], keys: &[String], history: &History, timeout: Duration) {
    for (i, host) in hosts.iter().enumerate() {
        for key in keys {
            history.record(FINAL_READ_CLIENT + i as u32, Call::Get { key: key.clone() }, |_| {
                shoal::kv_get(rig, host, key, timeout)
            });
        }
    }
}

/// Client ids of the final reads made by [`final_reads`] start here.
pub const FINAL_READ_CLIENT: u32 = 1000;

/// Acknowledged writes that the final reads show were lost: a final read of a key returns the
/// value of a write that ended before an acknowledged write of the same key began (or no value
/// at all after an acknowledged write). Values are unique per write.
pub fn lost_acked_writes(ops: &[Operation]) -> usize {
    let mut lost: Vec<(&str, &str)> = Vec::new();
    for read in ops.iter().filter(|o| o.client >= FINAL_READ_CLIENT) {
        let (Call::Get { key }, Outcome::Ok(value)) = (&read.call, &read.outcome) else { continue };
        let writer_end = match value {
            Some(v) => {
                let writer =
                    ops.iter().find(|o| matches!(&o.call, Call::Put { key: k, value: w } if k == key && w == v));
                match writer {
                    Some(w) if matches!(w.outcome, Outcome::Ok(_)) => Some(w.end_ns),
                    // an unanswered write may have taken effect as late as the read itself
                    Some(_) => Some(read.start_ns),
                    None => continue,
                }
            }
            None => None,
        };
        for w in ops {
            if let (Call::Put { key: k, value: v }, Outcome::Ok(_)) = (&w.call, &w.outcome) {
                if k == key
                    && writer_end.is_none_or(|e| w.start_ns > e)
                    && w.end_ns < read.start_ns
                    && !lost.contains(&(k, v))
                {
                    lost.push((k, v));
                }
            }
        }
    }
    lost.len()
}

/// Summary figures of the operations of a history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub acked_writes: usize,
    pub unknown_writes: usize,
    pub failed_writes: usize,
    pub ok_reads: usize,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    /// Longest time without an acknowledged write, from the first to the last one.
    pub max_write_gap_ms: f64,
}

/// Summarizes operations that started in `[from_ns, to_ns)`.
pub fn summarize(ops: &[Operation], from_ns: u64, to_ns: u64) -> Summary {
    let window: Vec<&Operation> = ops.iter().filter(|o| o.start_ns >= from_ns && o.start_ns < to_ns).collect();
    let mut s = Summary::default();
    let mut latencies = Vec::new();
    let mut ack_ends = Vec::new();
    for o in &window {
        match (&o.call, &o.outcome) {
            (Call::Put { .. }, Outcome::Ok(_)) => {
                s.acked_writes += 1;
                latencies.push((o.end_ns - o.start_ns) as f64 / 1e6);
                ack_ends.push(o.end_ns);
            }
            (Call::Put { .. }, Outcome::Unknown) => s.unknown_writes += 1,
            (Call::Put { .. }, Outcome::Failed) => s.failed_writes += 1,
            (Call::Get { .. }, Outcome::Ok(_)) => s.ok_reads += 1,
            _ => {}
        }
    }
    latencies.sort_by(f64::total_cmp);
    s.write_p50_ms = percentile(&latencies, 0.50);
    s.write_p99_ms = percentile(&latencies, 0.99);
    ack_ends.sort_unstable();
    s.max_write_gap_ms = ack_ends.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).fold(0.0, f64::max);
    s
}

/// Nearest-rank percentile of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Time from `from_ns` to the end of the first acknowledged write that started at or after it.
pub fn first_ack_after(ops: &[Operation], from_ns: u64) -> Option<f64> {
    ops.iter()
        .filter(|o| matches!(o.call, Call::Put { .. }) && matches!(o.outcome, Outcome::Ok(_)) && o.start_ns >= from_ns)
        .map(|o| o.end_ns)
        .min()
        .map(|end| (end - from_ns) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(put: bool, outcome: Outcome, start: u64, end: u64) -> Operation {
        let call = if put { Call::Put { key: "k".into(), value: "v".into() } } else { Call::Get { key: "k".into() } };
        Operation { client: 0, call, outcome, start_ns: start, end_ns: end }
    }

    #[test]
    fn summary_and_first_ack() {
        let ms = 1_000_000;
        let ops = [
            op(true, Outcome::Ok(None), 0, 10 * ms),
            op(true, Outcome::Unknown, 20 * ms, 30 * ms),
            op(true, Outcome::Ok(None), 40 * ms, 60 * ms),
            op(false, Outcome::Ok(None), 70 * ms, 80 * ms),
            op(true, Outcome::Failed, 90 * ms, 91 * ms),
        ];
        let s = summarize(&ops, 0, u64::MAX);
        assert_eq!((s.acked_writes, s.unknown_writes, s.failed_writes, s.ok_reads), (2, 1, 1, 1));
        assert_eq!(s.write_p50_ms, 10.0);
        assert_eq!(s.write_p99_ms, 20.0);
        assert_eq!(s.max_write_gap_ms, 50.0);
        assert_eq!(first_ack_after(&ops, 15 * ms), Some(45.0));
        assert_eq!(first_ack_after(&ops, 50 * ms), None);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn lost_writes_are_counted() {
        let put = |value: &str, start, end| Operation {
            client: 0,
            call: Call::Put { key: "k".into(), value: value.into() },
            outcome: Outcome::Ok(None),
            start_ns: start,
            end_ns: end,
        };
        let read = |value: Option<&str>, start| Operation {
            client: FINAL_READ_CLIENT,
            call: Call::Get { key: "k".into() },
            outcome: Outcome::Ok(value.map(str::to_string)),
            start_ns: start,
            end_ns: start + 1,
        };
        let ops = vec![put("a", 0, 10), put("b", 20, 30), put("c", 40, 50)];
        let mut fine = ops.clone();
        fine.push(read(Some("c"), 100));
        assert_eq!(lost_acked_writes(&fine), 0);
        let mut lost_two = ops.clone();
        lost_two.push(read(Some("a"), 100));
        assert_eq!(lost_acked_writes(&lost_two), 2);
        let mut lost_all = ops;
        lost_all.push(read(None, 100));
        assert_eq!(lost_acked_writes(&lost_all), 3);
    }
}

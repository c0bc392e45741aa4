//! Recording what clients did: every operation with its start and end instants and its outcome.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Call {
    /// Write `value` to `key`.
    Put { key: String, value: String },
    /// Read `key`.
    Get { key: String },
}

impl Call {
    pub fn key(&self) -> &str {
        match self {
            Call::Put { key, .. } | Call::Get { key } => key,
        }
    }
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Acknowledged; for a get, the value read (`None`: the key does not exist).
    Ok(Option<String>),
    /// Refused in a way that guarantees it had no effect.
    Failed,
    /// No answer (timeout, connection lost, error of unknown effect): a write may or may not have happened.
    Unknown,
}

/// One operation of one client; times are nanoseconds since the history began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: u32,
    pub call: Call,
    pub outcome: Outcome,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A shared, append-only log of operations from many client threads.
#[derive(Clone, Debug)]
pub struct History {
    origin: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History { origin: Instant::now(), ops: Arc::default() }
    }

    /// Nanoseconds since the history began.
    pub fn now_ns(&self) -> u64 {
        self.at(Instant::now())
    }

    /// An instant as nanoseconds since the history began.
    pub fn at(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Runs `f` as one operation of `client` and records it.
    pub fn record(&self, client: u32, call: Call, f: impl FnOnce(&Call) -> Outcome) -> Outcome {
        let start_ns = self.now_ns();
        let outcome = f(&call);
        let end_ns = self.now_ns();
        self.push(Operation { client, call, outcome: outcome.clone(), start_ns, end_ns });
        outcome
    }

    pub fn push(&self, op: Operation) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// A copy of everything recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

//! A linearizability checker for histories of per-key registers.
//!
//! The search is Wing & Gong's, with Lowe's memoisation as porcupine does it: walk the call and
//! return events in time order, tentatively linearize a call whose effect the model accepts, back
//! up when a return is reached whose call is not yet linearized, and never revisit a (set of
//! linearized operations, register state) pair. Registers are independent, so the history is split
//! per key first (P-compositionality) and each key is searched on its own.
//!
//! Outcomes: a failed operation had no effect and is dropped; a read without an answer tells
//! nothing and is dropped; a write without an answer may have happened at any point after its call,
//! or never: it gets a return at infinity, so the search may place it anywhere after its call,
//! including after every other operation (which is the same as never).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{Call, Operation, Outcome};

/// Search steps per key before the checker gives up.
pub const DEFAULT_STEP_BUDGET: u64 = 20_000_000;

/// What the checker concluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Some order of the operations, each inside its interval, explains every result.
    Linearizable,
    /// No such order exists for `key`; `operations` are that key's operations, by start time.
    NotLinearizable { key: String, operations: Vec<Operation> },
    /// The search for `key` ran out of its step budget.
    Inconclusive { key: String },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks a history with [`DEFAULT_STEP_BUDGET`].
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

/// Checks a history, giving up on a key after `budget` search steps.
pub fn check_with_budget(history: &[Operation], budget: u64) -> Verdict {
    let mut per_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        per_key.entry(op.call.key()).or_default().push(op);
    }
    for (key, ops) in per_key {
        match check_key(&ops, budget) {
            KeyResult::Ok => {}
            KeyResult::Violation => {
                let mut operations: Vec<Operation> = ops.into_iter().cloned().collect();
                operations.sort_by_key(|o| o.start_ns);
                return Verdict::NotLinearizable { key: key.to_string(), operations };
            }
            KeyResult::OutOfBudget => return Verdict::Inconclusive { key: key.to_string() },
        }
    }
    Verdict::Linearizable
}

enum KeyResult {
    Ok,
    Violation,
    OutOfBudget,
}

#[derive(Clone, Copy)]
enum Step {
    /// Write value id.
    Put(u32),
    /// Read that returned this value id (None: key absent).
    Get(Option<u32>),
}

const NIL: usize = usize::MAX;

fn check_key(ops: &[&Operation], budget: u64) -> KeyResult {
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &String| -> u32 {
        let next = values.len() as u32;
        *values.entry(v.clone()).or_insert(next)
    };
    // A write of unknown outcome whose value nobody read can always be placed after everything
    // else, which is the same as leaving it out: leave it out, so a burst of unanswered writes
    // (a partition) does not blow up the search.
    let read_values: HashSet<&String> = ops
        .iter()
        .filter_map(|op| match (&op.call, &op.outcome) {
            (Call::Get { .. }, Outcome::Ok(Some(v))) => Some(v),
            _ => None,
        })
        .collect();
    // (step, call time, return time); u64::MAX for a write of unknown outcome
    let mut kept: Vec<(Step, u64, u64)> = Vec::new();
    for op in ops {
        match (&op.call, &op.outcome) {
            (Call::Put { value, .. }, Outcome::Ok(_)) => kept.push((Step::Put(intern(value)), op.start_ns, op.end_ns)),
            (Call::Put { value, .. }, Outcome::Unknown) if read_values.contains(value) => {
                kept.push((Step::Put(intern(value)), op.start_ns, u64::MAX))
            }
            (Call::Get { .. }, Outcome::Ok(read)) => {
                kept.push((Step::Get(read.as_ref().map(&mut intern)), op.start_ns, op.end_ns))
            }
            _ => {}
        }
    }
    let n = kept.len();
    if n == 0 {
        return KeyResult::Ok;
    }
    // events: node 0 is the list head; node 1 + 2i is the call of op i, 2 + 2i its return
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, &(_, call, ret)) in kept.iter().enumerate() {
        events.push((call, true, 1 + 2 * i));
        events.push((ret.max(call), false, 2 + 2 * i));
    }
    // time order; at equal times calls first, so touching operations count as concurrent
    events.sort_by_key(|&(t, is_call, node)| (t, !is_call, node));
    let total = 2 * n + 1;
    let mut next = vec![NIL; total];
    let mut prev = vec![NIL; total];
    let mut last = 0;
    for &(_, _, node) in &events {
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    let op_of = |node: usize| (node - 1) / 2;
    let is_call = |node: usize| node % 2 == 1;
    let partner = |node: usize| if node % 2 == 1 { node + 1 } else { node - 1 };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    let mut calls: Vec<(usize, Option<u32>)> = Vec::new();
    let mut state: Option<u32> = None;
    let mut entry = next[0];
    let mut steps: u64 = 0;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = next[e];
        prev[next[e]] = prev[e];
        let m = partner(e);
        next[prev[m]] = next[m];
        if next[m] != NIL {
            prev[next[m]] = prev[m];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let m = partner(e);
        next[prev[m]] = m;
        if next[m] != NIL {
            prev[next[m]] = m;
        }
        next[prev[e]] = e;
        prev[next[e]] = e;
    };

    loop {
        if entry == NIL {
            return KeyResult::Ok;
        }
        steps += 1;
        if steps > budget {
            return KeyResult::OutOfBudget;
        }
        if is_call(entry) {
            let i = op_of(entry);
            let after = match kept[i].0 {
                Step::Put(v) => Some(Some(v)),
                Step::Get(read) => (read == state).then_some(state),
            };
            if let Some(new_state) = after {
                let mut candidate = linearized.clone();
                candidate[i / 64] |= 1 << (i % 64);
                if cache.insert((candidate.clone(), new_state)) {
                    calls.push((entry, state));
                    state = new_state;
                    linearized = candidate;
                    lift(&mut next, &mut prev, entry);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            if kept[op_of(entry)].2 == u64::MAX {
                // only writes of unknown outcome are left: they go after everything else
                return KeyResult::Ok;
            }
            let Some((call, old_state)) = calls.pop() else {
                return KeyResult::Violation;
            };
            let i = op_of(call);
            state = old_state;
            linearized[i / 64] &= !(1 << (i % 64));
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put(client: u32, key: &str, value: &str, start: u64, end: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            call: Call::Put { key: key.into(), value: value.into() },
            outcome,
            start_ns: start,
            end_ns: end,
        }
    }

    fn get(client: u32, key: &str, read: Option<&str>, start: u64, end: u64) -> Operation {
        Operation {
            client,
            call: Call::Get { key: key.into() },
            outcome: Outcome::Ok(read.map(str::to_string)),
            start_ns: start,
            end_ns: end,
        }
    }

    const OK: Outcome = Outcome::Ok(None);

    #[test]
    fn empty_and_simple_histories() {
        assert!(check(&[]).is_linearizable());
        let h = [put(0, "k", "1", 0, 10, OK), get(1, "k", Some("1"), 20, 30)];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_rejected() {
        let h = [put(0, "k", "1", 0, 10, OK), put(0, "k", "2", 20, 30, OK), get(1, "k", Some("1"), 40, 50)];
        match check(&h) {
            Verdict::NotLinearizable { key, operations } => {
                assert_eq!(key, "k");
                assert_eq!(operations.len(), 3);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn reading_a_value_never_written_is_rejected() {
        let h = [put(0, "k", "1", 0, 10, OK), get(1, "k", Some("9"), 20, 30)];
        assert!(!check(&h).is_linearizable());
        let h = [get(1, "k", Some("1"), 0, 5), put(0, "k", "1", 10, 20, OK)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn new_then_old_reads_during_a_write_are_rejected() {
        let h = [put(0, "k", "1", 0, 100, OK), get(1, "k", Some("1"), 10, 20), get(2, "k", None, 30, 40)];
        assert!(!check(&h).is_linearizable());
        // each read alone is fine
        let h = [put(0, "k", "1", 0, 100, OK), get(2, "k", None, 30, 40), get(1, "k", Some("1"), 50, 60)];
        assert!(check(&h).is_linearizable());
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen_but_not_both() {
        let unknown = Outcome::Unknown;
        let never = [put(0, "k", "1", 0, 5, unknown.clone()), get(1, "k", None, 10, 20)];
        assert!(check(&never).is_linearizable());
        let late = [put(0, "k", "1", 0, 5, unknown.clone()), get(1, "k", None, 10, 20), get(1, "k", Some("1"), 30, 40)];
        assert!(check(&late).is_linearizable());
        let flicker =
            [put(0, "k", "1", 0, 5, unknown.clone()), get(1, "k", Some("1"), 10, 20), get(1, "k", None, 30, 40)];
        assert!(!check(&flicker).is_linearizable());
        let failed = [put(0, "k", "1", 0, 5, Outcome::Failed), get(1, "k", Some("1"), 10, 20)];
        assert!(!check(&failed).is_linearizable());
    }

    #[test]
    fn many_unanswered_writes_stay_cheap() {
        let mut h: Vec<Operation> =
            (0..200).map(|i| put(9, "k", &format!("lost{i}"), i * 10, i * 10 + 5, Outcome::Unknown)).collect();
        h.push(put(0, "k", "1", 0, 10, OK));
        h.push(get(1, "k", Some("1"), 3000, 3010));
        assert!(check_with_budget(&h, 10_000).is_linearizable());
        h.push(put(9, "k", "seen", 2990, 2995, Outcome::Unknown));
        h.push(get(1, "k", Some("seen"), 3020, 3030));
        assert!(check_with_budget(&h, 10_000).is_linearizable());
    }

    #[test]
    fn keys_are_independent() {
        let h = [put(0, "a", "1", 0, 10, OK), get(1, "b", None, 20, 30), get(1, "a", Some("1"), 20, 30)];
        assert!(check(&h).is_linearizable());
        let h = [put(0, "a", "1", 0, 10, OK), get(1, "b", Some("1"), 20, 30)];
        assert!(matches!(check(&h), Verdict::NotLinearizable { key, .. } if key == "b"));
    }

    #[test]
    fn tiny_budget_is_inconclusive_not_wrong() {
        let h: Vec<Operation> = (0..20).map(|i| put(i, "k", &i.to_string(), 0, 100, OK)).collect();
        assert!(matches!(check_with_budget(&h, 3), Verdict::Inconclusive { .. }));
        assert!(check(&h).is_linearizable());
    }

    #[derive(Clone, Debug)]
    struct GenOp {
        key: u8,
        put: bool,
        unknown: bool,
        takes_effect: bool,
        start: u64,
        len: u64,
        point: u64,
    }

    fn gen_op() -> impl Strategy<Value = GenOp> {
        (0u8..3, any::<bool>(), 0u8..10, any::<bool>(), 0u64..1000, 1u64..200, 0u64..1000).prop_map(
            |(key, put, u, takes_effect, start, len, frac)| GenOp {
                key,
                put,
                unknown: put && u == 0,
                takes_effect,
                start,
                len,
                point: start + len * frac / 1000,
            },
        )
    }

    /// Runs the operations against real registers in the order of their linearization points.
    fn simulate(ops: &[GenOp], sequential: bool) -> Vec<Operation> {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        if !sequential {
            order.sort_by_key(|&i| (ops[i].point, i));
        }
        let mut regs: HashMap<u8, String> = HashMap::new();
        let mut out = Vec::new();
        for (pos, &i) in order.iter().enumerate() {
            let g = &ops[i];
            let key = format!("k{}", g.key);
            let (start, end) =
                if sequential { (pos as u64 * 10, pos as u64 * 10 + 5) } else { (g.start, g.start + g.len) };
            if g.put {
                let value = format!("v{i}");
                let outcome = if g.unknown { Outcome::Unknown } else { Outcome::Ok(None) };
                if !g.unknown || g.takes_effect {
                    regs.insert(g.key, value.clone());
                }
                out.push(Operation {
                    client: i as u32,
                    call: Call::Put { key, value },
                    outcome,
                    start_ns: start,
                    end_ns: end,
                });
            } else {
                let read = regs.get(&g.key).cloned();
                out.push(Operation {
                    client: i as u32,
                    call: Call::Get { key },
                    outcome: Outcome::Ok(read),
                    start_ns: start,
                    end_ns: end,
                });
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn sequential_histories_are_accepted(ops in proptest::collection::vec(gen_op(), 0..60)) {
            let h = simulate(&ops, true);
            prop_assert!(check(&h).is_linearizable());
        }

        #[test]
        fn concurrent_histories_with_valid_points_are_accepted(ops in proptest::collection::vec(gen_op(), 0..40)) {
            // unknown writes that did not take effect are legal too, so keep them
            let h = simulate(&ops, false);
            prop_assert!(check(&h).is_linearizable(), "{:?}", h);
        }

        #[test]
        fn a_wrong_read_in_a_sequential_history_is_rejected(
            ops in proptest::collection::vec(gen_op(), 1..60),
            pick in any::<proptest::sample::Index>(),
        ) {
            let ops: Vec<GenOp> = ops.into_iter().map(|mut g| { g.unknown = false; g }).collect();
            let mut h = simulate(&ops, true);
            let reads: Vec<usize> = (0..h.len()).filter(|&i| matches!(h[i].call, Call::Get { .. })).collect();
            prop_assume!(!reads.is_empty());
            let i = reads[pick.index(reads.len())];
            h[i].outcome = match &h[i].outcome {
                Outcome::Ok(Some(v)) => if v == "v0" { Outcome::Ok(None) } else { Outcome::Ok(Some("v0".to_string())) },
                _ => Outcome::Ok(Some("never-written".to_string())),
            };
            // "v0" may be the right answer only if it equals the true value, which the match excludes
            prop_assert!(!check(&h).is_linearizable());
        }
    }
}

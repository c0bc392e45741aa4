//! Which member should vote: the leader keeps 3 voters (5 once 5 members are healthy),
//! promotes healthy learners and replaces voters that stayed unhealthy past a grace period,
//! one membership change at a time.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::types::VoterChange;

/// Remembers since when each member has been unhealthy.
#[derive(Debug, Default)]
pub(crate) struct HealthTracker {
    unhealthy_since: BTreeMap<u64, Instant>,
}

impl HealthTracker {
    /// Records the healthy set seen at `now` for `members`.
    pub fn observe(&mut self, members: &BTreeSet<u64>, healthy: &BTreeSet<u64>, now: Instant) {
        self.unhealthy_since.retain(|id, _| members.contains(id) && !healthy.contains(id));
        for id in members {
            if !healthy.contains(id) {
                self.unhealthy_since.entry(*id).or_insert(now);
            }
        }
    }

    /// Unhealthy for longer than `grace`.
    pub fn dead(&self, id: u64, now: Instant, grace: Duration) -> bool {
        self.unhealthy_since.get(&id).is_some_and(|since| now.saturating_duration_since(*since) >= grace)
    }
}

/// How long members may stay unhealthy before the leader acts on them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grace {
    pub voter: Duration,
    pub learner: Duration,
}

/// The one change to make now, if any. `leader` is never demoted or replaced.
pub(crate) fn plan(
    leader: u64,
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    healthy: &BTreeSet<u64>,
    tracker: &HealthTracker,
    now: Instant,
    grace: Grace,
) -> Option<VoterChange> {
    let is_healthy = |id: &u64| *id == leader || healthy.contains(id);
    let is_dead = |id: &u64| *id != leader && tracker.dead(*id, now, grace.voter);
    // Members counted as present: healthy, or unhealthy for less than the grace period.
    let present = voters.iter().chain(learners.iter()).filter(|id| !is_dead(id)).count();
    let target = if present >= 5 {
        5
    } else if present >= 3 {
        3
    } else {
        // Too few members for a fault-tolerant group: keep what there is.
        voters.len().max(1)
    };
    let spare = learners.iter().find(|id| is_healthy(id) && !is_dead(id)).copied();
    if let Some(dead) = voters.iter().find(|id| is_dead(id)).copied() {
        if let Some(added) = spare {
            return Some(VoterChange::Replace { removed: dead, added });
        }
        if voters.len() > target || voters.len() > 3 {
            return Some(VoterChange::Demote { node_id: dead });
        }
    }
    if voters.len() < target {
        if let Some(node_id) = spare {
            return Some(VoterChange::Promote { node_id });
        }
    }
    if voters.len() > target {
        // Demote the highest-numbered healthy voter that is not the leader.
        if let Some(node_id) = voters.iter().rev().find(|id| **id != leader).copied() {
            return Some(VoterChange::Demote { node_id });
        }
    }
    // A learner gone for good: stop replicating to it.
    if let Some(node_id) = learners.iter().find(|id| **id != leader && tracker.dead(**id, now, grace.learner)).copied()
    {
        return Some(VoterChange::RemoveLearner { node_id });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn run(voters: &[u64], learners: &[u64], healthy: &[u64], unhealthy_for: Duration) -> Option<VoterChange> {
        let start = Instant::now();
        let mut t = HealthTracker::default();
        let members: BTreeSet<u64> = voters.iter().chain(learners).copied().collect();
        t.observe(&members, &set(healthy), start);
        let grace = Grace { voter: Duration::from_secs(30), learner: Duration::from_secs(600) };
        plan(1, &set(voters), &set(learners), &set(healthy), &t, start + unhealthy_for, grace)
    }

    #[test]
    fn promotes_learners_up_to_three_then_five() {
        assert_eq!(run(&[1], &[2, 3], &[1, 2, 3], Duration::ZERO), Some(VoterChange::Promote { node_id: 2 }));
        assert_eq!(run(&[1, 2], &[3], &[1, 2, 3], Duration::ZERO), Some(VoterChange::Promote { node_id: 3 }));
        assert_eq!(run(&[1, 2, 3], &[4], &[1, 2, 3, 4], Duration::ZERO), None);
        assert_eq!(
            run(&[1, 2, 3], &[4, 5], &[1, 2, 3, 4, 5], Duration::ZERO),
            Some(VoterChange::Promote { node_id: 4 })
        );
        assert_eq!(run(&[1, 2], &[], &[1, 2], Duration::ZERO), None);
    }

    #[test]
    fn replaces_a_dead_voter_only_after_the_grace_period() {
        assert_eq!(run(&[1, 2, 3], &[4], &[1, 2, 4], Duration::from_secs(5)), None);
        assert_eq!(
            run(&[1, 2, 3], &[4], &[1, 2, 4], Duration::from_secs(31)),
            Some(VoterChange::Replace { removed: 3, added: 4 })
        );
    }

    #[test]
    fn five_voters_shrink_to_three_when_two_die() {
        let dead = Duration::from_secs(60);
        assert_eq!(run(&[1, 2, 3, 4, 5], &[], &[1, 2, 3], dead), Some(VoterChange::Demote { node_id: 4 }));
        assert_eq!(run(&[1, 2, 3, 5], &[4], &[1, 2, 3], dead), Some(VoterChange::Demote { node_id: 5 }));
        assert_eq!(run(&[1, 2, 3], &[4, 5], &[1, 2, 3], dead), None);
    }

    #[test]
    fn two_workers_and_a_witness_keep_three_voters_when_one_dies() {
        // 1 and 2 run workloads, 3 is the witness: all three vote.
        assert_eq!(run(&[1], &[2, 3], &[1, 2, 3], Duration::ZERO), Some(VoterChange::Promote { node_id: 2 }));
        assert_eq!(run(&[1, 2], &[3], &[1, 2, 3], Duration::ZERO), Some(VoterChange::Promote { node_id: 3 }));
        // Worker 2 powered off for long: with no learner to take its place the group stays at
        // three voters, so worker 1 and the witness remain a majority and nothing is demoted.
        assert_eq!(run(&[1, 2, 3], &[], &[1, 3], Duration::from_secs(3600)), None);
    }

    #[test]
    fn never_touches_the_leader() {
        assert_eq!(run(&[1, 2, 3], &[], &[2, 3], Duration::from_secs(600)), None);
    }

    #[test]
    fn removes_a_learner_only_after_the_learner_grace() {
        assert_eq!(run(&[1, 2, 3], &[4], &[1, 2, 3], Duration::from_secs(599)), None);
        assert_eq!(
            run(&[1, 2, 3], &[4], &[1, 2, 3], Duration::from_secs(600)),
            Some(VoterChange::RemoveLearner { node_id: 4 })
        );
        // A voter to replace comes first.
        assert_eq!(
            run(&[1, 2, 3], &[4, 5], &[1, 2, 5], Duration::from_secs(600)),
            Some(VoterChange::Replace { removed: 3, added: 5 })
        );
    }
}

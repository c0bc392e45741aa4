//! Leader churn: how much longer a follower waits before it stands for election when leaders
//! have been replaced one after another.
//!
//! The election timing is tight (a silent leader is replaced about 0.6 s after its last
//! heartbeat). On an overloaded machine that tightness feeds itself: a starved leader misses
//! its heartbeats, a follower takes over, the new leader starts the controllers and lists
//! everything again, is starved in turn, and the cluster spends its time electing instead of
//! committing. Each leader that is replaced within [`SHORT_REIGN`] of its election raises the
//! churn level by one (up to [`MAX_LEVEL`]); at level `n` a follower waits
//! `(2^n - 1) x lease` longer. Every [`DECAY`] of one leader's reign lowers the level by one,
//! so a cluster that has been stable for a while (and its first election) fails over at full
//! speed.
use std::time::{Duration, Instant};

use crate::raft_types::NodeId;

/// A leader replaced sooner than this after its election counts as churn.
pub(crate) const SHORT_REIGN: Duration = Duration::from_secs(10);
/// One level is forgiven for each such stretch of one leader's reign.
pub(crate) const DECAY: Duration = Duration::from_secs(30);
/// The highest level: a follower waits at most 7 leases more.
pub(crate) const MAX_LEVEL: u32 = 3;

#[derive(Debug)]
pub(crate) struct Churn {
    leader: Option<NodeId>,
    since: Instant,
    level: u32,
}

impl Churn {
    pub(crate) fn new(now: Instant) -> Self {
        Churn { leader: None, since: now, level: 0 }
    }

    /// The level now, with the current reign's decay applied.
    pub(crate) fn level(&self, now: Instant) -> u32 {
        let reign = now.saturating_duration_since(self.since);
        let forgiven = u32::try_from(reign.as_secs() / DECAY.as_secs()).unwrap_or(u32::MAX);
        self.level.saturating_sub(forgiven)
    }

    /// Records the leader a node now follows (or is); `None` (no leader known yet) changes
    /// nothing. Returns the new level when it rose.
    pub(crate) fn observe(&mut self, leader: Option<NodeId>, now: Instant) -> Option<u32> {
        let new = leader?;
        if self.leader == Some(new) {
            return None;
        }
        let previous = self.leader.replace(new);
        let level = self.level(now);
        let short = now.saturating_duration_since(self.since) < SHORT_REIGN;
        self.since = now;
        if previous.is_some() && short {
            self.level = (level + 1).min(MAX_LEVEL);
            return (self.level > level).then_some(self.level);
        }
        self.level = level;
        None
    }

    /// How much longer than usual a follower waits for a silent leader.
    pub(crate) fn extra_wait(&self, lease: Duration, now: Instant) -> Duration {
        lease * ((1u32 << self.level(now)) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(500);

    #[test]
    fn the_first_leader_and_a_long_reign_cost_nothing() {
        let t0 = Instant::now();
        let mut c = Churn::new(t0);
        assert_eq!(c.observe(None, t0), None);
        assert_eq!(c.observe(Some(1), t0), None, "the first election is not churn");
        assert_eq!(c.extra_wait(LEASE, t0), Duration::ZERO);
        // Leader 1 reigned a minute, then died: a normal failover, at full speed.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(c.observe(Some(2), t1), None);
        assert_eq!(c.extra_wait(LEASE, t1), Duration::ZERO);
        // The same leader seen again is no change.
        assert_eq!(c.observe(Some(2), t1 + Duration::from_secs(1)), None);
    }

    #[test]
    fn leaders_replaced_in_a_row_back_off_up_to_the_cap() {
        let t0 = Instant::now();
        let mut c = Churn::new(t0);
        c.observe(Some(1), t0);
        let mut t = t0;
        let mut waits = Vec::new();
        for leader in 2..=6 {
            t += Duration::from_secs(1);
            c.observe(Some(leader), t);
            waits.push(c.extra_wait(LEASE, t).as_millis());
        }
        assert_eq!(waits, vec![500, 1500, 3500, 3500, 3500]);
    }

    #[test]
    fn a_stable_leader_wins_the_levels_back() {
        let t0 = Instant::now();
        let mut c = Churn::new(t0);
        c.observe(Some(1), t0);
        for (i, leader) in (2..=4).enumerate() {
            c.observe(Some(leader), t0 + Duration::from_secs(i as u64 + 1));
        }
        let elected = t0 + Duration::from_secs(3);
        assert_eq!(c.level(elected), 3);
        assert_eq!(c.level(elected + DECAY), 2);
        assert_eq!(c.level(elected + DECAY * 3), 0);
        // A later failover after a long reign starts from the decayed level, not above it.
        let later = elected + DECAY * 2;
        assert_eq!(c.observe(Some(5), later), None);
        assert_eq!(c.level(later), 1);
    }
}

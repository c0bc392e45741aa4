//! Turns the raw liveness of gossip into the liveness shoal reports, damped against flapping.
//!
//! The rule (docs/gossip.md):
//! - raw alive = chitchat's phi detector says alive AND the node's heartbeat advanced within
//!   `dead_after`;
//! - alive -> dead: at once, when raw liveness is lost (counted as one "death");
//! - dead -> alive: only after raw liveness has held continuously for the revive hold, which is
//!   `revive_hold * 2^(deaths in the last flap_window - 1)`, capped at `revive_hold_max`;
//! - a node never yet reported alive is reported alive at once (joins are not delayed).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DampingConfig {
    pub dead_after: Duration,
    pub revive_hold: Duration,
    pub revive_hold_max: Duration,
    pub flap_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Died,
    Revived,
}

#[derive(Debug)]
pub(crate) struct NodeLiveness {
    reported_alive: bool,
    ever_alive: bool,
    heartbeat: (u64, u64),
    heartbeat_changed_at: Instant,
    raw_alive_since: Option<Instant>,
    deaths: VecDeque<Instant>,
    /// Returns to raw liveness that were held back (flaps damped).
    damped: u64,
}

impl NodeLiveness {
    pub(crate) fn new(now: Instant, generation: u64, heartbeat: u64) -> Self {
        Self {
            reported_alive: false,
            ever_alive: false,
            heartbeat: (generation, heartbeat),
            heartbeat_changed_at: now,
            raw_alive_since: None,
            deaths: VecDeque::new(),
            damped: 0,
        }
    }

    pub(crate) fn alive(&self) -> bool {
        self.reported_alive
    }

    /// When the node's heartbeat last advanced (or its generation changed).
    pub(crate) fn heartbeat_changed_at(&self) -> Instant {
        self.heartbeat_changed_at
    }

    /// How many returns to raw liveness were held back so far (flaps damped).
    pub(crate) fn damped(&self) -> u64 {
        self.damped
    }

    /// How long raw liveness must now hold before a dead node is reported alive again.
    pub(crate) fn current_hold(&self, cfg: &DampingConfig) -> Duration {
        if !self.ever_alive || self.deaths.is_empty() {
            return Duration::ZERO;
        }
        let doublings = (self.deaths.len() - 1).min(20) as u32;
        cfg.revive_hold.saturating_mul(1u32 << doublings).min(cfg.revive_hold_max)
    }

    /// Feeds one observation: the node's (generation, heartbeat) and the phi detector's verdict.
    pub(crate) fn observe(
        &mut self,
        cfg: &DampingConfig,
        now: Instant,
        generation: u64,
        heartbeat: u64,
        detector_alive: bool,
    ) -> Transition {
        if (generation, heartbeat) != self.heartbeat {
            self.heartbeat = (generation, heartbeat);
            self.heartbeat_changed_at = now;
        }
        while self.deaths.front().is_some_and(|t| now.saturating_duration_since(*t) > cfg.flap_window) {
            self.deaths.pop_front();
        }
        let fresh = now.saturating_duration_since(self.heartbeat_changed_at) <= cfg.dead_after;
        let raw_alive = detector_alive && fresh;
        if !raw_alive {
            self.raw_alive_since = None;
            if self.reported_alive {
                self.reported_alive = false;
                self.deaths.push_back(now);
                return Transition::Died;
            }
            return Transition::None;
        }
        if self.reported_alive {
            return Transition::None;
        }
        if self.raw_alive_since.is_none() && !self.current_hold(cfg).is_zero() {
            self.damped += 1;
        }
        let since = *self.raw_alive_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.current_hold(cfg) {
            self.reported_alive = true;
            self.ever_alive = true;
            self.raw_alive_since = None;
            return Transition::Revived;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DampingConfig {
        DampingConfig {
            dead_after: Duration::from_millis(2500),
            revive_hold: Duration::from_secs(2),
            revive_hold_max: Duration::from_secs(60),
            flap_window: Duration::from_secs(600),
        }
    }

    #[test]
    fn new_node_is_alive_at_once_and_dies_at_once() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut n = NodeLiveness::new(t0, 1, 1);
        assert_eq!(n.observe(&cfg, t0, 1, 2, true), Transition::Revived);
        assert!(n.alive());
        assert_eq!(n.damped(), 0, "a join is not a flap");
        assert_eq!(n.observe(&cfg, t0 + Duration::from_millis(100), 1, 3, false), Transition::Died);
        assert!(!n.alive());
    }

    #[test]
    fn silent_heartbeat_kills_even_if_detector_says_alive() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut n = NodeLiveness::new(t0, 1, 1);
        n.observe(&cfg, t0, 1, 2, true);
        assert_eq!(n.observe(&cfg, t0 + Duration::from_secs(2), 1, 2, true), Transition::None);
        assert_eq!(n.observe(&cfg, t0 + Duration::from_secs(3), 1, 2, true), Transition::Died);
    }

    #[test]
    fn revive_hold_doubles_with_each_flap_and_is_capped() {
        let cfg = cfg();
        let mut t = Instant::now();
        let mut hb = 1;
        let mut n = NodeLiveness::new(t, 1, hb);
        n.observe(&cfg, t, 1, hb, true);
        let mut holds = Vec::new();
        for _ in 0..7 {
            t += Duration::from_millis(100);
            hb += 1;
            assert_eq!(n.observe(&cfg, t, 1, hb, false), Transition::Died);
            holds.push(n.current_hold(&cfg).as_secs());
            // alive continuously until revived
            let start = t;
            loop {
                t += Duration::from_millis(100);
                hb += 1;
                if n.observe(&cfg, t, 1, hb, true) == Transition::Revived {
                    break;
                }
            }
            assert!(t.duration_since(start) >= n.current_hold(&cfg).min(Duration::from_secs(60)) / 2);
        }
        assert_eq!(holds, vec![2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn interrupted_revival_starts_over() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut n = NodeLiveness::new(t0, 1, 1);
        n.observe(&cfg, t0, 1, 2, true);
        n.observe(&cfg, t0 + Duration::from_millis(100), 1, 3, false);
        let ms = |m| t0 + Duration::from_millis(m);
        assert_eq!(n.observe(&cfg, ms(200), 1, 4, true), Transition::None);
        assert_eq!(n.observe(&cfg, ms(1500), 1, 5, true), Transition::None);
        assert_eq!(n.observe(&cfg, ms(1600), 1, 6, false), Transition::None);
        assert_eq!(n.observe(&cfg, ms(1700), 1, 7, true), Transition::None);
        assert_eq!(n.observe(&cfg, ms(3600), 1, 8, true), Transition::None);
        assert_eq!(n.observe(&cfg, ms(3700), 1, 9, true), Transition::Revived);
        assert_eq!(n.damped(), 2, "each return held back counts as one flap damped");
    }

    #[test]
    fn old_deaths_are_forgotten_after_the_window() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut n = NodeLiveness::new(t0, 1, 1);
        n.observe(&cfg, t0, 1, 2, true);
        n.observe(&cfg, t0 + Duration::from_secs(1), 1, 3, false);
        n.observe(&cfg, t0 + Duration::from_secs(2), 1, 4, true);
        n.observe(&cfg, t0 + Duration::from_secs(4), 1, 5, true);
        assert!(n.alive());
        n.observe(&cfg, t0 + Duration::from_secs(5), 1, 6, false);
        assert_eq!(n.current_hold(&cfg), Duration::from_secs(4));
        // A node dead for longer than the flap window is not flapping: it comes back at once.
        let later = t0 + Duration::from_secs(700);
        assert_eq!(n.observe(&cfg, later, 1, 7, true), Transition::Revived);
    }
}

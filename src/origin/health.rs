//! Health state machine for one origin address, following STON's
//! `<Exclusion>` and `<Recovery>` semantics, as plain data and pure functions.
//!
//! The caller does all I/O (requests, probes, timers) and reports outcomes
//! here with the current `Instant`, so every transition is deterministic and
//! testable without sockets or sleeping.
//!
//! * `Exclusion` n: n consecutive failures (connect/receive timeout,
//!   connection error) exclude the address; any success resets the count;
//!   0 never excludes.
//! * `Recovery` n (`<Recovery Cycle="10" Uri="/" ResCode="0">5</Recovery>`):
//!   an excluded address is probed every `Cycle` seconds; n consecutive probe
//!   responses whose status matches `ResCode` re-admit it; 0 never recovers.

use std::time::{Duration, Instant};

/// Exclusion and recovery settings shared by the addresses of one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that exclude an address; 0 = never exclude.
    pub exclusion: u32,
    /// Consecutive matching probe responses that re-admit it; 0 = never.
    pub recovery: u32,
    /// Time between probes of an excluded address (`Cycle`); bounded by the
    /// config parser (whole seconds), so adding it to an `Instant` can't overflow.
    pub cycle: Duration,
    /// Probe statuses that count as healthy (`ResCode`); empty = any response.
    pub probe_status: Vec<u16>,
}

impl Default for HealthPolicy {
    /// STON's defaults: `<Exclusion>3</Exclusion>` and
    /// `<Recovery Cycle="10" Uri="/" ResCode="0">5</Recovery>`.
    fn default() -> Self {
        HealthPolicy {
            exclusion: 3,
            recovery: 5,
            cycle: Duration::from_secs(10),
            probe_status: Vec::new(),
        }
    }
}

/// Whether a probe response with `status` counts towards recovery.
pub fn status_matches(policy: &HealthPolicy, status: u16) -> bool {
    policy.probe_status.is_empty() || policy.probe_status.contains(&status)
}

/// Where an address is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Taking traffic; counts failures since the last success.
    Active {
        /// Failures in a row; reset by any success.
        consecutive_failures: u32,
    },
    /// Taken out of rotation; only probes reach it until it recovers.
    Excluded {
        /// When it was excluded, for status pages and logs.
        since: Instant,
        /// Matching probe responses in a row.
        probe_successes: u32,
        /// Earliest time the next probe may start.
        next_probe: Instant,
    },
}

/// What a reported outcome did to the address, so the caller can log it
/// and update whatever it derives from usability (e.g. the hash ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No change in usability.
    None,
    /// The address just became unusable.
    Excluded,
    /// The address just became usable again.
    Recovered,
}

/// Health of one origin address. Not synchronised: hold it behind a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressHealth {
    state: HealthState,
}

impl Default for AddressHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressHealth {
    /// A fresh address: active with no failures.
    pub fn new() -> Self {
        AddressHealth {
            state: HealthState::Active {
                consecutive_failures: 0,
            },
        }
    }

    /// The current state, for status reporting.
    pub fn state(&self) -> &HealthState {
        &self.state
    }

    /// Whether regular traffic may be sent to this address.
    pub fn is_usable(&self) -> bool {
        matches!(self.state, HealthState::Active { .. })
    }

    /// Records a successful request, clearing the failure count.
    ///
    /// Ignored while excluded: a request that was already in flight when the
    /// address was excluded must not bypass the `Recovery` probe count.
    pub fn on_success(&mut self) {
        if let HealthState::Active {
            consecutive_failures,
        } = &mut self.state
        {
            *consecutive_failures = 0;
        }
    }

    /// Records a failed request (timeout or connection error), excluding the
    /// address once `policy.exclusion` failures have happened in a row. The
    /// first probe is scheduled one `cycle` after `now`.
    ///
    /// Ignored while excluded (late results of requests already in flight).
    pub fn on_failure(&mut self, policy: &HealthPolicy, now: Instant) -> Transition {
        let HealthState::Active {
            consecutive_failures,
        } = &mut self.state
        else {
            return Transition::None;
        };
        *consecutive_failures = consecutive_failures.saturating_add(1);
        if policy.exclusion == 0 || *consecutive_failures < policy.exclusion {
            return Transition::None;
        }
        self.state = HealthState::Excluded {
            since: now,
            probe_successes: 0,
            next_probe: now + policy.cycle,
        };
        Transition::Excluded
    }

    /// Whether a probe should be sent now: excluded, recovery enabled and the
    /// cycle has elapsed. Pure query; use [`AddressHealth::start_probe`] to
    /// claim the probe so concurrent checkers don't send two.
    pub fn probe_due(&self, policy: &HealthPolicy, now: Instant) -> bool {
        match self.state {
            HealthState::Excluded { next_probe, .. } => policy.recovery != 0 && now >= next_probe,
            HealthState::Active { .. } => false,
        }
    }

    /// If a probe is due, claims it by pushing the next slot a full `cycle`
    /// out (so a slow probe isn't duplicated) and returns true.
    pub fn start_probe(&mut self, policy: &HealthPolicy, now: Instant) -> bool {
        if !self.probe_due(policy, now) {
            return false;
        }
        if let HealthState::Excluded { next_probe, .. } = &mut self.state {
            *next_probe = now + policy.cycle;
        }
        true
    }

    /// Records a probe outcome: `Some(status)` for a response, `None` if the
    /// probe failed to connect or timed out. A matching status counts towards
    /// recovery; anything else restarts the count. The next probe is
    /// scheduled one `cycle` after `now`.
    ///
    /// Ignored while active (a late probe after a reset or recovery).
    pub fn on_probe_result(
        &mut self,
        policy: &HealthPolicy,
        status: Option<u16>,
        now: Instant,
    ) -> Transition {
        let HealthState::Excluded {
            probe_successes,
            next_probe,
            ..
        } = &mut self.state
        else {
            return Transition::None;
        };
        *next_probe = now + policy.cycle;
        if !status.is_some_and(|s| status_matches(policy, s)) {
            *probe_successes = 0;
            return Transition::None;
        }
        *probe_successes = probe_successes.saturating_add(1);
        if policy.recovery == 0 || *probe_successes < policy.recovery {
            return Transition::None;
        }
        *self = Self::new();
        Transition::Recovered
    }

    /// Forces the address back to active with a clean slate, as
    /// `/command/resetorigin` does.
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(exclusion: u32, recovery: u32) -> HealthPolicy {
        HealthPolicy {
            exclusion,
            recovery,
            cycle: Duration::from_secs(10),
            probe_status: Vec::new(),
        }
    }

    /// An address excluded at `t0` under `p`.
    fn excluded(p: &HealthPolicy, t0: Instant) -> AddressHealth {
        let mut h = AddressHealth::new();
        for _ in 0..p.exclusion {
            h.on_failure(p, t0);
        }
        assert!(!h.is_usable());
        h
    }

    #[test]
    fn excludes_after_exactly_n_failures() {
        let t0 = Instant::now();
        for n in 1..=5 {
            let p = policy(n, 5);
            let mut h = AddressHealth::new();
            for i in 1..n {
                assert_eq!(h.on_failure(&p, t0), Transition::None, "n={n} i={i}");
                assert!(h.is_usable());
            }
            assert_eq!(h.on_failure(&p, t0), Transition::Excluded, "n={n}");
            assert!(!h.is_usable());
            assert_eq!(
                *h.state(),
                HealthState::Excluded {
                    since: t0,
                    probe_successes: 0,
                    next_probe: t0 + p.cycle,
                }
            );
            // Further failures while excluded change nothing.
            assert_eq!(h.on_failure(&p, t0), Transition::None);
        }
    }

    #[test]
    fn success_resets_failure_count() {
        let t0 = Instant::now();
        // (failures before the success, failures after it, excluded?)
        let cases = [(2, 2, false), (2, 3, true), (0, 3, true), (2, 0, false)];
        for (before, after, want_excluded) in cases {
            let p = policy(3, 5);
            let mut h = AddressHealth::new();
            for _ in 0..before {
                h.on_failure(&p, t0);
            }
            h.on_success();
            assert_eq!(
                *h.state(),
                HealthState::Active {
                    consecutive_failures: 0
                }
            );
            for _ in 0..after {
                h.on_failure(&p, t0);
            }
            assert_eq!(!h.is_usable(), want_excluded, "{before} then {after}");
        }
    }

    #[test]
    fn exclusion_zero_never_excludes() {
        let p = policy(0, 5);
        let mut h = AddressHealth::new();
        for _ in 0..1_000 {
            assert_eq!(h.on_failure(&p, Instant::now()), Transition::None);
        }
        assert!(h.is_usable());
    }

    #[test]
    fn success_while_excluded_does_not_readmit() {
        let p = policy(1, 5);
        let mut h = excluded(&p, Instant::now());
        h.on_success();
        assert!(!h.is_usable());
    }

    #[test]
    fn recovers_after_exactly_n_matching_probes() {
        let t0 = Instant::now();
        for n in 1..=5 {
            let p = policy(1, n);
            let mut h = excluded(&p, t0);
            for i in 1..n {
                let t = t0 + p.cycle * i;
                assert_eq!(h.on_probe_result(&p, Some(200), t), Transition::None);
                assert!(!h.is_usable(), "n={n} i={i}");
            }
            let t = t0 + p.cycle * n;
            assert_eq!(h.on_probe_result(&p, Some(200), t), Transition::Recovered);
            assert_eq!(h, AddressHealth::new());
        }
    }

    #[test]
    fn probe_status_matching() {
        // (ResCode list, status, matches?)
        let cases: [(&[u16], u16, bool); 6] = [
            (&[], 200, true),
            (&[], 503, true),
            (&[200, 206, 404], 200, true),
            (&[200, 206, 404], 404, true),
            (&[200, 206, 404], 500, false),
            (&[200], 206, false),
        ];
        for (codes, status, want) in cases {
            let p = HealthPolicy {
                probe_status: codes.to_vec(),
                ..policy(1, 1)
            };
            assert_eq!(status_matches(&p, status), want, "{codes:?} {status}");
        }
    }

    #[test]
    fn bad_probe_restarts_recovery_count() {
        let t0 = Instant::now();
        let p = HealthPolicy {
            probe_status: vec![200, 206, 404],
            ..policy(1, 3)
        };
        // Each sequence is probe outcomes; the last element decides the result.
        let cases: [(&[Option<u16>], Transition); 5] = [
            (&[Some(200), Some(206), Some(404)], Transition::Recovered),
            (&[Some(200), Some(200), Some(500)], Transition::None),
            (
                &[Some(200), Some(500), Some(200), Some(200)],
                Transition::None,
            ),
            (
                &[Some(200), None, Some(200), Some(200), Some(200)],
                Transition::Recovered,
            ),
            (&[Some(200), Some(200), None], Transition::None),
        ];
        for (probes, want) in cases {
            let mut h = excluded(&p, t0);
            let mut last = Transition::None;
            for (i, status) in probes.iter().enumerate() {
                last = h.on_probe_result(&p, *status, t0 + p.cycle * (i as u32 + 1));
            }
            assert_eq!(last, want, "{probes:?}");
            assert_eq!(h.is_usable(), want == Transition::Recovered);
        }
    }

    #[test]
    fn recovery_zero_never_recovers_or_probes() {
        let t0 = Instant::now();
        let p = policy(1, 0);
        let mut h = excluded(&p, t0);
        let later = t0 + Duration::from_secs(3_600);
        assert!(!h.probe_due(&p, later));
        assert!(!h.start_probe(&p, later));
        for _ in 0..100 {
            assert_eq!(h.on_probe_result(&p, Some(200), later), Transition::None);
        }
        assert!(!h.is_usable());
    }

    #[test]
    fn probes_follow_cycle() {
        let t0 = Instant::now();
        let p = policy(1, 5);
        let mut h = AddressHealth::new();
        assert!(!h.probe_due(&p, t0), "active addresses are not probed");
        h.on_failure(&p, t0);

        let just_before = t0 + p.cycle - Duration::from_millis(1);
        assert!(!h.probe_due(&p, just_before));
        assert!(h.probe_due(&p, t0 + p.cycle));

        // Claiming the probe blocks a second claim for a full cycle.
        let t1 = t0 + p.cycle;
        assert!(h.start_probe(&p, t1));
        assert!(!h.start_probe(&p, t1));
        assert!(!h.probe_due(&p, t1 + p.cycle - Duration::from_millis(1)));

        // A result reschedules from when it arrived.
        let t2 = t1 + Duration::from_secs(3);
        h.on_probe_result(&p, None, t2);
        assert!(!h.probe_due(&p, t2 + p.cycle - Duration::from_millis(1)));
        assert!(h.probe_due(&p, t2 + p.cycle));
    }

    #[test]
    fn reset_readmits_and_clears_counts() {
        let t0 = Instant::now();
        let p = policy(2, 5);

        let mut h = excluded(&p, t0);
        h.on_probe_result(&p, Some(200), t0 + p.cycle);
        h.reset();
        assert_eq!(h, AddressHealth::new());
        // A late probe result after the reset is ignored.
        assert_eq!(
            h.on_probe_result(&p, Some(200), t0 + p.cycle),
            Transition::None
        );

        let mut h = AddressHealth::new();
        h.on_failure(&p, t0);
        h.reset();
        assert_eq!(h.on_failure(&p, t0), Transition::None, "count was cleared");
    }

    #[test]
    fn default_policy_is_stons() {
        let p = HealthPolicy::default();
        assert_eq!((p.exclusion, p.recovery), (3, 5));
        assert_eq!(p.cycle, Duration::from_secs(10));
        assert!(p.probe_status.is_empty());
        assert_eq!(AddressHealth::default(), AddressHealth::new());
    }
}

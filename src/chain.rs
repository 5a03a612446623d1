//! The content chain (STON's VhostLink): when a vhost's answer matches its link condition,
//! the request is handed to the linked vhost, hop after hop, so scattered content looks
//! like one place. Pure decisions over plain data; the proxy does the serving.
//!
//! The chain stops, and the current vhost's own answer is returned, when the target does
//! not exist, is the vhost itself, or was already visited (a loop) — exactly STON's rules.
//! The same rules are reported at load time by `strata check`; this is the run-time guard,
//! which still matters because a reload can change the graph.

use crate::config::{LinkCondition, VhostLink};

/// What a vhost's attempt to answer came to, as far as link conditions are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status (from the origin, or a stored answer).
    Status(u16),
    /// The origin could not be reached or timed out (`fail`).
    Fail,
}

/// Whether `outcome` matches any of `conditions`.
pub fn matches(conditions: &[LinkCondition], outcome: Outcome) -> bool {
    conditions.iter().any(|c| match (c, outcome) {
        (LinkCondition::Status(s), Outcome::Status(got)) => *s == got,
        (LinkCondition::Class(k), Outcome::Status(got)) => got / 100 == u16::from(*k),
        (LinkCondition::Fail, Outcome::Fail) => true,
        _ => false,
    })
}

/// Why a link was not followed (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The vhost has no link, or the outcome does not match its condition.
    NoMatch,
    /// The target vhost does not exist.
    UnknownTarget,
    /// The vhost links to itself.
    SelfLink,
    /// The target was already visited on this request.
    Loop,
}

/// The next vhost to try, or why the chain stops here.
///
/// `visited` holds the vhosts this request went through, current one last; `lookup` maps a
/// vhost name to its index.
pub fn next_hop(
    link: Option<&VhostLink>,
    outcome: Outcome,
    visited: &[usize],
    lookup: impl Fn(&str) -> Option<usize>,
) -> Result<usize, Stop> {
    let Some(link) = link else {
        return Err(Stop::NoMatch);
    };
    if !matches(&link.conditions, outcome) {
        return Err(Stop::NoMatch);
    }
    let Some(target) = lookup(&link.target) else {
        return Err(Stop::UnknownTarget);
    };
    if visited.last() == Some(&target) {
        return Err(Stop::SelfLink);
    }
    if visited.contains(&target) {
        return Err(Stop::Loop);
    }
    Ok(target)
}

/// The negative-cache TTL the link's trigger statuses get when the vhost writes none
/// (STON's `Res4xx`/`Res5xx` default, 30 s), so the first vhost's storage is not asked again
/// on every linked request: `(4xx?, 5xx?)`.
pub fn trigger_classes(link: &VhostLink) -> (bool, bool) {
    let mut c4 = false;
    let mut c5 = false;
    for c in &link.conditions {
        match c {
            LinkCondition::Status(s) if *s / 100 == 4 => c4 = true,
            LinkCondition::Status(s) if *s / 100 == 5 => c5 = true,
            LinkCondition::Class(4) => c4 = true,
            LinkCondition::Class(5) => c5 = true,
            _ => {}
        }
    }
    (c4, c5)
}

/// STON's default negative TTL for link triggers, in seconds.
pub const TRIGGER_TTL: u64 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn link(target: &str, conds: &[LinkCondition]) -> VhostLink {
        VhostLink {
            target: target.into(),
            conditions: conds.to_vec(),
            line: 1,
        }
    }

    #[test]
    fn conditions_match_codes_classes_and_fail() {
        use LinkCondition::*;
        let c = [Status(404), Class(5), Fail];
        assert!(matches(&c, Outcome::Status(404)));
        assert!(!matches(&c, Outcome::Status(403)));
        assert!(matches(&c, Outcome::Status(503)));
        assert!(matches(&c, Outcome::Fail));
        assert!(!matches(&[Status(404)], Outcome::Fail));
        assert!(matches(&[Class(4)], Outcome::Status(410)));
    }

    #[test]
    fn stop_rules_are_stons() {
        let names = ["foo.com", "bar.com", "baz.com"];
        let lookup = |n: &str| names.iter().position(|x| *x == n);
        let l = link("bar.com", &[LinkCondition::Status(404)]);
        assert_eq!(
            next_hop(Some(&l), Outcome::Status(404), &[0], lookup),
            Ok(1)
        );
        assert_eq!(
            next_hop(Some(&l), Outcome::Status(200), &[0], lookup),
            Err(Stop::NoMatch)
        );
        assert_eq!(
            next_hop(None, Outcome::Status(404), &[0], lookup),
            Err(Stop::NoMatch)
        );
        let unknown = link("nope.com", &[LinkCondition::Status(404)]);
        assert_eq!(
            next_hop(Some(&unknown), Outcome::Status(404), &[0], lookup),
            Err(Stop::UnknownTarget)
        );
        let selfl = link("foo.com", &[LinkCondition::Status(404)]);
        assert_eq!(
            next_hop(Some(&selfl), Outcome::Status(404), &[0], lookup),
            Err(Stop::SelfLink)
        );
        let back = link("foo.com", &[LinkCondition::Status(404)]);
        assert_eq!(
            next_hop(Some(&back), Outcome::Status(404), &[0, 1], lookup),
            Err(Stop::Loop)
        );
        let third = link("baz.com", &[LinkCondition::Status(404)]);
        assert_eq!(
            next_hop(Some(&third), Outcome::Status(404), &[0, 1], lookup),
            Ok(2)
        );
    }

    #[test]
    fn trigger_classes_follow_the_condition() {
        use LinkCondition::*;
        assert_eq!(trigger_classes(&link("b", &[Status(404)])), (true, false));
        assert_eq!(
            trigger_classes(&link("b", &[Class(5), Fail])),
            (false, true)
        );
        assert_eq!(trigger_classes(&link("b", &[Fail])), (false, false));
    }
}

//! One leader per leader epoch, observed on the real brokers.
//!
//! Every controller election bumps a partition's leader epoch and names one leader for it, so
//! in a correct cluster no two brokers ever lead one partition in the same leader epoch (the
//! `zk-controller` model's `one-leader-per-leader-epoch`). Two brokers may both *believe* they
//! lead at one moment, in different epochs: the old leader has not heard of the election yet
//! (Kafka's clients and followers fence it by epoch, KIP-101 and KIP-320).
//!
//! The run asks each broker directly, every [`PROBE_INTERVAL`], which partitions it leads:
//! ListOffsets (v4 and later carry the leader epoch) is answered only by a replica that
//! believes it is the leader, with its leader epoch. Each time what the brokers answer changes,
//! the run records a nemesis-process `leaders` op, value `{"leaders": [[broker, partition,
//! leader_epoch], ...]}`, plus `"ballast": [...]` of the same shape for the partitions of the
//! ZooKeeper-mode ballast topic (`crate::nemesis::zombie_failover::BALLAST_TOPIC`) when the run
//! has one. [`check`] is a pure function of the history: it flags every (topic, partition,
//! leader epoch) that two brokers answered as leader, whenever they did.

use crate::history::{History, OpValue, Process};
use crate::Verdict;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The history op of one observation.
pub const F_LEADERS: &str = "leaders";

/// How often the run asks every broker what it leads.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// (broker, partition, leader epoch): a broker answered as the partition's leader in that epoch.
pub type Leadership = (i32, u64, i32);

/// The key of the ballast topic's observations in a `leaders` op.
const BALLAST: &str = "ballast";

/// The value of a `leaders` op: what the brokers lead of the test topic and, when not empty,
/// of the ballast topic.
pub fn leaders_value(seen: &[Leadership], ballast: &[Leadership]) -> serde_json::Value {
    if ballast.is_empty() {
        serde_json::json!({ "leaders": seen })
    } else {
        serde_json::json!({ "leaders": seen, BALLAST: ballast })
    }
}

/// Two brokers that led one partition in one leader epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TwoLeaders {
    /// A partition of the ballast topic rather than the test topic.
    pub ballast: bool,
    pub partition: u64,
    pub leader_epoch: i32,
    /// Every broker seen leading it in that epoch, with the history index of its first sighting.
    pub brokers: Vec<(i32, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaderReport {
    pub verdict: Verdict,
    /// `leaders` ops in the history.
    pub observations: usize,
    /// Distinct (partition, leader epoch) pairs seen with a leader.
    pub leader_epochs: usize,
    pub violations: Vec<TwoLeaders>,
}

impl LeaderReport {
    /// One line per violation, for the summary, the first [`REASONS_SHOWN`] only (one
    /// zombie election gives hundreds of ballast partitions two leaders) and a count of the
    /// rest; `violations` in `results.json` keeps them all.
    pub fn reasons(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .violations
            .iter()
            .take(REASONS_SHOWN)
            .map(|v| {
                let who: Vec<String> = v
                    .brokers
                    .iter()
                    .map(|(b, i)| format!("broker {b} (op {i})"))
                    .collect();
                format!(
                    "two leaders: partition {}{} leader epoch {} led by {}",
                    v.partition,
                    if v.ballast { " (ballast)" } else { "" },
                    v.leader_epoch,
                    who.join(" and ")
                )
            })
            .collect();
        if self.violations.len() > REASONS_SHOWN {
            lines.push(format!(
                "two leaders in {} more (partition, leader epoch) pairs",
                self.violations.len() - REASONS_SHOWN
            ));
        }
        lines
    }
}

/// How many violations the summary names one by one.
pub const REASONS_SHOWN: usize = 3;

/// Whether the history holds leader observations at all.
pub fn observed(history: &History) -> bool {
    history
        .ops
        .iter()
        .any(|o| o.process == Process::Nemesis && o.f == F_LEADERS)
}

/// Checks one-leader-per-leader-epoch over every `leaders` op.
pub fn check(history: &History) -> LeaderReport {
    // (ballast?, partition, leader epoch) → broker → first index seen.
    let mut led: BTreeMap<(bool, u64, i32), BTreeMap<i32, u64>> = BTreeMap::new();
    let mut observations = 0;
    for op in history
        .ops
        .iter()
        .filter(|o| o.process == Process::Nemesis && o.f == F_LEADERS)
    {
        observations += 1;
        let OpValue::Other(v) = &op.value else {
            continue;
        };
        for (ballast, key) in [(false, "leaders"), (true, BALLAST)] {
            let seen: Vec<Leadership> = v
                .get(key)
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            for (broker, partition, epoch) in seen {
                led.entry((ballast, partition, epoch))
                    .or_default()
                    .entry(broker)
                    .or_insert(op.index);
            }
        }
    }
    let violations: Vec<TwoLeaders> = led
        .iter()
        .filter(|(_, brokers)| brokers.len() > 1)
        .map(|((ballast, partition, leader_epoch), brokers)| TwoLeaders {
            ballast: *ballast,
            partition: *partition,
            leader_epoch: *leader_epoch,
            brokers: brokers.iter().map(|(b, i)| (*b, *i)).collect(),
        })
        .collect();
    LeaderReport {
        verdict: if violations.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        observations,
        leader_epochs: led.len(),
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpType, Recorder};

    fn history(observations: &[&[Leadership]]) -> History {
        let mut r = Recorder::default();
        for (t, seen) in observations.iter().enumerate() {
            r.push(
                t as u64,
                OpType::Info,
                Process::Nemesis,
                F_LEADERS,
                OpValue::Other(leaders_value(seen, &[])),
            );
        }
        r.finish()
    }

    #[test]
    fn a_failover_to_a_higher_epoch_is_one_leader_per_epoch() {
        // Broker 1 leads p0 in epoch 1; the old leader still believes it leads while broker 2
        // leads epoch 2 (a moment Kafka allows: the epochs differ).
        let h = history(&[
            &[(1, 0, 1)],
            &[(1, 0, 1), (2, 0, 2)],
            &[(2, 0, 2), (3, 1, 4)],
        ]);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert_eq!((r.observations, r.leader_epochs), (3, 3));
    }

    #[test]
    fn two_brokers_leading_one_epoch_are_flagged_even_at_different_times() {
        let h = history(&[&[(1, 0, 2)], &[], &[(3, 0, 2), (3, 1, 1)]]);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(
            r.violations,
            vec![TwoLeaders {
                ballast: false,
                partition: 0,
                leader_epoch: 2,
                brokers: vec![(1, 0), (3, 2)],
            }]
        );
        assert!(r.reasons()[0]
            .contains("partition 0 leader epoch 2 led by broker 1 (op 0) and broker 3 (op 2)"));
    }

    #[test]
    fn the_ballast_topic_is_checked_apart_from_the_test_topic() {
        let history = |ops: &[(&[Leadership], &[Leadership])]| {
            let mut r = Recorder::default();
            for (seen, ballast) in ops {
                r.push(
                    0,
                    OpType::Info,
                    Process::Nemesis,
                    F_LEADERS,
                    OpValue::Other(leaders_value(seen, ballast)),
                );
            }
            r.finish()
        };
        // Partition 7 of each topic led in epoch 2 by a different broker: not a violation.
        let first: (&[Leadership], &[Leadership]) = (&[(1, 7, 2)], &[(2, 7, 2)]);
        let r1 = check(&history(&[first]));
        assert_eq!(r1.verdict, Verdict::Valid, "{r1:?}");
        assert_eq!(r1.leader_epochs, 2);
        // Broker 3 leads ballast partition 7 in epoch 2 as well: flagged, as the ballast's.
        let r2 = check(&history(&[first, (&[], &[(3, 7, 2)])]));
        assert_eq!(r2.verdict, Verdict::Invalid);
        assert_eq!(r2.violations.len(), 1);
        assert!(r2.violations[0].ballast);
        assert!(r2.reasons()[0].contains("partition 7 (ballast) leader epoch 2 led by broker 2"));
    }
}

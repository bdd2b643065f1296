//! Faults aimed at the KRaft controller quorum (`--nemesis quorum`, part of `all` on a KRaft
//! cluster of three controllers or more), in the spirit of `jepsen.nemesis.combined`'s
//! `:primaries`: the quorum leader is looked up (DescribeQuorum on `__cluster_metadata`) and
//! the fault is lined up around it, because the Raft bugs of the reference controllers
//! (`RaftBug`, `specs/cluster.md`) each need one precise shape that random targets rarely
//! give (controllers are one random target in four, the quorum leader one in ten):
//!
//! - [`QuorumShape::IsolateControllerLeader`]: a broker is paused, then the quorum leader is
//!   cut from the other controllers but not from the brokers. It stays leader until
//!   check-quorum (1.5 × fetch timeout), fences the paused broker meanwhile (records that can
//!   never commit), and the brokers' metadata observers fetch them from it; the others elect
//!   a new leader. When the cut heals, the old leader and the observers must truncate that
//!   suffix on the new leader's diverging epoch (`no-diverging-epoch`,
//!   `observer-no-divergence-check`); an observer that takes the suffix as committed breaks
//!   the observer prefix (`apply-uncommitted`).
//! - [`QuorumShape::LaggingController`]: one follower controller is cut from the other two,
//!   then the leader is killed and the cut healed at once, so the lagging one and the last
//!   follower both time out with no leader left (pre-vote refuses while a voter still hears
//!   one). Half the time a broker is paused while the follower is cut, so the quorum commits
//!   records the lagging one misses: a voter that grants it anyway elects a leader without
//!   committed records (`vote-ignores-log`). Otherwise the lagging controller is crash-
//!   restarted behind the cut, so it comes back with an unknown (zero) HW and, its log being
//!   complete, may win: a follower that copies the new leader's lower HW moves its own back
//!   (`hw-copied-from-leader`).
//! - [`QuorumShape::ControllerRestart`]: the quorum leader is killed and restarted at once.
//!   It comes back with an unknown (zero) HW and, its log complete, often wins the election:
//!   a follower that copies the lower HW moves its own back (`hw-copied-from-leader`). Half
//!   the time both followers are paused across the restart and resumed together after their
//!   fetch timeout: both become candidates in the same epoch and the restarted node, which
//!   knows no leader, is the vote that decides (`vote-twice-in-epoch` grants both;
//!   `forget-vote-on-restart` needs a voter to restart right after voting and before it
//!   hears of the winner, milliseconds this shape only hits by chance).
//!
//! Every wait is bounded by the run's end; the choices are seeded, so a seed gives the same
//! schedule. Each step is recorded as a nemesis op (`quorum-step`) and a summary line.

use crate::nemesis::grudge::{self, Grudge, NodeId};
use crate::sim::Rng;
use crate::system::ProcessSystem;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The controllers' fetch timeout in a `kcheck test` run (2 × the default 1 s election
/// timeout, `reference/src/cli.rs`): a follower that has not heard from its leader this long
/// becomes prospective.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(2000);

/// The shapes of the quorum nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumShape {
    IsolateControllerLeader,
    LaggingController,
    ControllerRestart,
}

impl QuorumShape {
    pub fn name(self) -> &'static str {
        match self {
            QuorumShape::IsolateControllerLeader => "isolate-controller-leader",
            QuorumShape::LaggingController => "lagging-controller",
            QuorumShape::ControllerRestart => "controller-restart",
        }
    }

    /// Seeded. The two shapes that cut links need a network the harness can partition (and
    /// no other grudge in force: one at a time); without one only the restart is left.
    pub fn choose(rng: &mut Rng, can_cut: bool) -> QuorumShape {
        if !can_cut {
            return QuorumShape::ControllerRestart;
        }
        match rng.below(3) {
            0 => QuorumShape::IsolateControllerLeader,
            1 => QuorumShape::LaggingController,
            _ => QuorumShape::ControllerRestart,
        }
    }

    /// Nemesis ticks the fault holds after its start (its steps run inside the start).
    pub fn ticks(self) -> u64 {
        match self {
            // Long enough for check-quorum to depose the old leader, a new one to be elected
            // and to fence the paused broker too (its log then reaches past the old suffix).
            QuorumShape::IsolateControllerLeader => 3,
            QuorumShape::LaggingController => 1,
            QuorumShape::ControllerRestart => 1,
        }
    }
}

/// The quorum leader by DescribeQuorum, asking the controllers in id order until one names a
/// leader; `None` when none does (an election in progress, every controller down).
pub fn quorum_leader(system: &ProcessSystem) -> Option<NodeId> {
    let controllers = system.controller_ids();
    controllers.iter().find_map(|&c| {
        let addr = system.controller_addr(c)?;
        crate::kafka::quorum_leader(&addr, Duration::from_secs(1))
            .ok()
            .flatten()
            .filter(|l| controllers.contains(l))
    })
}

/// Sleeps `d`, but not past `end` (the run's time limit).
fn sleep_bounded(d: Duration, end: Instant) {
    let until = (Instant::now() + d).min(end);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fault started: the `start-quorum` value (which also says how to heal it, see [`stop`])
/// and the nodes it holds (no other process fault may touch them until it ends).
pub struct Started {
    pub shape: QuorumShape,
    pub value: Value,
    pub nodes: Vec<NodeId>,
}

/// One step as the history and the summary record it.
pub struct Step {
    pub value: Value,
    pub summary: String,
    pub error: Option<String>,
}

fn step(what: &str, nodes: &[NodeId], summary: String, r: std::io::Result<()>) -> Step {
    Step {
        value: json!({ "step": what, "nodes": nodes }),
        summary,
        error: r.err().map(|e| e.to_string()),
    }
}

/// Starts `shape`, running its timed steps now (each handed to `on_step` as it happens).
/// `busy`: nodes other faults hold. Returns `None` (nothing done) when the shape cannot be
/// lined up: a controller is down or held, no quorum leader is known, or no broker is free
/// to pause.
pub fn start(
    shape: QuorumShape,
    rng: &mut Rng,
    system: &mut ProcessSystem,
    busy: &[NodeId],
    end: Instant,
    on_step: &mut dyn FnMut(Step),
) -> Option<Started> {
    let controllers = system.controller_ids();
    let all_up = controllers.len() >= 3
        && controllers
            .iter()
            .all(|c| system.is_running(*c) && !busy.contains(c));
    if !all_up {
        return None;
    }
    let leader = quorum_leader(system)?;
    let free_brokers: Vec<NodeId> = system
        .broker_ids()
        .into_iter()
        .filter(|b| system.is_running(*b) && !busy.contains(b))
        .collect();
    let pick_broker = |rng: &mut Rng| -> Option<NodeId> {
        (!free_brokers.is_empty())
            .then(|| free_brokers[rng.below(free_brokers.len() as u64) as usize])
    };
    let followers: Vec<NodeId> = controllers
        .iter()
        .copied()
        .filter(|c| *c != leader)
        .collect();
    match shape {
        QuorumShape::IsolateControllerLeader => {
            let paused = pick_broker(rng)?;
            let r = system.pause(paused);
            on_step(step(
                "pause-broker",
                &[paused],
                format!(
                    "quorum: pause broker {paused} (its session lapses under the isolated leader)"
                ),
                r,
            ));
            // Its last heartbeat is then up to one session timeout old when the cut starts
            // less this second: the isolated leader fences it while it still leads.
            sleep_bounded(Duration::from_millis(1000), end);
            let g = grudge::isolate(&controllers, leader);
            let r = system.partition(&g);
            on_step(Step {
                value: json!({ "step": "isolate-controller-leader", "nodes": [leader], "grudge": g }),
                summary: format!(
                    "quorum: cut controller leader {leader} from the other controllers {} (brokers hear it)",
                    g.describe()
                ),
                error: r.err().map(|e| e.to_string()),
            });
            Some(Started {
                shape,
                value: json!({
                    "target": shape.name(), "leader": leader, "nodes": [paused],
                    "paused": [paused], "killed": [], "grudge": g,
                }),
                nodes: vec![paused],
            })
        }
        QuorumShape::LaggingController => {
            let lagging = followers[rng.below(followers.len() as u64) as usize];
            let with_writes = rng.below(2) == 0;
            let g = grudge::isolate(&controllers, lagging);
            let r = system.partition(&g);
            on_step(Step {
                value: json!({ "step": "isolate-follower-controller", "nodes": [lagging], "grudge": g }),
                summary: format!(
                    "quorum: cut follower controller {lagging} from the other controllers {}",
                    g.describe()
                ),
                error: r.err().map(|e| e.to_string()),
            });
            let mut paused = Vec::new();
            if with_writes {
                // The quorum fences the paused broker (and moves its partitions away): records
                // committed without the lagging controller.
                if let Some(b) = pick_broker(rng) {
                    let r = system.pause(b);
                    on_step(step(
                        "pause-broker",
                        &[b],
                        format!("quorum: pause broker {b} (records the lagging controller misses)"),
                        r,
                    ));
                    paused.push(b);
                }
            } else {
                // Behind the cut it cannot learn the HW again: it comes back with none.
                let r = system.kill(lagging).and_then(|()| system.restart(lagging));
                on_step(step(
                    "restart-lagging-controller",
                    &[lagging],
                    format!("quorum: crash-restart lagging controller {lagging} behind the cut"),
                    r,
                ));
            }
            // Session timeout (2 s) plus a heartbeat and a controller tick.
            sleep_bounded(Duration::from_millis(3500), end);
            let r = system.kill(leader);
            on_step(step(
                "kill-controller-leader",
                &[leader],
                format!("quorum: kill controller leader {leader}"),
                r,
            ));
            // The last follower's fetch deadline passes: no voter hears a leader any more, so
            // pre-votes are granted on the log alone when the cut heals.
            sleep_bounded(FETCH_TIMEOUT + Duration::from_millis(500), end);
            let r = system.partition(&Grudge::default());
            on_step(step(
                "heal-lagging-controller",
                &[lagging],
                format!("quorum: heal the cut of controller {lagging}"),
                r,
            ));
            let mut nodes = paused.clone();
            nodes.push(leader);
            Some(Started {
                shape,
                value: json!({
                    "target": shape.name(), "leader": leader, "lagging": lagging,
                    "writes": with_writes, "nodes": nodes, "paused": paused,
                    "killed": [leader], "grudge": {},
                }),
                nodes,
            })
        }
        QuorumShape::ControllerRestart => {
            // Half the time both followers are paused across the restart and resumed together
            // once their fetch timeout has passed: they become prospective on the same tick,
            // grant each other's pre-vote and both stand in the next epoch, so the restarted
            // leader's vote decides (a split vote). Otherwise the restarted leader, its HW
            // unknown (zero), races the followers and often wins.
            let split = rng.below(2) == 0;
            if split {
                let r = followers.iter().try_for_each(|f| system.pause(*f));
                on_step(step(
                    "pause-follower-controllers",
                    &followers,
                    format!("quorum: pause follower controllers {}", list(&followers)),
                    r,
                ));
            }
            let r = system.kill(leader).and_then(|()| system.restart(leader));
            on_step(step(
                "restart-controller-leader",
                &[leader],
                format!("quorum: crash-restart controller leader {leader} at once"),
                r,
            ));
            if split {
                sleep_bounded(FETCH_TIMEOUT + Duration::from_millis(300), end);
                let r = followers.iter().try_for_each(|f| system.resume(*f));
                on_step(step(
                    "resume-follower-controllers",
                    &followers,
                    format!(
                        "quorum: resume follower controllers {} together",
                        list(&followers)
                    ),
                    r,
                ));
            }
            Some(Started {
                shape,
                value: json!({
                    "target": shape.name(), "leader": leader, "split-vote": split,
                    "nodes": [leader], "paused": [], "killed": [], "grudge": {},
                }),
                nodes: vec![leader],
            })
        }
    }
}

fn list(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn ids(v: &Value) -> Vec<NodeId> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_i64().map(|i| i as NodeId))
                .collect()
        })
        .unwrap_or_default()
}

/// Heals what the `start-quorum` value `value` says the fault still holds: its cut (if any),
/// its paused brokers, its killed controllers.
pub fn stop(value: &Value, system: &mut ProcessSystem) -> std::io::Result<()> {
    let cut = value["grudge"].as_object().is_some_and(|g| {
        g.values()
            .any(|s| s.as_array().is_some_and(|a| !a.is_empty()))
    });
    if cut {
        system.partition(&Grudge::default())?;
    }
    for n in ids(&value["paused"]) {
        system.resume(n)?;
    }
    for n in ids(&value["killed"]) {
        system.restart(n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_network_only_the_restart_is_chosen_and_a_seed_repeats_its_choices() {
        let mut rng = Rng::new(3);
        assert!(
            (0..20).all(|_| QuorumShape::choose(&mut rng, false) == QuorumShape::ControllerRestart)
        );
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..30)
                .map(|_| QuorumShape::choose(&mut rng, true))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        let shapes = run(5);
        for s in [
            QuorumShape::IsolateControllerLeader,
            QuorumShape::LaggingController,
            QuorumShape::ControllerRestart,
        ] {
            assert!(shapes.contains(&s), "{} never chosen", s.name());
        }
    }
}

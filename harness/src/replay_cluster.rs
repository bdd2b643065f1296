//! `kcheck replay TRACE --against cluster [--bug NAME]...`: a model counterexample replayed as
//! a deterministic schedule on real `kcheck broker` processes (issue 9).
//!
//! The replication model's brokers b0, b1, b2 are the replicas of one partition on brokers of
//! a real KRaft cluster (one controller, three brokers, `min.insync.replicas` 2); the
//! reassignment model's b3 is a fourth broker that holds no replica until a reassignment adds
//! it. Every broker
//! runs with `--test-control`, whose replica fetcher starts held: a follower copies nothing
//! unless the schedule says so. Each model action becomes one step on the cluster:
//!
//! | model action | on the cluster |
//! |---|---|
//! | `produce{acks}` | a Produce of a fresh value (acks=1 under `acks-1`, else acks=all) in a thread of its own; the step waits until the leader's LEO grew |
//! | `fetch{follower}` | `step fetcher 1` on the follower: exactly one Fetch round is sent, answered and applied |
//! | `become-follower{broker}` | wait until the broker applied the leader epoch as a follower (a `truncate-to-hw` truncation happens there); a truncation the model does on becoming follower, the broker does on its next fetch round (KIP-279 inside Fetch v12) |
//! | `shrink-isr{follower}` | the followers the model keeps in the ISR fetch freely while the leader's `replica.lag.time.max.ms` lapses for the held one; wait until the controller's ISR lacks it |
//! | `expand-isr{follower}` | fetch rounds of that follower (at most 5) until the ISR has it; for a follower that restarted and has not fetched since, the leader handles the killed incarnation's Fetch, held on it since the crash (`follower-fetch`) |
//! | `handle-alter-partition` | wait until the ISR is the model's (the AlterPartition was sent with the shrink/expand) |
//! | `crash{clean}` | SIGTERM (controlled shutdown: flush, fenced at once); unclean: SIGKILL and LazyFs drops what was not fsynced (brokers run `--flush never`), then wait until the controller fenced it; before killing a follower the model re-adds without a fetch, one of its Fetch requests is held on the leader |
//! | `restart` | start it again on the same data directory; wait until it is unfenced |
//! | `elect-leader{broker}` | wait until the metadata names that broker leader (the controller elects when the previous leader is fenced) |
//! | `reassign{target}` / `cancel` | AlterPartitionReassignments (null target: cancel); wait until the replicas are the model's |
//! | `complete-reassignment{leader}` | wait until the replicas are the target (the controller completes on its own) |
//!
//! A trace that cancels a reassignment after its last adding replica joined the ISR (the
//! model completes one action later) needs a *pad*: the reference completes in the partition
//! change that adds the last adding replica, as KRaft's controller does, so the replayer adds
//! a fifth broker to the target in place of a replica the target keeps. Its fetcher stays
//! held, it never joins the ISR, and the reassignment is still in progress when the cancel
//! comes, with the model's replicas and ISR otherwise ([`needs_pad`]).
//!
//! After the schedule the replayer reads every broker's log through its control endpoint and
//! checks the model's invariants in Kafka's terms: `no-committed-data-loss` (every
//! acknowledged record is at its offset in the current leader's log),
//! `replica-log-consistency` (two replicas agree below both their HWs), the reassignment
//! model's `leader-in-replicas`, `isr-subset-of-replicas`, `completes-to-target` and
//! `reassignment-can-complete`, and the controller's own invariant assertions (its log). A step whose condition
//! does not come true in time "did not happen" — on the correct protocol that is expected of
//! the steps that need the bug — and the replay goes on.
//!
//! Exit codes: 1 a model invariant is violated on the cluster; 0 none is (with `--bug`: the
//! bug was not reproduced, so 2); 2 the trace cannot be replayed (with the reason).

pub mod kraft;

use crate::kafka::{decode_values, KafkaClient};
use crate::system::{free_port, NodeId, NodeSpec, ProcessSystem};
use kcheck_models::trace::Trace;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The topic every replay writes (one partition, replication factor 3).
pub const TOPIC: &str = "kcheck-replay";
const CONTROLLER_ID: NodeId = 3001;
/// The trace models that have a bug flag in the broker or controller processes.
const REPLAYABLE_MODELS: [&str; 2] = ["replication", "reassignment"];
/// `broker.session.timeout.ms` on the controller: an unclean crash is fenced this long after.
const SESSION_TIMEOUT_MS: u64 = 3000;
/// `replica.lag.time.max.ms` when the trace shrinks the ISR (the wait of a `shrink-isr`
/// step); otherwise it is long enough that no held follower leaves the ISR during a replay.
const LAG_TIME_SHRINK_MS: u64 = 2000;
const LAG_TIME_NO_SHRINK_MS: u64 = 120_000;
/// How long a condition of a step may take before the step "did not happen".
const STEP_WAIT: Duration = Duration::from_secs(8);
/// How long the healed cluster has to complete a requested reassignment.
const COMPLETE_AFTER_HEAL_S: u64 = 10;

/// What the replay needs besides the trace.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The `kcheck` executable the brokers run as.
    pub program: PathBuf,
    /// Where the nodes keep their data and logs.
    pub run_dir: PathBuf,
    /// Bug flags to switch on (each one of the trace's).
    pub bugs: Vec<String>,
    /// Print each step as it runs.
    pub verbose: bool,
}

/// One model step as it went on the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub model: String,
    pub happened: bool,
    pub note: String,
}

impl StepReport {
    /// Number, whether it happened, the model's description, the cluster's note.
    pub fn line(&self) -> String {
        format!(
            "{:>3}. {:<4} {}{}",
            self.step,
            if self.happened { "ok" } else { "--" },
            self.model,
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.note)
            }
        )
    }
}

/// An acknowledged Produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Acknowledged {
    pub offset: u64,
    pub value: u64,
    pub acks: i16,
}

/// A model invariant that does not hold on the cluster, in Kafka's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub property: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub model: String,
    pub property: String,
    pub bugs: Vec<String>,
    /// Model broker bN → broker node id.
    pub brokers: Vec<NodeId>,
    pub steps: Vec<StepReport>,
    pub acknowledged: Vec<Acknowledged>,
    pub violations: Vec<Violation>,
    /// (offset, value) a consumer read after the cluster healed, or why it could not.
    pub consumed_after_heal: Result<Vec<(u64, u64)>, String>,
    /// The kraft replay: each node's state after the schedule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub final_state: Vec<String>,
    pub seconds: f64,
}

impl ReplayReport {
    /// 1 when an invariant is violated; 0 when none is and no bug flag was on; 2 when a bug
    /// flag was on and its violation did not show (not reproduced).
    pub fn exit_code(&self) -> u8 {
        if !self.violations.is_empty() {
            1
        } else if self.bugs.is_empty() {
            0
        } else {
            2
        }
    }

    pub fn text(&self) -> String {
        if self.model == "kraft" {
            return self.kraft_text();
        }
        let mut out = format!(
            "replaying {} ({}) against a cluster: model brokers {} are broker nodes {:?}\n",
            self.model,
            if self.bugs.is_empty() {
                "no bug flags".to_string()
            } else {
                format!("--bug {}", self.bugs.join(" --bug "))
            },
            (0..self.brokers.len())
                .map(|i| format!("b{i}"))
                .collect::<Vec<_>>()
                .join(","),
            self.brokers
        );
        self.push_steps(&mut out);
        let acked: Vec<String> = self
            .acknowledged
            .iter()
            .map(|a| format!("v{}@{} (acks={})", a.value, a.offset, ack_name(a.acks)))
            .collect();
        out.push_str(&format!("acknowledged: [{}]\n", acked.join(", ")));
        match &self.consumed_after_heal {
            Ok(records) => out.push_str(&format!(
                "after healing (restarts, fetchers free), a consumer reads: [{}]\n",
                records
                    .iter()
                    .map(|(o, v)| format!("v{v}@{o}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(why) => out.push_str(&format!("no consumer read-back: {why}\n")),
        }
        self.push_verdict(&mut out, "no anomaly: every acknowledged record is in the leader's log and the replicas agree below their HWs");
        out
    }
}

impl ReplayReport {
    /// One line a step ([`StepReport::line`]).
    fn push_steps(&self, out: &mut String) {
        for s in &self.steps {
            out.push_str(&s.line());
            out.push('\n');
        }
    }

    /// The violations (or `no_anomaly`), whether the trace's own property was reproduced, and
    /// the time.
    fn push_verdict(&self, out: &mut String, no_anomaly: &str) {
        if self.violations.is_empty() {
            out.push_str(no_anomaly);
            out.push('\n');
            if !self.bugs.is_empty() {
                out.push_str(&format!(
                    "not reproduced: {} did not violate {} on the cluster\n",
                    self.bugs.join(", "),
                    self.property
                ));
            }
        } else {
            for v in &self.violations {
                out.push_str(&format!("violated {}: {}\n", v.property, v.detail));
            }
            if self.violations.iter().any(|v| v.property == self.property) {
                out.push_str(&format!(
                    "reproduced the model's {} violation on the cluster\n",
                    self.property
                ));
            }
        }
        out.push_str(&format!("{:.1} s\n", self.seconds));
    }

    fn kraft_text(&self) -> String {
        let names: Vec<String> = self
            .brokers
            .iter()
            .enumerate()
            .map(|(i, id)| {
                if i < 3 {
                    format!("c{i}=controller {id}")
                } else {
                    format!("b{i}=broker {id}")
                }
            })
            .collect();
        let mut out = format!(
            "replaying kraft ({}) against a cluster: {}\n",
            if self.bugs.is_empty() {
                "no bug flags".to_string()
            } else {
                format!("--bug {}", self.bugs.join(" --bug "))
            },
            names.join(", ")
        );
        self.push_steps(&mut out);
        if !self.final_state.is_empty() {
            out.push_str(&format!("final state: {}\n", self.final_state.join("; ")));
        }
        self.push_verdict(&mut out, "no anomaly: one leader per epoch, the controllers' logs match and hold every committed entry, no broker applied beyond the quorum's HW");
        out
    }
}

fn ack_name(acks: i16) -> &'static str {
    if acks == 1 {
        "1"
    } else {
        "all"
    }
}

// ---- The trace, as the cluster schedule needs it ----------------------------------------

/// One step of the schedule (the model's action, on model broker indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Produce {
        acks_all: bool,
    },
    Fetch {
        follower: usize,
    },
    BecomeFollower {
        broker: usize,
    },
    ShrinkIsr {
        follower: usize,
    },
    ExpandIsr {
        follower: usize,
        /// The model re-adds a restarted follower on its previous incarnation's state: on
        /// the cluster, the leader handles that incarnation's held Fetch now.
        stale: bool,
    },
    HandleAlterPartition,
    Crash {
        broker: usize,
        clean: bool,
        lose_unsynced: bool,
        /// Before the kill, one Fetch of this incarnation is sent and held on the leader
        /// (`follower-fetch`), for a later stale `expand-isr`.
        stale_fetch: bool,
    },
    Restart {
        broker: usize,
    },
    ElectLeader {
        broker: usize,
    },
    /// AlterPartitionReassignments to `target` (model brokers, in the replica order the
    /// cluster is asked for: the model's next completion leader first).
    Reassign {
        target: Vec<usize>,
    },
    /// The same with the pad broker ([`PAD`]) in place of a replica the target keeps.
    ReassignPadded {
        target: Vec<usize>,
    },
    /// AlterPartitionReassignments with a null target.
    Cancel,
    CompleteReassignment {
        leader: usize,
    },
}

/// A model state line set, as far as the schedule reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelState {
    pub leader: Option<usize>,
    pub isr: Vec<usize>,
    pub elr: Vec<usize>,
    /// Per broker: down, LEO.
    pub down: Vec<bool>,
    pub leo: Vec<u64>,
    pub acknowledged: usize,
    /// The assigned replicas (the reassignment model's `assignment:` line; every broker in a
    /// replication trace).
    pub replicas: Vec<usize>,
}

fn broker_index(s: &str) -> Option<usize> {
    s.trim().strip_prefix('b')?.parse().ok()
}

fn broker_set(s: &str) -> Vec<usize> {
    s.trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(broker_index)
        .collect()
}

/// Reads the replication model's rendered state (`controller: leader=b0 ... ISR={b0,b1}`,
/// `b1 follower log=[..] LEO=1 ...`, `acknowledged=[m0@e1] ...`).
pub fn parse_state(lines: &[String]) -> Result<ModelState, String> {
    let mut s = ModelState::default();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"controller:") => {
                for w in &words[1..] {
                    if let Some(v) = w.strip_prefix("leader=") {
                        s.leader = broker_index(v);
                    } else if let Some(v) = w.strip_prefix("ISR=") {
                        s.isr = broker_set(v);
                    } else if let Some(v) = w.strip_prefix("ELR=") {
                        s.elr = broker_set(v);
                    }
                }
            }
            Some(&"assignment:") => {
                for w in &words[1..] {
                    if let Some(v) = w.strip_prefix("replicas=") {
                        s.replicas = broker_set(v);
                    }
                }
            }
            Some(w) if w.starts_with("acknowledged=") => {
                let list = w
                    .trim_start_matches("acknowledged=")
                    .trim_matches(|c| c == '[' || c == ']');
                s.acknowledged = list.split_whitespace().count();
            }
            Some(w) if broker_index(w).is_some() => {
                let i = broker_index(w).expect("checked");
                if s.down.len() <= i {
                    s.down.resize(i + 1, false);
                    s.leo.resize(i + 1, 0);
                }
                s.down[i] = words.get(1) == Some(&"down");
                for w in &words[1..] {
                    if let Some(v) = w.strip_prefix("LEO=") {
                        s.leo[i] = v
                            .parse()
                            .map_err(|_| format!("bad LEO in model state line {line:?}"))?;
                    }
                }
            }
            _ => {}
        }
    }
    if s.down.is_empty() {
        return Err("no broker lines in the model state (not a replication trace?)".into());
    }
    if s.replicas.is_empty() {
        s.replicas = (0..s.down.len()).collect();
    }
    Ok(s)
}

/// The model states: the initial one, then the one after each step.
pub fn model_states(trace: &Trace) -> Result<Vec<ModelState>, String> {
    std::iter::once(&trace.init)
        .chain(trace.steps.iter().map(|s| &s.state))
        .map(|l| parse_state(l))
        .collect()
}

fn field_usize(a: &serde_json::Value, name: &str) -> Result<usize, String> {
    a.get(name)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| format!("action {a} has no {name}"))
}

/// The schedule of a replication trace, or why it cannot run on a cluster.
pub fn plan(trace: &Trace) -> Result<Vec<Step>, String> {
    if trace.model == "kraft" {
        // The schedule of single KRaft deliveries between controllers is kraft::plan's.
        return kraft::plan(trace).map(|_| Vec::new());
    }
    if !REPLAYABLE_MODELS.contains(&trace.model.as_str()) {
        return Err(format!(
            "the {} model has no bug flag in the broker or controller processes (`kcheck broker --bug` knows {}), so its traces cannot be replayed against a cluster; `kcheck replay TRACE` replays it in the model",
            trace.model,
            process_flags().join(", ")
        ));
    }
    for b in &trace.bugs {
        if b != "acks-1" && !process_flags().contains(&b.as_str()) {
            return Err(format!(
                "bug flag '{b}' has no counterpart in the broker or controller processes (see specs/cluster-replication.md), so this trace cannot be reproduced on a cluster"
            ));
        }
    }
    if trace.bounds.get("min-isr").copied().unwrap_or(2) != 2 {
        return Err("the cluster runs min.insync.replicas 2 (the controller's setting); re-record the trace with --min-isr 2".into());
    }
    let states = model_states(trace)?;
    // A partition with three replicas; the reassignment model has one more broker to move to.
    let brokers = if trace.model == "reassignment" { 4 } else { 3 };
    if states[0].down.len() != brokers || states[0].replicas.len() != 3 {
        return Err(format!(
            "the cluster replay has {brokers} brokers and a partition with three replicas; this trace has {} brokers and {} replicas",
            states[0].down.len(),
            states[0].replicas.len()
        ));
    }
    let pad = needs_pad(trace, &states);
    let mut out = Vec::new();
    for (i, step) in trace.steps.iter().enumerate() {
        let a = &step.action;
        let kind = a.get("action").and_then(|v| v.as_str()).unwrap_or("");
        let s = match kind {
            "produce" => Step::Produce {
                acks_all: a.get("acks").and_then(|v| v.as_str()) != Some("1"),
            },
            "fetch" => Step::Fetch {
                follower: field_usize(a, "follower")?,
            },
            "become-follower" => Step::BecomeFollower {
                broker: field_usize(a, "broker")?,
            },
            "shrink-isr" => Step::ShrinkIsr {
                follower: field_usize(a, "follower")?,
            },
            "expand-isr" => {
                let follower = field_usize(a, "follower")?;
                Step::ExpandIsr {
                    follower,
                    stale: re_added_without_fetch(trace, i, follower),
                }
            }
            "handle-alter-partition" => Step::HandleAlterPartition,
            "crash" => {
                let broker = field_usize(a, "broker")?;
                let clean = a.get("clean").and_then(|v| v.as_bool()).unwrap_or(true);
                let flushed = a.get("flushed").and_then(|v| v.as_u64()).unwrap_or(0);
                let leo = states[i].leo[broker];
                if !clean && flushed > 0 && flushed < leo {
                    return Err(format!(
                        "step {}: an unclean crash keeping {flushed} of {leo} records needs a flush between appends; the brokers run --flush never, so only all or nothing can be lost",
                        i + 1
                    ));
                }
                // A follower the model re-adds on its previous incarnation's state.
                let re_added = trace.steps[i + 1..].iter().enumerate().any(|(k, s)| {
                    s.action.get("action").and_then(|v| v.as_str()) == Some("expand-isr")
                        && field_usize(&s.action, "follower").ok() == Some(broker)
                        && re_added_without_fetch(trace, i + 1 + k, broker)
                });
                Step::Crash {
                    broker,
                    clean,
                    lose_unsynced: !clean && flushed < leo,
                    stale_fetch: !clean && re_added,
                }
            }
            "restart" => Step::Restart {
                broker: field_usize(a, "broker")?,
            },
            "elect-leader" => Step::ElectLeader {
                broker: field_usize(a, "broker")?,
            },
            "reassign" => {
                let mut target: Vec<usize> = a
                    .get("target")
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| format!("action {a} has no target"))?
                    .iter()
                    .filter_map(|v| v.as_u64().map(|b| b as usize))
                    .collect();
                // The controller elects the first live ISR member in replica order: ask for
                // the model's next completion leader first.
                let next_leader = trace.steps[i + 1..]
                    .iter()
                    .map(|s| &s.action)
                    .find(|a| {
                        matches!(
                            a.get("action").and_then(|v| v.as_str()),
                            Some("reassign" | "cancel" | "complete-reassignment")
                        )
                    })
                    .filter(|a| {
                        a.get("action").and_then(|v| v.as_str()) == Some("complete-reassignment")
                    })
                    .and_then(|a| a.get("leader").and_then(|v| v.as_u64()))
                    .map(|b| b as usize);
                if let Some(l) = next_leader {
                    target.sort_by_key(|b| (*b != l, *b));
                }
                if pad {
                    Step::ReassignPadded {
                        target: padded_target(&target, &states[i].replicas, states[i].leader),
                    }
                } else {
                    Step::Reassign { target }
                }
            }
            "cancel" => Step::Cancel,
            "complete-reassignment" => Step::CompleteReassignment {
                leader: field_usize(a, "leader")?,
            },
            other => return Err(format!("step {}: unknown action {other:?}", i + 1)),
        };
        out.push(s);
    }
    Ok(out)
}

/// The model index of the pad broker (a fifth broker, after the reassignment model's b0..b3).
pub const PAD: usize = 4;

/// Whether the trace cancels a reassignment whose adding replicas are all in the ISR already:
/// the moment between the AlterPartition that adds the last one and the completion, which the
/// model has and the reference does not (it completes in that same partition change).
pub fn needs_pad(trace: &Trace, states: &[ModelState]) -> bool {
    let mut target: Option<Vec<usize>> = None;
    for (i, step) in trace.steps.iter().enumerate() {
        let a = &step.action;
        match a.get("action").and_then(|v| v.as_str()) {
            Some("reassign") => {
                target = a.get("target").and_then(|v| v.as_array()).map(|t| {
                    t.iter()
                        .filter_map(|b| b.as_u64().map(|b| b as usize))
                        .collect()
                })
            }
            Some("cancel") => {
                let before = &states[i];
                if let Some(t) = &target {
                    let adding: Vec<usize> = t
                        .iter()
                        .copied()
                        .filter(|b| before.replicas.contains(b))
                        .collect();
                    if before.replicas.len() > t.len()
                        && adding.iter().all(|b| before.isr.contains(b))
                    {
                        return true;
                    }
                }
                target = None;
            }
            Some("complete-reassignment") => target = None,
            _ => {}
        }
    }
    false
}

/// `target` with [`PAD`] in place of the first replica it keeps from `current` other than the
/// leader, so that the reassignment adds one more replica, whose fetcher stays held.
pub fn padded_target(target: &[usize], current: &[usize], leader: Option<usize>) -> Vec<usize> {
    let mut out = target.to_vec();
    if let Some(kept) = out
        .iter_mut()
        .find(|b| current.contains(b) && Some(**b) != leader)
    {
        *kept = PAD;
    }
    out
}

/// Whether the model's `expand-isr` of `follower` at step `at` re-adds a follower that
/// restarted and has not fetched since: the leader's view of it is its previous
/// incarnation's (what `no-broker-epoch-check` keeps).
fn re_added_without_fetch(trace: &Trace, at: usize, follower: usize) -> bool {
    for s in trace.steps[..at].iter().rev() {
        let kind = s.action.get("action").and_then(|v| v.as_str());
        let who = field_usize(&s.action, "broker")
            .or_else(|_| field_usize(&s.action, "follower"))
            .ok();
        if who != Some(follower) {
            continue;
        }
        match kind {
            Some("fetch") => return false,
            Some("restart") => return true,
            _ => {}
        }
    }
    false
}

/// Bug flags `kcheck broker --bug` accepts (either half).
fn process_flags() -> Vec<&'static str> {
    let mut v: Vec<&str> = kcheck_reference::partition::BROKER_BUGS
        .iter()
        .map(|b| b.name())
        .chain(
            kcheck_reference::controller::ControllerBug::ALL
                .iter()
                .map(|b| b.name()),
        )
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Which replica (index in the partition's replica list) plays each model broker. b0 is the
/// first leader, replica 0. The controller elects the first live ISR member in replica order
/// (then ELR, then, unclean, any live replica), so b1 and b2 are placed where each election
/// of the trace picks the model's choice.
pub fn replica_order(trace: &Trace, steps: &[Step]) -> Result<[usize; 3], String> {
    let states = model_states(trace)?;
    let candidates: [[usize; 3]; 2] = [[0, 1, 2], [0, 2, 1]];
    'perm: for order in candidates {
        for (i, step) in steps.iter().enumerate() {
            let Step::ElectLeader { broker } = step else {
                continue;
            };
            let before = &states[i];
            let live = |b: &usize| !before.down.get(*b).copied().unwrap_or(true);
            // Model brokers in the replica order of this assignment.
            let mut by_replica: Vec<usize> = (0..3).collect();
            by_replica.sort_by_key(|b| order[*b]);
            let pick = by_replica
                .iter()
                .find(|b| before.isr.contains(b) && live(b))
                .or_else(|| {
                    by_replica
                        .iter()
                        .find(|b| before.elr.contains(b) && live(b))
                })
                .or_else(|| by_replica.iter().find(|b| live(b)));
            if pick != Some(broker) {
                continue 'perm;
            }
        }
        return Ok(order);
    }
    Err("no placement of b1 and b2 on the replicas makes the controller elect the model's leaders (it elects in replica order)".into())
}

// ---- Checkers (pure: the read-back logs in, the violations out) --------------------------

/// One replica's log as read back through its broker's control endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLog {
    pub model_broker: usize,
    pub node: NodeId,
    pub leader: bool,
    pub high_watermark: u64,
    /// (offset, value) of every record.
    pub records: Vec<(u64, u64)>,
}

/// `no-committed-data-loss`: every acknowledged record is at its offset in the leader's log.
pub fn check_committed(acked: &[Acknowledged], leader: Option<&ReplicaLog>) -> Vec<Violation> {
    let mut out = Vec::new();
    // With no leader the records are unavailable, not lost: the model's invariant is about
    // the leader's log (and an offline partition is what the correct protocol chooses over
    // an unclean election).
    let Some(l) = leader else {
        return Vec::new();
    };
    for a in acked {
        let detail = match l.records.iter().find(|(o, _)| *o == a.offset) {
            Some((_, v)) if *v == a.value => continue,
            Some((_, v)) => format!(
                "offset {} acknowledged as v{} (acks={}), now v{v} on the leader b{} (node {}): replaced",
                a.offset, a.value, ack_name(a.acks), l.model_broker, l.node
            ),
            None => format!(
                "offset {} acknowledged as v{} (acks={}), now missing from the leader b{} (node {}, log ends at {}): lost",
                a.offset,
                a.value,
                ack_name(a.acks),
                l.model_broker,
                l.node,
                l.records.last().map_or(0, |r| r.0 + 1)
            ),
        };
        out.push(Violation {
            property: "no-committed-data-loss".into(),
            detail,
        });
    }
    out
}

/// `no-committed-data-loss` as a client sees it: every acknowledged record is read back by a
/// consumer of the healed cluster, at its offset.
pub fn check_consumed(acked: &[Acknowledged], consumed: &[(u64, u64)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for a in acked {
        let how = match consumed.iter().find(|(o, _)| *o == a.offset) {
            Some((_, v)) if *v == a.value => continue,
            Some((_, v)) => format!("a consumer reads v{v} there: replaced"),
            None => "a consumer of the healed cluster does not read it: lost".to_string(),
        };
        out.push(Violation {
            property: "no-committed-data-loss".into(),
            detail: format!(
                "offset {} acknowledged as v{} (acks={}), {how}",
                a.offset,
                a.value,
                ack_name(a.acks)
            ),
        });
    }
    out
}

/// `replica-log-consistency`: two replicas hold the same record at every offset below both
/// their HWs.
pub fn check_consistency(replicas: &[ReplicaLog]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, a) in replicas.iter().enumerate() {
        for b in &replicas[i + 1..] {
            let below = a.high_watermark.min(b.high_watermark);
            for offset in 0..below {
                let va = a.records.iter().find(|r| r.0 == offset).map(|r| r.1);
                let vb = b.records.iter().find(|r| r.0 == offset).map(|r| r.1);
                if va != vb {
                    let show =
                        |v: Option<u64>| v.map_or("nothing".to_string(), |v| format!("v{v}"));
                    out.push(Violation {
                        property: "replica-log-consistency".into(),
                        detail: format!(
                            "offset {offset} is {} on b{} (node {}) and {} on b{} (node {}), below both HWs ({} and {})",
                            show(va), a.model_broker, a.node, show(vb), b.model_broker, b.node,
                            a.high_watermark, b.high_watermark
                        ),
                    });
                    break;
                }
            }
        }
    }
    out
}

/// A reassignment the replayer requested: the replica set before it (kept across a replacing
/// request, as the model's `origin`) and the last requested target, as broker node ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requested {
    pub origin: Vec<NodeId>,
    pub target: Vec<NodeId>,
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// The partition's registration against the reassignment model's invariants:
/// `leader-in-replicas`, `isr-subset-of-replicas`, and, once the replicas are the requested
/// target, `completes-to-target` (every replica the reassignment added is in the ISR and the
/// leader is a target replica).
pub fn check_assignment(
    leader: NodeId,
    replicas: &[NodeId],
    isr: &[NodeId],
    requested: Option<&Requested>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    if leader >= 0 && !replicas.contains(&leader) {
        out.push(Violation {
            property: "leader-in-replicas".into(),
            detail: format!("leader node {leader} is not among the replicas {replicas:?}"),
        });
    }
    if let Some(b) = isr.iter().find(|b| !replicas.contains(b)) {
        out.push(Violation {
            property: "isr-subset-of-replicas".into(),
            detail: format!("ISR {isr:?} has node {b}, not among the replicas {replicas:?}"),
        });
    }
    if let Some(r) = requested.filter(|r| same_set(replicas, &r.target)) {
        let missing: Vec<NodeId> = r
            .target
            .iter()
            .copied()
            .filter(|b| !r.origin.contains(b) && !isr.contains(b))
            .collect();
        if !missing.is_empty() {
            out.push(Violation {
                property: "completes-to-target".into(),
                detail: format!(
                    "the reassignment {:?} -> {:?} completed (replicas {replicas:?}) with the added replica(s) {missing:?} outside the ISR {isr:?}",
                    r.origin, r.target
                ),
            });
        }
    }
    out
}

/// `reassignment-can-complete`, as the healed cluster shows it: with every broker up and every
/// fetcher free, the requested reassignment ends (the replicas become its target) in time.
pub fn check_completed(
    replicas: &[NodeId],
    requested: Option<&Requested>,
    waited_s: u64,
) -> Vec<Violation> {
    match requested {
        Some(r) if !same_set(replicas, &r.target) => vec![Violation {
            property: "reassignment-can-complete".into(),
            detail: format!(
                "the reassignment {:?} -> {:?} has not completed {waited_s} s after the cluster healed (no faults, every fetcher free): replicas {replicas:?}",
                r.origin, r.target
            ),
        }],
        _ => Vec::new(),
    }
}

/// The controller's own assertion: the metadata image refuses a record that breaks one of the
/// model's invariants (`MetadataImage::apply`, named as the model names it) and the controller
/// process stops there. Reads the controller's log.
pub fn check_controller_log(log: &str) -> Vec<Violation> {
    const MARK: &str = "breaks an invariant (";
    let Some(at) = log.find(MARK) else {
        return Vec::new();
    };
    let rest = &log[at + MARK.len()..];
    let property: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    // The refused registration, up to the end of the invariant's parentheses.
    let end = rest
        .find(")):")
        .or_else(|| rest.find('\n'))
        .unwrap_or(rest.len());
    let what: String = rest[..end].chars().take(300).collect();
    vec![Violation {
        property,
        detail: format!(
            "the active controller refused its own metadata record and stopped: {what}"
        ),
    }]
}

// ---- The control endpoint and metadata, from the replayer's side -------------------------

/// A partition as a broker's control endpoint reports it.
#[derive(Debug, Clone, Deserialize)]
struct PartitionView {
    topic: String,
    partition: i32,
    role: String,
    leader: Option<i32>,
    leader_epoch: i32,
    log_end_offset: i64,
    high_watermark: i64,
    log_hex: String,
}

#[derive(Debug, Clone, Deserialize)]
struct StateView {
    partitions: Vec<PartitionView>,
}

fn control(addr: &str, line: &str) -> Result<String, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("test control {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("test control {addr}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| format!("test control {addr}: {e}"))?;
    let answer = answer.trim();
    match answer.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_string()),
        None => Err(format!(
            "test control {addr} answered {answer:?} to {line:?}"
        )),
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// The partition's registration as one broker's Metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    leader: NodeId,
    isr: Vec<NodeId>,
    replicas: Vec<NodeId>,
    /// Unfenced brokers.
    brokers: Vec<NodeId>,
}

struct Broker {
    id: NodeId,
    addr: String,
    control: String,
}

struct Cluster {
    system: ProcessSystem,
    brokers: Vec<Broker>,
    /// Model broker → index into `brokers`.
    map: Vec<usize>,
    /// The reassignment requested and not cancelled.
    requested: Option<Requested>,
    /// The controller's log (`check_controller_log`).
    controller_log: PathBuf,
    acked: Arc<Mutex<Vec<Acknowledged>>>,
    producers: Vec<std::thread::JoinHandle<()>>,
    next_value: u64,
    /// `--bug acks-1`: the trace's acks=1 produces are sent with acks=1.
    acks_1: bool,
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    fn node(&self, model_broker: usize) -> &Broker {
        &self.brokers[self.map[model_broker]]
    }

    fn running(&self, b: &Broker) -> bool {
        self.system.is_running(b.id)
    }

    fn meta(&self) -> Option<Meta> {
        for b in self.brokers.iter().filter(|b| self.running(b)) {
            let Ok(m) = kcheck_reference::cluster::metadata(&b.addr) else {
                continue;
            };
            let brokers = m.brokers.iter().map(|b| b.node_id.0).collect();
            let p = m
                .topics
                .iter()
                .filter(|t| t.name.as_ref().map(|n| n.as_str()) == Some(TOPIC))
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition_index == 0)?;
            return Some(Meta {
                leader: p.leader_id.0,
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                brokers,
            });
        }
        None
    }

    fn state(&self, b: &Broker) -> Option<PartitionView> {
        if !self.running(b) {
            return None;
        }
        let json = control(&b.control, "state").ok()?;
        let v: StateView = serde_json::from_str(&json).ok()?;
        v.partitions
            .into_iter()
            .find(|p| p.topic == TOPIC && p.partition == 0)
    }

    fn model_of(&self, node: NodeId) -> usize {
        (0..self.map.len())
            .find(|m| self.node(*m).id == node)
            .unwrap_or(usize::MAX)
    }

    fn isr_models(&self, m: &Meta) -> Vec<usize> {
        let mut v: Vec<usize> = m.isr.iter().map(|n| self.model_of(*n)).collect();
        v.sort_unstable();
        v
    }

    fn produce(&mut self, acks_all: bool) {
        self.next_value += 1;
        let value = self.next_value;
        let acks: i16 = if acks_all { -1 } else { 1 };
        let bootstrap: Vec<String> = self
            .brokers
            .iter()
            .filter(|b| self.system.is_running(b.id))
            .map(|b| b.addr.clone())
            .collect();
        let acked = self.acked.clone();
        self.producers.push(std::thread::spawn(move || {
            let mut c = KafkaClient::new(&bootstrap.join(","), TOPIC, Duration::from_secs(30));
            if let Ok(offset) = c.produce_with_acks(0, value, acks) {
                acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Acknowledged {
                        offset,
                        value,
                        acks,
                    });
            }
        }));
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs one step; `Ok(note)` when it happened, `Err(note)` when it did not.
    fn controller_stopped(&self) -> bool {
        std::fs::read_to_string(&self.controller_log)
            .is_ok_and(|l| !check_controller_log(&l).is_empty())
    }

    /// AlterPartitionReassignments for partition 0 (`None`: cancel), sent to a running broker,
    /// which forwards it to the controller; the error code, or why there is none in time.
    fn alter_reassignment(&self, target: Option<Vec<NodeId>>) -> Result<i16, String> {
        let addr = self
            .brokers
            .iter()
            .find(|b| self.running(b))
            .ok_or("no broker is running")?
            .addr
            .clone();
        crate::kafka::alter_partition_reassignment(&addr, TOPIC, 0, target, Duration::from_secs(10))
    }

    /// Model brokers → node ids.
    fn nodes(&self, model_brokers: &[usize]) -> Vec<NodeId> {
        model_brokers.iter().map(|m| self.node(*m).id).collect()
    }

    fn run(
        &mut self,
        step: &Step,
        before: &ModelState,
        after: &ModelState,
        next: Option<(&Step, &ModelState)>,
    ) -> Result<String, String> {
        if self.controller_stopped() {
            return Err("the controller stopped at an invariant assertion".into());
        }
        // The reference completes a reassignment in the same partition change as the
        // AlterPartition (or request) that makes it possible, as KRaft does; the model may
        // complete a step later. A step that waits for the model's state also accepts the
        // state after the completion that follows it.
        let completed_next = match next {
            Some((Step::CompleteReassignment { .. }, s)) => Some(self.nodes(&s.replicas)),
            _ => None,
        };
        match *step {
            Step::Produce { acks_all } => {
                // acks=1 is the `acks-1` flag's producer setting: without it, acks=all.
                let acks_all = acks_all || !self.acks_1;
                let leader = before.leader.ok_or("the model has no leader")?;
                let leo = self.state(self.node(leader)).map(|p| p.log_end_offset);
                self.produce(acks_all);
                let b = self.node(leader);
                wait_for(STEP_WAIT, || {
                    let now = self.state(b)?.log_end_offset;
                    (Some(now) > leo).then_some(())
                })
                .ok_or("the leader did not append the record")?;
                Ok(format!("v{} appended on node {}", self.next_value, b.id))
            }
            Step::Fetch { follower } => {
                let b = self.node(follower);
                let answer = control(&b.control, "step fetcher 1")?;
                if answer.contains("\"completed\":1") {
                    let p = self.state(b);
                    Ok(p.map_or(String::new(), |p| {
                        format!("LEO={} HW={}", p.log_end_offset, p.high_watermark)
                    }))
                } else {
                    Err(format!("node {}'s fetcher completed no round", b.id))
                }
            }
            Step::BecomeFollower { broker } => {
                let b = self.node(broker);
                let m = self.meta().ok_or("no metadata")?;
                let p = wait_for(STEP_WAIT, || {
                    let p = self.state(b)?;
                    (p.role == "follower" && p.leader == Some(m.leader)).then_some(p)
                })
                .ok_or_else(|| format!("node {} did not follow node {}", b.id, m.leader))?;
                // A truncation the model does at once (OffsetsForLeaderEpoch), the broker does
                // on its next fetch round (the diverging epoch in Fetch v12): one round.
                let mut p = p;
                let mut rounds = 0;
                while (p.log_end_offset as u64) > after.leo[broker] && rounds < 1 {
                    control(&b.control, "step fetcher 1")?;
                    rounds += 1;
                    p = self.state(b).ok_or("no state")?;
                }
                Ok(format!(
                    "follows node {} in leader epoch {}, LEO={} HW={}{}",
                    m.leader,
                    p.leader_epoch,
                    p.log_end_offset,
                    p.high_watermark,
                    if rounds > 0 {
                        format!(" after {rounds} fetch round(s)")
                    } else {
                        String::new()
                    }
                ))
            }
            Step::ShrinkIsr { follower } => {
                let target = self.node(follower).id;
                let keep: Vec<usize> = after
                    .isr
                    .iter()
                    .copied()
                    .filter(|b| Some(*b) != after.leader && *b != follower)
                    .collect();
                for k in &keep {
                    control(&self.node(*k).control, "release fetcher")?;
                }
                let done = wait_for(
                    Duration::from_millis(LAG_TIME_SHRINK_MS) + STEP_WAIT,
                    || {
                        let m = self.meta()?;
                        (!m.isr.contains(&target)).then_some(m)
                    },
                );
                for k in &keep {
                    control(&self.node(*k).control, "hold fetcher")?;
                }
                let m = done.ok_or_else(|| format!("node {target} stayed in the ISR"))?;
                Ok(format!("ISR {:?}", m.isr))
            }
            Step::ExpandIsr {
                follower,
                stale: true,
            } => {
                // The killed incarnation's Fetch has waited on the leader since the crash.
                let leader = self.node(before.leader.ok_or("the model has no leader")?);
                control(&leader.control, "release follower-fetch")?;
                let id = self.node(follower).id;
                let m = wait_for(Duration::from_secs(3), || {
                    let m = self.meta()?;
                    m.isr.contains(&id).then_some(m)
                });
                match m {
                    Some(m) => Ok(format!(
                        "the leader handled the killed incarnation's Fetch after the restart: ISR {:?}",
                        m.isr
                    )),
                    None => Err(format!(
                        "the leader handled the killed incarnation's Fetch after the restart; node {id} stayed out of the ISR (KIP-903: its broker epoch is stale)"
                    )),
                }
            }
            Step::ExpandIsr { follower, .. } => {
                let b = self.node(follower);
                for round in 0..=5 {
                    if let Some(m) = self.meta() {
                        if m.isr.contains(&b.id) {
                            return Ok(format!("ISR {:?} after {round} fetch round(s)", m.isr));
                        }
                    }
                    control(&b.control, "step fetcher 1")?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                let m = wait_for(Duration::from_secs(2), || {
                    let m = self.meta()?;
                    m.isr.contains(&b.id).then_some(m)
                })
                .ok_or_else(|| format!("node {} was not added to the ISR", b.id))?;
                Ok(format!("ISR {:?}", m.isr))
            }
            Step::HandleAlterPartition => {
                let mut want = after.isr.clone();
                want.sort_unstable();
                let m = wait_for(STEP_WAIT, || {
                    let m = self.meta()?;
                    let completed = completed_next
                        .as_ref()
                        .is_some_and(|r| same_set(&m.replicas, r));
                    (self.isr_models(&m) == want || completed).then_some(m)
                });
                match m {
                    Some(m) => Ok(format!("ISR {:?}", m.isr)),
                    None => Err(format!(
                        "the ISR is {:?}, not the model's",
                        self.meta().map(|m| m.isr)
                    )),
                }
            }
            Step::Crash {
                broker,
                clean,
                lose_unsynced,
                stale_fetch,
            } => {
                let id = self.node(broker).id;
                let mut note = String::new();
                if stale_fetch {
                    // One more Fetch of this incarnation, held on the leader until the model
                    // re-adds the follower (after its restart).
                    let leader = self.node(before.leader.ok_or("the model has no leader")?);
                    let leader_control = leader.control.clone();
                    control(&leader_control, "hold follower-fetch")?;
                    let follower_control = self.node(broker).control.clone();
                    std::thread::spawn(move || {
                        // Never answered: the fetch waits on the leader, then this process dies.
                        let _ = control(&follower_control, "step fetcher 1");
                    });
                    wait_for(Duration::from_secs(5), || {
                        let json = control(&leader_control, "state").ok()?;
                        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
                        (v.get("follower_fetch_waiting")?.as_u64()? >= 1).then_some(())
                    })
                    .ok_or("the follower's Fetch did not reach the leader")?;
                    note.push_str("one Fetch held on the leader; ");
                }
                if clean {
                    let exited = self
                        .system
                        .terminate(id, Duration::from_secs(10))
                        .map_err(|e| e.to_string())?;
                    note.push_str(if exited {
                        "SIGTERM, controlled shutdown"
                    } else {
                        "SIGTERM not obeyed in 10 s: SIGKILL"
                    });
                } else {
                    self.system.kill(id).map_err(|e| e.to_string())?;
                    note.push_str("SIGKILL");
                    if lose_unsynced {
                        let r = self.system.lose_unsynced(id).map_err(|e| e.to_string())?;
                        note.push_str(&format!(
                            ", LazyFs dropped {} unsynced bytes",
                            r.bytes_truncated
                        ));
                    }
                }
                wait_for(
                    Duration::from_millis(SESSION_TIMEOUT_MS) + STEP_WAIT,
                    || {
                        let m = self.meta()?;
                        (!m.brokers.contains(&id) && m.leader != id).then_some(())
                    },
                )
                .ok_or_else(|| format!("{note}; node {id} was not fenced"))?;
                Ok(format!("{note}; fenced"))
            }
            Step::Restart { broker } => {
                let id = self.node(broker).id;
                self.system.restart(id).map_err(|e| e.to_string())?;
                wait_for(Duration::from_secs(15), || {
                    let m = self.meta()?;
                    m.brokers.contains(&id).then_some(())
                })
                .ok_or_else(|| format!("node {id} was not unfenced"))?;
                Ok(format!("node {id} restarted and unfenced"))
            }
            Step::Reassign { ref target } | Step::ReassignPadded { ref target } => {
                let ids = self.nodes(target);
                let m = self.meta().ok_or("no metadata")?;
                let origin = match &self.requested {
                    Some(r) if !same_set(&m.replicas, &r.target) => r.origin.clone(),
                    _ => m.replicas.clone(),
                };
                let code = self.alter_reassignment(Some(ids.clone()))?;
                if code != 0 {
                    return Err(format!("AlterPartitionReassignments answered error {code}"));
                }
                self.requested = Some(Requested {
                    origin,
                    target: ids.clone(),
                });
                let mut want = self.nodes(&after.replicas);
                if matches!(step, Step::ReassignPadded { .. }) {
                    want.push(self.node(PAD).id);
                }
                let m = wait_for(STEP_WAIT, || {
                    let m = self.meta()?;
                    let done = completed_next
                        .as_ref()
                        .is_some_and(|r| same_set(&m.replicas, r));
                    (same_set(&m.replicas, &want) || done).then_some(m)
                })
                .ok_or_else(|| format!("the replicas did not become {want:?}"))?;
                Ok(format!(
                    "target {ids:?}: replicas {:?}, ISR {:?}, leader {}",
                    m.replicas, m.isr, m.leader
                ))
            }
            Step::Cancel => {
                let code = self.alter_reassignment(None)?;
                if code != 0 {
                    return Err(format!(
                        "AlterPartitionReassignments (cancel) answered error {code}{}",
                        if code == 85 {
                            " NO_REASSIGNMENT_IN_PROGRESS: the reassignment had completed"
                        } else {
                            ""
                        }
                    ));
                }
                self.requested = None;
                let want = self.nodes(&after.replicas);
                let m = wait_for(STEP_WAIT, || {
                    let m = self.meta()?;
                    same_set(&m.replicas, &want).then_some(m)
                })
                .ok_or_else(|| format!("the replicas did not revert to {want:?}"))?;
                Ok(format!("replicas {:?}, ISR {:?}", m.replicas, m.isr))
            }
            Step::CompleteReassignment { leader } => {
                let want = self.nodes(&after.replicas);
                let m = wait_for(STEP_WAIT, || {
                    let m = self.meta()?;
                    same_set(&m.replicas, &want).then_some(m)
                })
                .ok_or_else(|| {
                    format!(
                        "the controller did not complete: replicas {:?}",
                        self.meta().map(|m| m.replicas)
                    )
                })?;
                let id = self.node(leader).id;
                Ok(format!(
                    "replicas {:?}, ISR {:?}, leader {}{}",
                    m.replicas,
                    m.isr,
                    m.leader,
                    if m.leader == id {
                        String::new()
                    } else {
                        format!(" (the model's: node {id})")
                    }
                ))
            }
            Step::ElectLeader { broker } => {
                let id = self.node(broker).id;
                let b = self.node(broker);
                let got = wait_for(STEP_WAIT, || {
                    let m = self.meta()?;
                    (m.leader == id).then_some(m)
                });
                match got {
                    Some(m) => {
                        wait_for(STEP_WAIT, || {
                            (self.state(b)?.role == "leader").then_some(())
                        });
                        Ok(format!("leader node {id}, ISR {:?}", m.isr))
                    }
                    None => Err(format!(
                        "the controller elected {:?}, not node {id}",
                        self.meta().map(|m| m.leader)
                    )),
                }
            }
        }
    }

    /// Heals the cluster — restarts the brokers that are down, lets every fetcher run — and
    /// reads the partition as a consumer does (Fetch up to the HW) once a leader has all three
    /// replicas in its ISR and its HW at its LEO: what is gone then is gone for clients too.
    fn heal_and_consume(&mut self) -> Result<Vec<(u64, u64)>, String> {
        if self.controller_stopped() {
            return Err("the controller stopped at an invariant assertion: no heal".into());
        }
        for i in 0..self.brokers.len() {
            let id = self.brokers[i].id;
            if !self.system.is_running(id) {
                self.system.restart(id).map_err(|e| e.to_string())?;
            }
        }
        for b in &self.brokers {
            control(&b.control, "release fetcher")?;
            control(&b.control, "release follower-fetch")?;
        }
        wait_for(Duration::from_secs(20), || {
            let m = self.meta()?;
            let leader = self.brokers.iter().find(|b| b.id == m.leader)?;
            let p = self.state(leader)?;
            (m.isr.len() == m.replicas.len()
                && p.role == "leader"
                && p.high_watermark == p.log_end_offset)
                .then_some(())
        })
        .ok_or_else(|| {
            let m = self.meta();
            let leader = m
                .as_ref()
                .and_then(|m| self.brokers.iter().find(|b| b.id == m.leader))
                .and_then(|b| self.state(b))
                .map(|p| format!("LEO={} HW={}", p.log_end_offset, p.high_watermark));
            format!(
                "the healed cluster did not settle in 20 s (a leader with every replica in the ISR and its HW at its LEO): metadata {m:?}, leader {leader:?}"
            )
        })?;
        let bootstrap: Vec<String> = self.brokers.iter().map(|b| b.addr.clone()).collect();
        let mut consumer = KafkaClient::new(&bootstrap.join(","), TOPIC, Duration::from_secs(5));
        let mut records = Vec::new();
        let mut offset = 0;
        for _ in 0..1000 {
            let f = consumer
                .fetch(0, offset)
                .map_err(|e| format!("consumer fetch at offset {offset}: {e:?}"))?;
            let Some(last) = f.records.last().map(|r| r.0) else {
                break;
            };
            records.extend(f.records);
            offset = last + 1;
            if offset >= f.high_watermark {
                break;
            }
        }
        Ok(records)
    }

    fn read_back(&self) -> Vec<ReplicaLog> {
        let meta = self.meta();
        let leader = meta.as_ref().map(|m| m.leader);
        let mut out = Vec::new();
        for model_broker in 0..self.map.len() {
            let b = self.node(model_broker);
            // A replica the reassignment removed keeps its log on the reference broker; the
            // model deletes it (StopReplica): only assigned replicas are compared.
            if meta.as_ref().is_some_and(|m| !m.replicas.contains(&b.id)) {
                continue;
            }
            let Some(p) = self.state(b) else {
                continue;
            };
            let records =
                decode_values(bytes::Bytes::from(hex_bytes(&p.log_hex))).unwrap_or_default();
            out.push(ReplicaLog {
                model_broker,
                node: b.id,
                leader: p.role == "leader" && leader == Some(b.id),
                high_watermark: p.high_watermark.max(0) as u64,
                records,
            });
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.system.shutdown();
    }
}

fn start_cluster(trace: &Trace, steps: &[Step], opts: &ReplayOptions) -> Result<Cluster, String> {
    let io = |e: std::io::Error| e.to_string();
    let (broker_bugs, controller_bugs) = kcheck_reference::cli::split_bug_flags(
        &opts
            .bugs
            .iter()
            .filter(|b| *b != "acks-1")
            .cloned()
            .collect::<Vec<_>>(),
    )?;
    let flags = |bugs: &[String]| -> Vec<String> {
        bugs.iter()
            .flat_map(|b| ["--bug".to_string(), b.clone()])
            .collect()
    };
    let lazy = steps.iter().any(|s| {
        matches!(
            s,
            Step::Crash {
                lose_unsynced: true,
                ..
            }
        )
    });
    if lazy {
        crate::lazyfs::available()
            .map_err(|e| format!("this trace loses unsynced writes (LazyFs): {e}"))?;
    }
    let shrinks = steps.iter().any(|s| matches!(s, Step::ShrinkIsr { .. }));
    let lag_ms = if shrinks {
        LAG_TIME_SHRINK_MS
    } else {
        LAG_TIME_NO_SHRINK_MS
    };
    let port = || free_port().map(|p| format!("127.0.0.1:{p}")).map_err(io);
    let controller_addr = port()?;
    let voters = format!("{CONTROLLER_ID}@{controller_addr}");
    let dir = &opts.run_dir;
    let mut specs = Vec::new();
    let data = |id: NodeId| dir.join(format!("n{id}")).join("data");
    let mut args: Vec<String> = [
        "broker",
        "--process-roles",
        "controller",
        "--node-id",
        &CONTROLLER_ID.to_string(),
        "--controller-listen",
        &controller_addr,
        "--controller-quorum-voters",
        &voters,
        "--broker-session-timeout-ms",
        &SESSION_TIMEOUT_MS.to_string(),
        "--election-timeout-ms",
        "500",
        "--data-dir",
        &data(CONTROLLER_ID).display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(flags(&controller_bugs));
    specs.push(NodeSpec {
        id: CONTROLLER_ID,
        program: opts.program.clone(),
        args,
        data_dir: data(CONTROLLER_ID),
        client_addr: None,
    });
    let mut brokers = Vec::new();
    let padded = steps
        .iter()
        .any(|s| matches!(s, Step::ReassignPadded { .. }));
    let broker_count = model_states(trace)?[0].down.len() as NodeId + NodeId::from(padded);
    for id in 1..=broker_count {
        let (listen, control_addr) = (port()?, port()?);
        let mut args: Vec<String> = [
            "broker",
            "--process-roles",
            "broker",
            "--node-id",
            &id.to_string(),
            "--listen",
            &listen,
            "--controller-quorum-voters",
            &voters,
            "--min-insync-replicas",
            "2",
            "--replica-lag-time-max-ms",
            &lag_ms.to_string(),
            "--flush",
            "never",
            "--test-control",
            &control_addr,
            "--data-dir",
            &data(id).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(flags(&broker_bugs));
        specs.push(NodeSpec {
            id,
            program: opts.program.clone(),
            args,
            data_dir: data(id),
            client_addr: Some(listen.clone()),
        });
        brokers.push(Broker {
            id,
            addr: listen,
            control: control_addr,
        });
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let system = ProcessSystem::start(dir, specs, lazy, false, None)
        .map_err(|e| format!("cannot start the cluster: {e}"))?;
    let mut cluster = Cluster {
        system,
        brokers,
        map: (0..broker_count as usize).collect(),
        requested: None,
        controller_log: dir.join(format!("n{CONTROLLER_ID}")).join("node.log"),
        acked: Arc::new(Mutex::new(Vec::new())),
        producers: Vec::new(),
        next_value: 0,
        acks_1: opts.bugs.iter().any(|b| b == "acks-1"),
    };
    let ids: Vec<NodeId> = cluster.brokers.iter().map(|b| b.id).collect();
    let bootstrap: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    wait_for(Duration::from_secs(20), || {
        let m = kcheck_reference::cluster::metadata(&bootstrap[0]).ok()?;
        (m.brokers.len() == ids.len()).then_some(())
    })
    .ok_or("the brokers were not all unfenced within 20 s")?;
    let mut admin = KafkaClient::new(&bootstrap.join(","), TOPIC, Duration::from_secs(10));
    admin
        .create_topic(1, 3)
        .map_err(|e| format!("cannot create the replay topic: {e:?}"))?;
    let meta = wait_for(Duration::from_secs(10), || {
        let m = cluster.meta()?;
        let ready = m.replicas.len() == 3
            && m.isr.len() == 3
            && cluster
                .brokers
                .iter()
                .filter(|b| m.replicas.contains(&b.id))
                .all(|b| {
                    cluster.state(b).is_some_and(|p| {
                        p.role
                            == if b.id == m.leader {
                                "leader"
                            } else {
                                "follower"
                            }
                    })
                });
        ready.then_some(m)
    })
    .ok_or("the replay topic did not get a leader and three in-sync replicas in 10 s")?;
    let order = replica_order(trace, steps)?;
    for (model_broker, replica) in order.into_iter().enumerate() {
        let node = meta.replicas[replica];
        cluster.map[model_broker] = cluster
            .brokers
            .iter()
            .position(|b| b.id == node)
            .ok_or("a replica on an unknown broker")?;
    }
    // The reassignment model's b3 (and the pad): the brokers that hold no replica yet.
    let spares = cluster
        .brokers
        .iter()
        .enumerate()
        .filter(|(_, b)| !meta.replicas.contains(&b.id))
        .map(|(i, _)| i);
    for (model_broker, spare) in (3..cluster.map.len()).zip(spares) {
        cluster.map[model_broker] = spare;
    }
    Ok(cluster)
}

/// Replays `trace` on a fresh cluster. `Err` when it cannot be replayed (exit 2).
pub fn replay(trace: &Trace, opts: &ReplayOptions) -> Result<ReplayReport, String> {
    let started = Instant::now();
    for b in &opts.bugs {
        if !trace.bugs.contains(b) {
            return Err(format!(
                "--bug {b} is not this trace's flag (the trace was recorded with: {}); replay it with one of those, or none for the correct protocol",
                if trace.bugs.is_empty() {
                    "none".to_string()
                } else {
                    trace.bugs.join(", ")
                }
            ));
        }
    }
    if trace.model == "kraft" {
        return kraft::replay(trace, opts);
    }
    let steps = plan(trace)?;
    let states = model_states(trace)?;
    let mut cluster = start_cluster(trace, &steps, opts)?;
    let mut reports = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (before, after) = (&states[i], &states[i + 1]);
        let next = steps.get(i + 1).map(|s| (s, &states[i + 2]));
        let result = cluster.run(step, before, after, next);
        // The model's acknowledgements that this step made: give them time to arrive.
        if after.acknowledged > before.acknowledged {
            wait_for(Duration::from_secs(3), || {
                (cluster.acked_count() >= after.acknowledged).then_some(())
            });
        }
        let (happened, note) = match result {
            Ok(n) => (true, n),
            Err(n) => (false, n),
        };
        let r = StepReport {
            step: i + 1,
            model: trace.steps[i].description.clone(),
            happened,
            note,
        };
        if opts.verbose {
            eprintln!("{}", r.line());
        }
        reports.push(r);
    }
    let logs = cluster.read_back();
    let acknowledged = cluster
        .acked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut violations = check_committed(&acknowledged, logs.iter().find(|l| l.leader));
    violations.extend(check_consistency(&logs));
    if let Some(m) = cluster.meta() {
        violations.extend(check_assignment(
            m.leader,
            &m.replicas,
            &m.isr,
            cluster.requested.as_ref(),
        ));
    }
    let controller_log = std::fs::read_to_string(&cluster.controller_log).unwrap_or_default();
    violations.extend(check_controller_log(&controller_log));
    let consumed = cluster.heal_and_consume();
    if let Ok(records) = &consumed {
        violations.extend(check_consumed(&acknowledged, records));
        if cluster.requested.is_some() {
            // The healed cluster settled; the reassignment may complete a moment later.
            let wait = Duration::from_secs(COMPLETE_AFTER_HEAL_S);
            let replicas = wait_for(wait, || {
                let m = cluster.meta()?;
                let r = cluster.requested.as_ref()?;
                same_set(&m.replicas, &r.target).then_some(m.replicas)
            })
            .or_else(|| cluster.meta().map(|m| m.replicas))
            .unwrap_or_default();
            violations.extend(check_completed(
                &replicas,
                cluster.requested.as_ref(),
                COMPLETE_AFTER_HEAL_S,
            ));
        }
    }
    let brokers = (0..cluster.map.len()).map(|m| cluster.node(m).id).collect();
    drop(cluster);
    Ok(ReplayReport {
        model: trace.model.clone(),
        property: trace.property.clone(),
        bugs: opts.bugs.clone(),
        brokers,
        steps: reports,
        acknowledged,
        violations,
        consumed_after_heal: consumed,
        final_state: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded trace of `specs/traces` (the kraft replay's tests read them too).
    pub(super) fn trace(name: &str) -> Trace {
        let path = format!("{}/../specs/traces/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn model_states_are_read_from_the_trace() {
        let t = trace("replication-truncate-to-hw");
        let s = model_states(&t).unwrap();
        assert_eq!(s[0].leader, Some(0));
        assert_eq!(s[0].isr, vec![0, 1, 2]);
        let last = s.last().unwrap();
        assert_eq!((last.leader, last.isr.clone()), (Some(2), vec![2]));
        assert_eq!(last.down, vec![true, true, false]);
        assert_eq!(last.acknowledged, 1);
    }

    #[test]
    fn every_replication_trace_with_a_process_flag_has_a_schedule() {
        for name in [
            "replication-truncate-to-hw",
            "replication-acks-1",
            "replication-unclean-election",
            "replication-single-epoch-lookup",
            "replication-last-replica-standing",
            "replication-no-broker-epoch-check",
            "reassignment-remove-before-caught-up",
            "reassignment-leader-outside-target",
            "reassignment-no-leader-move",
            "reassignment-cancel-keeps-adding-in-isr",
            "reassignment-replace-from-grown-set",
        ] {
            let t = trace(name);
            let steps = plan(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(steps.len(), t.steps.len());
            replica_order(&t, &steps).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn traces_without_a_process_flag_are_refused_with_the_reason() {
        let e = plan(&trace("replication-single-round-epoch-lookup")).unwrap_err();
        assert!(e.contains("no counterpart"), "{e}");
        let e = plan(&trace("kraft-commit-prior-epoch")).unwrap_err();
        assert!(e.contains("mutation of the kraft model only"), "{e}");
        // The four kraft traces with a RaftBug counterpart have a schedule (kraft::plan).
        assert!(plan(&trace("kraft-forget-vote-on-restart")).is_ok());
        let e = plan(&trace("consumer-offsets-auto-commit")).unwrap_err();
        assert!(e.contains("consumer-offsets model has no bug flag"), "{e}");
    }

    #[test]
    fn only_a_follower_re_added_before_it_fetches_again_gets_a_stale_fetch() {
        let t = trace("replication-no-broker-epoch-check");
        let steps = plan(&t).unwrap();
        assert_eq!(
            steps[5],
            Step::Crash {
                broker: 1,
                clean: false,
                lose_unsynced: true,
                stale_fetch: true
            }
        );
        assert_eq!(
            steps[8],
            Step::ExpandIsr {
                follower: 1,
                stale: true
            }
        );
        // single-epoch-lookup re-adds b2 after it fetched again: an ordinary expansion.
        let steps = plan(&trace("replication-single-epoch-lookup")).unwrap();
        assert!(steps.iter().all(|s| !matches!(
            s,
            Step::ExpandIsr { stale: true, .. }
                | Step::Crash {
                    stale_fetch: true,
                    ..
                }
        )));
    }

    #[test]
    fn a_reassignment_asks_for_the_models_completion_leader_first() {
        let t = trace("reassignment-remove-before-caught-up");
        let steps = plan(&t).unwrap();
        assert!(steps.contains(&Step::Reassign {
            target: vec![3, 1, 2]
        }));
        assert!(steps.contains(&Step::CompleteReassignment { leader: 3 }));
        let s = model_states(&t).unwrap();
        assert_eq!(s[0].replicas, vec![0, 1, 2]);
        assert_eq!(s[5].replicas, vec![0, 1, 2, 3]);
        assert_eq!(s[6].replicas, vec![1, 2, 3]);
        // Replication traces: every broker is a replica.
        let s = model_states(&trace("replication-acks-1")).unwrap();
        assert_eq!(s[0].replicas, vec![0, 1, 2]);
    }

    #[test]
    fn only_a_cancel_after_the_last_adding_replica_joined_the_isr_needs_the_pad() {
        let t = trace("reassignment-cancel-keeps-adding-in-isr");
        assert!(needs_pad(&t, &model_states(&t).unwrap()));
        let steps = plan(&t).unwrap();
        // Target {b0,b1,b3} from {b0,b1,b2}: the pad takes b1's place, so b3 and the pad are
        // added and the reassignment is still running when b3 is in the ISR.
        assert_eq!(
            steps[0],
            Step::ReassignPadded {
                target: vec![0, PAD, 3]
            },
            "{steps:?}"
        );
        for name in [
            "reassignment-remove-before-caught-up",
            "reassignment-leader-outside-target",
            "reassignment-no-leader-move",
            "reassignment-replace-from-grown-set",
        ] {
            let t = trace(name);
            assert!(!needs_pad(&t, &model_states(&t).unwrap()), "{name}");
        }
        // The leader is never the replaced replica.
        assert_eq!(
            padded_target(&[1, 0, 3], &[0, 1, 2], Some(1)),
            vec![1, PAD, 3]
        );
    }

    #[test]
    fn assignment_checker_passes_a_good_registration_and_catches_each_bad_one() {
        let moved = Requested {
            origin: vec![1, 2, 3],
            target: vec![4, 2, 3],
        };
        // In progress, then completed with the added replica in the ISR.
        assert!(check_assignment(1, &[4, 2, 3, 1], &[1, 2], Some(&moved)).is_empty());
        assert!(check_assignment(4, &[4, 2, 3], &[4, 2], Some(&moved)).is_empty());
        let v = check_assignment(1, &[4, 2, 3], &[4, 2], Some(&moved));
        assert_eq!(v[0].property, "leader-in-replicas", "{v:?}");
        let v = check_assignment(1, &[1, 2, 3], &[1, 2, 4], None);
        assert_eq!(v[0].property, "isr-subset-of-replicas", "{v:?}");
        let v = check_assignment(2, &[4, 2, 3], &[2, 3], Some(&moved));
        assert_eq!(v[0].property, "completes-to-target", "{v:?}");
        assert!(v[0].detail.contains("[4] outside the ISR"), "{v:?}");
    }

    #[test]
    fn completion_checker_passes_a_completed_reassignment_and_catches_a_stuck_one() {
        let moved = Requested {
            origin: vec![1, 2, 3],
            target: vec![4, 2, 3],
        };
        assert!(check_completed(&[2, 3, 4], Some(&moved), 10).is_empty());
        assert!(check_completed(&[1, 2, 3], None, 10).is_empty());
        let v = check_completed(&[4, 2, 3, 1], Some(&moved), 10);
        assert_eq!(v[0].property, "reassignment-can-complete", "{v:?}");
    }

    #[test]
    fn controller_log_checker_names_the_invariant_its_image_refused() {
        assert!(check_controller_log("INFO elected\nINFO fenced broker 2\n").is_empty());
        let log = "thread 'tokio-runtime-worker' panicked at reference/src/controller.rs:241:13:\nthe controller wrote a record its own image refuses (metadata record breaks an invariant (leader-in-replicas: PartitionRegistration { leader: 1 })): PartitionChange\n";
        let v = check_controller_log(log);
        assert_eq!(v[0].property, "leader-in-replicas", "{v:?}");
        assert!(v[0].detail.contains("leader: 1"), "{v:?}");
    }

    #[test]
    fn elections_in_replica_order_place_b1_and_b2() {
        // b0 crashes with b1 and b2 both in the ISR and the model elects b2: b2 must come
        // before b1 in the replica list.
        let t = trace("replication-single-epoch-lookup");
        let steps = plan(&t).unwrap();
        assert_eq!(replica_order(&t, &steps).unwrap(), [0, 2, 1]);
        let t = trace("replication-truncate-to-hw");
        let steps = plan(&t).unwrap();
        assert_eq!(replica_order(&t, &steps).unwrap(), [0, 1, 2]);
    }

    fn log(model_broker: usize, leader: bool, hw: u64, records: &[(u64, u64)]) -> ReplicaLog {
        ReplicaLog {
            model_broker,
            node: model_broker as i32 + 1,
            leader,
            high_watermark: hw,
            records: records.to_vec(),
        }
    }

    #[test]
    fn committed_checker_passes_a_kept_record_and_catches_a_lost_or_replaced_one() {
        let acked = [Acknowledged {
            offset: 0,
            value: 1,
            acks: -1,
        }];
        assert!(check_committed(&acked, Some(&log(2, true, 1, &[(0, 1)]))).is_empty());
        let lost = check_committed(&acked, Some(&log(2, true, 0, &[])));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].property, "no-committed-data-loss");
        assert!(
            lost[0].detail.contains("offset 0 acknowledged as v1"),
            "{lost:?}"
        );
        assert!(lost[0].detail.contains("lost"), "{lost:?}");
        let replaced = check_committed(&acked, Some(&log(1, true, 1, &[(0, 7)])));
        assert!(replaced[0].detail.contains("now v7"), "{replaced:?}");
        // An offline partition is unavailable, not lossy.
        assert!(check_committed(&acked, None).is_empty());
    }

    #[test]
    fn consumer_checker_passes_a_read_record_and_catches_a_missing_or_replaced_one() {
        let acked = [Acknowledged {
            offset: 1,
            value: 2,
            acks: -1,
        }];
        assert!(check_consumed(&acked, &[(0, 1), (1, 2)]).is_empty());
        let lost = check_consumed(&acked, &[(0, 1)]);
        assert!(
            lost[0].detail.contains("offset 1 acknowledged as v2"),
            "{lost:?}"
        );
        assert!(lost[0].detail.ends_with("lost"), "{lost:?}");
        let replaced = check_consumed(&acked, &[(1, 9)]);
        assert!(replaced[0].detail.contains("reads v9"), "{replaced:?}");
    }

    #[test]
    fn consistency_checker_compares_only_below_both_hws() {
        let a = log(1, true, 1, &[(0, 1)]);
        let same = log(2, false, 1, &[(0, 1)]);
        assert!(check_consistency(&[a.clone(), same]).is_empty());
        // Different at offset 0, but b2's HW is 0: not yet a violation.
        let behind = log(2, false, 0, &[(0, 2)]);
        assert!(check_consistency(&[a.clone(), behind]).is_empty());
        let diverged = log(2, false, 1, &[(0, 2)]);
        let v = check_consistency(&[a, diverged]);
        assert_eq!(v[0].property, "replica-log-consistency");
        assert!(v[0].detail.contains("offset 0 is v1 on b1"), "{v:?}");
    }
}

//! Checks of what the run saw of the cluster itself, beside the client workload: nodes that
//! ended on their own or logged a failed assertion, and reassignments (KIP-455) that broke the
//! reassignment model's completion properties.
//!
//! Pure functions of the history, like every checker: the run records what it observed as
//! nemesis-process ops, and [`check`] judges them.
//!
//! | op (`f`) | recorded when | value |
//! | --- | --- | --- |
//! | `node-exited` | a node process ended although the harness neither killed nor stopped it (seen each nemesis tick, before the heal, before shutdown) | `{"node", "status"}` |
//! | `node-log` | after shutdown, for every line of a node's log that reports a failed assertion (a Rust panic, a committed metadata record the image refused) | `{"node", "file", "line", "message", "text"}` |
//! | `stop-reassign` | a reassign fault ends; its Metadata observation is taken before a stalled replica resumes (and, while the move is incomplete with every added replica in the ISR, repeated for up to 2.2 s) | the start's value plus `replicas-at-stop`, `isr-at-stop`, `leader-at-stop`, `added-while-stalled`, `stuck-ms` |
//! | `await-reassign` | after the heal, per partition whose last reassignment the nemesis left running, once it completed or the bound ran out | `{"partition", "origin", "reassign-to", "completed", "replicas", "isr", "leader", "nodes-down", "waited-ms"}` |
//!
//! Anomalies:
//! - `node-crashed`: a `node-exited` op. Nothing in a run may end a node but the nemesis.
//! - `node-assertion`: a `node-log` op (the node's own invariant checks failed).
//! - `reassignment-incomplete` (the model's `reassignment-can-complete`, as liveness): an
//!   `await-reassign` that did not complete although the partition had a leader, every replica
//!   the reassignment adds was in the ISR and every node was running — KIP-455's completion
//!   condition held and nothing completed it; or a `stop-reassign` that watched the move stay
//!   incomplete with that condition holding for [`STUCK_MS`] or more.
//! - `reassignment-completed-outside-isr` (the model's `completes-to-target`): a
//!   `stop-reassign` that saw the partition on its target while a replica the reassignment added
//!   was outside the ISR and had been paused since before any request named it: it never
//!   fetched, so it cannot have been in sync when the reassignment completed.

use crate::history::{History, OpValue, Process};
use crate::Verdict;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub const F_NODE_EXITED: &str = "node-exited";
pub const F_NODE_LOG: &str = "node-log";
pub const F_STOP_REASSIGN: &str = "stop-reassign";
pub const F_AWAIT_REASSIGN: &str = "await-reassign";

/// The shortest time a `stop-reassign` must have watched a move stay incomplete while its
/// completion condition held for `reassignment-incomplete` (`stuck-ms`): a correct
/// controller completes in the very change that adds the last replica to the ISR, so only a
/// broker's Metadata lagging the controller could show that state, and not for this long.
pub const STUCK_MS: u64 = 2000;

/// One instance of an anomaly: the history op that shows it and what it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub index: u64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub verdict: Verdict,
    /// anomaly name → its findings.
    pub anomalies: BTreeMap<String, Vec<Finding>>,
    /// What the checks saw but could not decide (a reassignment still catching up at the end).
    pub notes: Vec<String>,
    /// Ops these checks read.
    pub observations: usize,
}

impl ClusterReport {
    /// One line per anomaly, for the summary: `node-assertion x1 (node 5: ...)`.
    pub fn reasons(&self) -> Vec<String> {
        self.anomalies
            .iter()
            .map(|(name, fs)| {
                let what = fs.first().map_or("", |f| f.what.as_str());
                // The summary keeps a line short; results.json has every finding in full.
                let short: String = what.chars().take(300).collect();
                let more = if short.len() < what.len() { " ..." } else { "" };
                format!("{name} x{} ({short}{more})", fs.len())
            })
            .collect()
    }
}

/// Whether the history holds anything these checks read.
pub fn observed(history: &History) -> bool {
    history.ops.iter().any(relevant)
}

fn relevant(op: &crate::history::Op) -> bool {
    op.process == Process::Nemesis
        && [F_NODE_EXITED, F_NODE_LOG, F_STOP_REASSIGN, F_AWAIT_REASSIGN].contains(&op.f.as_str())
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn set(v: &Value) -> BTreeSet<i64> {
    ids(v).into_iter().collect()
}

pub fn check(history: &History) -> ClusterReport {
    let mut anomalies: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut observations = 0;
    let mut add = |name: &str, index: u64, what: String| {
        anomalies
            .entry(name.to_string())
            .or_default()
            .push(Finding { index, what })
    };
    for op in history.ops.iter().filter(|o| relevant(o)) {
        observations += 1;
        let OpValue::Other(v) = &op.value else {
            continue;
        };
        match op.f.as_str() {
            F_NODE_EXITED => add(
                "node-crashed",
                op.index,
                format!(
                    "node {} ended on its own ({})",
                    v["node"],
                    v["status"].as_str().unwrap_or("?")
                ),
            ),
            F_NODE_LOG => add(
                "node-assertion",
                op.index,
                format!(
                    "node {}: {} ({}:{})",
                    v["node"],
                    v["message"].as_str().unwrap_or("?"),
                    v["file"].as_str().unwrap_or("?"),
                    v["line"]
                ),
            ),
            F_STOP_REASSIGN => {
                let target = set(&v["reassign-to"]);
                let at_stop = set(&v["replicas-at-stop"]);
                let stuck = v["stuck-ms"].as_u64().unwrap_or(0);
                if stuck >= STUCK_MS && !target.is_empty() && at_stop != target {
                    let isr = set(&v["isr-at-stop"]);
                    let origin = set(&v["origin"]);
                    let led = v["leader-at-stop"].as_i64().is_some_and(|l| l >= 0);
                    if led && target.difference(&origin).all(|b| isr.contains(b)) {
                        add(
                            "reassignment-incomplete",
                            op.index,
                            format!(
                                "partition {}: reassignment to {} stayed incomplete for {stuck} ms while leader {} and the ISR {} held every added replica (replicas {})",
                                v["partition"],
                                v["reassign-to"],
                                v["leader-at-stop"],
                                v["isr-at-stop"],
                                v["replicas-at-stop"]
                            ),
                        );
                    }
                }
                if target.is_empty() || at_stop != target {
                    continue;
                }
                let origin = set(&v["origin"]);
                let isr = set(&v["isr-at-stop"]);
                for b in ids(&v["added-while-stalled"]) {
                    if target.contains(&b) && !origin.contains(&b) && !isr.contains(&b) {
                        add(
                            "reassignment-completed-outside-isr",
                            op.index,
                            format!(
                                "partition {} completed to {} with broker {b} outside the ISR {}, \
                                 paused since before it was added (it never fetched)",
                                v["partition"], v["reassign-to"], v["isr-at-stop"]
                            ),
                        );
                    }
                }
            }
            F_AWAIT_REASSIGN => {
                if v["completed"].as_bool() != Some(false) {
                    continue;
                }
                let added: Vec<i64> = set(&v["reassign-to"])
                    .difference(&set(&v["origin"]))
                    .copied()
                    .collect();
                let isr = set(&v["isr"]);
                let led = v["leader"].as_i64().is_some_and(|l| l >= 0);
                let all_up = v["nodes-down"].as_array().is_some_and(|d| d.is_empty());
                let caught_up = added.iter().all(|b| isr.contains(b));
                let waited = v["waited-ms"].as_u64().unwrap_or(0);
                if led && all_up && caught_up {
                    add(
                        "reassignment-incomplete",
                        op.index,
                        format!(
                            "partition {}: reassignment to {} not complete {waited} ms after \
                             the heal, although every node ran, leader {} and the ISR {} held \
                             every added replica (replicas {})",
                            v["partition"], v["reassign-to"], v["leader"], v["isr"], v["replicas"]
                        ),
                    );
                } else {
                    notes.push(format!(
                        "partition {}: reassignment to {} not complete {waited} ms after the \
                         heal, undecided (leader {}, ISR {}, nodes down {})",
                        v["partition"], v["reassign-to"], v["leader"], v["isr"], v["nodes-down"]
                    ));
                }
            }
            _ => {}
        }
    }
    ClusterReport {
        verdict: if anomalies.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        anomalies,
        notes,
        observations,
    }
}

/// A failed assertion a node logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAssertion {
    /// 1-based line number of `text` in the log.
    pub line: usize,
    /// The assertion's message (a panic's message line).
    pub message: String,
    /// The log line itself.
    pub text: String,
}

/// Lines of a node's log that report a failed assertion: a Rust panic (`thread '..' panicked
/// at file:line:col:` with the message on the next line, or the older one-line form) and an
/// image that refused a committed metadata record. Only the first 200 are kept.
pub fn scan_log(text: &str) -> Vec<LoggedAssertion> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let message = if let Some(at) = l.find(" panicked at ") {
            let rest = l[at + " panicked at ".len()..].trim_end();
            if rest.ends_with(':') {
                lines.get(i + 1).map_or(rest, |m| m.trim()).to_string()
            } else {
                rest.to_string()
            }
        } else if l.contains("committed metadata record refused") {
            strip_ansi(l).trim().to_string()
        } else {
            continue;
        };
        out.push(LoggedAssertion {
            line: i + 1,
            message,
            text: strip_ansi(l).trim().to_string(),
        });
        if out.len() >= 200 {
            break;
        }
    }
    out
}

/// The text of a log line without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpType, Recorder};
    use serde_json::json;

    fn history(ops: &[(&str, Value)]) -> History {
        let mut r = Recorder::default();
        for (i, (f, v)) in ops.iter().enumerate() {
            r.push(
                i as u64,
                OpType::Info,
                Process::Nemesis,
                f,
                OpValue::Other(v.clone()),
            );
        }
        r.finish()
    }

    #[test]
    fn a_node_that_ended_or_logged_an_assertion_is_an_anomaly() {
        let ok = history(&[
            ("start-kill", json!({"nodes": [1]})),
            ("stop-kill", json!({})),
        ]);
        assert!(!observed(&ok));
        let h = history(&[
            (F_NODE_EXITED, json!({"node": 5, "status": "exit code 3"})),
            (
                F_NODE_LOG,
                json!({"node": 5, "file": "n5/node.log", "line": 40, "message": "boom", "text": "t"}),
            ),
        ]);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.anomalies["node-crashed"].len(), 1);
        assert!(r.anomalies["node-assertion"][0].what.contains("boom"));
        assert!(r.reasons().iter().any(|l| l.starts_with("node-crashed x1")));
    }

    #[test]
    fn analyze_counts_a_crashed_node_even_without_client_operations() {
        let h = history(&[(F_NODE_EXITED, json!({"node": 2, "status": "exit code 3"}))]);
        let r = crate::analyze::analyze(&h, &crate::analyze::Options::default());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.summary.contains("node-crashed x1"), "{}", r.summary);
        let quiet = history(&[("start-kill", json!({"nodes": [1]}))]);
        let r = crate::analyze::analyze(&quiet, &crate::analyze::Options::default());
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.cluster.is_none());
    }

    fn await_op(completed: bool, isr: Value, leader: Value, down: Value) -> (&'static str, Value) {
        (
            F_AWAIT_REASSIGN,
            json!({"partition": 0, "origin": [0, 1, 2], "reassign-to": [3, 1, 2],
                   "completed": completed, "replicas": [3, 1, 2, 0], "isr": isr,
                   "leader": leader, "nodes-down": down, "waited-ms": 8000}),
        )
    }

    #[test]
    fn an_incomplete_reassignment_is_an_anomaly_only_once_its_condition_held() {
        // Completed: valid.
        let r = check(&history(&[await_op(
            true,
            json!([3, 1, 2]),
            json!(3),
            json!([]),
        )]));
        assert_eq!(r.verdict, Verdict::Valid);
        // Stuck with the added replica in the ISR, a leader, every node up: the anomaly.
        let r = check(&history(&[await_op(
            false,
            json!([0, 1, 2, 3]),
            json!(0),
            json!([]),
        )]));
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.anomalies["reassignment-incomplete"].len(), 1);
        // Still catching up, no leader, or a node down: undecided, a note only.
        for (isr, leader, down) in [
            (json!([0, 1, 2]), json!(0), json!([])),
            (json!([0, 1, 2, 3]), json!(null), json!([])),
            (json!([0, 1, 2, 3]), json!(0), json!([4])),
        ] {
            let r = check(&history(&[await_op(false, isr, leader, down)]));
            assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
            assert_eq!(r.notes.len(), 1);
        }
    }

    fn stop_op(at_stop: Value, isr: Value, stalled: Value) -> (&'static str, Value) {
        (
            F_STOP_REASSIGN,
            json!({"partition": 1, "origin": [0, 1, 2], "reassign-to": [0, 2, 3],
                   "replicas-at-stop": at_stop, "isr-at-stop": isr,
                   "added-while-stalled": stalled}),
        )
    }

    #[test]
    fn a_move_watched_stuck_at_its_stop_is_incomplete() {
        let stop = |stuck: u64, at_stop: Value, isr: Value| {
            (
                F_STOP_REASSIGN,
                json!({"partition": 0, "origin": [0, 1, 2], "reassign-to": [3, 1, 2],
                       "replicas-at-stop": at_stop, "isr-at-stop": isr, "leader-at-stop": 0,
                       "stuck-ms": stuck, "added-while-stalled": []}),
            )
        };
        let r = check(&history(&[stop(
            2200,
            json!([3, 1, 2, 0]),
            json!([0, 1, 2, 3]),
        )]));
        assert_eq!(r.anomalies["reassignment-incomplete"].len(), 1, "{r:?}");
        for (stuck, at_stop, isr) in [
            // Watched too briefly: a broker's Metadata may lag the controller.
            (600, json!([3, 1, 2, 0]), json!([0, 1, 2, 3])),
            // Completed during the watch.
            (2200, json!([3, 1, 2]), json!([1, 2, 3])),
            // The added replica left the ISR (the condition no longer held).
            (2200, json!([3, 1, 2, 0]), json!([0, 1, 2])),
        ] {
            let r = check(&history(&[stop(stuck, at_stop, isr)]));
            assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        }
    }

    #[test]
    fn a_completion_with_a_stalled_added_replica_outside_the_isr_is_an_anomaly() {
        let bad = check(&history(&[stop_op(
            json!([3, 0, 2]),
            json!([0, 2]),
            json!([3]),
        )]));
        assert_eq!(bad.verdict, Verdict::Invalid);
        assert_eq!(bad.anomalies["reassignment-completed-outside-isr"].len(), 1);
        for (at_stop, isr, stalled) in [
            // Still in progress (the correct controller waits for the stalled replica).
            (json!([0, 2, 3, 1]), json!([0, 1, 2]), json!([3])),
            // Completed with the added replica in the ISR.
            (json!([0, 2, 3]), json!([0, 2, 3]), json!([3])),
            // Outside the ISR but not stalled since its addition: it may have dropped out after.
            (json!([0, 2, 3]), json!([0, 2]), json!([])),
        ] {
            let r = check(&history(&[stop_op(at_stop, isr, stalled)]));
            assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        }
    }

    #[test]
    fn panics_and_refused_records_are_found_in_a_log() {
        let log = "INFO started\n\
                   thread 'tokio-runtime-worker' panicked at reference/src/controller.rs:247:13:\n\
                   the controller wrote a record its own image refuses (leader-in-replicas): X\n\
                   note: run with `RUST_BACKTRACE=1`\n\
                   \u{1b}[31mERROR\u{1b}[0m committed metadata record refused offset=7\n\
                   thread 'main' panicked at 'old style', src/x.rs:1:1\n";
        let found = scan_log(log);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].line, 2);
        assert!(found[0]
            .message
            .starts_with("the controller wrote a record"));
        assert!(found[1]
            .message
            .starts_with("ERROR committed metadata record refused"));
        assert_eq!(found[2].message, "'old style', src/x.rs:1:1");
        assert!(scan_log("INFO all fine\nWARN slow\n").is_empty());
    }
}

//! The `election` workload: the controller election Kafka ran on ZooKeeper before KRaft, and
//! the `zk-controller` model's invariants checked on the history of a real ensemble.
//!
//! Every worker is a broker with its own session. To become controller it creates the
//! ephemeral `/controller` znode and then bumps `/controller_epoch` with a version-checked
//! `setData` (the epoch's zkVersion, as `KafkaController` did); a `BadVersion` there means
//! another broker won in between, and it deletes `/controller` again. As controller it *acts*:
//! it writes a partition-state znode in a multi-op that first checks `/controller_epoch`'s
//! zkVersion is still the one it wrote (KAFKA-6082's fence; a failed check is Kafka's
//! `ControllerMovedException` and the broker resigns). When its session expires, the broker
//! opens a new one and, as Kafka's controller did while its event queue still held work from
//! before the expiry, keeps acting on its cached epoch until the fence stops it: the *zombie*.
//! The `no-epoch-fence` bug flag drops the check, as Kafka did before KAFKA-6082.
//!
//! History (`f`, invocation value → completion):
//! - `elect` `{broker}` → ok `{broker, epoch, epoch-zk-version}`; fail `controller-exists` or
//!   `epoch-moved`; info when the outcome is unknown;
//! - `act` `{broker, epoch, seq}` → ok (applied), fail `controller-moved` (fenced), info;
//! - `new-session` `{broker, reason}` → ok `{broker, session, epoch}`: the old session expired
//!   (`epoch` is the controller epoch the broker still believes it holds, or null);
//! - `final-read` `{}` → ok `{controller-epoch}` after the heal.
//!
//! Invariants (the `zk-controller` model's, in real terms):
//! - `one-controller-per-epoch`: no two brokers won the same controller epoch;
//! - `controller-epoch-increases`: an election won after another completed has a higher epoch;
//! - `no-stale-epoch-action` (the model's `single-effective-controller`): no action of epoch
//!   E is applied when invoked after an election of a higher epoch completed;
//! - `controller-epoch-durable`: the epoch read after the heal is at least every epoch won.

use crate::history::{History, OpType, OpValue, Process};
use crate::Verdict;
use serde::Serialize;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

pub const F_ELECT: &str = "elect";
pub const F_ACT: &str = "act";
pub const F_NEW_SESSION: &str = "new-session";
pub const F_FINAL_READ: &str = "final-read";

pub const CONTROLLER: &str = "/controller";
pub const CONTROLLER_EPOCH: &str = "/controller_epoch";
/// What controllers write (Kafka's `/brokers/topics/<t>/partitions/<p>/state`).
pub const PARTITION_STATE: &str = "/kcheck/partition-state";

/// How the workload's brokers write as controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElectionBug {
    /// Partition-state writes without the `/controller_epoch` zkVersion check (Kafka before
    /// KAFKA-6082): a zombie controller's writes are applied.
    NoEpochFence,
}

impl ElectionBug {
    pub const ALL: [ElectionBug; 1] = [ElectionBug::NoEpochFence];
    pub fn name(self) -> &'static str {
        match self {
            ElectionBug::NoEpochFence => "no-epoch-fence",
        }
    }
    pub fn parse(s: &str) -> Result<ElectionBug, String> {
        ElectionBug::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown bug flag '{s}' for the zookeeper election workload (known: {})",
                    ElectionBug::ALL.map(|b| b.name()).join(", ")
                )
            })
    }
}

pub fn elect_value(broker: u64) -> Json {
    json!({ "broker": broker })
}

pub fn elected_value(broker: u64, epoch: i64, epoch_zk_version: i32) -> Json {
    json!({ "broker": broker, "epoch": epoch, "epoch-zk-version": epoch_zk_version })
}

pub fn act_value(broker: u64, epoch: i64, seq: u64) -> Json {
    json!({ "broker": broker, "epoch": epoch, "seq": seq })
}

/// One broken invariant.
#[derive(Debug, Clone, Serialize)]
pub struct ElectionViolation {
    pub invariant: &'static str,
    pub invoke_index: u64,
    pub explanation: String,
}

/// A broker acting on controller epoch `epoch` after `newer_epoch` was won by another.
#[derive(Debug, Clone, Serialize)]
pub struct ZombieWindow {
    pub broker: u64,
    pub epoch: i64,
    pub newer_epoch: i64,
    /// Whether the broker's session had expired before it acted (the Kafka zombie).
    pub after_session_expiry: bool,
    /// From the newer election's completion to the zombie's last act's completion.
    pub from_ms: f64,
    pub to_ms: f64,
    pub acts_applied: usize,
    pub acts_fenced: usize,
    pub acts_unknown: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElectionReport {
    pub verdict: Verdict,
    /// Controller epochs won: (epoch, broker, completion ms).
    pub elections: Vec<(i64, u64, f64)>,
    pub acts_applied: usize,
    pub acts_fenced: usize,
    pub acts_unknown: usize,
    pub session_expiries: usize,
    pub zombie_windows: Vec<ZombieWindow>,
    pub violations: Vec<ElectionViolation>,
}

fn other(v: &OpValue) -> Option<&Json> {
    match v {
        OpValue::Other(j) => Some(j),
        _ => None,
    }
}

fn int(v: &Json, name: &str) -> Option<i64> {
    v.get(name).and_then(Json::as_i64)
}

struct Elected {
    epoch: i64,
    broker: u64,
    invoke_pos: usize,
    complete_pos: usize,
    invoke_index: u64,
    complete_ms: f64,
}

/// Checks the election history.
pub fn check(history: &History) -> ElectionReport {
    let ms = |pos: usize| history.ops[pos].time as f64 / 1e6;
    let mut elected: Vec<Elected> = Vec::new();
    let mut expired_at: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut max_final: Option<(i64, u64)> = None;
    for (i, op) in history.ops.iter().enumerate() {
        if !op.is_client() || op.kind != OpType::Ok {
            continue;
        }
        let (Some(j), Some(v)) = (history.pair[i], other(&op.value)) else {
            continue;
        };
        match op.f.as_str() {
            F_ELECT => {
                if let (Some(epoch), Some(broker)) = (int(v, "epoch"), int(v, "broker")) {
                    elected.push(Elected {
                        epoch,
                        broker: broker as u64,
                        invoke_pos: j,
                        complete_pos: i,
                        invoke_index: history.ops[j].index,
                        complete_ms: ms(i),
                    });
                }
            }
            F_NEW_SESSION => {
                if let Some(b) = int(v, "broker") {
                    expired_at.entry(b as u64).or_default().push(j);
                }
            }
            F_FINAL_READ => {
                if let Some(e) = int(v, "controller-epoch") {
                    max_final = Some((e, history.ops[j].index));
                }
            }
            _ => {}
        }
    }
    let mut violations = Vec::new();
    let mut by_epoch: BTreeMap<i64, &Elected> = BTreeMap::new();
    for e in &elected {
        if let Some(first) = by_epoch.insert(e.epoch, e) {
            violations.push(ElectionViolation {
                invariant: "one-controller-per-epoch",
                invoke_index: e.invoke_index,
                explanation: format!(
                    "brokers {} (op {}) and {} (op {}) both won controller epoch {}",
                    first.broker, first.invoke_index, e.broker, e.invoke_index, e.epoch
                ),
            });
        }
    }
    for a in &elected {
        for b in &elected {
            if a.complete_pos < b.invoke_pos && a.epoch >= b.epoch {
                violations.push(ElectionViolation {
                    invariant: "controller-epoch-increases",
                    invoke_index: b.invoke_index,
                    explanation: format!(
                        "broker {} won epoch {} after broker {} had won epoch {} (op {})",
                        b.broker, b.epoch, a.broker, a.epoch, a.invoke_index
                    ),
                });
            }
        }
    }
    if let Some((fin, idx)) = max_final {
        if let Some(top) = elected.iter().max_by_key(|e| e.epoch) {
            if fin < top.epoch {
                violations.push(ElectionViolation {
                    invariant: "controller-epoch-durable",
                    invoke_index: idx,
                    explanation: format!(
                        "/controller_epoch reads {fin} after the heal, but broker {} won epoch {}",
                        top.broker, top.epoch
                    ),
                });
            }
        }
    }

    // Acts: applied, fenced, unknown; zombie acts are those invoked after a newer election
    // completed.
    let (mut applied, mut fenced, mut unknown) = (0, 0, 0);
    let mut windows: BTreeMap<(u64, i64), ZombieWindow> = BTreeMap::new();
    for (i, inv) in history.ops.iter().enumerate() {
        if !inv.is_client() || inv.kind != OpType::Invoke || inv.f != F_ACT {
            continue;
        }
        let Some(v) = other(&inv.value) else { continue };
        let (Some(epoch), Some(broker)) = (int(v, "epoch"), int(v, "broker")) else {
            continue;
        };
        let broker = broker as u64;
        let comp = history.pair[i].map(|j| (j, &history.ops[j]));
        let kind = comp.map(|(_, c)| c.kind);
        match kind {
            Some(OpType::Ok) => applied += 1,
            Some(OpType::Fail) => fenced += 1,
            _ => unknown += 1,
        }
        let newer = elected
            .iter()
            .filter(|e| e.epoch > epoch && e.complete_pos < i)
            .min_by_key(|e| e.complete_pos);
        let Some(newer) = newer else { continue };
        let end_ms = comp.map_or(ms(i), |(j, _)| ms(j));
        let w = windows
            .entry((broker, epoch))
            .or_insert_with(|| ZombieWindow {
                broker,
                epoch,
                newer_epoch: newer.epoch,
                after_session_expiry: false,
                from_ms: newer.complete_ms,
                to_ms: end_ms,
                acts_applied: 0,
                acts_fenced: 0,
                acts_unknown: 0,
            });
        w.to_ms = w.to_ms.max(end_ms);
        w.after_session_expiry |= expired_at
            .get(&broker)
            .is_some_and(|v| v.iter().any(|&p| p < i));
        match kind {
            Some(OpType::Ok) => {
                w.acts_applied += 1;
                violations.push(ElectionViolation {
                    invariant: "no-stale-epoch-action",
                    invoke_index: inv.index,
                    explanation: format!(
                        "broker {broker} acted on controller epoch {epoch} and was obeyed, \
                         although broker {} had won epoch {} before (op {})",
                        newer.broker, newer.epoch, newer.invoke_index
                    ),
                });
            }
            Some(OpType::Fail) => w.acts_fenced += 1,
            _ => w.acts_unknown += 1,
        }
    }
    let verdict = if violations.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    ElectionReport {
        verdict,
        elections: elected
            .iter()
            .map(|e| (e.epoch, e.broker, e.complete_ms))
            .collect(),
        acts_applied: applied,
        acts_fenced: fenced,
        acts_unknown: unknown,
        session_expiries: expired_at.values().map(Vec::len).sum(),
        zombie_windows: windows.into_values().collect(),
        violations,
    }
}

/// Whether `p` is a client process (the election history's workers).
pub fn is_worker(p: Process) -> bool {
    matches!(p, Process::Client(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;

    struct H {
        r: Recorder,
        t: u64,
    }

    impl H {
        fn new() -> H {
            H {
                r: Recorder::default(),
                t: 0,
            }
        }
        fn op(&mut self, p: u64, f: &str, inv: Json, kind: OpType, comp: Json, err: Option<&str>) {
            self.t += 1_000_000;
            self.r.push(
                self.t,
                OpType::Invoke,
                Process::Client(p),
                f,
                OpValue::Other(inv),
            );
            self.t += 1_000_000;
            let i = self
                .r
                .push(self.t, kind, Process::Client(p), f, OpValue::Other(comp));
            if let Some(e) = err {
                self.r.set_error(i, e);
            }
        }
        fn elect(&mut self, p: u64, b: u64, epoch: i64) {
            self.op(
                p,
                F_ELECT,
                elect_value(b),
                OpType::Ok,
                elected_value(b, epoch, epoch as i32),
                None,
            );
        }
        fn act(&mut self, p: u64, b: u64, epoch: i64, kind: OpType) {
            let err = (kind == OpType::Fail).then_some("controller-moved");
            self.op(
                p,
                F_ACT,
                act_value(b, epoch, 0),
                kind,
                act_value(b, epoch, 0),
                err,
            );
        }
        fn expire(&mut self, p: u64, b: u64, epoch: i64) {
            self.op(
                p,
                F_NEW_SESSION,
                json!({"broker": b, "reason": "expired"}),
                OpType::Ok,
                json!({"broker": b, "session": 7, "epoch": epoch}),
                None,
            );
        }
        fn done(self) -> History {
            self.r.finish()
        }
    }

    #[test]
    fn a_fenced_zombie_is_a_window_not_a_violation() {
        let mut h = H::new();
        h.elect(1, 1, 1);
        h.act(1, 1, 1, OpType::Ok);
        h.elect(2, 2, 2);
        h.act(1, 1, 1, OpType::Info);
        h.expire(11, 1, 1);
        h.act(21, 1, 1, OpType::Fail);
        h.act(2, 2, 2, OpType::Ok);
        h.op(
            3,
            F_FINAL_READ,
            json!({}),
            OpType::Ok,
            json!({"controller-epoch": 2}),
            None,
        );
        let r = check(&h.done());
        assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.violations);
        assert_eq!(r.zombie_windows.len(), 1);
        let w = &r.zombie_windows[0];
        assert_eq!((w.broker, w.epoch, w.newer_epoch), (1, 1, 2));
        assert!(w.after_session_expiry);
        assert_eq!((w.acts_fenced, w.acts_applied, w.acts_unknown), (1, 0, 1));
        assert_eq!(r.session_expiries, 1);
    }

    #[test]
    fn an_obeyed_zombie_breaks_no_stale_epoch_action() {
        let mut h = H::new();
        h.elect(1, 1, 1);
        h.elect(2, 2, 2);
        h.act(1, 1, 1, OpType::Ok);
        let r = check(&h.done());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.violations[0].invariant, "no-stale-epoch-action");
    }

    #[test]
    fn two_winners_of_one_epoch_are_caught() {
        let mut h = H::new();
        h.elect(1, 1, 1);
        h.elect(2, 2, 1);
        let r = check(&h.done());
        assert!(r
            .violations
            .iter()
            .any(|v| v.invariant == "one-controller-per-epoch"));
        assert!(r
            .violations
            .iter()
            .any(|v| v.invariant == "controller-epoch-increases"));
    }

    #[test]
    fn an_epoch_going_back_is_caught() {
        let mut h = H::new();
        h.elect(1, 1, 3);
        h.elect(2, 2, 2);
        let r = check(&h.done());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.violations[0].invariant, "controller-epoch-increases");
    }

    #[test]
    fn a_lost_epoch_bump_is_caught() {
        let mut h = H::new();
        h.elect(1, 1, 1);
        h.elect(2, 2, 2);
        h.op(
            3,
            F_FINAL_READ,
            json!({}),
            OpType::Ok,
            json!({"controller-epoch": 1}),
            None,
        );
        let r = check(&h.done());
        assert_eq!(r.violations[0].invariant, "controller-epoch-durable");
    }
}

//! The `register` workload: a compare-and-set register per znode `/kcheck/register-<key>`,
//! and its checkers.
//!
//! ZooKeeper's own compare-and-set is the version-checked `setData`: it applies only if the
//! znode's data version (its zkVersion, which Kafka's controller checks on every partition-state
//! write) is the expected one, and answers `BadVersion` otherwise. So the register's state is a
//! (value, version) pair, and every operation observes or moves the version:
//!
//! | `f` | call | ok result | sequential model |
//! |---|---|---|---|
//! | `write` | `setData(v, -1)` | the new version | version + 1 |
//! | `cas` | `setData(v, expected-version)` | the new version; `fail` is `BadVersion` | applies iff version = expected |
//! | `read-sync` | `sync` then `getData` | value and version | returns the state |
//! | `read-nosync` | `getData` | value and version | (not in the model: see below) |
//!
//! ZooKeeper promises linearizable writes and, per session, FIFO order and a view that never
//! goes back in time; a plain read is served by whichever server the session is connected to
//! and may be stale. Its documentation gives `sync` before a read for a read that sees every
//! write completed before the sync. So the checkers are:
//! - **linearizable** (synced reads, writes, cas): Wing & Gong's search
//!   ([`crate::linear::check_model`]) on the (value, version) register;
//! - **session order** (every read and write): within a session, the version seen for a key
//!   never decreases (ZooKeeper's single system image);
//! - **stale plain reads**: counted, not violations: a plain read that returned a version
//!   older than one a write had already acknowledged before the read was invoked.

use crate::history::{History, OpType, OpValue, Process};
use crate::linear::{check_model, ModelOp, ModelResult, SequentialModel};
use crate::Verdict;
use serde::Serialize;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const F_WRITE: &str = "write";
pub const F_CAS: &str = "cas";
pub const F_READ_SYNC: &str = "read-sync";
pub const F_READ_NOSYNC: &str = "read-nosync";

/// The znode of a register.
pub fn path(key: u64) -> String {
    format!("/kcheck/register-{key}")
}

/// A register operation with what it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterCall {
    /// `version`: the new version when acknowledged, `None` when unknown.
    Write {
        value: u64,
        version: Option<i32>,
    },
    /// `applied`: acknowledged (`true`), refused with `BadVersion` (`false`); an indeterminate
    /// cas is `true` (it may have applied).
    Cas {
        expected: i32,
        value: u64,
        applied: bool,
    },
    Read {
        value: u64,
        version: i32,
    },
}

/// The (value, version) register; every register starts at value 0, version 0 (the harness
/// creates the znodes with data `0` before the workload).
pub struct RegisterModel;

impl SequentialModel for RegisterModel {
    type State = (u64, i32);
    type Call = RegisterCall;

    fn init(&self) -> (u64, i32) {
        (0, 0)
    }

    fn step(
        &self,
        &(value, version): &(u64, i32),
        call: &RegisterCall,
    ) -> Result<(u64, i32), String> {
        match *call {
            RegisterCall::Write {
                version: Some(r), ..
            } if r != version + 1 => Err(format!(
                "the version is {version}, so the write would have made version {}, not {r}",
                version + 1
            )),
            RegisterCall::Write { value: v, .. } => Ok((v, version + 1)),
            RegisterCall::Cas {
                expected,
                value: v,
                applied: true,
            } => {
                if expected == version {
                    Ok((v, version + 1))
                } else {
                    Err(format!(
                        "the version is {version}, not the expected {expected}: the cas must fail"
                    ))
                }
            }
            RegisterCall::Cas {
                expected,
                applied: false,
                ..
            } => {
                if expected == version {
                    Err(format!(
                        "the version is the expected {expected}: BadVersion is wrong"
                    ))
                } else {
                    Ok((value, version))
                }
            }
            RegisterCall::Read {
                value: v,
                version: r,
            } => {
                if (v, r) == (value, version) {
                    Ok((value, version))
                } else {
                    Err(format!(
                        "the register holds {value} at version {version}, not {v} at version {r}"
                    ))
                }
            }
        }
    }

    fn describe_call(&self, call: &RegisterCall) -> String {
        match call {
            RegisterCall::Write {
                value,
                version: Some(r),
            } => format!("write {value} -> version {r}"),
            RegisterCall::Write { value, .. } => format!("write {value} -> unknown"),
            RegisterCall::Cas {
                expected,
                value,
                applied: true,
            } => format!("cas version {expected} -> {value}"),
            RegisterCall::Cas {
                expected, value, ..
            } => format!("cas version {expected} -> {value}: BadVersion"),
            RegisterCall::Read { value, version } => {
                format!("read -> {value} at version {version}")
            }
        }
    }

    fn describe_state(&self, &(value, version): &(u64, i32)) -> String {
        format!("{value} at version {version}")
    }
}

fn field_u64(v: &Json, name: &str) -> Option<u64> {
    v.get(name).and_then(Json::as_u64)
}

fn field_i32(v: &Json, name: &str) -> Option<i32> {
    v.get(name)
        .and_then(Json::as_i64)
        .and_then(|x| i32::try_from(x).ok())
}

fn other(op_value: &OpValue) -> Option<&Json> {
    match op_value {
        OpValue::Other(j) => Some(j),
        _ => None,
    }
}

/// Invocation value of a write.
pub fn write_value(key: u64, value: u64) -> Json {
    json!({ "key": key, "value": value })
}

/// Invocation value of a cas.
pub fn cas_value(key: u64, expected: i32, value: u64) -> Json {
    json!({ "key": key, "expected-version": expected, "value": value })
}

/// Invocation value of a read.
pub fn read_value(key: u64) -> Json {
    json!({ "key": key })
}

/// A completion carrying the znode's value and version.
pub fn with_version(mut invocation: Json, value: u64, version: i32) -> Json {
    invocation["value"] = json!(value);
    invocation["version"] = json!(version);
    invocation
}

/// The register operations of a history by key; plain reads only when `plain_reads`.
pub fn register_ops(
    history: &History,
    plain_reads: bool,
) -> BTreeMap<u64, Vec<ModelOp<RegisterCall>>> {
    let mut out: BTreeMap<u64, Vec<ModelOp<RegisterCall>>> = BTreeMap::new();
    for (i, inv) in history.ops.iter().enumerate() {
        if !inv.is_client() || inv.kind != OpType::Invoke {
            continue;
        }
        let Some(iv) = other(&inv.value) else {
            continue;
        };
        let Some(key) = field_u64(iv, "key") else {
            continue;
        };
        let comp = history.pair[i].map(|j| (j, &history.ops[j]));
        let kind = comp.map(|(_, c)| c.kind);
        let cv = comp.and_then(|(_, c)| other(&c.value));
        let done = |ok: bool| comp.filter(|_| ok).map(|(j, c)| (j, c.index));
        let (call, ret) = match inv.f.as_str() {
            F_WRITE => {
                let value = field_u64(iv, "value").unwrap_or(0);
                match kind {
                    Some(OpType::Fail) => continue,
                    Some(OpType::Ok) => (
                        RegisterCall::Write {
                            value,
                            version: cv.and_then(|c| field_i32(c, "version")),
                        },
                        done(true),
                    ),
                    _ => (
                        RegisterCall::Write {
                            value,
                            version: None,
                        },
                        None,
                    ),
                }
            }
            F_CAS => {
                let expected = field_i32(iv, "expected-version").unwrap_or(-1);
                let value = field_u64(iv, "value").unwrap_or(0);
                let applied = kind != Some(OpType::Fail);
                let definite = matches!(kind, Some(OpType::Ok))
                    || (kind == Some(OpType::Fail)
                        && comp.and_then(|(_, c)| c.error.as_deref()) == Some("bad-version"));
                if kind == Some(OpType::Fail) && !definite {
                    continue;
                }
                (
                    RegisterCall::Cas {
                        expected,
                        value,
                        applied,
                    },
                    done(definite),
                )
            }
            F_READ_SYNC | F_READ_NOSYNC => {
                if inv.f == F_READ_NOSYNC && !plain_reads {
                    continue;
                }
                match (kind, cv) {
                    (Some(OpType::Ok), Some(c)) => (
                        RegisterCall::Read {
                            value: field_u64(c, "value").unwrap_or(0),
                            version: field_i32(c, "version").unwrap_or(-1),
                        },
                        done(true),
                    ),
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.entry(key).or_default().push(ModelOp {
            call,
            invoke: inv.index,
            complete: ret.map(|(_, idx)| idx),
            call_pos: i,
            ret_pos: ret.map(|(j, _)| j),
        });
    }
    out
}

/// A plain read that returned an older version than one already acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct StaleRead {
    pub invoke_index: u64,
    pub key: u64,
    pub f: String,
    pub version_read: i32,
    /// The newest version acknowledged before the read was invoked.
    pub version_acknowledged: i32,
    /// How long before the read's invocation that version was acknowledged.
    pub acknowledged_ms_before: f64,
}

/// Reads of one kind: how many, how many stale.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadStaleness {
    pub reads: usize,
    pub stale: usize,
    pub max_versions_behind: i32,
    /// The first few stale reads.
    pub examples: Vec<StaleRead>,
}

/// A session that saw a key's version go back.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRegression {
    pub process: u64,
    pub key: u64,
    pub invoke_index: u64,
    pub version_before: i32,
    pub version_now: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegisterReport {
    pub verdict: Verdict,
    /// Writes, cas and synced reads, per key (the promise ZooKeeper makes).
    pub linearizable: Vec<ModelResult>,
    /// The same with plain reads added: informational, since plain reads may be stale.
    pub with_plain_reads: Verdict,
    pub synced_reads: ReadStaleness,
    pub plain_reads: ReadStaleness,
    pub session_regressions: Vec<SessionRegression>,
}

const EXAMPLES: usize = 5;

/// Stale reads of `f`, found by a sweep in history order: the newest acknowledged version of
/// each key so far, against each read's version at its invocation.
pub fn staleness(history: &History, f: &str) -> ReadStaleness {
    let mut acked: BTreeMap<u64, (i32, u64)> = BTreeMap::new();
    let mut out = ReadStaleness::default();
    for (i, op) in history.ops.iter().enumerate() {
        if !op.is_client() {
            continue;
        }
        let Some(v) = other(&op.value) else { continue };
        let Some(key) = field_u64(v, "key") else {
            continue;
        };
        match (op.kind, op.f.as_str()) {
            (OpType::Ok, F_WRITE | F_CAS | F_READ_SYNC) => {
                if let Some(r) = field_i32(v, "version") {
                    let e = acked.entry(key).or_insert((r, op.time));
                    if r > e.0 {
                        *e = (r, op.time);
                    }
                }
            }
            (OpType::Invoke, g) if g == f => {
                let Some((ci, comp)) = history.pair[i].map(|j| (j, &history.ops[j])) else {
                    continue;
                };
                let _ = ci;
                if comp.kind != OpType::Ok {
                    continue;
                }
                let Some(read) = other(&comp.value).and_then(|c| field_i32(c, "version")) else {
                    continue;
                };
                out.reads += 1;
                if let Some(&(newest, at)) = acked.get(&key) {
                    if read < newest {
                        out.stale += 1;
                        out.max_versions_behind = out.max_versions_behind.max(newest - read);
                        if out.examples.len() < EXAMPLES {
                            out.examples.push(StaleRead {
                                invoke_index: op.index,
                                key,
                                f: f.to_string(),
                                version_read: read,
                                version_acknowledged: newest,
                                acknowledged_ms_before: op.time.saturating_sub(at) as f64 / 1e6,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Per process (one session: workers take a new process number with each new session and
/// after each indeterminate op), the versions it saw of each key, in order, never decrease.
pub fn session_regressions(history: &History) -> Vec<SessionRegression> {
    let mut seen: BTreeMap<(u64, u64), i32> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, op) in history.ops.iter().enumerate() {
        let Process::Client(p) = op.process else {
            continue;
        };
        if op.kind != OpType::Ok {
            continue;
        }
        let (Some(v), true) = (
            other(&op.value),
            matches!(op.f.as_str(), F_WRITE | F_CAS | F_READ_SYNC | F_READ_NOSYNC),
        ) else {
            continue;
        };
        let (Some(key), Some(r)) = (field_u64(v, "key"), field_i32(v, "version")) else {
            continue;
        };
        let invoke_index = history
            .pair
            .get(i)
            .copied()
            .flatten()
            .map_or(op.index, |j| history.ops[j].index);
        let e = seen.entry((p, key)).or_insert(r);
        if r < *e {
            out.push(SessionRegression {
                process: p,
                key,
                invoke_index,
                version_before: *e,
                version_now: r,
            });
        }
        *e = (*e).max(r);
    }
    out
}

/// Runs every register checker; gives up (unknown) on a key still searching after `time_limit`.
pub fn check(history: &History, time_limit: Duration) -> RegisterReport {
    let deadline = Instant::now() + time_limit;
    let linearizable: Vec<ModelResult> = register_ops(history, false)
        .iter()
        .map(|(k, ops)| check_model(&RegisterModel, *k, ops, deadline))
        .collect();
    let plain_deadline = Instant::now() + time_limit / 2;
    let with_plain_reads = Verdict::combine(
        register_ops(history, true)
            .iter()
            .map(|(k, ops)| check_model(&RegisterModel, *k, ops, plain_deadline).verdict),
    );
    let session_regressions = session_regressions(history);
    let synced_reads = staleness(history, F_READ_SYNC);
    let verdict = Verdict::combine(linearizable.iter().map(|r| r.verdict).chain([
        if session_regressions.is_empty() && synced_reads.stale == 0 {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
    ]));
    RegisterReport {
        verdict,
        linearizable,
        with_plain_reads,
        synced_reads,
        plain_reads: staleness(history, F_READ_NOSYNC),
        session_regressions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;

    /// A tiny history builder: (process, f, invocation, completion type, completion value).
    fn history(ops: &[(u64, &str, Json, OpType, Json)]) -> History {
        let mut r = Recorder::default();
        let mut t = 0;
        for (p, f, inv, kind, comp) in ops {
            t += 1;
            r.push(
                t,
                OpType::Invoke,
                Process::Client(*p),
                f,
                OpValue::Other(inv.clone()),
            );
            t += 1;
            let i = r.push(
                t,
                *kind,
                Process::Client(*p),
                f,
                OpValue::Other(comp.clone()),
            );
            if *kind == OpType::Fail {
                r.set_error(i, "bad-version");
            }
        }
        r.finish()
    }

    fn ok_write(p: u64, v: u64, r: i32) -> (u64, &'static str, Json, OpType, Json) {
        (
            p,
            F_WRITE,
            write_value(0, v),
            OpType::Ok,
            with_version(write_value(0, v), v, r),
        )
    }

    fn ok_read(p: u64, f: &'static str, v: u64, r: i32) -> (u64, &'static str, Json, OpType, Json) {
        (
            p,
            f,
            read_value(0),
            OpType::Ok,
            with_version(read_value(0), v, r),
        )
    }

    #[test]
    fn sequential_history_is_valid() {
        let h = history(&[
            ok_write(1, 5, 1),
            ok_read(2, F_READ_SYNC, 5, 1),
            (
                1,
                F_CAS,
                cas_value(0, 1, 7),
                OpType::Ok,
                with_version(cas_value(0, 1, 7), 7, 2),
            ),
            (
                2,
                F_CAS,
                cas_value(0, 1, 8),
                OpType::Fail,
                cas_value(0, 1, 8),
            ),
            ok_read(2, F_READ_NOSYNC, 7, 2),
        ]);
        let r = check(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert_eq!(r.synced_reads.reads, 1);
        assert_eq!(r.plain_reads.reads, 1);
        assert_eq!(r.plain_reads.stale, 0);
    }

    #[test]
    fn a_stale_synced_read_is_not_linearizable() {
        let h = history(&[
            ok_write(1, 5, 1),
            ok_write(1, 6, 2),
            ok_read(2, F_READ_SYNC, 5, 1),
        ]);
        let r = check(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Invalid);
        let bad = r.linearizable[0]
            .first_illegal
            .as_ref()
            .expect("an illegal op");
        assert!(
            bad.explanation.contains("not 5 at version 1"),
            "{}",
            bad.explanation
        );
        assert_eq!(r.synced_reads.stale, 1);
    }

    #[test]
    fn a_stale_plain_read_is_counted_not_a_violation() {
        let h = history(&[
            ok_write(1, 5, 1),
            ok_write(1, 6, 2),
            ok_read(2, F_READ_NOSYNC, 5, 1),
        ]);
        let r = check(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert_eq!(r.with_plain_reads, Verdict::Invalid);
        assert_eq!(
            (r.plain_reads.stale, r.plain_reads.max_versions_behind),
            (1, 1)
        );
    }

    #[test]
    fn a_cas_against_a_moved_version_that_succeeds_is_caught() {
        let h = history(&[
            ok_write(1, 5, 1),
            ok_write(1, 6, 2),
            (
                2,
                F_CAS,
                cas_value(0, 1, 9),
                OpType::Ok,
                with_version(cas_value(0, 1, 9), 9, 2),
            ),
        ]);
        assert_eq!(check(&h, Duration::from_secs(5)).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_wrong_bad_version_is_caught() {
        let h = history(&[
            ok_write(1, 5, 1),
            (
                2,
                F_CAS,
                cas_value(0, 1, 9),
                OpType::Fail,
                cas_value(0, 1, 9),
            ),
        ]);
        assert_eq!(check(&h, Duration::from_secs(5)).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Version 2 acknowledged, yet a later synced read sees version 1's value again with
        // version 2: the write of 6 was lost and replaced.
        let h = history(&[
            ok_write(1, 5, 1),
            ok_write(1, 6, 2),
            ok_read(2, F_READ_SYNC, 5, 2),
        ]);
        assert_eq!(check(&h, Duration::from_secs(5)).verdict, Verdict::Invalid);
    }

    #[test]
    fn an_indeterminate_write_may_or_may_not_apply() {
        let h = history(&[
            (
                1,
                F_WRITE,
                write_value(0, 5),
                OpType::Info,
                write_value(0, 5),
            ),
            ok_read(2, F_READ_SYNC, 0, 0),
            ok_read(2, F_READ_SYNC, 5, 1),
        ]);
        assert_eq!(check(&h, Duration::from_secs(5)).verdict, Verdict::Valid);
    }

    #[test]
    fn a_session_that_goes_back_in_time_is_caught() {
        let h = history(&[
            ok_write(1, 5, 1),
            ok_write(1, 6, 2),
            ok_read(2, F_READ_NOSYNC, 6, 2),
            ok_read(2, F_READ_NOSYNC, 5, 1),
        ]);
        let r = check(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.session_regressions.len(), 1);
        assert_eq!(r.session_regressions[0].version_before, 2);
    }
}

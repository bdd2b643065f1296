//! When a run first showed what it found (issue 8 asks how many seconds a run takes to find a
//! bug): the time, since the workload started, of the earliest operation an anomaly names or
//! of the trace event conformance rejected, whichever came first.

use crate::history::History;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// The earliest evidence of a failed run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Seconds since the workload started.
    pub seconds: f64,
    /// The anomaly or conformance rule it belongs to.
    pub what: String,
}

/// The earliest evidence in `results` (the value of `results.json`): every anomaly's example
/// operations (`.../anomalies/<name>/examples[]/ops[]`, history indexes), linearizability's
/// first illegal operation of each partition, and the event of a conformance violation,
/// placed on the history's clock by `start_mono_ns` (the host's monotonic clock when the
/// workload started, the clock trace events carry). `None` when nothing was found.
pub fn first_evidence(
    results: &Value,
    history: &History,
    start_mono_ns: Option<u64>,
) -> Option<Evidence> {
    let time_of: HashMap<u64, u64> = history.ops.iter().map(|o| (o.index, o.time)).collect();
    let mut found: Vec<(u64, String)> = Vec::new();
    collect_anomalies(results, &time_of, &mut found);
    if let Some(ps) = results
        .pointer("/linearizability/partitions")
        .and_then(Value::as_array)
    {
        for p in ps {
            let idx = p
                .pointer("/first_illegal/invoke_index")
                .and_then(Value::as_u64);
            if let Some(t) = idx.and_then(|i| time_of.get(&i)) {
                found.push((*t, "not linearizable".into()));
            }
        }
    }
    // One leader per leader epoch: a pair is evidence once its second leader was seen.
    if let Some(vs) = results
        .pointer("/leaders/violations")
        .and_then(Value::as_array)
    {
        for v in vs {
            let second = v
                .get("brokers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|b| b.get(1).and_then(Value::as_u64))
                .max();
            if let Some(t) = second.and_then(|i| time_of.get(&i)) {
                found.push((*t, "two leaders".into()));
            }
        }
    }
    if let (Some(v), Some(start)) = (results.pointer("/conformance/violation"), start_mono_ns) {
        let at = v.pointer("/event/mono_ns").and_then(Value::as_u64);
        let check = v
            .get("check")
            .and_then(Value::as_str)
            .unwrap_or("conformance");
        if let Some(at) = at {
            found.push((
                at.saturating_sub(start),
                format!("NON-CONFORMING [{check}]"),
            ));
        }
    }
    found
        .into_iter()
        .min_by_key(|(t, _)| *t)
        .map(|(t, what)| Evidence {
            seconds: t as f64 / 1e9,
            what,
        })
}

/// Every `anomalies` object below `v`: each anomaly's example operations, with their times.
fn collect_anomalies(v: &Value, time_of: &HashMap<u64, u64>, out: &mut Vec<(u64, String)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "anomalies" {
                    if let Some(kinds) = child.as_object() {
                        for (name, a) in kinds {
                            // Queue anomalies: `{count, examples: [{ops: [..]}]}`; cluster
                            // checks: `[{index, what}]`.
                            let examples = a
                                .get("examples")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .filter_map(|e| e.get("ops").and_then(Value::as_array))
                                .flatten()
                                .filter_map(Value::as_u64);
                            let listed = a
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|e| e.get("index").and_then(Value::as_u64));
                            for i in examples.chain(listed) {
                                if let Some(t) = time_of.get(&i) {
                                    out.push((*t, name.clone()));
                                }
                            }
                        }
                    }
                } else {
                    collect_anomalies(child, time_of, out);
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_anomalies(i, time_of, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, OpType, OpValue, Process};
    use serde_json::json;

    fn history(times: &[u64]) -> History {
        History {
            pair: vec![None; times.len()],
            ops: times
                .iter()
                .enumerate()
                .map(|(i, &t)| Op {
                    index: i as u64,
                    time: t,
                    kind: OpType::Info,
                    process: Process::Nemesis,
                    f: "send".into(),
                    value: OpValue::Other(json!(null)),
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn the_earliest_anomaly_op_or_conformance_event_is_the_evidence() {
        let h = history(&[0, 1_000_000_000, 2_500_000_000, 9_000_000_000]);
        let r = json!({
            "queue": {"anomalies": {
                "lost-write": {"count": 1, "examples": [{"ops": [3]}]},
                "inconsistent-offsets": {"count": 2, "examples": [{"ops": [3, 2]}]}
            }}
        });
        let e = first_evidence(&r, &h, None).unwrap();
        assert_eq!((e.seconds, e.what.as_str()), (2.5, "inconsistent-offsets"));
        let cluster =
            json!({"cluster": {"anomalies": {"node-crashed": [{"index": 1, "what": "n3"}]}}});
        let e = first_evidence(&cluster, &h, None).unwrap();
        assert_eq!((e.seconds, e.what.as_str()), (1.0, "node-crashed"));
        let mut r2 = r.clone();
        r2["conformance"] =
            json!({"violation": {"check": "advance_hw", "event": {"mono_ns": 5_000_000_000u64}}});
        let e = first_evidence(&r2, &h, Some(4_000_000_000)).unwrap();
        assert_eq!(
            (e.seconds, e.what.as_str()),
            (1.0, "NON-CONFORMING [advance_hw]")
        );
        assert_eq!(
            first_evidence(&json!({"queue": {"anomalies": {}}}), &h, Some(0)),
            None
        );
    }

    #[test]
    fn two_leaders_are_evidence_once_the_second_one_was_seen() {
        let h = history(&[0, 1_000_000_000, 2_500_000_000, 9_000_000_000]);
        let r = json!({"leaders": {"violations": [
            {"ballast": true, "partition": 4, "leader_epoch": 1, "brokers": [[2, 3], [3, 1]]},
            {"ballast": false, "partition": 0, "leader_epoch": 1, "brokers": [[2, 2], [3, 0]]}
        ]}});
        let e = first_evidence(&r, &h, None).unwrap();
        assert_eq!((e.seconds, e.what.as_str()), (2.5, "two leaders"));
    }
}

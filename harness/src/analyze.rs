//! Runs every checker that applies to a history and gathers one verdict (`results.json`).

use crate::history::History;
use crate::{cluster_checks, leaders, linear, queue, Verdict};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    /// Linearizability search gives up with `unknown` after this long.
    pub time_limit: Duration,
    /// Worker threads for per-partition linearizability checks.
    pub threads: usize,
    /// Examples kept per queue anomaly.
    pub max_examples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_limit: Duration::from_secs(60),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_examples: 8,
        }
    }
}

/// What `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub verdict: Verdict,
    /// One line saying why the verdict is what it is.
    pub summary: String,
    pub ops: usize,
    pub nemesis_ops: usize,
    /// Workloads found in the history: `log` (produce/read), `queue` (send/poll/txn).
    pub workloads: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linearizability: Option<linear::LinReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<queue::QueueReport>,
    /// One leader per leader epoch, when the run asked the brokers what they lead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaders: Option<leaders::LeaderReport>,
    /// Nodes that crashed or logged a failed assertion, reassignments that broke KIP-455's
    /// completion rules, when the run recorded what it saw of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster_checks::ClusterReport>,
    pub seconds: f64,
}

/// Checks a history with every checker its operations call for.
pub fn analyze(history: &History, opts: &Options) -> Results {
    let start = Instant::now();
    let has = |fs: &[&str]| {
        history
            .ops
            .iter()
            .any(|o| o.is_client() && fs.contains(&o.f.as_str()))
    };
    let mut workloads = Vec::new();
    let lin = has(&["produce", "read"]).then(|| {
        workloads.push("log");
        linear::check(history, opts.time_limit, opts.threads)
    });
    let q = has(&["send", "poll", "txn"]).then(|| {
        workloads.push("queue");
        queue::check(history, opts.max_examples)
    });
    let mut parts = Vec::new();
    let mut reasons = Vec::new();
    if let Some(l) = &lin {
        parts.push(l.verdict);
        for p in &l.partitions {
            match p.verdict {
                Verdict::Invalid => reasons.push(format!(
                    "partition {} is not linearizable{}",
                    p.partition,
                    p.first_illegal.as_ref().map_or(String::new(), |i| format!(
                        " at op {}: {}",
                        i.invoke_index, i.op
                    ))
                )),
                Verdict::Unknown => reasons.push(format!(
                    "partition {}: linearizability unknown (time limit reached)",
                    p.partition
                )),
                Verdict::Valid => {}
            }
        }
    }
    if let Some(q) = &q {
        parts.push(q.verdict);
        for (name, a) in &q.anomalies {
            reasons.push(format!("{name} x{}", a.count));
        }
        for (key, n) in &q.unseen_undecided {
            reasons.push(format!(
                "key {key}: {n} acknowledged writes unseen, but its final reads did not complete (offline after healing?): lost or unavailable is undecided"
            ));
        }
    }
    // Leader observations add a check, never a verdict of their own: a history without
    // client operations stays unknown.
    let checked = !parts.is_empty();
    let led = leaders::observed(history).then(|| leaders::check(history));
    if let Some(l) = &led {
        parts.push(l.verdict);
        reasons.extend(l.reasons());
    }
    let cluster = cluster_checks::observed(history).then(|| cluster_checks::check(history));
    if let Some(c) = &cluster {
        parts.push(c.verdict);
        reasons.extend(c.reasons());
    }
    let verdict = if !checked {
        // A crashed node is an anomaly whatever else the history holds.
        match &cluster {
            Some(c) if c.verdict == Verdict::Invalid => Verdict::Invalid,
            _ => Verdict::Unknown,
        }
    } else {
        Verdict::combine(parts)
    };
    let summary = match verdict {
        Verdict::Valid => format!(
            "valid: no anomaly in {} workload(s){}",
            workloads.join("+"),
            led.as_ref().map_or(String::new(), |l| format!(
                "; one leader per leader epoch ({} leader epochs in {} observations)",
                l.leader_epochs, l.observations
            ))
        ),
        Verdict::Invalid => format!("anomaly found: {}", reasons.join("; ")),
        Verdict::Unknown if workloads.is_empty() => {
            "unknown: the history has no log (produce/read) or queue (send/poll/txn) operations"
                .to_string()
        }
        Verdict::Unknown => format!("unknown: {}", reasons.join("; ")),
    };
    Results {
        verdict,
        summary,
        ops: history.ops.len(),
        nemesis_ops: history.nemesis_ops(),
        workloads,
        linearizability: lin,
        queue: q,
        leaders: led,
        cluster,
        seconds: start.elapsed().as_secs_f64(),
    }
}

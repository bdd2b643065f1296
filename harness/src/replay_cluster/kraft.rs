//! `kcheck replay specs/traces/kraft-*.json --against cluster [--bug NAME]`: a `kraft` model
//! counterexample as a schedule of single KRaft deliveries on real controller processes.
//!
//! The model's voters c0, c1, c2 are three `--process-roles controller` processes started with
//! `--test-control` (the hold points of `kcheck_reference::controller_test_control`) and
//! election timeouts long enough never to fire by themselves; a model observer (b3) is a
//! `--process-roles broker` process whose metadata fetcher's Fetch requests the controllers
//! refuse unless the replayer lets one through. Every node writes its protocol trace
//! (`--trace-file`). Each model action becomes commands on the control endpoints:
//!
//! | model action | on the cluster |
//! |---|---|
//! | `timeout{node}` | `fire election-timer` on that controller |
//! | `pre-vote{voter}` | its pre-vote goes to one peer that grants it in the correct protocol (epoch not above the voter's, no leader, log not ahead), and the answer comes back: the voter becomes candidate |
//! | `resend-vote` / `resend-begin-quorum-epoch` | check that the request waits at its link (the core sent it; a held link keeps the newest) |
//! | `deliver` Vote / Fetch request | the request goes; the peer handles it; its response waits at the sender's link |
//! | `deliver` VoteResponse / FetchResponse | the waiting response is handed to the requester's core |
//! | `deliver` BeginQuorumEpoch / EndQuorumEpoch | the request goes and its response is handed over (the model has no response for them) |
//! | `drop` | the waiting request or response is discarded |
//! | `send-fetch{node,to}` | a voter: one Fetch round (request and response); an observer: the controller `to` handles that broker's next Fetch (again, at most 5 rounds, until the broker's log is as long as the model's) |
//! | `fetch-response-lost` | the Fetch goes, the leader handles it, its response is dropped |
//! | `crash` / `restart` | SIGKILL / start again on the same `quorum-state` and log |
//! | `controller-append{voter, register-broker}` | a BrokerRegistration sent to that controller; first, if its leader-change record is not committed yet (the reference's active controller starts only then, as Kafka's does), a voter that voted for it gets BeginQuorumEpoch and fetches until it is |
//!
//! After the schedule the replayer checks the model's invariants in Kafka's terms:
//! `election-safety` (two controllers' `raft.leader` events for one epoch), `log-matching`
//! and `leader-completeness` (the controllers' logs, read through `state`), `observer-prefix`
//! (a broker's metadata HW above every HW the quorum reached), and the controllers' own
//! invariant assertions (a panic in a node's log).

use super::{control, wait_for, ReplayOptions, ReplayReport, StepReport, Violation};
use crate::system::{free_port, NodeId, NodeSpec, ProcessSystem};
use kcheck_models::trace::Trace;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Node ids: controller ci is `CONTROLLER_BASE + i`; observer bk is broker `k - voters + 1`.
const CONTROLLER_BASE: NodeId = 3001;
/// `--election-timeout-ms` of a replay: no timer fires unless the replayer fires it.
const ELECTION_TIMEOUT_MS: u64 = 600_000;
/// How long a broker's metadata fetcher may take to reach a given controller (it asks the
/// voters in turn, one every 500 ms, while it knows no leader).
const OBSERVER_ROUNDS: usize = 5;
/// The model's invariants the replay checks (and the controllers assert).
const PROPERTIES: [&str; 6] = [
    "election-safety",
    "log-matching",
    "leader-completeness",
    "observer-prefix",
    "hw-monotonic",
    "hw-within-log",
];

/// One step of a kraft schedule, on model node indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KStep {
    Timeout {
        node: usize,
    },
    PreVote {
        voter: usize,
    },
    /// The model's resend: the request must wait at `voter`'s link to `to`.
    Resend {
        rpc: &'static str,
        voter: usize,
        to: usize,
    },
    /// A request from `from` is handled by `to`; its response waits at `from`.
    Request {
        rpc: &'static str,
        from: usize,
        to: usize,
    },
    /// The response `from` gave is handed to `to`'s core.
    Response {
        rpc: &'static str,
        from: usize,
        to: usize,
    },
    /// A request whose response the model does not have: both go.
    Exchange {
        rpc: &'static str,
        from: usize,
        to: usize,
    },
    /// `node` (the requester) loses what waits at its link to `peer`.
    Drop {
        rpc: &'static str,
        node: usize,
        peer: usize,
        response: bool,
    },
    SendFetch {
        node: usize,
        to: usize,
    },
    FetchResponseLost {
        node: usize,
        to: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    /// A RegisterBroker record written by the active controller `voter`.
    ControllerAppend {
        voter: usize,
        broker: usize,
    },
}

/// A model node's state line (`c0 leader epoch=1 voted=c0 leader=c0 log=[..] LEO=1 HW=?`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KNodeState {
    pub role: String,
    pub epoch: i32,
    pub log_len: usize,
}

fn node_index(s: &str) -> Option<usize> {
    s.strip_prefix('c')
        .or_else(|| s.strip_prefix('b'))?
        .parse()
        .ok()
}

/// The model nodes' states (index = model node), from one rendered state.
pub fn parse_kraft_state(lines: &[String]) -> Vec<KNodeState> {
    let mut out: Vec<KNodeState> = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.first().and_then(|w| node_index(w)) else {
            continue;
        };
        let mut s = KNodeState {
            role: words.get(1).unwrap_or(&"").to_string(),
            ..KNodeState::default()
        };
        for w in &words[1..] {
            if let Some(v) = w.strip_prefix("epoch=") {
                s.epoch = v.parse().unwrap_or(0);
            }
        }
        if let Some(at) = line.find("log=[") {
            let rest = &line[at + 5..];
            let log = &rest[..rest.find(']').unwrap_or(rest.len())];
            s.log_len = log.matches("@e").count();
        }
        if out.len() <= i {
            out.resize(i + 1, KNodeState::default());
        }
        out[i] = s;
    }
    out
}

fn voters(trace: &Trace) -> usize {
    trace.bounds.get("voters").copied().unwrap_or(3) as usize
}

fn idx(a: &serde_json::Value, name: &str) -> Result<usize, String> {
    a.get(name)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| format!("action {a} has no {name}"))
}

/// The kraft schedule, or why the trace cannot run on a cluster.
pub fn plan(trace: &Trace) -> Result<Vec<KStep>, String> {
    let raft_flags: Vec<&str> = kcheck_reference::raft::RaftBug::ALL
        .iter()
        .map(|b| b.name())
        .collect();
    for b in &trace.bugs {
        if !raft_flags.contains(&b.as_str()) {
            return Err(format!(
                "bug flag '{b}' is a mutation of the kraft model only: the reference Raft has no counterpart (RaftBug in reference/src/raft.rs knows {}), so no controller or broker process can be started with it and this trace cannot be reproduced on a cluster; `kcheck replay TRACE` replays it in the model",
                raft_flags.join(", ")
            ));
        }
    }
    let v = voters(trace);
    if v != 3 {
        return Err(format!(
            "the cluster replay runs three controllers; this trace has {v} voters"
        ));
    }
    let mut out = Vec::new();
    for (i, step) in trace.steps.iter().enumerate() {
        let a = &step.action;
        let kind = a.get("action").and_then(|v| v.as_str()).unwrap_or("");
        let voter_only = |n: usize, what: &str| {
            if n < v {
                Ok(n)
            } else {
                Err(format!(
                    "step {}: {what} of observer b{n} has no cluster mapping (a broker's metadata fetcher has no timer or message the replayer holds besides its Fetch)",
                    i + 1
                ))
            }
        };
        let s = match kind {
            "timeout" => KStep::Timeout {
                node: voter_only(idx(a, "node")?, "a timeout")?,
            },
            "pre-vote" => KStep::PreVote {
                voter: idx(a, "voter")?,
            },
            "resend-vote" => KStep::Resend {
                rpc: "vote",
                voter: idx(a, "voter")?,
                to: idx(a, "to")?,
            },
            "resend-begin-quorum-epoch" => KStep::Resend {
                rpc: "begin-quorum-epoch",
                voter: idx(a, "voter")?,
                to: idx(a, "to")?,
            },
            "deliver" | "drop" => {
                let m = a
                    .get("message")
                    .ok_or_else(|| format!("step {}: no message", i + 1))?;
                let (from, to) = (idx(m, "from")?, idx(m, "to")?);
                let body = m.get("body").cloned().unwrap_or_default();
                let api = body.get("api").and_then(|v| v.as_str()).unwrap_or("");
                let pre = body.get("pre_vote").and_then(|v| v.as_bool()) == Some(true);
                let vote = if pre { "pre-vote" } else { "vote" };
                let drop = kind == "drop";
                match (api, drop) {
                    ("vote", false) => KStep::Request {
                        rpc: vote,
                        from,
                        to,
                    },
                    ("vote-response", false) => KStep::Response {
                        rpc: vote,
                        from,
                        to,
                    },
                    ("fetch", false) => KStep::Request {
                        rpc: "fetch",
                        from,
                        to,
                    },
                    ("fetch-response", false) => KStep::Response {
                        rpc: "fetch",
                        from,
                        to,
                    },
                    ("begin-quorum-epoch", false) => KStep::Exchange {
                        rpc: "begin-quorum-epoch",
                        from,
                        to,
                    },
                    ("end-quorum-epoch", false) => KStep::Exchange {
                        rpc: "end-quorum-epoch",
                        from,
                        to,
                    },
                    ("vote" | "fetch" | "begin-quorum-epoch" | "end-quorum-epoch", true) => {
                        KStep::Drop {
                            rpc: match api {
                                "vote" => vote,
                                "fetch" => "fetch",
                                "begin-quorum-epoch" => "begin-quorum-epoch",
                                _ => "end-quorum-epoch",
                            },
                            node: from,
                            peer: to,
                            response: false,
                        }
                    }
                    ("vote-response", true) => KStep::Drop {
                        rpc: vote,
                        node: to,
                        peer: from,
                        response: true,
                    },
                    ("fetch-response", true) => KStep::Drop {
                        rpc: "fetch",
                        node: to,
                        peer: from,
                        response: true,
                    },
                    _ => {
                        return Err(format!(
                            "step {}: {kind} of a {api:?} message has no cluster mapping",
                            i + 1
                        ))
                    }
                }
            }
            "send-fetch" => KStep::SendFetch {
                node: idx(a, "node")?,
                to: idx(a, "to")?,
            },
            "fetch-response-lost" => KStep::FetchResponseLost {
                node: voter_only(idx(a, "node")?, "a lost Fetch response")?,
                to: idx(a, "to")?,
            },
            "crash" => KStep::Crash {
                node: idx(a, "node")?,
            },
            "restart" => KStep::Restart {
                node: idx(a, "node")?,
            },
            "controller-append" => {
                let r = a.get("record").cloned().unwrap_or_default();
                match r.get("type").and_then(|t| t.as_str()) {
                    Some("register-broker") => KStep::ControllerAppend {
                        voter: idx(a, "voter")?,
                        broker: idx(&r, "broker")?,
                    },
                    other => {
                        return Err(format!(
                            "step {}: a controller-append of {other:?} has no cluster mapping (only register-broker: a BrokerRegistration the replayer sends; the other records follow from broker heartbeats and partition changes the replayer does not drive)",
                            i + 1
                        ))
                    }
                }
            }
            "duplicate" => {
                return Err(format!(
                    "step {}: a duplicated message cannot be forced: the reference's RPCs pair one request with one response over a connection, and a link sends a request once",
                    i + 1
                ))
            }
            "resign" => {
                return Err(format!(
                    "step {}: a resignation that keeps the process running (check-quorum) needs its timer; only a SIGTERM resigns on command, and it stops the process",
                    i + 1
                ))
            }
            other => return Err(format!("step {}: unknown action {other:?}", i + 1)),
        };
        out.push(s);
    }
    Ok(out)
}

// ---- Checkers (pure) ----------------------------------------------------------------------

/// A controller's state as its control endpoint reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ControllerView {
    pub node_id: NodeId,
    pub role: String,
    pub epoch: i32,
    pub voted_for: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    /// (epoch, control) of each entry.
    pub log: Vec<(i32, bool)>,
    pub active: bool,
    #[serde(default)]
    pub links: Vec<LinkView>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LinkView {
    pub peer: NodeId,
    pub rpc: String,
    pub pending: Option<String>,
    pub response: Option<String>,
}

/// `election-safety`: at most one leader per epoch, over every `raft.leader` event.
pub fn check_election_safety(leaders: &[(NodeId, i32)]) -> Vec<Violation> {
    let mut by_epoch: std::collections::BTreeMap<i32, Vec<NodeId>> = Default::default();
    for (n, e) in leaders {
        let v = by_epoch.entry(*e).or_default();
        if !v.contains(n) {
            v.push(*n);
        }
    }
    by_epoch
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(epoch, nodes)| Violation {
            property: "election-safety".into(),
            detail: format!(
                "controllers {nodes:?} were each elected leader of epoch {epoch} (their raft.leader trace events)"
            ),
        })
        .collect()
}

/// `log-matching` (two logs with the same epoch at an offset agree on everything before it)
/// and `leader-completeness` (every entry below some voter's HW is, with its epoch, in the log
/// of every leader of a later epoch).
pub fn check_logs(views: &[ControllerView]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, a) in views.iter().enumerate() {
        for b in &views[i + 1..] {
            let common = a.log.len().min(b.log.len());
            let Some(last_same) = (0..common).rev().find(|o| a.log[*o].0 == b.log[*o].0) else {
                continue;
            };
            if let Some(o) = (0..last_same).find(|o| a.log[*o] != b.log[*o]) {
                out.push(Violation {
                    property: "log-matching".into(),
                    detail: format!(
                        "controllers {} and {} both hold an entry of epoch {} at offset {last_same}, but offset {o} is epoch {} on {} and epoch {} on {} (logs {:?} and {:?})",
                        a.node_id, b.node_id, a.log[last_same].0, a.log[o].0, a.node_id, b.log[o].0, b.node_id,
                        epochs(&a.log), epochs(&b.log)
                    ),
                });
            }
        }
    }
    for c in views {
        for o in 0..(c.high_watermark.max(0) as usize).min(c.log.len()) {
            let committed = c.log[o].0;
            for l in views
                .iter()
                .filter(|l| l.role == "leader" && l.epoch > committed)
            {
                if l.log.get(o).map(|e| e.0) != Some(committed) {
                    out.push(Violation {
                        property: "leader-completeness".into(),
                        detail: format!(
                            "offset {o} of epoch {committed} is committed (below controller {}'s HW {}), but controller {}, leader of epoch {}, has {} there (log {:?})",
                            c.node_id,
                            c.high_watermark,
                            l.node_id,
                            l.epoch,
                            l.log.get(o).map_or("nothing".to_string(), |e| format!("epoch {}", e.0)),
                            epochs(&l.log)
                        ),
                    });
                    return out;
                }
            }
        }
    }
    out
}

fn epochs(log: &[(i32, bool)]) -> Vec<i32> {
    log.iter().map(|e| e.0).collect()
}

/// `observer-prefix`: a broker's metadata HW (how far it applies the log) never passes the
/// largest HW any voter reached.
pub fn check_observer_prefix(observer_hw: &[(NodeId, i64)], quorum_hw: i64) -> Vec<Violation> {
    observer_hw
        .iter()
        .filter(|(_, hw)| *hw > quorum_hw)
        .map(|(b, hw)| Violation {
            property: "observer-prefix".into(),
            detail: format!(
                "broker {b} raised its metadata HW to {hw} and applied the log below it, while no controller's HW ever passed {quorum_hw}: it applied uncommitted metadata"
            ),
        })
        .collect()
}

/// The controllers' own assertions: a panic whose message starts with a model invariant's
/// name (`raft.rs`), in a node's log.
pub fn check_node_log(node: NodeId, log: &str) -> Vec<Violation> {
    let mut lines = log.lines();
    while let Some(l) = lines.next() {
        if !l.contains("panicked at") {
            continue;
        }
        let msg = lines.next().unwrap_or("");
        if let Some(p) = PROPERTIES
            .iter()
            .find(|p| msg.starts_with(&format!("{p}:")))
        {
            return vec![Violation {
                property: p.to_string(),
                detail: format!("node {node} stopped at its own assertion: {msg}"),
            }];
        }
    }
    Vec::new()
}

/// One node's protocol trace events (`--trace-file`), as (event, fields).
fn trace_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event_is(e: &serde_json::Value, name: &str) -> bool {
    e.get("event").and_then(|v| v.as_str()) == Some(name)
}

fn field_i64(e: &serde_json::Value, name: &str) -> Option<i64> {
    e.get(name).and_then(|v| v.as_i64())
}

/// A broker's log length and HW, from its trace (appends, truncations, HW advances).
fn observer_log(events: &[serde_json::Value]) -> (i64, i64) {
    let (mut len, mut hw) = (0i64, 0i64);
    for e in events {
        if event_is(e, "raft.append") {
            let n = e
                .get("epochs")
                .and_then(|v| v.as_str())
                .map_or(0, |s| s.split(',').filter(|x| !x.trim().is_empty()).count())
                as i64;
            let n = if n == 0 {
                e.get("epochs")
                    .and_then(|v| v.as_array())
                    .map_or(0, |a| a.len() as i64)
            } else {
                n
            };
            len = field_i64(e, "base_offset").unwrap_or(len) + n;
        } else if event_is(e, "raft.truncate") {
            len = field_i64(e, "offset").unwrap_or(len);
        } else if event_is(e, "raft.hw") {
            hw = field_i64(e, "hw").unwrap_or(hw);
        } else if event_is(e, "raft.restore") {
            len = field_i64(e, "leo").unwrap_or(0);
            hw = 0;
        }
    }
    (len, hw)
}

// ---- The cluster ----------------------------------------------------------------------------

struct Node {
    id: NodeId,
    /// Controllers: the controller listener; brokers: the client listener.
    addr: String,
    /// Controllers only.
    control: Option<String>,
    trace: PathBuf,
    log: PathBuf,
}

struct KCluster {
    system: ProcessSystem,
    /// Model node index → node.
    nodes: Vec<Node>,
    voters: usize,
}

impl Drop for KCluster {
    fn drop(&mut self) {
        self.system.shutdown();
    }
}

impl KCluster {
    fn control_of(&self, i: usize) -> Result<&str, String> {
        self.nodes
            .get(i)
            .and_then(|n| n.control.as_deref())
            .ok_or_else(|| format!("model node {i} is not a controller"))
    }

    fn view(&self, i: usize) -> Option<ControllerView> {
        if i >= self.voters || !self.system.is_running(self.nodes[i].id) {
            return None;
        }
        let json = control(self.control_of(i).ok()?, "state").ok()?;
        serde_json::from_str(&json).ok()
    }

    fn name(&self, i: usize) -> String {
        if i < self.voters {
            format!("c{i}")
        } else {
            format!("b{i}")
        }
    }

    fn brief(&self, i: usize) -> String {
        match self.view(i) {
            Some(v) => format!(
                "{} {} epoch {}{}{} LEO {} HW {}",
                self.name(i),
                v.role,
                v.epoch,
                v.voted_for.map_or(String::new(), |n| format!(" voted {n}")),
                v.leader.map_or(String::new(), |n| format!(" leader {n}")),
                v.log_end_offset,
                v.high_watermark
            ),
            None => format!("{} down", self.name(i)),
        }
    }

    /// `step request|response RPC PEER` on controller `on`; whether one completed.
    fn step(&self, on: usize, what: &str, rpc: &str, peer: usize) -> Result<bool, String> {
        let line = format!("step {what} {rpc} {}", self.nodes[peer].id);
        let answer = control(self.control_of(on)?, &line)?;
        Ok(answer.contains("\"completed\":1"))
    }

    fn waiting(&self, on: usize, rpc: &str, peer: usize) -> bool {
        let id = self.nodes[peer].id;
        self.view(on).is_some_and(|v| {
            v.links
                .iter()
                .any(|l| l.peer == id && l.rpc == rpc && l.pending.is_some())
        })
    }

    fn run(&mut self, step: &KStep, after: &[KNodeState]) -> Result<String, String> {
        match *step {
            KStep::Timeout { node } => {
                let answer = control(self.control_of(node)?, "fire election-timer")?;
                let want = after.get(node).map(|s| s.role.as_str()).unwrap_or("");
                let now = self.brief(node);
                if answer.contains(&format!("\"role\":\"{want}\"")) {
                    Ok(now)
                } else {
                    Err(format!("{now}, the model's: {want}"))
                }
            }
            KStep::PreVote { voter } => {
                let v = self.view(voter).ok_or("the voter is down")?;
                let mine = (v.log.last().map_or(0, |e| e.0), v.log_end_offset);
                for p in 0..self.voters {
                    if p == voter {
                        continue;
                    }
                    let Some(pv) = self.view(p) else { continue };
                    let theirs = (pv.log.last().map_or(0, |e| e.0), pv.log_end_offset);
                    let grants = pv.epoch <= v.epoch
                        && pv.role != "leader"
                        && pv.role != "follower"
                        && theirs <= mine;
                    if !grants || !self.waiting(voter, "pre-vote", p) {
                        continue;
                    }
                    if self.step(voter, "request", "pre-vote", p)?
                        && self.step(voter, "response", "pre-vote", p)?
                    {
                        let now = self.view(voter).ok_or("the voter is down")?;
                        if now.role == "candidate" || now.role == "leader" {
                            return Ok(format!(
                                "pre-vote granted by {}; {}",
                                self.name(p),
                                self.brief(voter)
                            ));
                        }
                    }
                }
                Err(format!(
                    "no peer granted the pre-vote: {}",
                    self.brief(voter)
                ))
            }
            KStep::Resend { rpc, voter, to } => {
                if self.waiting(voter, rpc, to) {
                    Ok(format!(
                        "the {rpc} request to {} waits at {}'s link",
                        self.name(to),
                        self.name(voter)
                    ))
                } else {
                    Err(format!(
                        "no {rpc} request of {} to {} waits",
                        self.name(voter),
                        self.name(to)
                    ))
                }
            }
            KStep::Request { rpc, from, to } => {
                if self.step(from, "request", rpc, to)? {
                    Ok(format!(
                        "{}; the response waits at {}",
                        self.brief(to),
                        self.name(from)
                    ))
                } else {
                    Err(format!(
                        "no {rpc} request of {} was answered by {}",
                        self.name(from),
                        self.name(to)
                    ))
                }
            }
            KStep::Response { rpc, from, to } => {
                if self.step(to, "response", rpc, from)? {
                    Ok(self.brief(to))
                } else {
                    Err(format!(
                        "no {rpc} response of {} waits at {}",
                        self.name(from),
                        self.name(to)
                    ))
                }
            }
            KStep::Exchange { rpc, from, to } => {
                if self.step(from, "request", rpc, to)? && self.step(from, "response", rpc, to)? {
                    Ok(self.brief(to))
                } else {
                    Err(format!(
                        "no {rpc} of {} reached {}",
                        self.name(from),
                        self.name(to)
                    ))
                }
            }
            KStep::Drop {
                rpc,
                node,
                peer,
                response,
            } => {
                let line = format!(
                    "drop {} {rpc} {}",
                    if response { "response" } else { "request" },
                    self.nodes[peer].id
                );
                let answer = control(self.control_of(node)?, &line)?;
                if answer.contains("\"dropped\":1") {
                    Ok("dropped".into())
                } else {
                    Err("nothing waited to be dropped".into())
                }
            }
            KStep::SendFetch { node, to } if node < self.voters => {
                if !self.step(node, "request", "fetch", to)? {
                    return Err(format!(
                        "{} sent no Fetch to {} ({})",
                        self.name(node),
                        self.name(to),
                        self.brief(node)
                    ));
                }
                self.step(node, "response", "fetch", to)?;
                Ok(format!("{}; {}", self.brief(node), self.brief(to)))
            }
            KStep::SendFetch { node, to } => {
                let want = after.get(node).map_or(0, |s| s.log_len) as i64;
                let broker = &self.nodes[node];
                let line = format!("step observer-fetch {}", broker.id);
                let mut rounds = 0;
                let mut state = observer_log(&trace_events(&broker.trace));
                while rounds < OBSERVER_ROUNDS {
                    let answer = control(self.control_of(to)?, &line)?;
                    if !answer.contains("\"completed\":1") {
                        break;
                    }
                    rounds += 1;
                    // The broker applies the answer a moment after the controller sent it.
                    state = wait_for(Duration::from_millis(500), || {
                        let s = observer_log(&trace_events(&broker.trace));
                        (s.0 >= want).then_some(s)
                    })
                    .unwrap_or_else(|| observer_log(&trace_events(&broker.trace)));
                    if state.0 >= want {
                        break;
                    }
                }
                let note = format!(
                    "{} handled {rounds} Fetch(es) of broker {}: its log has {} entries, HW {}",
                    self.name(to),
                    broker.id,
                    state.0,
                    state.1
                );
                if rounds > 0 && state.0 >= want {
                    Ok(note)
                } else {
                    Err(note)
                }
            }
            KStep::FetchResponseLost { node, to } => {
                if self.step(node, "request", "fetch", to)? {
                    let line = format!("drop response fetch {}", self.nodes[to].id);
                    control(self.control_of(node)?, &line)?;
                    Ok(format!("{}; the response was lost", self.brief(to)))
                } else {
                    Err(format!(
                        "{} sent no Fetch to {}",
                        self.name(node),
                        self.name(to)
                    ))
                }
            }
            KStep::Crash { node } => {
                let id = self.nodes[node].id;
                self.system.kill(id).map_err(|e| e.to_string())?;
                Ok(format!("SIGKILL node {id}"))
            }
            KStep::Restart { node } => {
                let id = self.nodes[node].id;
                self.system.restart(id).map_err(|e| e.to_string())?;
                Ok(format!("restarted: {}", self.brief(node)))
            }
            KStep::ControllerAppend { voter, broker } => {
                let mut note = String::new();
                let v = self.view(voter).ok_or("the controller is down")?;
                if v.role != "leader" {
                    return Err(format!("{} is not the leader", self.brief(voter)));
                }
                if !v.active {
                    // The reference's active controller starts once its epoch's leader-change
                    // record is committed: a voter that voted for it follows and fetches.
                    for h in (0..self.voters).filter(|h| *h != voter) {
                        let Some(hv) = self.view(h) else { continue };
                        let with_it = hv.epoch == v.epoch
                            && (hv.voted_for == Some(v.node_id) || hv.leader == Some(v.node_id));
                        if !with_it {
                            continue;
                        }
                        if hv.leader != Some(v.node_id) {
                            self.step(voter, "request", "begin-quorum-epoch", h)?;
                            self.step(voter, "response", "begin-quorum-epoch", h)?;
                        }
                        let mut rounds = 0;
                        while rounds < 3 && !self.view(voter).is_some_and(|v| v.active) {
                            if !self.step(h, "request", "fetch", voter)? {
                                break;
                            }
                            self.step(h, "response", "fetch", voter)?;
                            rounds += 1;
                        }
                        note = format!(
                            "first {} followed (BeginQuorumEpoch, {rounds} Fetch round(s)) so the leader-change record committed; ",
                            self.name(h)
                        );
                        if self.view(voter).is_some_and(|v| v.active) {
                            break;
                        }
                    }
                }
                let v = self.view(voter).ok_or("the controller is down")?;
                if !v.active {
                    return Err(format!(
                        "{note}{} is not the active controller",
                        self.brief(voter)
                    ));
                }
                let addr = self.nodes[voter].addr.clone();
                let broker_id = (broker + 1).saturating_sub(self.voters) as NodeId;
                let broker_id = broker_id.max(1);
                // The write is answered once committed, which needs fetches the schedule may
                // not have: send it and watch the log instead.
                std::thread::spawn(move || {
                    let _ = register_broker(&addr, broker_id);
                });
                let leo = v.log_end_offset;
                wait_for(Duration::from_secs(5), || {
                    (self.view(voter)?.log_end_offset > leo).then_some(())
                })
                .ok_or_else(|| format!("{note}the RegisterBroker record was not appended"))?;
                Ok(format!(
                    "{note}BrokerRegistration of broker {broker_id}: {}",
                    self.brief(voter)
                ))
            }
        }
    }
}

fn register_broker(addr: &str, broker: NodeId) -> anyhow::Result<()> {
    use kcheck_reference::kafka_protocol::messages::{BrokerId, BrokerRegistrationRequest};
    use kcheck_reference::kafka_protocol::protocol::StrBytes;
    let mut c = kcheck_reference::client::Client::connect(addr)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(12)))?;
    let req = BrokerRegistrationRequest::default()
        .with_broker_id(BrokerId(broker))
        .with_cluster_id(StrBytes::from_static_str("kcheck"))
        .with_incarnation_id(Default::default());
    c.request(2, &req)?;
    Ok(())
}

/// The model node whose state a step changes (the one the report compares with the model).
fn principal(step: &KStep) -> usize {
    match *step {
        KStep::Timeout { node }
        | KStep::Crash { node }
        | KStep::Restart { node }
        | KStep::SendFetch { node, .. }
        | KStep::FetchResponseLost { node, .. }
        | KStep::Drop { node, .. } => node,
        KStep::PreVote { voter }
        | KStep::Resend { voter, .. }
        | KStep::ControllerAppend { voter, .. } => voter,
        KStep::Request { to, .. } | KStep::Response { to, .. } | KStep::Exchange { to, .. } => to,
    }
}

fn start(trace: &Trace, steps: &[KStep], opts: &ReplayOptions) -> Result<KCluster, String> {
    let io = |e: std::io::Error| e.to_string();
    let (broker_bugs, controller_bugs) = kcheck_reference::cli::split_bug_flags(&opts.bugs)?;
    let flags = |bugs: &[String]| -> Vec<String> {
        bugs.iter()
            .flat_map(|b| ["--bug".to_string(), b.clone()])
            .collect()
    };
    let v = voters(trace);
    // A broker for each model observer the schedule uses (its metadata fetcher is the observer).
    let model_nodes = steps
        .iter()
        .filter_map(|s| match *s {
            KStep::SendFetch { node, .. } | KStep::Crash { node } | KStep::Restart { node } => {
                Some(node + 1)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
        .max(v);
    if model_nodes > parse_kraft_state(&trace.init).len().max(v) {
        return Err("a step names a node the model's state does not have".into());
    }
    let port = || free_port().map(|p| format!("127.0.0.1:{p}")).map_err(io);
    let dir = &opts.run_dir;
    let mut nodes = Vec::new();
    for i in 0..v {
        nodes.push(Node {
            id: CONTROLLER_BASE + i as NodeId,
            addr: port()?,
            control: Some(port()?),
            trace: PathBuf::new(),
            log: PathBuf::new(),
        });
    }
    for k in v..model_nodes {
        nodes.push(Node {
            id: (k - v + 1) as NodeId,
            addr: port()?,
            control: None,
            trace: PathBuf::new(),
            log: PathBuf::new(),
        });
    }
    let voters_arg = nodes[..v]
        .iter()
        .map(|n| format!("{}@{}", n.id, n.addr))
        .collect::<Vec<_>>()
        .join(",");
    let mut specs = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        let folder = dir.join(format!("n{}", n.id));
        n.trace = folder.join("trace.jsonl");
        n.log = folder.join("node.log");
        let data = folder.join("data");
        let mut args: Vec<String> = vec!["broker".into(), "--node-id".into(), n.id.to_string()];
        if i < v {
            args.extend(
                [
                    "--process-roles",
                    "controller",
                    "--controller-listen",
                    &n.addr,
                    "--election-timeout-ms",
                    &ELECTION_TIMEOUT_MS.to_string(),
                    "--broker-session-timeout-ms",
                    "3600000",
                    "--test-control",
                    n.control.as_deref().unwrap_or_default(),
                ]
                .map(String::from),
            );
            args.extend(flags(&controller_bugs));
        } else {
            args.extend(["--process-roles", "broker", "--listen", &n.addr].map(String::from));
            args.extend(flags(&broker_bugs));
        }
        args.extend(
            [
                "--controller-quorum-voters",
                &voters_arg,
                "--trace-file",
                &n.trace.display().to_string(),
                "--data-dir",
                &data.display().to_string(),
            ]
            .map(String::from),
        );
        specs.push(NodeSpec {
            id: n.id,
            program: opts.program.clone(),
            args,
            data_dir: data,
            client_addr: (i >= v).then(|| n.addr.clone()),
        });
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let system = ProcessSystem::start(dir, specs, false, false, None)
        .map_err(|e| format!("cannot start the controllers: {e}"))?;
    Ok(KCluster {
        system,
        nodes,
        voters: v,
    })
}

/// Replays a kraft trace on three controllers (and a broker per model observer).
pub fn replay(trace: &Trace, opts: &ReplayOptions) -> Result<ReplayReport, String> {
    let started = Instant::now();
    let steps = plan(trace)?;
    let states: Vec<Vec<KNodeState>> = std::iter::once(&trace.init)
        .chain(trace.steps.iter().map(|s| &s.state))
        .map(|l| parse_kraft_state(l))
        .collect();
    let mut cluster = start(trace, &steps, opts)?;
    let mut reports = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let after = &states[i + 1];
        let (happened, mut note) = match cluster.run(step, after) {
            Ok(n) => (true, n),
            Err(n) => (false, n),
        };
        // Where the cluster and the model part (expected without the bug flag).
        let p = principal(step);
        if let (Some(v), Some(m)) = (cluster.view(p), after.get(p)) {
            if (v.role.as_str(), v.epoch, v.log.len()) != (m.role.as_str(), m.epoch, m.log_len) {
                note.push_str(&format!(
                    " (the model's {}: {} epoch {} LEO {})",
                    cluster.name(p),
                    m.role,
                    m.epoch,
                    m.log_len
                ));
            }
        }
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
    let views: Vec<ControllerView> = (0..cluster.voters)
        .filter_map(|i| cluster.view(i))
        .collect();
    let mut violations = Vec::new();
    let mut leaders = Vec::new();
    let mut quorum_hw = 0;
    let mut observer_hw = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let events = trace_events(&n.trace);
        if i < cluster.voters {
            for e in &events {
                if event_is(e, "raft.leader") {
                    if let Some(epoch) = field_i64(e, "epoch") {
                        leaders.push((n.id, epoch as i32));
                    }
                } else if event_is(e, "raft.hw") {
                    quorum_hw = quorum_hw.max(field_i64(e, "hw").unwrap_or(0));
                }
            }
        } else {
            observer_hw.push((n.id, observer_log(&events).1));
        }
    }
    for v in &views {
        quorum_hw = quorum_hw.max(v.high_watermark);
    }
    violations.extend(check_election_safety(&leaders));
    violations.extend(check_logs(&views));
    violations.extend(check_observer_prefix(&observer_hw, quorum_hw));
    for n in &cluster.nodes {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        violations.extend(check_node_log(n.id, &log));
    }
    let mut final_state: Vec<String> = (0..cluster.voters).map(|i| cluster.brief(i)).collect();
    for (i, n) in cluster.nodes.iter().enumerate().skip(cluster.voters) {
        let (len, hw) = observer_log(&trace_events(&n.trace));
        final_state.push(format!("b{i} (broker {}) log {len} entries HW {hw}", n.id));
    }
    let ids = cluster.nodes.iter().map(|n| n.id).collect();
    drop(cluster);
    Ok(ReplayReport {
        model: trace.model.clone(),
        property: trace.property.clone(),
        bugs: opts.bugs.clone(),
        brokers: ids,
        steps: reports,
        acknowledged: Vec::new(),
        violations,
        consumed_after_heal: Err("the kraft replay writes no partition records".into()),
        final_state,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay_cluster::tests::trace;

    #[test]
    fn the_four_traces_with_a_raft_bug_have_a_schedule() {
        for name in [
            "kraft-apply-uncommitted",
            "kraft-forget-vote-on-restart",
            "kraft-no-diverging-epoch",
            "kraft-vote-ignores-log",
        ] {
            let t = trace(name);
            let steps = plan(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(steps.len(), t.steps.len());
        }
        let s = plan(&trace("kraft-forget-vote-on-restart")).unwrap();
        assert_eq!(s[0], KStep::Timeout { node: 0 });
        assert_eq!(
            s[5],
            KStep::Request {
                rpc: "vote",
                from: 0,
                to: 2
            }
        );
        assert_eq!(
            s[8],
            KStep::Response {
                rpc: "vote",
                from: 2,
                to: 0
            }
        );
        let s = plan(&trace("kraft-no-diverging-epoch")).unwrap();
        assert_eq!(
            s[10],
            KStep::ControllerAppend {
                voter: 1,
                broker: 3
            }
        );
        assert_eq!(
            s[12],
            KStep::Exchange {
                rpc: "begin-quorum-epoch",
                from: 1,
                to: 0
            }
        );
    }

    #[test]
    fn the_traces_of_model_only_mutations_are_refused_with_the_reason() {
        for name in [
            "kraft-commit-prior-epoch",
            "kraft-hw-before-leader-change-committed",
            "kraft-hw-beyond-log-end",
            "kraft-prospective-follows-itself",
        ] {
            let e = plan(&trace(name)).unwrap_err();
            assert!(
                e.contains("mutation of the kraft model only"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn model_state_lines_give_role_epoch_and_log_length() {
        let t = trace("kraft-no-diverging-epoch");
        let s = parse_kraft_state(&t.steps[10].state);
        assert_eq!(s.len(), 4);
        assert_eq!(
            (s[1].role.as_str(), s[1].epoch, s[1].log_len),
            ("leader", 2, 2)
        );
        assert_eq!((s[3].role.as_str(), s[3].log_len), ("observer", 0));
    }

    fn view(id: NodeId, role: &str, epoch: i32, hw: i64, log: &[i32]) -> ControllerView {
        ControllerView {
            node_id: id,
            role: role.into(),
            epoch,
            voted_for: None,
            leader: None,
            high_watermark: hw,
            log_end_offset: log.len() as i64,
            log: log.iter().map(|e| (*e, false)).collect(),
            active: false,
            links: Vec::new(),
        }
    }

    #[test]
    fn checkers_pass_a_healthy_quorum_and_name_each_broken_invariant() {
        assert!(check_election_safety(&[(1, 1), (2, 2), (1, 1)]).is_empty());
        let v = check_election_safety(&[(1, 1), (2, 1)]);
        assert_eq!(v[0].property, "election-safety");
        let healthy = [
            view(1, "leader", 2, 2, &[1, 2]),
            view(2, "follower", 2, 1, &[1]),
        ];
        assert!(check_logs(&healthy).is_empty());
        let diverged = [
            view(1, "follower", 2, 0, &[1, 2]),
            view(2, "leader", 2, 1, &[2, 2]),
        ];
        let v = check_logs(&diverged);
        assert_eq!(v[0].property, "log-matching", "{v:?}");
        let lost = [view(1, "voted", 2, 1, &[1]), view(2, "leader", 2, 0, &[2])];
        let v = check_logs(&lost);
        assert_eq!(v[0].property, "leader-completeness", "{v:?}");
        assert!(check_observer_prefix(&[(1, 0)], 0).is_empty());
        assert_eq!(
            check_observer_prefix(&[(1, 1)], 0)[0].property,
            "observer-prefix"
        );
        let log = "thread 'x' panicked at reference/src/raft.rs:1:1:\nelection-safety: node 1 leads epoch 1\n";
        assert_eq!(check_node_log(1, log)[0].property, "election-safety");
    }
}

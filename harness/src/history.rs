//! The history of a run: one JSON object per line with Jepsen's operation fields, so that a
//! kcheck history reads like a Jepsen one (and exports to EDN for Elle/Knossos, see `edn`).
//!
//! Every client operation appears twice: an `invoke` when the client starts it and a completion
//! (`ok`, `fail` or `info`) by the same process. `info` means the outcome is unknown (timeout,
//! crash): the operation may or may not have taken effect. As in Jepsen, a process that crashed
//! never issues another operation; its worker continues under a fresh process number. Nemesis
//! operations use the process `"nemesis"`. The schema is documented in `specs/harness.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufRead, Write};

/// Jepsen's operation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl OpType {
    pub fn name(self) -> &'static str {
        match self {
            OpType::Invoke => "invoke",
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        }
    }
}

/// Who performed an operation: a numbered client process, or the nemesis (fault injector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    Client(u64),
    Nemesis,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(p) => write!(f, "{p}"),
            Process::Nemesis => write!(f, "nemesis"),
        }
    }
}

/// A micro-operation of the `queue` workload (Jepsen's Kafka workload encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Invocation form `["send", key, value]`: append `value` to the partition of `key`.
    Send { key: u64, value: u64 },
    /// Completion form `["send", key, [offset, value]]`; offset `null` when unknown.
    Sent {
        key: u64,
        offset: Option<u64>,
        value: u64,
    },
    /// Invocation form `["poll"]`.
    Poll,
    /// Completion form `["poll", {"key": [[offset, value], ...]}]`.
    Polled(BTreeMap<u64, Vec<(u64, u64)>>),
}

impl Mop {
    /// The key and value of a send, in either form.
    pub fn send(&self) -> Option<(u64, u64)> {
        match *self {
            Mop::Send { key, value } | Mop::Sent { key, value, .. } => Some((key, value)),
            _ => None,
        }
    }
}

/// `produce` of the `log` workload: append `value` to `partition`; `offset` is known on `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Produce {
    pub partition: u64,
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// `read` of the `log` workload: the record at `offset` of `partition`; on `ok`, `value` is the
/// record or `null` when the offset is at or above the high watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Read {
    pub partition: u64,
    pub offset: u64,
    #[serde(default)]
    pub value: Option<u64>,
}

/// The typed `value` of an operation, decided by its `f`.
#[derive(Debug, Clone, PartialEq)]
pub enum OpValue {
    /// `send`, `poll` and `txn` of the queue workload: a list of micro-operations.
    Txn(Vec<Mop>),
    /// `assign` and `subscribe`: the keys the consumer should now read.
    Keys(Vec<u64>),
    Produce(Produce),
    Read(Read),
    /// Anything else (nemesis operations, `crash`, ...), kept as it was written.
    Other(Json),
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub index: u64,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    pub kind: OpType,
    pub process: Process,
    pub f: String,
    pub value: OpValue,
    pub error: Option<String>,
}

impl Op {
    pub fn is_client(&self) -> bool {
        matches!(self.process, Process::Client(_))
    }

    /// The micro-operations of a queue-workload op, empty otherwise.
    pub fn mops(&self) -> &[Mop] {
        match &self.value {
            OpValue::Txn(m) => m,
            _ => &[],
        }
    }
}

/// The raw JSON shape of a line; `Op` converts to and from it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    index: u64,
    time: u64,
    #[serde(rename = "type")]
    kind: OpType,
    process: Json,
    f: String,
    #[serde(default)]
    value: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Json>,
}

fn parse_process(j: &Json) -> Result<Process, String> {
    match j {
        Json::Number(n) => n
            .as_u64()
            .map(Process::Client)
            .ok_or_else(|| format!("process must be a non-negative integer, got {n}")),
        Json::String(s) if s == "nemesis" => Ok(Process::Nemesis),
        other => Err(format!(
            "process must be an integer or \"nemesis\", got {other}"
        )),
    }
}

fn as_u64(j: &Json, what: &str) -> Result<u64, String> {
    j.as_u64()
        .ok_or_else(|| format!("{what} must be a non-negative integer, got {j}"))
}

fn parse_mop(j: &Json) -> Result<Mop, String> {
    let arr = j
        .as_array()
        .ok_or_else(|| format!("micro-op must be an array, got {j}"))?;
    match (arr.first().and_then(Json::as_str), arr.len()) {
        (Some("poll"), 1) => Ok(Mop::Poll),
        (Some("poll"), 2) => {
            let obj = arr[1]
                .as_object()
                .ok_or_else(|| format!("poll result must be an object, got {}", arr[1]))?;
            let mut out = BTreeMap::new();
            for (k, recs) in obj {
                let key: u64 = k
                    .parse()
                    .map_err(|_| format!("poll key must be an integer, got {k:?}"))?;
                let recs = recs
                    .as_array()
                    .ok_or_else(|| format!("poll records must be an array, got {recs}"))?;
                let mut pairs = Vec::with_capacity(recs.len());
                for r in recs {
                    match r.as_array().map(Vec::as_slice) {
                        Some([o, v]) => pairs.push((as_u64(o, "offset")?, as_u64(v, "value")?)),
                        _ => return Err(format!("poll record must be [offset, value], got {r}")),
                    }
                }
                out.insert(key, pairs);
            }
            Ok(Mop::Polled(out))
        }
        (Some("send"), 3) => {
            let key = as_u64(&arr[1], "send key")?;
            match &arr[2] {
                Json::Array(ov) if ov.len() == 2 => Ok(Mop::Sent {
                    key,
                    offset: if ov[0].is_null() {
                        None
                    } else {
                        Some(as_u64(&ov[0], "send offset")?)
                    },
                    value: as_u64(&ov[1], "send value")?,
                }),
                v => Ok(Mop::Send {
                    key,
                    value: as_u64(v, "send value")?,
                }),
            }
        }
        _ => Err(format!(
            "micro-op must be [\"send\", k, v], [\"send\", k, [offset, v]], [\"poll\"] or [\"poll\", {{...}}], got {j}"
        )),
    }
}

fn mop_json(m: &Mop) -> Json {
    use serde_json::json;
    match m {
        Mop::Send { key, value } => json!(["send", key, value]),
        Mop::Sent { key, offset, value } => json!(["send", key, [offset, value]]),
        Mop::Poll => json!(["poll"]),
        Mop::Polled(map) => {
            let obj: serde_json::Map<String, Json> = map
                .iter()
                .map(|(k, recs)| (k.to_string(), json!(recs)))
                .collect();
            json!(["poll", obj])
        }
    }
}

fn parse_value(f: &str, j: Json) -> Result<OpValue, String> {
    match f {
        "send" | "poll" | "txn" => {
            let arr = j
                .as_array()
                .ok_or_else(|| format!("value of f={f} must be a list of micro-ops, got {j}"))?;
            Ok(OpValue::Txn(
                arr.iter().map(parse_mop).collect::<Result<_, _>>()?,
            ))
        }
        "assign" | "subscribe" => {
            let arr = j
                .as_array()
                .ok_or_else(|| format!("value of f={f} must be a list of keys, got {j}"))?;
            Ok(OpValue::Keys(
                arr.iter()
                    .map(|k| as_u64(k, "key"))
                    .collect::<Result<_, _>>()?,
            ))
        }
        "produce" => serde_json::from_value(j)
            .map(OpValue::Produce)
            .map_err(|e| format!("value of f=produce: {e}")),
        "read" => serde_json::from_value(j)
            .map(OpValue::Read)
            .map_err(|e| format!("value of f=read: {e}")),
        _ => Ok(OpValue::Other(j)),
    }
}

impl TryFrom<RawOp> for Op {
    type Error = String;
    fn try_from(r: RawOp) -> Result<Op, String> {
        let process = parse_process(&r.process)?;
        let value = if process == Process::Nemesis {
            OpValue::Other(r.value)
        } else {
            parse_value(&r.f, r.value)?
        };
        Ok(Op {
            index: r.index,
            time: r.time,
            kind: r.kind,
            process,
            f: r.f,
            value,
            error: r.error.map(|e| match e {
                Json::String(s) => s,
                other => other.to_string(),
            }),
        })
    }
}

impl Op {
    /// The op as the JSON object written on its history line.
    pub fn to_json(&self) -> Json {
        let value = match &self.value {
            OpValue::Txn(m) => Json::Array(m.iter().map(mop_json).collect()),
            OpValue::Keys(k) => serde_json::json!(k),
            OpValue::Produce(p) => serde_json::to_value(p).expect("plain struct"),
            OpValue::Read(r) => serde_json::to_value(r).expect("plain struct"),
            OpValue::Other(j) => j.clone(),
        };
        let raw = RawOp {
            index: self.index,
            time: self.time,
            kind: self.kind,
            process: match self.process {
                Process::Client(p) => Json::from(p),
                Process::Nemesis => Json::from("nemesis"),
            },
            f: self.f.clone(),
            value,
            error: self.error.clone().map(Json::String),
        };
        serde_json::to_value(raw).expect("plain struct")
    }
}

/// A history that failed to load: the 1-based line and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read history: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// A loaded history, with each invocation paired to its completion.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
    /// For each position in `ops`: the position of the matching completion (for an invocation)
    /// or invocation (for a completion). `None` for an invocation that never completed and for
    /// nemesis operations.
    pub pair: Vec<Option<usize>>,
}

impl History {
    /// Builds a history from ops in order, checking Jepsen's well-formedness rules: indices
    /// strictly increase, a client process has at most one operation in flight, every
    /// completion follows an invocation of the same `f` by the same process.
    /// On error, returns the position in `ops` (0-based) and the message.
    pub fn from_ops(ops: Vec<Op>) -> Result<History, (usize, String)> {
        let mut pair = vec![None; ops.len()];
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut last_index: Option<u64> = None;
        for (i, op) in ops.iter().enumerate() {
            if let Some(prev) = last_index {
                if op.index <= prev {
                    return Err((
                        i,
                        format!("index {} does not increase (previous {prev})", op.index),
                    ));
                }
            }
            last_index = Some(op.index);
            let Process::Client(p) = op.process else {
                continue;
            };
            match op.kind {
                OpType::Invoke => {
                    if let Some(&j) = open.get(&p) {
                        return Err((
                            i,
                            format!(
                                "process {p} invokes while its op at index {} is still in flight",
                                ops[j].index
                            ),
                        ));
                    }
                    open.insert(p, i);
                }
                _ => {
                    let Some(j) = open.remove(&p) else {
                        return Err((
                            i,
                            format!(
                                "{} completion by process {p} without an invocation",
                                op.kind.name()
                            ),
                        ));
                    };
                    if ops[j].f != op.f {
                        return Err((
                            i,
                            format!(
                                "completion f={} does not match invocation f={} (index {})",
                                op.f, ops[j].f, ops[j].index
                            ),
                        ));
                    }
                    pair[i] = Some(j);
                    pair[j] = Some(i);
                }
            }
        }
        Ok(History { ops, pair })
    }

    /// Reads a JSON Lines history. Blank lines are skipped; any malformed line is an error
    /// naming its line number.
    pub fn read(reader: impl BufRead) -> Result<History, HistoryError> {
        let mut ops = Vec::new();
        let mut lines = Vec::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let raw: RawOp = serde_json::from_str(&line).map_err(|e| HistoryError::Line {
                line: n + 1,
                message: e.to_string(),
            })?;
            let op = Op::try_from(raw).map_err(|message| HistoryError::Line {
                line: n + 1,
                message,
            })?;
            ops.push(op);
            lines.push(n + 1);
        }
        History::from_ops(ops).map_err(|(i, message)| HistoryError::Line {
            line: lines[i],
            message,
        })
    }

    pub fn read_path(path: &std::path::Path) -> Result<History, HistoryError> {
        let file = std::fs::File::open(path)?;
        History::read(std::io::BufReader::new(file))
    }

    /// Writes the history as JSON Lines.
    pub fn write(&self, mut out: impl Write) -> std::io::Result<()> {
        for op in &self.ops {
            serde_json::to_writer(&mut out, &op.to_json())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The completion of the invocation at `i`, if any.
    pub fn completion(&self, i: usize) -> Option<&Op> {
        self.pair[i].map(|j| &self.ops[j])
    }

    /// Pairs (invocation, completion) of client operations; `None` completion means the op was
    /// still in flight when the history ended, which Jepsen treats like `info`.
    pub fn client_pairs(&self) -> impl Iterator<Item = (&Op, Option<&Op>)> + '_ {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.is_client() && op.kind == OpType::Invoke)
            .map(move |(i, op)| (op, self.completion(i)))
    }

    pub fn nemesis_ops(&self) -> usize {
        self.ops.iter().filter(|o| !o.is_client()).count()
    }
}

/// Builds histories in tests, generators and workers: assigns `index` in order.
#[derive(Debug, Default)]
pub struct Recorder {
    ops: Vec<Op>,
}

impl Recorder {
    pub fn push(
        &mut self,
        time: u64,
        kind: OpType,
        process: Process,
        f: &str,
        value: OpValue,
    ) -> u64 {
        let index = self.ops.len() as u64;
        self.ops.push(Op {
            index,
            time,
            kind,
            process,
            f: f.to_string(),
            value,
            error: None,
        });
        index
    }

    pub fn set_error(&mut self, index: u64, error: &str) {
        self.ops[index as usize].error = Some(error.to_string());
    }

    /// Finishes the history; panics only if the recorder was used against Jepsen's rules,
    /// which is a bug in the caller (generators and tests), never input.
    pub fn finish(self) -> History {
        History::from_ops(self.ops).unwrap_or_else(|(i, m)| panic!("bad recorded op {i}: {m}"))
    }
}

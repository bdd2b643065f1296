//! Simulated executions of a correct in-memory Kafka-like log, with random concurrency,
//! failures and crashes, recorded as real histories. Their purpose is soundness: every history
//! they produce is valid by construction (each operation takes effect atomically at one instant
//! between its invocation and its completion), so the checkers must accept all of them; tests
//! then inject anomalies into them. Benchmarks use them to make large histories.
//!
//! Same seed, same history.

use crate::history::{History, Mop, OpType, OpValue, Process, Produce, Read, Recorder};
use std::collections::{BTreeMap, HashMap};

/// A small deterministic PRNG (splitmix64), so the harness needs no RNG dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// Shape of a simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Client operations to invoke (not counting final reads).
    pub ops: usize,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Partitions (log workload) or keys (queue workload).
    pub partitions: u64,
    /// Probability that an operation crashes its client (completes `info`).
    pub crash: f64,
    /// Probability that a send/produce fails cleanly (completes `fail`, no effect).
    pub fail: f64,
    /// Whether to interleave nemesis operations (which the checkers must ignore).
    pub nemesis: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            ops: 200,
            concurrency: 5,
            partitions: 2,
            crash: 0.03,
            fail: 0.03,
            nemesis: true,
        }
    }
}

/// Where a worker's current operation is.
enum Stage<R> {
    Idle,
    /// Invoked; has not taken effect yet.
    Invoked {
        f: &'static str,
        value: OpValue,
    },
    /// Took effect (or, for `Failed`, definitely did not); waiting to complete.
    Done {
        f: &'static str,
        kind: OpType,
        result: R,
    },
}

struct Clock(u64);

impl Clock {
    fn tick(&mut self, rng: &mut Rng) -> u64 {
        self.0 += 1 + rng.below(1000);
        self.0
    }
}

fn maybe_nemesis(
    cfg: &SimConfig,
    rng: &mut Rng,
    rec: &mut Recorder,
    clock: &mut Clock,
    on: &mut bool,
) {
    if cfg.nemesis && rng.chance(0.01) {
        let f = if *on {
            "stop-partition"
        } else {
            "start-partition"
        };
        let v = if *on {
            serde_json::Value::Null
        } else {
            serde_json::json!("majority")
        };
        rec.push(
            clock.tick(rng),
            OpType::Invoke,
            Process::Nemesis,
            f,
            OpValue::Other(v.clone()),
        );
        rec.push(
            clock.tick(rng),
            OpType::Info,
            Process::Nemesis,
            f,
            OpValue::Other(v),
        );
        *on = !*on;
    }
}

/// A `log` workload history: produces and reads on `cfg.partitions` linearizable logs.
pub fn log_history(cfg: &SimConfig) -> History {
    let mut rng = Rng::new(cfg.seed);
    let mut rec = Recorder::default();
    let mut clock = Clock(0);
    let mut logs: Vec<Vec<u64>> = vec![Vec::new(); cfg.partitions.max(1) as usize];
    let n = cfg.concurrency.max(1);
    let mut procs: Vec<u64> = (0..n as u64).collect();
    let mut stages: Vec<Stage<OpValue>> = (0..n).map(|_| Stage::Idle).collect();
    let (mut invoked, mut next_value, mut nemesis_on) = (0usize, 0u64, false);
    // Bounded: each op takes at most 3 steps of its worker; idle picks are bounded by the
    // budget check below.
    let max_steps = (cfg.ops + n) * 3 * n + 1000;
    for _ in 0..max_steps {
        if invoked >= cfg.ops && stages.iter().all(|s| matches!(s, Stage::Idle)) {
            break;
        }
        maybe_nemesis(cfg, &mut rng, &mut rec, &mut clock, &mut nemesis_on);
        let w = rng.below(n as u64) as usize;
        let p = Process::Client(procs[w]);
        stages[w] = match std::mem::replace(&mut stages[w], Stage::Idle) {
            Stage::Idle if invoked < cfg.ops => {
                invoked += 1;
                let part = rng.below(logs.len() as u64);
                let (f, value) = if rng.chance(0.5) {
                    next_value += 1;
                    let v = OpValue::Produce(Produce {
                        partition: part,
                        value: next_value,
                        offset: None,
                    });
                    ("produce", v)
                } else {
                    let len = logs[part as usize].len() as u64;
                    let offset = rng.below(len + 2);
                    let v = OpValue::Read(Read {
                        partition: part,
                        offset,
                        value: None,
                    });
                    ("read", v)
                };
                rec.push(clock.tick(&mut rng), OpType::Invoke, p, f, value.clone());
                Stage::Invoked { f, value }
            }
            Stage::Idle => Stage::Idle,
            Stage::Invoked { f, value } => {
                if f == "produce" && rng.chance(cfg.fail) {
                    Stage::Done {
                        f,
                        kind: OpType::Fail,
                        result: value,
                    }
                } else if rng.chance(cfg.crash / 2.0) {
                    // Crashes before taking effect.
                    Stage::Done {
                        f,
                        kind: OpType::Info,
                        result: value,
                    }
                } else {
                    let result = match value {
                        OpValue::Produce(mut pr) => {
                            let log = &mut logs[pr.partition as usize];
                            pr.offset = Some(log.len() as u64);
                            log.push(pr.value);
                            OpValue::Produce(pr)
                        }
                        OpValue::Read(mut r) => {
                            r.value = logs[r.partition as usize].get(r.offset as usize).copied();
                            OpValue::Read(r)
                        }
                        other => other,
                    };
                    let kind = if rng.chance(cfg.crash / 2.0) {
                        OpType::Info
                    } else {
                        OpType::Ok
                    };
                    Stage::Done { f, kind, result }
                }
            }
            Stage::Done { f, kind, result } => {
                let result = match (kind, result) {
                    // An indeterminate op reports only what was asked.
                    (OpType::Info | OpType::Fail, OpValue::Produce(mut pr)) => {
                        pr.offset = None;
                        OpValue::Produce(pr)
                    }
                    (OpType::Info | OpType::Fail, OpValue::Read(mut r)) => {
                        r.value = None;
                        OpValue::Read(r)
                    }
                    (_, r) => r,
                };
                let i = rec.push(clock.tick(&mut rng), kind, p, f, result);
                if kind == OpType::Info {
                    rec.set_error(i, "timeout");
                    procs[w] += n as u64;
                } else if kind == OpType::Fail {
                    rec.set_error(i, "not-leader-or-follower");
                }
                Stage::Idle
            }
        };
    }
    rec.finish()
}

/// A consumer's state in the queue simulation.
#[derive(Default, Clone)]
struct Consumer {
    assigned: Vec<u64>,
    /// key -> next position in that key's record list.
    position: HashMap<u64, usize>,
}

/// The shared broker state of the queue simulation: per key, (offset, value) records.
/// Offsets have gaps, like transaction markers leave in Kafka.
struct Broker {
    records: Vec<Vec<(u64, u64)>>,
    next_offset: Vec<u64>,
}

impl Broker {
    fn append(&mut self, key: u64, value: u64) -> u64 {
        let k = key as usize;
        let o = self.next_offset[k];
        self.records[k].push((o, value));
        self.next_offset[k] += 1;
        o
    }

    fn poll(&self, c: &mut Consumer, max: usize) -> BTreeMap<u64, Vec<(u64, u64)>> {
        let mut out = BTreeMap::new();
        for &k in &c.assigned {
            let pos = c.position.entry(k).or_insert(0);
            let recs = &self.records[k as usize];
            let end = (*pos + max).min(recs.len());
            if end > *pos {
                out.insert(k, recs[*pos..end].to_vec());
                *pos = end;
            }
        }
        out
    }
}

/// A `queue` workload history in Jepsen's Kafka encoding: sends, polls, transactions,
/// assigns, crashes, and final polls that read every key to its end.
pub fn queue_history(cfg: &SimConfig) -> History {
    let mut rng = Rng::new(cfg.seed);
    let mut rec = Recorder::default();
    let mut clock = Clock(0);
    let keys = cfg.partitions.max(1);
    let mut broker = Broker {
        records: vec![Vec::new(); keys as usize],
        next_offset: vec![0; keys as usize],
    };
    let n = cfg.concurrency.max(1);
    let mut procs: Vec<u64> = (0..n as u64).collect();
    let mut consumers: Vec<Consumer> = vec![Consumer::default(); n];
    let mut stages: Vec<Stage<Vec<Mop>>> = (0..n).map(|_| Stage::Idle).collect();
    let (mut invoked, mut next_value, mut nemesis_on) = (0usize, 0u64, false);
    let max_steps = (cfg.ops + n) * 3 * n + 1000;
    for _ in 0..max_steps {
        if invoked >= cfg.ops && stages.iter().all(|s| matches!(s, Stage::Idle)) {
            break;
        }
        maybe_nemesis(cfg, &mut rng, &mut rec, &mut clock, &mut nemesis_on);
        let w = rng.below(n as u64) as usize;
        let p = Process::Client(procs[w]);
        stages[w] = match std::mem::replace(&mut stages[w], Stage::Idle) {
            Stage::Idle if invoked < cfg.ops => {
                invoked += 1;
                let roll = rng.below(10);
                if roll == 0 || consumers[w].assigned.is_empty() && roll < 4 {
                    // assign: takes effect at once (client-local), completes ok.
                    let mut ks: Vec<u64> = (0..keys).filter(|_| rng.chance(0.6)).collect();
                    if ks.is_empty() {
                        ks.push(rng.below(keys));
                    }
                    let t = clock.tick(&mut rng);
                    rec.push(t, OpType::Invoke, p, "assign", OpValue::Keys(ks.clone()));
                    let c = &mut consumers[w];
                    c.position.retain(|k, _| ks.contains(k));
                    c.assigned = ks.clone();
                    rec.push(
                        clock.tick(&mut rng),
                        OpType::Ok,
                        p,
                        "assign",
                        OpValue::Keys(ks),
                    );
                    Stage::Idle
                } else {
                    let mut mops = Vec::new();
                    let f = match roll {
                        1..=4 => "send",
                        5..=7 => "poll",
                        _ => "txn",
                    };
                    if f != "poll" {
                        let sends = 1 + rng.below(3);
                        let k0 = rng.below(keys);
                        for _ in 0..sends {
                            next_value += 1;
                            let key = if rng.chance(0.5) { k0 } else { rng.below(keys) };
                            mops.push(Mop::Send {
                                key,
                                value: next_value,
                            });
                        }
                    }
                    if f != "send" {
                        mops.push(Mop::Poll);
                    }
                    rec.push(
                        clock.tick(&mut rng),
                        OpType::Invoke,
                        p,
                        f,
                        OpValue::Txn(mops.clone()),
                    );
                    Stage::Invoked {
                        f,
                        value: OpValue::Txn(mops),
                    }
                }
            }
            Stage::Idle => Stage::Idle,
            Stage::Invoked { f, value } => {
                let OpValue::Txn(mops) = value else {
                    unreachable!("queue ops are txns")
                };
                let sends = mops.iter().any(|m| m.send().is_some());
                if sends && rng.chance(cfg.fail) {
                    Stage::Done {
                        f,
                        kind: OpType::Fail,
                        result: mops,
                    }
                } else if rng.chance(cfg.crash / 2.0) {
                    Stage::Done {
                        f,
                        kind: OpType::Info,
                        result: mops,
                    }
                } else {
                    let mut out = Vec::with_capacity(mops.len());
                    for m in &mops {
                        out.push(match *m {
                            Mop::Send { key, value } => Mop::Sent {
                                key,
                                offset: Some(broker.append(key, value)),
                                value,
                            },
                            Mop::Poll => Mop::Polled(broker.poll(&mut consumers[w], 4)),
                            ref other => other.clone(),
                        });
                    }
                    if sends && rng.chance(0.2) {
                        // A transaction marker (or aborted batch) takes offsets nobody reads.
                        let k = rng.below(keys) as usize;
                        broker.next_offset[k] += 1;
                    }
                    let kind = if rng.chance(cfg.crash / 2.0) {
                        OpType::Info
                    } else {
                        OpType::Ok
                    };
                    // A crash loses what the op observed: report the invocation.
                    let result = if kind == OpType::Info { mops } else { out };
                    Stage::Done { f, kind, result }
                }
            }
            Stage::Done { f, kind, result } => {
                let i = rec.push(clock.tick(&mut rng), kind, p, f, OpValue::Txn(result));
                if kind == OpType::Info {
                    rec.set_error(i, "timeout");
                    procs[w] += n as u64;
                    consumers[w] = Consumer::default();
                } else if kind == OpType::Fail {
                    rec.set_error(i, "aborted");
                }
                Stage::Idle
            }
        };
    }
    // Final reads: one fresh consumer assigns every key and polls until caught up.
    let p = Process::Client(procs.iter().max().copied().unwrap_or(0) + n as u64);
    let all: Vec<u64> = (0..keys).collect();
    rec.push(
        clock.tick(&mut rng),
        OpType::Invoke,
        p,
        "assign",
        OpValue::Keys(all.clone()),
    );
    rec.push(
        clock.tick(&mut rng),
        OpType::Ok,
        p,
        "assign",
        OpValue::Keys(all.clone()),
    );
    let mut c = Consumer {
        assigned: all,
        position: HashMap::new(),
    };
    let total: usize = broker.records.iter().map(Vec::len).sum();
    for _ in 0..=total / 16 + 1 {
        let got = broker.poll(&mut c, 16);
        if got.is_empty() {
            break;
        }
        rec.push(
            clock.tick(&mut rng),
            OpType::Invoke,
            p,
            "poll",
            OpValue::Txn(vec![Mop::Poll]),
        );
        rec.push(
            clock.tick(&mut rng),
            OpType::Ok,
            p,
            "poll",
            OpValue::Txn(vec![Mop::Polled(got)]),
        );
    }
    rec.finish()
}

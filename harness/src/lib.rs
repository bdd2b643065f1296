//! kcheck's Jepsen-style harness: fault injection, workloads, histories and checkers.
//!
//! What stands alone (no cluster needed): the history format (`history`, `edn`), the checkers
//! (`linear` for the `log` workload, `queue` for Kafka queue anomalies), `analyze` which runs
//! them, simulated executions of an in-memory log (`sim`) used by soundness tests and
//! benchmarks, the HTML report (`report`), the fault-injecting TCP proxy (`proxy`) and the `kcheck analyze` command (`cli`).

pub mod analyze;
pub mod cleanup;
pub mod cli;
pub mod cluster_checks;
pub mod conform;
pub mod edn;
pub mod evidence;
pub mod history;
pub mod kafka;
pub mod lazyfs;
pub mod leaders;
pub mod linear;
pub mod nemesis;
pub mod plots;
pub mod proxy;
pub mod queue;
pub mod replay_cluster;
pub mod report;
pub mod run;
pub mod sim;
pub mod system;
pub mod test_cli;
pub mod zookeeper;

use serde::Serialize;

/// The outcome of a check. Jepsen's `:valid?` is true, false or `:unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    /// The checker gave up (time limit): nothing is known.
    Unknown,
}

impl Verdict {
    /// Invalid if any part is invalid, else unknown if any part is unknown, else valid.
    pub fn combine(parts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut out = Verdict::Valid;
        for v in parts {
            match v {
                Verdict::Invalid => return Verdict::Invalid,
                Verdict::Unknown => out = Verdict::Unknown,
                Verdict::Valid => {}
            }
        }
        out
    }

    /// kcheck's exit codes: 0 valid, 1 anomaly, 2 unknown.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }
}

//! Recorded counterexamples: the JSON files under `specs/traces/` that `kcheck replay` re-runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const TRACE_FORMAT: &str = "kcheck-trace/1";

/// A path through a model, with enough context (model, bug flags, bounds) to rebuild the model
/// and re-run it, and a human rendering of every state so a change in the model that alters
/// the trace is noticed on replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub format: String,
    pub model: String,
    pub bugs: Vec<String>,
    pub bounds: BTreeMap<String, u32>,
    /// The property this trace is a counterexample (or example) of.
    pub property: String,
    /// `counterexample` or `example`.
    pub kind: String,
    pub init: Vec<String>,
    pub steps: Vec<TraceStep>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    /// The model's action, as serde writes it.
    pub action: serde_json::Value,
    pub description: String,
    /// The state after the step.
    pub state: Vec<String>,
}

impl Trace {
    /// Numbered steps for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::from("   initial state\n");
        for l in &self.init {
            out.push_str(&format!("       {l}\n"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            out.push_str(&format!("{:>3}. {}\n", i + 1, s.description));
            for l in &s.state {
                out.push_str(&format!("       {l}\n"));
            }
        }
        out
    }
}

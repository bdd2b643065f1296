//! The checks every model's test suite makes, written once.
//!
//! Each model is tested the same way: the correct protocol passes exhaustively at its default
//! bounds, every bug flag is caught as its documented property, every recorded counterexample
//! in `specs/traces/` replays to that violation (and is rejected, or harmless, without its
//! flag), a tampered trace is refused, and symmetry reduction changes the state count but not
//! the verdicts. The model-specific parts (which flag, which scenario, which hand-made state)
//! stay in `models/tests/<model>.rs`; this module holds the parts that would otherwise be
//! repeated in every one of them.

use std::path::PathBuf;

use crate::catalog::{shortest_violation, Config, KcheckModel, ModelDef, Report};
use crate::engine::{CheckOptions, Stop};
use crate::trace::Trace;

/// One catalog model under test.
#[derive(Clone, Copy)]
pub struct Suite {
    pub model: &'static dyn ModelDef,
}

impl Suite {
    /// The catalog model `name`; panics (in a test) when the catalog lacks it.
    pub fn new(name: &str) -> Suite {
        Suite {
            model: crate::find(name).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// A validated configuration: the default bounds overridden by `bounds`, with `bugs` on.
    pub fn config(&self, bugs: &[&str], bounds: &[(&str, u32)]) -> Config {
        let bugs: Vec<String> = bugs.iter().map(|b| b.to_string()).collect();
        let bounds: Vec<(String, u32)> = bounds.iter().map(|(b, v)| (b.to_string(), *v)).collect();
        self.model
            .config(&bugs, &bounds)
            .unwrap_or_else(|e| panic!("{}: {e}", self.model.name()))
    }

    /// Check the correct protocol exhaustively at `bounds` (over the defaults): the state
    /// space is exhausted, larger than `min_states` (a vacuous model would be tiny), every
    /// `always` property holds and every `sometimes` property is reached.
    pub fn assert_passes_exhaustively(
        &self,
        bounds: &[(&str, u32)],
        stop: Stop,
        min_states: usize,
    ) -> Report {
        let options = CheckOptions {
            stop,
            ..CheckOptions::default()
        };
        let report = self
            .model
            .check(&self.config(&[], bounds), &options, &|_| {});
        assert!(report.complete, "the bounds are exhausted");
        assert!(
            report.unique_states > min_states,
            "the state space is not trivial ({} states)",
            report.unique_states
        );
        for r in &report.results {
            let expected = if r.kind == "sometimes" {
                "reached"
            } else {
                "holds"
            };
            assert_eq!(r.status, expected, "{} should be {expected}", r.name);
        }
        assert!(!report.failed());
        report
    }

    /// `specs/traces/<model>-<flag>.json`.
    pub fn trace_path(&self, flag: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../specs/traces")
            .join(format!("{}-{flag}.json", self.model.name()))
    }

    pub fn read_trace(&self, flag: &str) -> Trace {
        let path = self.trace_path(flag);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every bug flag has a recorded trace, recorded with that flag alone, for the property
    /// the flag is documented to violate, and replaying it ends in that violation.
    pub fn assert_traces_replay_to_their_violation(&self) {
        for flag in self.model.bug_flags() {
            let trace = self.read_trace(flag.name);
            assert_eq!(trace.bugs, vec![flag.name.to_string()], "{}", flag.name);
            assert_eq!(trace.property, flag.violates, "{}", flag.name);
            let report = self
                .model
                .replay(&trace)
                .unwrap_or_else(|e| panic!("{}: {e}", flag.name));
            assert!(
                report.violated.contains(&flag.violates),
                "{} ends in a violation of {} (got {:?})",
                flag.name,
                flag.violates,
                report.violated
            );
        }
    }

    /// Without its flag, the trace of each of `flags` is not a behaviour of the correct
    /// protocol: some step is disabled or reaches a different state. With `may_hold`, a trace
    /// that does replay must at least end with every property holding.
    pub fn assert_correct_protocol_rejects(&self, flags: &[&str], may_hold: bool) {
        for flag in flags {
            let mut trace = self.read_trace(flag);
            trace.bugs.clear();
            match self.model.replay(&trace) {
                Err(e) => assert!(
                    e.contains("different state")
                        || e.contains("not enabled")
                        || e.contains("changes nothing")
                        || e.contains("not an initial state"),
                    "{flag}: {e}"
                ),
                Ok(report) => assert!(
                    may_hold && report.violated.is_empty(),
                    "{flag} replays without its flag (violated: {:?})",
                    report.violated
                ),
            }
        }
    }

    /// [`Suite::assert_correct_protocol_rejects`] for every bug flag of the model.
    pub fn assert_correct_protocol_rejects_every_trace(&self, may_hold: bool) {
        let flags: Vec<&str> = self.model.bug_flags().iter().map(|f| f.name).collect();
        self.assert_correct_protocol_rejects(&flags, may_hold);
    }

    /// Editing one recorded state of `flag`'s trace makes the replay fail, naming the step.
    pub fn assert_replay_detects_tampering(&self, flag: &str, state_line: usize) {
        let mut trace = self.read_trace(flag);
        trace.steps[0].state[state_line].push_str(" tampered");
        let err = self
            .model
            .replay(&trace)
            .expect_err("a tampered trace is refused");
        assert!(err.contains("different state"), "{err}");
    }

    /// Symmetry reduction visits fewer states at `bounds` and reaches the same verdicts.
    pub fn assert_symmetry_keeps_verdicts(&self, bounds: &[(&str, u32)], stop: Stop) {
        let config = self.config(&[], bounds);
        let options = CheckOptions {
            stop,
            ..CheckOptions::default()
        };
        let with = self.model.check(&config, &options, &|_| {});
        let without = self.model.check(
            &config,
            &CheckOptions {
                symmetry: false,
                ..options
            },
            &|_| {},
        );
        assert!(
            with.unique_states < without.unique_states,
            "{} vs {}",
            with.unique_states,
            without.unique_states
        );
        let statuses = |r: &Report| r.results.iter().map(|x| x.status).collect::<Vec<_>>();
        assert_eq!(statuses(&with), statuses(&without));
    }
}

/// The length of the shortest counterexample of `property` in `model`; panics when there is
/// none (the test expected the checker to catch it).
pub fn violation_steps<M: KcheckModel>(model: &M, property: &str) -> usize {
    match shortest_violation(model, property) {
        Ok(path) => path.steps.len(),
        Err(e) => panic!("{}: {e}", M::NAME),
    }
}

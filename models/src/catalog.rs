//! The model catalog: one object-safe entry per model, so the CLI, the tests and the benchmark
//! treat every model alike (`kcheck models`, `check`, `explore`, `replay`).

use crate::engine::{self, CheckOptions, Path, Progress, Verdict};
use crate::property::{Property, PropertyKind};
use crate::trace::{Trace, TraceStep, TRACE_FORMAT};
use serde::de::DeserializeOwned;
use serde::Serialize;
use stateright::Model;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::SocketAddr;

/// A numeric bound of a model (how many records, epochs, crashes... it explores).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Bound {
    pub name: &'static str,
    pub meaning: &'static str,
    /// Used by `kcheck check` and by the tests: exhaustive in seconds to minutes on 2 cores.
    pub default: u32,
    /// Used by `kcheck gate` / release checks: larger, still exhaustive.
    pub release: u32,
    pub min: u32,
    pub max: u32,
}

/// A switchable historical bug: a protocol choice Kafka once made (or a tempting mistake)
/// whose counterexample the checker must find.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BugFlag {
    pub name: &'static str,
    pub meaning: &'static str,
    /// The KIP or JIRA the bug comes from.
    pub source: &'static str,
    /// The property whose counterexample it produces.
    pub violates: &'static str,
}

/// A validated configuration: known bug flags and every bound set (defaults filled in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Config {
    pub bugs: Vec<String>,
    pub bounds: BTreeMap<String, u32>,
}

impl Config {
    pub fn has_bug(&self, name: &str) -> bool {
        self.bugs.iter().any(|b| b == name)
    }

    /// The model's own bug-flag values that this configuration switches on, from the model's
    /// list of every flag and its name function (`config.bugs(&KraftBug::ALL, KraftBug::name)`).
    pub fn bugs<B: Copy, C: FromIterator<B>>(&self, all: &[B], name: fn(B) -> &'static str) -> C {
        all.iter()
            .copied()
            .filter(|&b| self.has_bug(name(b)))
            .collect()
    }

    /// The value of a bound. Panics on a name the model did not declare (a programming error:
    /// user input is validated by [`ModelDef::config`]).
    pub fn bound(&self, name: &str) -> u32 {
        *self
            .bounds
            .get(name)
            .unwrap_or_else(|| panic!("bound '{name}' is not declared by this model"))
    }
}

/// What a property's verdict was, for people and for JSON.
#[derive(Clone, Debug, Serialize)]
pub struct PropertyResult {
    pub name: &'static str,
    pub meaning: &'static str,
    pub kind: &'static str,
    /// `holds`, `violated`, `reached`, `unreachable` or `unknown`.
    pub status: &'static str,
    /// Whether this result makes the check fail.
    pub failed: bool,
    pub trace: Option<Trace>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: &'static str,
    pub config: Config,
    pub unique_states: usize,
    pub states_generated: usize,
    pub max_depth: usize,
    pub seconds: f64,
    pub states_per_second: f64,
    pub complete: bool,
    pub symmetry: bool,
    pub threads: usize,
    pub results: Vec<PropertyResult>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.results.iter().any(|r| r.failed)
    }
    pub fn result(&self, name: &str) -> Option<&PropertyResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// The outcome of replaying a recorded trace.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub steps: usize,
    /// The `always` properties the final state violates, and the `always-can-reach` ones whose
    /// goal is unreachable from it (empty: all hold).
    pub violated: Vec<&'static str>,
    /// Human-readable numbered steps.
    pub rendered: String,
}

/// Per-model information and operations, object-safe.
pub trait ModelDef: Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn bounds(&self) -> &'static [Bound];
    fn bug_flags(&self) -> &'static [BugFlag];
    /// (name, kind, meaning) of each property.
    fn properties(&self) -> Vec<(&'static str, &'static str, &'static str)>;
    fn check(
        &self,
        config: &Config,
        options: &CheckOptions,
        on_progress: &(dyn Fn(&Progress) + Sync),
    ) -> Report;
    fn replay(&self, trace: &Trace) -> Result<ReplayReport, String>;
    /// Serve stateright's Explorer on `addr` (blocks until the process is stopped).
    fn explore(&self, config: &Config, addr: SocketAddr) -> Result<(), String>;
    /// A seeded random walk checking every `always` property; `Err` carries the violation.
    fn random_walk(&self, config: &Config, seed: u64, steps: usize) -> Result<usize, Trace>;

    /// Validate user input into a [`Config`], with errors that name the fix.
    fn config(&self, bugs: &[String], bounds: &[(String, u32)]) -> Result<Config, String> {
        self.config_with(bugs, bounds, false)
    }

    /// As [`ModelDef::config`], starting from the release bounds instead of the defaults.
    fn config_with(
        &self,
        bugs: &[String],
        bounds: &[(String, u32)],
        release: bool,
    ) -> Result<Config, String> {
        let known_bugs: Vec<&str> = self.bug_flags().iter().map(|b| b.name).collect();
        let mut cfg = Config {
            bugs: Vec::new(),
            bounds: BTreeMap::new(),
        };
        for bug in bugs {
            if !known_bugs.contains(&bug.as_str()) {
                return Err(format!(
                    "unknown bug flag '{bug}' for model {} (known: {})",
                    self.name(),
                    known_bugs.join(", ")
                ));
            }
            if !cfg.bugs.contains(bug) {
                cfg.bugs.push(bug.clone());
            }
        }
        cfg.bugs.sort();
        for b in self.bounds() {
            cfg.bounds.insert(
                b.name.to_string(),
                if release { b.release } else { b.default },
            );
        }
        for (name, value) in bounds {
            let Some(b) = self.bounds().iter().find(|b| b.name == name) else {
                let known: Vec<&str> = self.bounds().iter().map(|b| b.name).collect();
                return Err(format!(
                    "unknown bound '{name}' for model {} (known: {})",
                    self.name(),
                    known.join(", ")
                ));
            };
            if *value < b.min || *value > b.max {
                return Err(format!(
                    "bound '{name}' of model {} must be between {} and {} (got {value})",
                    self.name(),
                    b.min,
                    b.max
                ));
            }
            cfg.bounds.insert(name.clone(), *value);
        }
        Ok(cfg)
    }
}

/// What a stateright model adds to become a kcheck model.
pub trait KcheckModel:
    Model<
        State: Hash + Eq + Clone + Debug + Send + Sync,
        Action: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync,
    > + Sized
    + Send
    + Sync
    + 'static
{
    const NAME: &'static str;
    const ABOUT: &'static str;
    fn bounds() -> &'static [Bound];
    fn bug_flags() -> &'static [BugFlag];
    /// Build the model from a validated configuration.
    fn from_config(config: &Config) -> Self;
    /// Every named property, declared beside the model.
    fn named_properties() -> Vec<Property<Self>>;
    /// The symmetry class representative of a state (identity: no symmetry).
    fn representative(&self, state: &Self::State) -> Self::State {
        state.clone()
    }
    /// One line saying who did what, in Kafka's vocabulary.
    fn describe_action(&self, before: &Self::State, action: &Self::Action) -> String;
    /// The state after a step, as lines (per replica: log, LEO, HW, leader epoch, ISR...).
    fn describe_state(&self, state: &Self::State) -> Vec<String>;
}

/// The shortest counterexample of one named `always` property of `model`, checked alone (what
/// each bug flag's test asks), or the verdict it got instead. Every model's tests use this
/// rather than repeating the search; the path is checked to end in a violating state.
/// Panics on a name the model does not declare as `always` (a mistake in the test).
pub fn shortest_violation<M: KcheckModel>(
    model: &M,
    property: &str,
) -> Result<Path<M::State, M::Action>, String> {
    let properties: Vec<Property<M>> = M::named_properties()
        .into_iter()
        .filter(|p| p.name == property)
        .collect();
    let [only] = properties.as_slice() else {
        panic!("{property} is not a property of model {}", M::NAME);
    };
    let PropertyKind::Always(holds) = only.kind else {
        panic!(
            "{property} of model {} is not an `always` property",
            M::NAME
        );
    };
    let outcome = engine::check(
        model,
        &properties,
        M::representative,
        &CheckOptions::default(),
        &|_| {},
    );
    match outcome.verdict(property) {
        Some(Verdict::Violated(path)) => {
            assert!(
                !holds(model, path.last_state()),
                "the counterexample of {property} ends in a violating state"
            );
            Ok(path.clone())
        }
        other => Err(format!("no counterexample of {property}: {other:?}")),
    }
}

/// The catalog entry of a [`KcheckModel`].
pub struct Entry<M>(PhantomData<fn() -> M>);

impl<M> Entry<M> {
    pub const NEW: Self = Entry(PhantomData);
}

fn to_trace<M: KcheckModel>(
    model: &M,
    config: &Config,
    property: &str,
    kind: &str,
    path: &Path<M::State, M::Action>,
) -> Trace {
    let mut before = &path.init;
    let mut steps = Vec::with_capacity(path.steps.len());
    for (action, after) in &path.steps {
        steps.push(TraceStep {
            action: serde_json::to_value(action).expect("actions serialize to JSON"),
            description: model.describe_action(before, action),
            state: model.describe_state(after),
        });
        before = after;
    }
    Trace {
        format: TRACE_FORMAT.to_string(),
        model: M::NAME.to_string(),
        bugs: config.bugs.clone(),
        bounds: config.bounds.clone(),
        property: property.to_string(),
        kind: kind.to_string(),
        init: model.describe_state(&path.init),
        steps,
    }
}

impl<M: KcheckModel> ModelDef for Entry<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }
    fn about(&self) -> &'static str {
        M::ABOUT
    }
    fn bounds(&self) -> &'static [Bound] {
        M::bounds()
    }
    fn bug_flags(&self) -> &'static [BugFlag] {
        M::bug_flags()
    }
    fn properties(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        M::named_properties()
            .iter()
            .map(|p| (p.name, p.kind_name(), p.meaning))
            .collect()
    }

    fn check(
        &self,
        config: &Config,
        options: &CheckOptions,
        on_progress: &(dyn Fn(&Progress) + Sync),
    ) -> Report {
        let model = M::from_config(config);
        let properties = M::named_properties();
        let outcome = engine::check(&model, &properties, M::representative, options, on_progress);
        let results = properties
            .iter()
            .zip(outcome.verdicts)
            .map(|(p, (_, verdict))| {
                let sometimes = matches!(p.kind, PropertyKind::Sometimes(_));
                let failed = verdict.is_failure(sometimes);
                let (status, trace) = match &verdict {
                    Verdict::Holds if sometimes => ("unreachable", None),
                    Verdict::Holds => ("holds", None),
                    Verdict::Violated(path) => (
                        "violated",
                        Some(to_trace(&model, config, p.name, "counterexample", path)),
                    ),
                    Verdict::Reached(path) => (
                        "reached",
                        Some(to_trace(&model, config, p.name, "example", path)),
                    ),
                    Verdict::Unknown => ("unknown", None),
                };
                PropertyResult {
                    name: p.name,
                    meaning: p.meaning,
                    kind: p.kind_name(),
                    status,
                    failed,
                    trace,
                }
            })
            .collect();
        Report {
            model: M::NAME,
            config: config.clone(),
            unique_states: outcome.progress.unique_states,
            states_generated: outcome.progress.states_generated,
            max_depth: outcome.progress.depth,
            seconds: outcome.progress.elapsed.as_secs_f64(),
            states_per_second: outcome.progress.states_per_second(),
            complete: outcome.complete,
            symmetry: options.symmetry,
            threads: options.threads,
            results,
        }
    }

    fn replay(&self, trace: &Trace) -> Result<ReplayReport, String> {
        if trace.format != TRACE_FORMAT {
            return Err(format!(
                "unsupported trace format '{}' (this kcheck reads '{TRACE_FORMAT}')",
                trace.format
            ));
        }
        let bounds: Vec<(String, u32)> =
            trace.bounds.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let config = self.config(&trace.bugs, &bounds)?;
        let model = M::from_config(&config);
        let inits = model.init_states();
        let mut state = inits
            .into_iter()
            .find(|s| model.describe_state(s) == trace.init)
            .ok_or("the trace's initial state is not an initial state of the model")?;
        let mut rendered = format!("initial state\n{}\n", indent(&trace.init));
        let mut actions = Vec::new();
        for (i, step) in trace.steps.iter().enumerate() {
            let n = i + 1;
            let action: M::Action = serde_json::from_value(step.action.clone())
                .map_err(|e| format!("step {n}: not an action of model {}: {e}", M::NAME))?;
            actions.clear();
            model.actions(&state, &mut actions);
            if !actions.contains(&action) {
                return Err(format!(
                    "step {n}: '{}' is not enabled in the state before it",
                    model.describe_action(&state, &action)
                ));
            }
            let description = model.describe_action(&state, &action);
            let next = model
                .next_state(&state, action)
                .ok_or_else(|| format!("step {n}: the action changes nothing"))?;
            let lines = model.describe_state(&next);
            if lines != step.state {
                return Err(format!(
                    "step {n}: the model reaches a different state than the recording\n\
                     recorded:\n{}\nmodel:\n{}",
                    indent(&step.state),
                    indent(&lines)
                ));
            }
            rendered.push_str(&format!("{n:>3}. {description}\n{}\n", indent(&lines)));
            state = next;
        }
        let violated = M::named_properties()
            .iter()
            .filter_map(|p| match p.kind {
                PropertyKind::Always(holds) if !holds(&model, &state) => Some(p.name),
                // A counterexample of AG EF ends in a state from which the goal is unreachable:
                // re-explore from it to confirm.
                PropertyKind::AlwaysCanReach { goal, via }
                    if !engine::can_reach(&model, &state, goal, via) =>
                {
                    Some(p.name)
                }
                _ => None,
            })
            .collect();
        Ok(ReplayReport {
            steps: trace.steps.len(),
            violated,
            rendered,
        })
    }

    fn explore(&self, config: &Config, addr: SocketAddr) -> Result<(), String> {
        // tiny_http panics on a busy port: find out first and say so.
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let builder = stateright::Model::checker(Explored(M::from_config(config)));
        let _server = builder.serve(addr);
        loop {
            std::thread::park();
        }
    }

    fn random_walk(&self, config: &Config, seed: u64, steps: usize) -> Result<usize, Trace> {
        let model = M::from_config(config);
        let properties = M::named_properties();
        engine::random_walk(&model, &properties, seed, steps)
            .map_err(|(name, path)| to_trace(&model, config, name, "counterexample", &path))
    }
}

fn indent(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("       {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A model as stateright's Explorer sees it: kcheck's descriptions for actions and states, and
/// the properties Explorer understands.
struct Explored<M>(M);

impl<M: KcheckModel> Model for Explored<M> {
    type State = M::State;
    type Action = M::Action;
    fn init_states(&self) -> Vec<Self::State> {
        self.0.init_states()
    }
    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        self.0.actions(state, actions)
    }
    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        self.0.next_state(last, action)
    }
    fn format_action(&self, action: &Self::Action) -> String {
        format!("{action:?}")
    }
    fn format_step(&self, last: &Self::State, action: Self::Action) -> Option<String> {
        let description = self.0.describe_action(last, &action);
        let next = self.0.next_state(last, action)?;
        Some(format!(
            "{description}\n\n{}",
            self.0.describe_state(&next).join("\n")
        ))
    }
    fn properties(&self) -> Vec<stateright::Property<Self>> {
        // Explorer wants `fn(&Explored<M>, ..)` pointers, which cannot capture kcheck's
        // `fn(&M, ..)` ones, so each property index gets its own monomorphised function.
        macro_rules! table {
            ($($i:literal)*) => { [$(explored_property::<M, $i> as fn(&Self, &M::State) -> bool),*] };
        }
        let table = table!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23);
        M::named_properties()
            .iter()
            .zip(table)
            .filter_map(|(p, condition)| {
                let expectation = match p.kind {
                    PropertyKind::Always(_) => stateright::Expectation::Always,
                    PropertyKind::Sometimes(_) => stateright::Expectation::Sometimes,
                    PropertyKind::AlwaysCanReach { .. } => return None,
                };
                Some(stateright::Property {
                    expectation,
                    name: p.name,
                    condition,
                })
            })
            .collect()
    }
}

fn explored_property<M: KcheckModel, const I: usize>(m: &Explored<M>, s: &M::State) -> bool {
    match M::named_properties()[I].kind {
        PropertyKind::Always(f) | PropertyKind::Sometimes(f) => f(&m.0, s),
        PropertyKind::AlwaysCanReach { .. } => true,
    }
}

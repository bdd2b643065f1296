//! Measured comparisons between models (`kcheck compare`): the shortest way, within a model's
//! exhaustive state graph, from a failure to a goal, with the steps and messages it takes.
//!
//! Any model plugs in with a [`Scenario`]: a start state (the failure already happened), the
//! actions allowed afterwards (no further faults), the goal, and what each step costs in
//! messages. The engine's breadth-first search finds a shortest path in steps; its messages
//! are counted along that path. One worker thread keeps the tie-break between equally short
//! paths, and so the message count, the same on every run.

use crate::engine::{self, CheckOptions, Stop, Verdict};
use crate::property::Property;
use stateright::Model;
use std::hash::Hash;

/// A failover scenario in a model.
pub struct Scenario<'a, M: Model> {
    pub model: &'a M,
    /// The state right after the failure.
    pub start: M::State,
    /// Actions that may happen after it (typically: no further faults, no client traffic).
    pub allowed: fn(&M::Action) -> bool,
    pub goal: fn(&M, &M::State) -> bool,
    /// Messages one step sends.
    pub messages: fn(&M, &M::State, &M::Action, &M::State) -> usize,
}

/// What the shortest path costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    pub steps: usize,
    pub messages: usize,
    /// States the search visited to prove no shorter path exists.
    pub unique_states: usize,
}

/// The model restricted to a scenario: one initial state, only the allowed actions.
struct Restricted<'a, M: Model> {
    inner: &'a M,
    start: M::State,
    allowed: fn(&M::Action) -> bool,
    goal: fn(&M, &M::State) -> bool,
}

impl<M> Model for Restricted<'_, M>
where
    M: Model,
    M::State: Clone,
{
    type State = M::State;
    type Action = M::Action;
    fn init_states(&self) -> Vec<M::State> {
        vec![self.start.clone()]
    }
    fn actions(&self, state: &M::State, actions: &mut Vec<M::Action>) {
        self.inner.actions(state, actions);
        actions.retain(|a| (self.allowed)(a));
    }
    fn next_state(&self, last: &M::State, action: M::Action) -> Option<M::State> {
        self.inner.next_state(last, action)
    }
}

/// The shortest path from the scenario's start to its goal, or `None` when no allowed path
/// reaches the goal (or `max_states` ran out first).
pub fn shortest_path<M>(scenario: Scenario<'_, M>, max_states: usize) -> Option<Measured>
where
    M: Model + Sync,
    M::State: Hash + Clone + Send + Sync,
    M::Action: Clone + PartialEq + Send + Sync,
{
    shortest_path_to(scenario, max_states).map(|(measured, _)| measured)
}

/// As [`shortest_path`], with the goal state the path ends in (to chain scenarios: reach a
/// steady state first, then fail something in it).
pub fn shortest_path_to<M>(
    scenario: Scenario<'_, M>,
    max_states: usize,
) -> Option<(Measured, M::State)>
where
    M: Model + Sync,
    M::State: Hash + Clone + Send + Sync,
    M::Action: Clone + PartialEq + Send + Sync,
{
    let restricted = Restricted {
        inner: scenario.model,
        start: scenario.start,
        allowed: scenario.allowed,
        goal: scenario.goal,
    };
    let goal = Property::sometimes("goal", "the scenario's goal", |r: &Restricted<M>, s| {
        (r.goal)(r.inner, s)
    });
    let options = CheckOptions {
        threads: 1,
        symmetry: false,
        max_states: Some(max_states),
        stop: Stop::AllOf(vec!["goal".to_string()]),
    };
    let outcome = engine::check(&restricted, &[goal], |_, s| s.clone(), &options, &|_| {});
    let Some(Verdict::Reached(path)) = outcome.verdict("goal") else {
        return None;
    };
    let mut before = &path.init;
    let mut messages = 0;
    for (action, after) in &path.steps {
        messages += (scenario.messages)(scenario.model, before, action, after);
        before = after;
    }
    let measured = Measured {
        steps: path.steps.len(),
        messages,
        unique_states: outcome.progress.unique_states,
    };
    Some((measured, path.last_state().clone()))
}

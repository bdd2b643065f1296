//! kcheck's exhaustive breadth-first checker.
//!
//! stateright's own BFS does not support symmetry reduction (only its DFS does), and DFS does
//! not give shortest counterexamples. kcheck needs both, plus "from every state the goal can
//! still be reached" checks (AG EF) for liveness-under-no-more-faults, so this module runs a
//! level-synchronous parallel BFS over any stateright [`Model`]:
//!
//! * the visited set stores 64-bit fingerprints of *representative* states only (as TLC does),
//!   mapping each to its parent's fingerprint, so memory is ~16 bytes per unique state;
//! * every state in the frontier is a representative; counterexamples are rebuilt afterwards as
//!   concrete paths by re-executing the model from its initial state and, at each step, picking
//!   an action whose successor has the recorded representative fingerprint (a successor of a
//!   symmetric image is the symmetric image of a successor, so one always exists);
//! * properties are checked on representatives, so they must be symmetric themselves.

use crate::property::{Property, PropertyKind};
use dashmap::DashMap;
use stateright::Model;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 64-bit state fingerprint. Collisions are possible in principle (as in TLC); at the state
/// counts kcheck explores (< 10^9) the probability is below 10^-1 / 2^(64-2*30).
pub type Fingerprint = u64;

/// Fingerprints are already uniformly distributed hashes: re-hashing them is wasted work.
#[derive(Default)]
struct IdentityHasher(u64);
impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 fingerprints are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
type FpMap<V> = DashMap<Fingerprint, V, BuildHasherDefault<IdentityHasher>>;

/// Fixed seeds: the same state has the same fingerprint in every run, so runs are reproducible.
fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x6b63_6865_636b_0001,
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
    )
}

pub fn fingerprint<T: Hash>(value: &T) -> Fingerprint {
    hasher().hash_one(value)
}

/// What the checker is told to do.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Worker threads (default: the machine's cores).
    pub threads: usize,
    /// Explore one representative per symmetry class (the model's `representative`).
    pub symmetry: bool,
    /// Stop (incomplete) after this many unique states.
    pub max_states: Option<usize>,
    /// When to stop before the state space is exhausted.
    pub stop: Stop,
}

/// When a check may stop early. It always stops at the end of a BFS level, so every
/// counterexample found is a shortest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Once some `always` property is violated (TLC's default).
    FirstViolation,
    /// Once each named property has a discovery (e.g. the ones the active bug flags violate).
    AllOf(Vec<String>),
    /// Once every `always` and `sometimes` property is decided (AG EF needs the whole graph).
    AllDecided,
    /// Never: explore every reachable state (benchmarks, state counts).
    Never,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            symmetry: true,
            max_states: None,
            stop: Stop::FirstViolation,
        }
    }
}

/// A snapshot of a running check, for progress lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub states_generated: usize,
    pub unique_states: usize,
    pub depth: usize,
    pub elapsed: Duration,
}

impl Progress {
    pub fn states_per_second(&self) -> f64 {
        self.unique_states as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The verdict for one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<S, A> {
    /// Exhaustively shown: the invariant holds / the goal is always reachable / the example
    /// exists (for `sometimes`).
    Holds,
    /// A counterexample (for `always` / `always-can-reach`). For `always-can-reach` the path
    /// ends in a state from which the goal cannot be reached.
    Violated(Path<S, A>),
    /// An example reaching a `sometimes` property.
    Reached(Path<S, A>),
    /// The search ended early (state limit) before deciding.
    Unknown,
}

impl<S, A> Verdict<S, A> {
    pub fn is_failure(&self, kind_is_sometimes: bool) -> bool {
        match self {
            Verdict::Violated(_) => true,
            Verdict::Unknown => true,
            Verdict::Holds => kind_is_sometimes, // a `sometimes` never reached is a failure
            Verdict::Reached(_) => false,
        }
    }
}

/// A concrete path: the initial state, then each action with the state it leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path<S, A> {
    pub init: S,
    pub steps: Vec<(A, S)>,
}

impl<S, A> Path<S, A> {
    pub fn last_state(&self) -> &S {
        self.steps.last().map_or(&self.init, |(_, s)| s)
    }
}

/// The outcome of a check.
#[derive(Debug)]
pub struct Outcome<S, A> {
    pub progress: Progress,
    /// Every reachable state was visited.
    pub complete: bool,
    /// One verdict per property, in the model's order.
    pub verdicts: Vec<(&'static str, Verdict<S, A>)>,
}

impl<S, A> Outcome<S, A> {
    pub fn verdict(&self, name: &str) -> Option<&Verdict<S, A>> {
        self.verdicts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// Run a check. `representative` maps a state to its symmetry class representative and
/// `on_progress` is called from a reporter thread about five times a second.
pub fn check<M>(
    model: &M,
    properties: &[Property<M>],
    representative: fn(&M, &M::State) -> M::State,
    options: &CheckOptions,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Outcome<M::State, M::Action>
where
    M: Model + Sync,
    M::State: Hash + Clone + Send + Sync,
    M::Action: Clone + PartialEq + Send + Sync,
{
    let started = Instant::now();
    let canon = |s: &M::State| -> M::State {
        if options.symmetry {
            representative(model, s)
        } else {
            s.clone()
        }
    };
    // Fingerprint -> parent fingerprint (itself for initial states).
    let visited: FpMap<Fingerprint> = FpMap::default();
    let discoveries: Vec<Mutex<Option<Fingerprint>>> =
        properties.iter().map(|_| Mutex::new(None)).collect();
    let needs_graph = properties
        .iter()
        .any(|p| matches!(p.kind, PropertyKind::AlwaysCanReach { .. }));
    // Edges by actions that `via` accepts, and goal states, per AlwaysCanReach property.
    let graphs: Vec<Mutex<(Vec<(Fingerprint, Fingerprint)>, Vec<Fingerprint>)>> = properties
        .iter()
        .map(|_| Mutex::new(Default::default()))
        .collect();
    let generated = AtomicUsize::new(0);
    let unique = AtomicUsize::new(0);
    let depth = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let open_safety = AtomicUsize::new(
        properties
            .iter()
            .filter(|p| !matches!(p.kind, PropertyKind::AlwaysCanReach { .. }))
            .count(),
    );
    // Worker closures are `move`: hand them references.
    let (visited, generated, unique, depth, done) = (&visited, &generated, &unique, &depth, &done);
    let (discoveries, graphs, open_safety) = (&discoveries, &graphs, &open_safety);

    // Evaluate every property on a newly discovered (representative) state.
    let visit = &|state: &M::State, fp: Fingerprint| {
        for (i, p) in properties.iter().enumerate() {
            match p.kind {
                PropertyKind::Always(holds) => {
                    if !holds(model, state) {
                        record(&discoveries[i], fp, &open_safety);
                    }
                }
                PropertyKind::Sometimes(reached) => {
                    if reached(model, state) {
                        record(&discoveries[i], fp, &open_safety);
                    }
                }
                PropertyKind::AlwaysCanReach { goal, .. } => {
                    if goal(model, state) {
                        graphs[i].lock().unwrap().1.push(fp);
                    }
                }
            }
        }
    };

    let mut frontier: Vec<(M::State, Fingerprint)> = Vec::new();
    for s in model.init_states() {
        let r = canon(&s);
        let fp = fingerprint(&r);
        generated.fetch_add(1, Ordering::Relaxed);
        if insert_new(visited, fp, fp) {
            unique.fetch_add(1, Ordering::Relaxed);
            visit(&r, fp);
            frontier.push((r, fp));
        }
    }

    let threads = options.threads.max(1);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while !done.load(Ordering::Acquire) {
                on_progress(&Progress {
                    states_generated: generated.load(Ordering::Relaxed),
                    unique_states: unique.load(Ordering::Relaxed),
                    depth: depth.load(Ordering::Relaxed),
                    elapsed: started.elapsed(),
                });
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        while !frontier.is_empty() {
            let found = |i: usize| discoveries[i].lock().unwrap().is_some();
            let stop = match &options.stop {
                Stop::Never => false,
                Stop::FirstViolation => properties
                    .iter()
                    .enumerate()
                    .any(|(i, p)| matches!(p.kind, PropertyKind::Always(_)) && found(i)),
                Stop::AllOf(names) => names.iter().all(|name| {
                    properties
                        .iter()
                        .position(|p| p.name == name)
                        .is_some_and(found)
                }),
                Stop::AllDecided => !needs_graph && open_safety.load(Ordering::Acquire) == 0,
            };
            if stop {
                break;
            }
            if options
                .max_states
                .is_some_and(|max| unique.load(Ordering::Relaxed) >= max)
            {
                break;
            }
            depth.fetch_add(1, Ordering::Relaxed);
            let chunk = frontier.len().div_ceil(threads);
            let next: Vec<Vec<(M::State, Fingerprint)>> = std::thread::scope(|inner| {
                let handles: Vec<_> = frontier
                    .chunks(chunk)
                    .map(|part| {
                        inner.spawn(move || {
                            let mut out = Vec::new();
                            let mut actions = Vec::new();
                            let mut edges = vec![Vec::new(); properties.len()];
                            for (state, parent) in part {
                                actions.clear();
                                model.actions(state, &mut actions);
                                for action in actions.drain(..) {
                                    let via: Vec<bool> = if needs_graph {
                                        properties
                                            .iter()
                                            .map(|p| match p.kind {
                                                PropertyKind::AlwaysCanReach { via, .. } => {
                                                    via(&action)
                                                }
                                                _ => false,
                                            })
                                            .collect()
                                    } else {
                                        Vec::new()
                                    };
                                    let Some(next) = model.next_state(state, action) else {
                                        continue;
                                    };
                                    generated.fetch_add(1, Ordering::Relaxed);
                                    let r = canon(&next);
                                    let fp = fingerprint(&r);
                                    for (i, on) in via.iter().enumerate() {
                                        if *on {
                                            edges[i].push((*parent, fp));
                                        }
                                    }
                                    if insert_new(visited, fp, *parent) {
                                        unique.fetch_add(1, Ordering::Relaxed);
                                        visit(&r, fp);
                                        out.push((r, fp));
                                    }
                                }
                            }
                            if needs_graph {
                                for (i, e) in edges.into_iter().enumerate() {
                                    if !e.is_empty() {
                                        graphs[i].lock().unwrap().0.extend(e);
                                    }
                                }
                            }
                            out
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("checker worker panicked"))
                    .collect()
            });
            frontier = next.into_iter().flatten().collect();
        }
        done.store(true, Ordering::Release);
    });

    // Every reachable state was visited only if the frontier ran dry (not a state limit, not an
    // early stop because every safety property already has its counterexample).
    let complete = frontier.is_empty();
    let progress = Progress {
        states_generated: generated.load(Ordering::Relaxed),
        unique_states: unique.load(Ordering::Relaxed),
        depth: depth.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    on_progress(&progress);

    let verdicts = properties
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let found = *discoveries[i].lock().unwrap();
            let verdict = match p.kind {
                PropertyKind::Always(_) => match found {
                    Some(fp) => Verdict::Violated(rebuild(model, &visited, fp, canon)),
                    None if complete => Verdict::Holds,
                    None => Verdict::Unknown,
                },
                PropertyKind::Sometimes(_) => match found {
                    Some(fp) => Verdict::Reached(rebuild(model, &visited, fp, canon)),
                    None if complete => Verdict::Holds,
                    None => Verdict::Unknown,
                },
                PropertyKind::AlwaysCanReach { .. } => {
                    if !complete {
                        Verdict::Unknown
                    } else {
                        let (edges, goals) = std::mem::take(&mut *graphs[i].lock().unwrap());
                        match stuck_state(&visited, edges, goals) {
                            Some(fp) => Verdict::Violated(rebuild(model, &visited, fp, canon)),
                            None => Verdict::Holds,
                        }
                    }
                }
            };
            (p.name, verdict)
        })
        .collect();
    Outcome {
        progress,
        complete,
        verdicts,
    }
}

/// Insert a newly discovered fingerprint with its parent; false (and no change: the first
/// parent found stays, which keeps parent links a BFS tree) when it was already visited.
fn insert_new(visited: &FpMap<Fingerprint>, fp: Fingerprint, parent: Fingerprint) -> bool {
    match visited.entry(fp) {
        dashmap::Entry::Vacant(v) => {
            v.insert(parent);
            true
        }
        dashmap::Entry::Occupied(_) => false,
    }
}

fn record(slot: &Mutex<Option<Fingerprint>>, fp: Fingerprint, open: &AtomicUsize) {
    let mut slot = slot.lock().unwrap();
    if slot.is_none() {
        *slot = Some(fp);
        open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shallowest state from which no goal state is reachable over the recorded edges, if any.
fn stuck_state(
    visited: &FpMap<Fingerprint>,
    edges: Vec<(Fingerprint, Fingerprint)>,
    goals: Vec<Fingerprint>,
) -> Option<Fingerprint> {
    let mut reverse: HashMap<Fingerprint, Vec<Fingerprint>> = HashMap::new();
    for (from, to) in edges {
        reverse.entry(to).or_default().push(from);
    }
    let mut can_reach: HashSet<Fingerprint> = goals.iter().copied().collect();
    let mut queue: VecDeque<Fingerprint> = goals.into();
    while let Some(fp) = queue.pop_front() {
        for &pred in reverse.get(&fp).map(Vec::as_slice).unwrap_or(&[]) {
            if can_reach.insert(pred) {
                queue.push_back(pred);
            }
        }
    }
    visited
        .iter()
        .map(|e| *e.key())
        .filter(|fp| !can_reach.contains(fp))
        .min_by_key(|fp| (depth_of(visited, *fp), *fp))
}

fn depth_of(visited: &FpMap<Fingerprint>, mut fp: Fingerprint) -> usize {
    let mut d = 0;
    loop {
        let parent = *visited.get(&fp).expect("fingerprint was visited");
        if parent == fp {
            return d;
        }
        fp = parent;
        d += 1;
    }
}

/// Rebuild a concrete path to the state with representative fingerprint `target`.
fn rebuild<M>(
    model: &M,
    visited: &FpMap<Fingerprint>,
    target: Fingerprint,
    canon: impl Fn(&M::State) -> M::State,
) -> Path<M::State, M::Action>
where
    M: Model,
    M::State: Hash + Clone,
    M::Action: Clone,
{
    let mut chain = vec![target];
    loop {
        let fp = *chain.last().unwrap();
        let parent = *visited.get(&fp).expect("path fingerprint was visited");
        if parent == fp {
            break;
        }
        chain.push(parent);
    }
    chain.reverse();
    let init = model
        .init_states()
        .into_iter()
        .find(|s| fingerprint(&canon(s)) == chain[0])
        .expect("an initial state has the path's first fingerprint");
    let mut path = Path {
        init,
        steps: Vec::new(),
    };
    let mut actions = Vec::new();
    for want in &chain[1..] {
        let here = path.last_state().clone();
        actions.clear();
        model.actions(&here, &mut actions);
        let step = actions
            .drain(..)
            .find_map(|a| {
                let next = model.next_state(&here, a.clone())?;
                (fingerprint(&canon(&next)) == *want).then_some((a, next))
            })
            .expect("some action leads to the next state on the path");
        path.steps.push(step);
    }
    path
}

/// Whether a state satisfying `goal` is reachable from `from` using only actions `via` accepts
/// (EF goal from one state, by plain BFS without symmetry). Used by `replay` to confirm an
/// `always-can-reach` counterexample: the states reachable without faults from its last state
/// are few.
pub fn can_reach<M>(
    model: &M,
    from: &M::State,
    goal: fn(&M, &M::State) -> bool,
    via: fn(&M::Action) -> bool,
) -> bool
where
    M: Model,
    M::State: Hash + Clone,
{
    let mut seen: HashSet<Fingerprint> = HashSet::from([fingerprint(from)]);
    let mut queue = VecDeque::from([from.clone()]);
    let mut actions = Vec::new();
    while let Some(s) = queue.pop_front() {
        if goal(model, &s) {
            return true;
        }
        actions.clear();
        model.actions(&s, &mut actions);
        for a in actions.drain(..).filter(|a| via(a)) {
            if let Some(next) = model.next_state(&s, a) {
                if seen.insert(fingerprint(&next)) {
                    queue.push_back(next);
                }
            }
        }
    }
    false
}

/// A seeded random walk of at most `steps` actions from a random initial state, checking every
/// `always` property on each state. Returns the path to the first violation. Used by the
/// property-based tests of every model.
pub fn random_walk<M>(
    model: &M,
    properties: &[Property<M>],
    seed: u64,
    steps: usize,
) -> Result<usize, (&'static str, Path<M::State, M::Action>)>
where
    M: Model,
    M::State: Clone,
    M::Action: Clone,
{
    let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next_rand = move |n: usize| {
        // splitmix64: small, fast and good enough to pick actions.
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    };
    let inits = model.init_states();
    let mut path = Path {
        init: inits[next_rand(inits.len())].clone(),
        steps: Vec::new(),
    };
    let violated = |s: &M::State| {
        properties.iter().find_map(|p| match p.kind {
            PropertyKind::Always(holds) if !holds(model, s) => Some(p.name),
            _ => None,
        })
    };
    if let Some(name) = violated(&path.init) {
        return Err((name, path));
    }
    let mut actions = Vec::new();
    for taken in 0..steps {
        actions.clear();
        model.actions(path.last_state(), &mut actions);
        let mut nexts: Vec<(M::Action, M::State)> = actions
            .drain(..)
            .filter_map(|a| Some((a.clone(), model.next_state(path.last_state(), a)?)))
            .collect();
        if nexts.is_empty() {
            return Ok(taken);
        }
        let pick = next_rand(nexts.len());
        let step = nexts.swap_remove(pick);
        path.steps.push(step);
        if let Some(name) = violated(path.last_state()) {
            return Err((name, path));
        }
    }
    Ok(steps)
}

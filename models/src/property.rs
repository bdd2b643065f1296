//! Named properties: every invariant is declared next to its model with a name and a one-line
//! meaning, and both the checker and `kcheck models` read them from there.

use stateright::Model;

/// How a property is judged.
pub enum PropertyKind<M: Model> {
    /// Safety: holds in every reachable state.
    Always(fn(&M, &M::State) -> bool),
    /// Non-vacuity: some reachable state satisfies it (e.g. "a record gets committed"), so an
    /// invariant cannot pass merely because the interesting states are unreachable.
    Sometimes(fn(&M, &M::State) -> bool),
    /// From every reachable state, a goal state is reachable using only actions `via` accepts
    /// (CTL `AG EF goal`, typically "once faults stop, the protocol can still finish"). This is
    /// the liveness stateright's bounded BFS can decide exactly; fairness is not assumed.
    AlwaysCanReach {
        goal: fn(&M, &M::State) -> bool,
        via: fn(&M::Action) -> bool,
    },
}

impl<M: Model> Clone for PropertyKind<M> {
    fn clone(&self) -> Self {
        match self {
            PropertyKind::Always(f) => PropertyKind::Always(*f),
            PropertyKind::Sometimes(f) => PropertyKind::Sometimes(*f),
            PropertyKind::AlwaysCanReach { goal, via } => PropertyKind::AlwaysCanReach {
                goal: *goal,
                via: *via,
            },
        }
    }
}

/// A named property of a model.
pub struct Property<M: Model> {
    pub name: &'static str,
    pub meaning: &'static str,
    pub kind: PropertyKind<M>,
}

impl<M: Model> Clone for Property<M> {
    fn clone(&self) -> Self {
        Property {
            name: self.name,
            meaning: self.meaning,
            kind: self.kind.clone(),
        }
    }
}

impl<M: Model> Property<M> {
    pub fn always(
        name: &'static str,
        meaning: &'static str,
        holds: fn(&M, &M::State) -> bool,
    ) -> Self {
        Property {
            name,
            meaning,
            kind: PropertyKind::Always(holds),
        }
    }

    pub fn sometimes(
        name: &'static str,
        meaning: &'static str,
        reached: fn(&M, &M::State) -> bool,
    ) -> Self {
        Property {
            name,
            meaning,
            kind: PropertyKind::Sometimes(reached),
        }
    }

    pub fn always_can_reach(
        name: &'static str,
        meaning: &'static str,
        goal: fn(&M, &M::State) -> bool,
        via: fn(&M::Action) -> bool,
    ) -> Self {
        Property {
            name,
            meaning,
            kind: PropertyKind::AlwaysCanReach { goal, via },
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            PropertyKind::Always(_) => "always",
            PropertyKind::Sometimes(_) => "sometimes",
            PropertyKind::AlwaysCanReach { .. } => "always-can-reach",
        }
    }

    /// The same property for stateright's checkers and Explorer (which know no AG EF).
    pub fn to_stateright(&self) -> Option<stateright::Property<M>> {
        match self.kind {
            PropertyKind::Always(f) => Some(stateright::Property::always(self.name, f)),
            PropertyKind::Sometimes(f) => Some(stateright::Property::sometimes(self.name, f)),
            PropertyKind::AlwaysCanReach { .. } => None,
        }
    }
}

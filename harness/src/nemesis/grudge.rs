//! Network partitions as *grudges*: for each node, the set of nodes whose traffic it drops
//! (Jepsen's `nemesis/complete-grudge` and friends). A grudge says nothing about how it is
//! enforced: the proxies and the namespaces both take one.
//!
//! The shapes are Jepsen's: halves, random halves, isolating one node, a ring of overlapping
//! majorities, a bridge, isolating the leaders, and one-way partitions.

use crate::sim::Rng;
use std::collections::{BTreeMap, BTreeSet};

pub type NodeId = i32;

/// node → nodes it does not hear from. Symmetric unless built by [`one_way`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Grudge(pub BTreeMap<NodeId, BTreeSet<NodeId>>);

impl Grudge {
    /// Whether `to` drops what `from` sends.
    pub fn cuts(&self, from: NodeId, to: NodeId) -> bool {
        self.0.get(&to).is_some_and(|s| s.contains(&from))
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|s| s.is_empty())
    }

    /// The grudge as Jepsen prints it, e.g. `{1 [3 4], 3 [1], 4 [1]}`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(n, s)| {
                let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
                format!("{n} [{}]", s.join(" "))
            })
            .collect();
        format!("{{{}}}", parts.join(", "))
    }

    fn drop_from(&mut self, to: NodeId, from: NodeId) {
        if to != from {
            self.0.entry(to).or_default().insert(from);
        }
    }
}

/// Every component hears only from itself (Jepsen's complete grudge).
pub fn complete(components: &[Vec<NodeId>]) -> Grudge {
    let mut g = Grudge::default();
    for (i, a) in components.iter().enumerate() {
        for (j, b) in components.iter().enumerate() {
            if i != j {
                for &to in a {
                    for &from in b {
                        g.drop_from(to, from);
                    }
                }
            }
        }
    }
    g
}

/// The first half (rounded down) against the rest.
pub fn halves(nodes: &[NodeId]) -> Grudge {
    let (a, b) = nodes.split_at(nodes.len() / 2);
    complete(&[a.to_vec(), b.to_vec()])
}

/// Halves of a seeded shuffle of the nodes.
pub fn random_halves(nodes: &[NodeId], rng: &mut Rng) -> Grudge {
    let mut shuffled = nodes.to_vec();
    for i in (1..shuffled.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        shuffled.swap(i, j);
    }
    halves(&shuffled)
}

/// One node alone against the rest.
pub fn isolate(nodes: &[NodeId], victim: NodeId) -> Grudge {
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != victim).collect();
    complete(&[vec![victim], rest])
}

/// Each of `victims` alone, and the rest together (Jepsen's `:primaries`: isolate the leaders
/// from each other and from everyone else).
pub fn isolate_all(nodes: &[NodeId], victims: &[NodeId]) -> Grudge {
    let mut components: Vec<Vec<NodeId>> = victims.iter().map(|v| vec![*v]).collect();
    components.push(
        nodes
            .iter()
            .copied()
            .filter(|n| !victims.contains(n))
            .collect(),
    );
    complete(&components)
}

/// Every node hears from a majority (itself and its nearest neighbours on a ring) but no two
/// nodes hear from the same majority: there is no majority component, yet every node believes
/// it is in one (Jepsen's `partition-majorities-ring`).
pub fn majorities_ring(nodes: &[NodeId]) -> Grudge {
    let n = nodes.len();
    let majority = n / 2 + 1;
    let mut g = Grudge::default();
    for (i, &to) in nodes.iter().enumerate() {
        // Hear from the `majority` nodes centred on i (wrapping around).
        let start = i + n - (majority - 1) / 2;
        let heard: BTreeSet<NodeId> = (0..majority).map(|k| nodes[(start + k) % n]).collect();
        for &from in nodes {
            if !heard.contains(&from) {
                g.drop_from(to, from);
            }
        }
    }
    g
}

/// Two halves that both hear from one node in the middle (the bridge): the bridge node sees
/// everyone, the halves do not see each other.
pub fn bridge(nodes: &[NodeId]) -> Grudge {
    let n = nodes.len();
    let mid = n / 2;
    let (a, rest) = nodes.split_at(mid);
    let b = &rest[1..];
    complete(&[a.to_vec(), b.to_vec()])
}

/// `to` stops hearing from `from`, but not the other way round.
pub fn one_way(from: &[NodeId], to: &[NodeId]) -> Grudge {
    let mut g = Grudge::default();
    for &t in to {
        for &f in from {
            g.drop_from(t, f);
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard_by(g: &Grudge, nodes: &[NodeId], to: NodeId) -> Vec<NodeId> {
        nodes.iter().copied().filter(|f| !g.cuts(*f, to)).collect()
    }

    #[test]
    fn halves_cut_every_link_across_and_none_within() {
        let nodes = [1, 2, 3, 4, 5];
        let g = halves(&nodes);
        assert_eq!(heard_by(&g, &nodes, 1), vec![1, 2]);
        assert_eq!(heard_by(&g, &nodes, 5), vec![3, 4, 5]);
        assert!(g.cuts(1, 3) && g.cuts(3, 1));
        assert_eq!(
            g.describe(),
            "{1 [3 4 5], 2 [3 4 5], 3 [1 2], 4 [1 2], 5 [1 2]}"
        );
    }

    #[test]
    fn random_halves_are_seeded() {
        let nodes = [1, 2, 3, 4, 5];
        let a = random_halves(&nodes, &mut Rng::new(7));
        assert_eq!(a, random_halves(&nodes, &mut Rng::new(7)));
        let distinct: BTreeSet<String> = (0..20)
            .map(|s| random_halves(&nodes, &mut Rng::new(s)).describe())
            .collect();
        assert!(distinct.len() > 1, "different seeds give different halves");
    }

    #[test]
    fn isolating_one_and_the_leaders() {
        let nodes = [1, 2, 3, 4, 5];
        let g = isolate(&nodes, 3);
        assert_eq!(heard_by(&g, &nodes, 3), vec![3]);
        assert_eq!(heard_by(&g, &nodes, 1), vec![1, 2, 4, 5]);
        let g = isolate_all(&nodes, &[1, 4]);
        assert_eq!(heard_by(&g, &nodes, 1), vec![1]);
        assert_eq!(heard_by(&g, &nodes, 4), vec![4]);
        assert_eq!(heard_by(&g, &nodes, 2), vec![2, 3, 5]);
    }

    #[test]
    fn in_a_majorities_ring_everyone_sees_a_different_majority() {
        let nodes = [1, 2, 3, 4, 5];
        let g = majorities_ring(&nodes);
        let views: BTreeSet<Vec<NodeId>> = nodes.iter().map(|n| heard_by(&g, &nodes, *n)).collect();
        assert_eq!(views.len(), 5, "no two nodes share a view");
        for v in &views {
            assert_eq!(v.len(), 3, "each view is a majority: {v:?}");
        }
    }

    #[test]
    fn a_bridge_node_hears_both_sides() {
        let nodes = [1, 2, 3, 4, 5];
        let g = bridge(&nodes);
        assert_eq!(heard_by(&g, &nodes, 3), vec![1, 2, 3, 4, 5]);
        assert_eq!(heard_by(&g, &nodes, 1), vec![1, 2, 3]);
        assert_eq!(heard_by(&g, &nodes, 5), vec![3, 4, 5]);
    }

    #[test]
    fn one_way_cuts_one_direction() {
        let g = one_way(&[1], &[2, 3]);
        assert!(g.cuts(1, 2) && g.cuts(1, 3));
        assert!(!g.cuts(2, 1) && !g.cuts(3, 1));
        assert!(Grudge::default().is_empty() && !g.is_empty());
    }
}

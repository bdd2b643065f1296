//! Planning the `lagging-successor` composite fault: which partition, and which of its
//! replicas play which part.
//!
//! KIP-279 fixed a divergence KIP-101's one-round epoch lookup left behind: a follower whose
//! uncommitted suffix spans a leader epoch the new leader never had. The shape needs three
//! leaders in a row, lined up on purpose (a random schedule practically never does):
//!
//! 1. follower `successor` lags leader `leader` (its data plane is cut) while follower `next`
//!    keeps copying: the leader appends records (epoch e) that `next` has and `successor`
//!    lacks, uncommitted because `successor` is still in the ISR;
//! 2. `leader` fails and the controller elects `successor` (epoch e+1) — so it must be the
//!    replica the controller picks, the first live ISR member in assignment order;
//! 3. `successor` appends records in e+1 that `next` cannot fetch;
//! 4. `successor` fails before it shrinks `next` out of the ISR; `next` is elected (e+2);
//! 5. `successor` comes back as `next`'s follower and asks for e+1, which `next` never had.
//!    Kafka answers with e and the end of e (KIP-279), so it truncates its e+1 records; the
//!    single-epoch lookup answers e+1 and the start of e+2, and the replicas diverge.
//!
//! The run loop carries it out (`run::lagging_successor`); this module only chooses, so the
//! choice is a pure function of what Metadata said.

use super::grudge::NodeId;

/// One partition as Metadata describes it: its leader (if any), its replicas in assignment
/// order, and its ISR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    pub leader: Option<NodeId>,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
}

/// The parts of the composite fault for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuccessorPlan {
    pub partition: i32,
    /// The leader now (epoch e); it is killed.
    pub leader: NodeId,
    /// The follower the controller will elect when `leader` fails (epoch e+1); its data
    /// plane is cut first, then it is paused after taking writes.
    pub successor: NodeId,
    /// The follower elected after `successor` fails (epoch e+2); it keeps copying `leader`.
    pub next: NodeId,
}

/// The replica the controller elects once the brokers in `failed` are fenced: the first
/// replica in assignment order that is in the ISR and not failed (KRaft's
/// `PartitionChangeBuilder`, the reference controller's `elect`; the ELR only matters once
/// the ISR has no live member, which the plan never relies on).
pub fn next_leader(replicas: &[NodeId], isr: &[NodeId], failed: &[NodeId]) -> Option<NodeId> {
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && !failed.contains(r))
}

/// The plan for one partition, if it can take the shape: it has a leader, and besides it two
/// ISR members, the first of which (in assignment order) the controller elects next.
pub fn plan_for(view: &PartitionView) -> Option<SuccessorPlan> {
    let leader = view.leader?;
    if !view.isr.contains(&leader) {
        return None;
    }
    let successor = next_leader(&view.replicas, &view.isr, &[leader])?;
    let next = next_leader(&view.replicas, &view.isr, &[leader, successor])?;
    Some(SuccessorPlan {
        partition: view.partition,
        leader,
        successor,
        next,
    })
}

/// Every partition that can take the shape, in partition order (the run loop picks one,
/// seeded).
pub fn plans(views: &[PartitionView]) -> Vec<SuccessorPlan> {
    let mut out: Vec<SuccessorPlan> = views.iter().filter_map(plan_for).collect();
    out.sort_by_key(|p| p.partition);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leader: Option<NodeId>, replicas: &[NodeId], isr: &[NodeId]) -> PartitionView {
        PartitionView {
            partition: 0,
            leader,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn the_successor_is_the_first_isr_replica_after_the_leader_in_assignment_order() {
        // Leader 2 is not the preferred one: the controller skips it and takes 3 before 1.
        let plan = plan_for(&view(Some(2), &[3, 2, 1], &[1, 2, 3])).unwrap();
        assert_eq!((plan.leader, plan.successor, plan.next), (2, 3, 1));
        let plan = plan_for(&view(Some(1), &[1, 2, 3], &[3, 1, 2])).unwrap();
        assert_eq!((plan.leader, plan.successor, plan.next), (1, 2, 3));
    }

    #[test]
    fn a_replica_out_of_the_isr_plays_no_part() {
        // 2 comes first in assignment order but is out of the ISR: the controller would elect
        // 3, and there is no third ISR member to elect after it.
        assert_eq!(next_leader(&[1, 2, 3], &[1, 3], &[1]), Some(3));
        assert_eq!(plan_for(&view(Some(1), &[1, 2, 3], &[1, 3])), None);
    }

    #[test]
    fn a_partition_without_a_leader_in_its_isr_has_no_plan() {
        assert_eq!(plan_for(&view(None, &[1, 2, 3], &[1, 2, 3])), None);
        assert_eq!(plan_for(&view(Some(1), &[1, 2, 3], &[2, 3])), None);
    }

    #[test]
    fn plans_come_in_partition_order() {
        let mut a = view(Some(1), &[1, 2, 3], &[1, 2, 3]);
        a.partition = 1;
        let b = view(Some(3), &[3, 1, 2], &[1, 2, 3]);
        let got: Vec<i32> = plans(&[a, b]).iter().map(|p| p.partition).collect();
        assert_eq!(got, vec![0, 1]);
    }
}

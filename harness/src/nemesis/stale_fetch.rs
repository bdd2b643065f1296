//! Planning the `stale-fetch` composite fault: which leader to freeze and which of its ISR
//! followers to crash-restart behind it.
//!
//! KIP-903 (KAFKA-14139) closed a hole in ISR expansion: a Fetch sent by a follower's previous
//! incarnation, handled by the leader after that follower crashed (losing unflushed records),
//! restarted and re-registered with a new broker epoch, must not put it back in the ISR. The
//! leader names the fetching incarnation's broker epoch in its AlterPartition and the
//! controller answers INELIGIBLE_REPLICA when it is not the registered one. The window needs
//! the old Fetch to reach the leader late, after the leader learnt that the follower left the
//! ISR, with an offset still at or above the leader's HW. A proxy's delay gives it; so do the
//! network namespaces' drop rules, with the kernel's TCP retransmission as the delay:
//!
//! 1. `leader` stops hearing the brokers (one way: its answers, its heartbeats and the
//!    metadata it fetches from the controllers still flow). `follower`'s next Fetch is
//!    dropped and retransmitted by its kernel; the other followers' too, so the leader's HW
//!    stays at what they had fetched before the cut, at or below that Fetch's offset;
//! 2. `follower` is crashed (its unflushed writes lost, with `--flush never`) and restarted at
//!    once. The dead process's socket lives on in the kernel (an orphan with unacknowledged
//!    data and a FIN) and keeps retransmitting the Fetch. The new incarnation registers with a
//!    new broker epoch, the controller takes it out of the ISR (an unclean shutdown, KIP-966)
//!    and the leader, which still hears the controllers, applies that; the controller unfences
//!    it once it caught up with the metadata log;
//! 3. `leader` hears `follower` again: the next retransmission delivers the dead incarnation's
//!    Fetch, which the leader reads and handles like any request read before the FIN (Kafka's
//!    selector also hands on the requests it read from a connection the peer closed). On its
//!    offset the leader proposes `follower` back with the old broker epoch: a correct
//!    controller refuses, `no-broker-epoch-check`'s accepts;
//! 4. the leader hears the other followers again, before it would shrink them out of the ISR.
//!
//! Pausing the leader instead (SIGSTOP across the crash-restart, no network fault) was tried
//! first and does not do it: on SIGCONT the leader handles the buffered Fetch before the
//! metadata that took `follower` out of the ISR, so it finds it still a member and proposes
//! nothing (the flagged run of seed 1: the new incarnation's own fetches then rejoined it).
//!
//! The run loop carries it out (`run::stale_fetch`); this module only chooses, so the choice
//! is a pure function of what Metadata said.

use super::grudge::NodeId;
use super::successor::PartitionView;

/// The two brokers of the composite fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleFetchPlan {
    /// Paused across the follower's crash-restart; it must lead a partition `follower` is an
    /// ISR member of.
    pub leader: NodeId,
    /// Crashed and restarted at once while `leader` is paused.
    pub follower: NodeId,
    /// The partitions `leader` leads with `follower` in their ISR (where the stale Fetch can
    /// put it back).
    pub partitions: Vec<i32>,
}

/// Every (leader, follower) pair that can take the shape, in (leader, follower) order. A pair
/// whose follower leads no partition comes first when there is one: crashing a leader too
/// would add a failover on top (the controller moves its leaderships away on the unclean
/// restart), which muddles which fault a finding came from.
pub fn plans(views: &[PartitionView]) -> Vec<StaleFetchPlan> {
    let mut out: Vec<StaleFetchPlan> = Vec::new();
    for v in views {
        let Some(leader) = v.leader.filter(|l| v.isr.contains(l)) else {
            continue;
        };
        for &follower in v.isr.iter().filter(|&&f| f != leader) {
            match out
                .iter_mut()
                .find(|p| p.leader == leader && p.follower == follower)
            {
                Some(p) => p.partitions.push(v.partition),
                None => out.push(StaleFetchPlan {
                    leader,
                    follower,
                    partitions: vec![v.partition],
                }),
            }
        }
    }
    for p in &mut out {
        p.partitions.sort();
    }
    out.sort_by_key(|p| (p.leader, p.follower));
    let leads = |b: NodeId| views.iter().any(|v| v.leader == Some(b));
    let quiet: Vec<StaleFetchPlan> = out.iter().filter(|p| !leads(p.follower)).cloned().collect();
    if quiet.is_empty() {
        out
    } else {
        quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(partition: i32, leader: Option<NodeId>, isr: &[NodeId]) -> PartitionView {
        PartitionView {
            partition,
            leader,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn followers_that_lead_nothing_are_preferred() {
        // 1 leads both partitions: 2 and 3 are both ISR followers leading nothing.
        let got = plans(&[view(0, Some(1), &[1, 2, 3]), view(1, Some(1), &[1, 3])]);
        let pairs: Vec<(NodeId, NodeId, Vec<i32>)> = got
            .into_iter()
            .map(|p| (p.leader, p.follower, p.partitions))
            .collect();
        assert_eq!(pairs, vec![(1, 2, vec![0]), (1, 3, vec![0, 1])]);
        // 1 and 2 lead one partition each: only 3 leads nothing.
        let got = plans(&[view(0, Some(1), &[1, 2, 3]), view(1, Some(2), &[1, 2, 3])]);
        let pairs: Vec<(NodeId, NodeId)> = got.iter().map(|p| (p.leader, p.follower)).collect();
        assert_eq!(pairs, vec![(1, 3), (2, 3)]);
    }

    #[test]
    fn a_leader_follower_pair_is_taken_when_no_follower_is_quiet() {
        // Each broker leads: every pair's follower leads something.
        let got = plans(&[view(0, Some(1), &[1, 2]), view(1, Some(2), &[2, 1])]);
        let pairs: Vec<(NodeId, NodeId)> = got.iter().map(|p| (p.leader, p.follower)).collect();
        assert_eq!(pairs, vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn no_plan_without_a_leader_in_its_isr_or_an_isr_follower() {
        assert!(plans(&[view(0, None, &[1, 2, 3])]).is_empty());
        assert!(plans(&[view(0, Some(1), &[2, 3])]).is_empty());
        assert!(plans(&[view(0, Some(1), &[1])]).is_empty());
    }
}

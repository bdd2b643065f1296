//! ZooKeeper mode's composite fault `zombie-failover`: a controller that becomes a zombie with
//! a leader's death still queued (`specs/cluster-zookeeper.md`, "Two leaders in one leader
//! epoch"), lined up with signals and timing only.
//!
//! The zombie window needs the controller `c` to hold a BrokerChange when its session
//! expires. A plain `zombie` pause catches that only by luck; this fault makes it the
//! schedule:
//!
//! 1. `kill -9` of a partition leader `l` that is not the controller (a follower when the
//!    controller leads every partition). Its session lives on for about one session timeout
//!    T (the ZooKeeper server expires it then).
//! 2. [`pause_delay`] later (about T/2), SIGSTOP of `c`. When `l`'s session expires, `/brokers/ids/l`
//!    goes and `c`'s watch fires: ZooKeeper writes the notification to `c`'s socket, where it
//!    waits in the kernel's buffer while `c` is stopped. `c`'s own session expires about T/2 later.
//! 3. Another broker `n` becomes controller (a higher controller epoch), sees neither `l` nor
//!    `c` live and elects new leaders in the next leader epoch E.
//! 4. [`RESUME_AFTER_ELECTION`] after `n` took `/controller`, SIGCONT of `c`: its ZooKeeper
//!    client reads the buffered notification before it learns that its session is gone, so the
//!    BrokerChange is queued when the expiry is noticed; the controller finishes it on its new
//!    session (Kafka's pre-KAFKA-6082 window) from its stale cache — leader epoch E − 1, `l`
//!    dead, `c` live again — and elects for leader epoch E too. Only
//!    `no-controller-epoch-check` and `no-zkversion-check` together let that write through.
//! 5. The leaders are watched closely ([`WATCH_AFTER_RESUME`]): the zombie's leadership may
//!    last only until the new controller's next LeaderAndIsr.
//! 6. `l` stays down until the fault ends: were it back before the zombie read the live
//!    brokers, the zombie would see no failure to act on.
//!
//! The choices (which leader) are seeded; the waits are bounded.

use crate::nemesis::grudge::NodeId;
use crate::sim::Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long after killing the leader the controller is paused: 0.55 of a session timeout T.
///
/// A session expires about T after its last packet: an idle client pings every 3/20 T,
/// checked every T/20 (the `zookeeper-client` crate), so the last packet is at most 0.2 T old
/// when the process stops; the server expires sessions in buckets of its tickTime (300 ms,
/// 0.15 T here). So `l`'s expiry falls in [0.8 T, 1.15 T] after its kill, and `c`'s as long
/// after its pause. The pause must come before the first and the first before the second:
/// 0.35 T < delay < 0.8 T; 0.55 T leaves 0.2 T on each side.
pub fn pause_delay(session_timeout: Duration) -> Duration {
    session_timeout * 11 / 20
}

/// How long `c` stays stopped once another broker holds `/controller`: the new controller
/// reads the cluster, elects and sends LeaderAndIsr, and the run's leader probe (which waits
/// up to its own timeout on the stopped broker each round) sees the new leaders.
pub const RESUME_AFTER_ELECTION: Duration = Duration::from_millis(1500);

/// How long after the SIGCONT the leaders are watched closely: the zombie registers again
/// and handles its events within about a second on a loaded machine.
pub const WATCH_AFTER_RESUME: Duration = Duration::from_millis(2500);

/// How often the close watch asks every broker what it leads. A zombie's leadership lasts
/// from its own LeaderAndIsr to the new controller's next one: tens of milliseconds in the
/// runs measured.
pub const WATCH_PERIOD: Duration = Duration::from_millis(10);

/// How long to wait for another broker to take `/controller` after the pause, in session
/// timeouts (the pause's own expiry, then the election): past it the controller is resumed
/// anyway and the summary says so.
pub const NEW_CONTROLLER_WAIT_SESSIONS: u32 = 4;

/// The broker to kill, seeded, and whether it leads a partition: a partition leader that is
/// not the controller, else (the controller leads every partition, as after a failover
/// without a preferred-leader election) one of the other `brokers`.
///
/// Preferred are leaders whose death makes the zombie elect a broker other than the new
/// controller's choice: the zombie elects the first replica after `l` in the assignment that
/// is live and in its cached ISR, which is `c` when `c` comes first among the others (the new
/// controller, seeing only itself live, elects itself). Any `l` works when `c` leads a
/// partition itself: the zombie keeps `c` as leader with the next leader epoch, the one the
/// new controller gave its own election; so does a follower. `None` when no partition leader
/// is known or no other broker exists.
pub fn choose_victim(
    rng: &mut Rng,
    leaders: &BTreeMap<i32, NodeId>,
    replicas: &BTreeMap<i32, Vec<NodeId>>,
    brokers: &[NodeId],
    controller: NodeId,
) -> Option<(NodeId, bool)> {
    let mut candidates: Vec<NodeId> = leaders
        .values()
        .copied()
        .filter(|&l| l != controller)
        .collect();
    candidates.sort();
    candidates.dedup();
    let controller_leads = leaders.values().any(|&l| l == controller);
    let promising = |l: NodeId| {
        controller_leads
            || leaders.iter().any(|(p, &led)| {
                led == l
                    && replicas
                        .get(p)
                        .and_then(|r| r.iter().find(|&&b| b != l))
                        .is_some_and(|&next| next == controller)
            })
    };
    let preferred: Vec<NodeId> = candidates
        .iter()
        .copied()
        .filter(|&l| promising(l))
        .collect();
    let pool = if preferred.is_empty() {
        &candidates
    } else {
        &preferred
    };
    if !pool.is_empty() {
        return Some((pool[rng.below(pool.len() as u64) as usize], true));
    }
    let followers: Vec<NodeId> = brokers
        .iter()
        .copied()
        .filter(|&b| b != controller)
        .collect();
    if !controller_leads || followers.is_empty() {
        return None;
    }
    Some((followers[rng.below(followers.len() as u64) as usize], false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<V: Clone>(entries: &[(i32, V)]) -> BTreeMap<i32, V> {
        entries.iter().cloned().collect()
    }

    #[test]
    fn the_controller_is_never_the_broker_killed() {
        let brokers = [1, 2, 3];
        let replicas = map(&[(0, vec![1, 2, 3]), (1, vec![1, 3, 2])]);
        // The controller leads everything: a follower dies (both occur).
        let leaders = map(&[(0, 1), (1, 1)]);
        let chosen: std::collections::BTreeSet<(NodeId, bool)> = (0..40)
            .filter_map(|s| choose_victim(&mut Rng::new(s), &leaders, &replicas, &brokers, 1))
            .collect();
        assert_eq!(chosen, [(2, false), (3, false)].into());
        let leaders = map(&[(0, 1), (1, 2)]);
        for seed in 0..20 {
            assert_eq!(
                choose_victim(&mut Rng::new(seed), &leaders, &replicas, &brokers, 1),
                Some((2, true))
            );
        }
        // No leader known, or no other broker: nothing to do.
        let none = BTreeMap::new();
        assert_eq!(
            choose_victim(&mut Rng::new(0), &none, &replicas, &brokers, 1),
            None
        );
        let leaders = map(&[(0, 1)]);
        assert_eq!(
            choose_victim(&mut Rng::new(0), &leaders, &replicas, &[1], 1),
            None
        );
    }

    #[test]
    fn a_leader_whose_next_replica_is_the_controller_is_preferred() {
        // Controller 3 leads nothing; partition 0 ([1, 2, 3]) would go to 2 (not the zombie),
        // partition 1 ([2, 3, 1]) to 3, the zombie: killing 2 is the promising choice.
        let leaders = map(&[(0, 1), (1, 2)]);
        let replicas = map(&[(0, vec![1, 2, 3]), (1, vec![2, 3, 1])]);
        for seed in 0..20 {
            assert_eq!(
                choose_victim(&mut Rng::new(seed), &leaders, &replicas, &[1, 2, 3], 3),
                Some((2, true))
            );
        }
        // When the controller leads a partition, every other leader is promising: both occur.
        let leaders = map(&[(0, 1), (1, 2), (2, 3)]);
        let replicas = map(&[(0, vec![1, 2, 3]), (1, vec![2, 1, 3]), (2, vec![3, 1, 2])]);
        let chosen: std::collections::BTreeSet<(NodeId, bool)> = (0..40)
            .filter_map(|s| choose_victim(&mut Rng::new(s), &leaders, &replicas, &[1, 2, 3], 3))
            .collect();
        assert_eq!(chosen, [(1, true), (2, true)].into());
    }

    #[test]
    fn the_pause_falls_between_the_two_expiries() {
        let t = Duration::from_millis(2000);
        let pause = pause_delay(t).as_secs_f64() / t.as_secs_f64();
        // The leader's session expires 0.8 T to 1.15 T after its kill, the controller's as
        // long after its pause: the pause comes before the first, the first before the second.
        assert!(pause + 0.2 <= 0.8, "{pause}");
        assert!(1.15 + 0.2 <= pause + 0.8 + 1e-9, "{pause}");
    }
}

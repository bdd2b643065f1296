//! Sans-IO partition replica state (Kafka's `Partition`): leader epoch, ISR, per-replica log
//! end offsets (LEO) and the high watermark (HW). Inputs are plain values, outputs are plans
//! the IO adapter carries out; nothing here touches a file or a socket.
//!
//! Single-node today (the ISR is just the leader, so the HW follows the LEO), but the state is
//! the one replication needs: followers report their fetch offset ([`PartitionState::on_follower_fetch`]),
//! the HW is the minimum LEO over the ISR (KIP-101 made it epoch-fenced), and acks=all waits
//! for the HW to pass the batch ([`PartitionState::acks_all_satisfied`]).

use crate::batch::{self, BatchError, BatchHeader};
use thiserror::Error;

/// What a follower replica looks like from the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReplica {
    pub broker_id: i32,
    /// The follower's LEO, learnt from its last fetch offset.
    pub log_end_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    pub local_broker: i32,
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub remotes: Vec<RemoteReplica>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProduceError {
    /// Kafka CORRUPT_MESSAGE (2): bad CRC, torn batch or trailing garbage.
    #[error("corrupt record batch: {0}")]
    Corrupt(BatchError),
    /// Kafka INVALID_RECORD (87): structurally fine but not acceptable (e.g. empty).
    #[error("invalid records: {0}")]
    Invalid(&'static str),
    /// Kafka NOT_LEADER_OR_FOLLOWER (6).
    #[error("this broker is not the leader")]
    NotLeader,
}

/// Validated, offset-assigned batches ready to be written to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPlan {
    pub records: Vec<u8>,
    pub batches: Vec<(usize, BatchHeader)>,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// How far a fetcher may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchBound {
    OutOfRange,
    /// Read batches below this offset (HW for consumers, LEO for followers).
    UpTo(i64),
}

impl PartitionState {
    /// A partition this broker leads alone (single-node cluster, or a fresh leader with no
    /// caught-up followers yet).
    pub fn sole_leader(
        partition: i32,
        broker: i32,
        leader_epoch: i32,
        log_start: i64,
        leo: i64,
    ) -> Self {
        PartitionState {
            partition,
            local_broker: broker,
            leader: Some(broker),
            leader_epoch,
            isr: vec![broker],
            log_start_offset: log_start,
            log_end_offset: leo,
            high_watermark: leo,
            remotes: Vec::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.local_broker)
    }

    /// Validates a produce request's records (every batch v2 with a good CRC, nothing
    /// trailing) and assigns offsets from the LEO by rewriting each batch's base offset and
    /// stamping the leader epoch. The records themselves are untouched.
    pub fn prepare_append(&self, mut records: Vec<u8>) -> Result<AppendPlan, ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeader);
        }
        let scan = batch::scan(&records);
        if let Some(e) = scan.stopped {
            return Err(ProduceError::Corrupt(e));
        }
        if scan.batches.is_empty() {
            return Err(ProduceError::Invalid("no record batches"));
        }
        let mut next = self.log_end_offset;
        let mut batches = Vec::with_capacity(scan.batches.len());
        for (pos, mut h) in scan.batches {
            batch::assign(&mut records[pos..pos + h.size], next, self.leader_epoch);
            h.base_offset = next;
            h.partition_leader_epoch = self.leader_epoch;
            next = h.last_offset() + 1;
            batches.push((pos, h));
        }
        Ok(AppendPlan {
            records,
            batches,
            base_offset: self.log_end_offset,
            last_offset: next - 1,
        })
    }

    /// The log accepted the plan: advance the LEO, and the HW if the ISR allows.
    pub fn on_local_append(&mut self, plan: &AppendPlan) {
        self.log_end_offset = plan.last_offset + 1;
        self.maybe_advance_hw();
    }

    /// A follower fetched from `fetch_offset`, so its LEO is that offset (replication, next issue).
    pub fn on_follower_fetch(&mut self, broker_id: i32, fetch_offset: i64) -> bool {
        match self.remotes.iter_mut().find(|r| r.broker_id == broker_id) {
            Some(r) => r.log_end_offset = fetch_offset,
            None => self.remotes.push(RemoteReplica {
                broker_id,
                log_end_offset: fetch_offset,
            }),
        }
        self.maybe_advance_hw()
    }

    fn replica_leo(&self, id: i32) -> Option<i64> {
        if id == self.local_broker {
            return Some(self.log_end_offset);
        }
        self.remotes
            .iter()
            .find(|r| r.broker_id == id)
            .map(|r| r.log_end_offset)
    }

    /// HW = min LEO over the ISR; it never moves backwards on the leader.
    fn maybe_advance_hw(&mut self) -> bool {
        let min = self
            .isr
            .iter()
            .map(|&id| self.replica_leo(id).unwrap_or(self.high_watermark))
            .min();
        match min {
            Some(m) if m > self.high_watermark => {
                self.high_watermark = m;
                true
            }
            _ => false,
        }
    }

    /// acks=all is satisfied once every ISR member has the batch, i.e. the HW passed it.
    pub fn acks_all_satisfied(&self, last_offset: i64) -> bool {
        self.high_watermark > last_offset
    }

    /// Consumers read up to the HW; offsets outside [log start, LEO] are OFFSET_OUT_OF_RANGE.
    pub fn fetch_bound(&self, offset: i64, from_follower: bool) -> FetchBound {
        if offset < self.log_start_offset || offset > self.log_end_offset {
            return FetchBound::OutOfRange;
        }
        FetchBound::UpTo(if from_follower {
            self.log_end_offset
        } else {
            self.high_watermark
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build;
    use proptest::prelude::*;

    #[test]
    fn offsets_assigned_from_leo_and_epoch_stamped() {
        let mut p = PartitionState::sole_leader(0, 1, 4, 0, 10);
        let mut recs = build(99, 3, 5, 0);
        recs.extend(build(7, 2, 5, 0));
        let plan = p.prepare_append(recs).unwrap();
        assert_eq!((plan.base_offset, plan.last_offset), (10, 14));
        let s = batch::scan(&plan.records);
        assert!(
            s.stopped.is_none(),
            "CRC still valid after rewriting base offsets"
        );
        let got: Vec<_> = s
            .batches
            .iter()
            .map(|(_, h)| (h.base_offset, h.partition_leader_epoch))
            .collect();
        assert_eq!(got, vec![(10, 4), (13, 4)]);
        p.on_local_append(&plan);
        assert_eq!((p.log_end_offset, p.high_watermark), (15, 15));
        assert!(p.acks_all_satisfied(14));
    }

    #[test]
    fn corrupt_and_empty_are_rejected() {
        let p = PartitionState::sole_leader(0, 1, 0, 0, 0);
        let mut b = build(0, 1, 5, 0);
        let n = b.len();
        b[n - 1] ^= 0x55;
        assert!(matches!(
            p.prepare_append(b),
            Err(ProduceError::Corrupt(BatchError::BadCrc { .. }))
        ));
        assert!(matches!(
            p.prepare_append(vec![]),
            Err(ProduceError::Invalid(_))
        ));
        let mut trailing = build(0, 1, 5, 0);
        trailing.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(
            p.prepare_append(trailing),
            Err(ProduceError::Corrupt(_))
        ));
    }

    #[test]
    fn fetch_bounds() {
        let p = PartitionState::sole_leader(0, 1, 0, 5, 20);
        assert_eq!(p.fetch_bound(4, false), FetchBound::OutOfRange);
        assert_eq!(p.fetch_bound(21, false), FetchBound::OutOfRange);
        assert_eq!(p.fetch_bound(20, false), FetchBound::UpTo(20));
    }

    proptest! {
        /// With followers in the ISR, the HW is the minimum ISR LEO, never decreases, and
        /// acks=all only completes for offsets every ISR member has.
        #[test]
        fn hw_is_min_isr_leo_and_monotonic(steps in proptest::collection::vec((0u8..3, 1i64..5), 1..40)) {
            let mut p = PartitionState::sole_leader(0, 0, 0, 0, 0);
            p.isr = vec![0, 1, 2];
            let mut follower = [0i64; 3];
            let mut last_hw = 0;
            for (who, n) in steps {
                if who == 0 {
                    let plan = p.prepare_append(build(0, n as i32, 1, 0)).unwrap();
                    p.on_local_append(&plan);
                } else {
                    let w = who as usize;
                    follower[w] = (follower[w] + n).min(p.log_end_offset);
                    p.on_follower_fetch(i32::from(who), follower[w]);
                }
                let min = p.log_end_offset.min(follower[1]).min(follower[2]);
                prop_assert!(p.high_watermark >= last_hw);
                prop_assert_eq!(p.high_watermark, min.max(last_hw));
                last_hw = p.high_watermark;
            }
        }
    }
}

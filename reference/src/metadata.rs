//! The cluster metadata that the active controller writes to `__cluster_metadata` and that every
//! broker applies, in log order, to its metadata image (KIP-500, KIP-631).
//!
//! This module is the contract between the controller quorum and the brokers' data plane: the
//! controller turns requests (BrokerRegistration, BrokerHeartbeat, CreateTopics,
//! AlterPartition, AlterPartitionReassignments) into [`MetadataRecord`]s, the quorum commits them,
//! and brokers replay the committed ones into a [`MetadataImage`] from which they answer
//! Metadata and decide which partitions they lead or follow.
//!
//! Applying a record checks the invariants the models check (`leader-in-isr`,
//! `isr-subset-of-replicas`, leader and partition epochs that only grow): a record that would
//! break one is rejected with a [`MetadataError`] and the image is left unchanged, so a bug in
//! the controller stops at its cause instead of spreading to every broker.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;
use uuid::Uuid;

pub type BrokerId = i32;
pub type LeaderEpoch = i32;
pub type PartitionEpoch = i32;
pub type BrokerEpoch = i64;

/// Kafka's "no leader" (the partition is offline).
pub const NO_LEADER: BrokerId = -1;

/// One record of the metadata log (Kafka's `metadata/*.json` record types, the fields this
/// reference cluster uses, with Kafka's names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// RegisterBrokerRecord: a broker (re)registered; its broker epoch is the offset of this
    /// record, so a restarted broker always gets a larger one (what KIP-903 relies on).
    RegisterBroker {
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
        incarnation_id: Uuid,
        /// `host:port` of its client listener.
        endpoint: String,
        fenced: bool,
        /// KIP-966: the broker's previous shutdown was unclean (it may have lost unflushed
        /// records), so it must leave the ISR and the ELR of its partitions.
        unclean_shutdown: bool,
    },
    /// BrokerRegistrationChangeRecord: fencing (lapsed heartbeats) or unfencing (caught up with
    /// the metadata log), or controlled shutdown.
    BrokerRegistrationChange {
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
        fenced: Option<bool>,
        in_controlled_shutdown: Option<bool>,
    },
    /// UnregisterBrokerRecord.
    UnregisterBroker {
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
    },
    /// TopicRecord.
    Topic { name: String, topic_id: Uuid },
    /// RemoveTopicRecord.
    RemoveTopic { topic_id: Uuid },
    /// PartitionRecord: a partition's full registration (creation).
    Partition {
        topic_id: Uuid,
        partition_id: i32,
        #[serde(flatten)]
        registration: PartitionRegistration,
    },
    /// PartitionChangeRecord: only the fields that change. The controller computes the new
    /// leader epoch and partition epoch (see [`PartitionRegistration::merge`]); brokers check
    /// that they only grow.
    PartitionChange {
        topic_id: Uuid,
        partition_id: i32,
        #[serde(flatten)]
        change: PartitionChange,
    },
    /// NoOpRecord: the new leader's first write in its epoch commits everything before it.
    NoOp,
}

/// What the controller owns for one partition (Kafka's `PartitionRegistration`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRegistration {
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// Eligible leader replicas (KIP-966).
    #[serde(default)]
    pub elr: Vec<BrokerId>,
    /// Reassignment (KIP-455): replicas being added and removed.
    #[serde(default)]
    pub adding_replicas: Vec<BrokerId>,
    #[serde(default)]
    pub removing_replicas: Vec<BrokerId>,
    /// [`NO_LEADER`] when offline.
    pub leader: BrokerId,
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change; AlterPartition requests carrying an older one are rejected with
    /// INVALID_UPDATE_VERSION (KIP-497).
    pub partition_epoch: PartitionEpoch,
}

/// The fields of a PartitionChangeRecord; `None` is "unchanged".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChange {
    pub leader: Option<BrokerId>,
    pub isr: Option<Vec<BrokerId>>,
    pub elr: Option<Vec<BrokerId>>,
    pub replicas: Option<Vec<BrokerId>>,
    pub adding_replicas: Option<Vec<BrokerId>>,
    pub removing_replicas: Option<Vec<BrokerId>>,
    /// The resulting epochs, stamped by the controller so every broker agrees on them.
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
}

impl PartitionRegistration {
    pub fn has_leader(&self) -> bool {
        self.leader != NO_LEADER
    }

    /// Whether a change must bump the leader epoch: a new leader, or replicas removed by a
    /// reassignment (Kafka bumps it then so the removed replicas' fetches are fenced).
    pub fn change_bumps_leader_epoch(&self, change: &PartitionChange) -> bool {
        let leader_changes = change.leader.is_some_and(|l| l != self.leader);
        let replicas_removed = change
            .replicas
            .as_ref()
            .is_some_and(|r| self.replicas.iter().any(|b| !r.contains(b)));
        leader_changes || replicas_removed
    }

    /// The registration after `change`, with its epochs checked: the partition epoch must be
    /// the next one, the leader epoch must grow exactly when [`Self::change_bumps_leader_epoch`].
    pub fn merge(&self, change: &PartitionChange) -> Result<PartitionRegistration, MetadataError> {
        let bump = self.change_bumps_leader_epoch(change);
        let expected_leader_epoch = if bump {
            self.leader_epoch + 1
        } else {
            self.leader_epoch
        };
        if change.leader_epoch != expected_leader_epoch {
            return Err(MetadataError::Epoch(format!(
                "leader epoch {} after a change from {} (expected {expected_leader_epoch})",
                change.leader_epoch, self.leader_epoch
            )));
        }
        if change.partition_epoch != self.partition_epoch + 1 {
            return Err(MetadataError::Epoch(format!(
                "partition epoch {} after {} (expected {})",
                change.partition_epoch,
                self.partition_epoch,
                self.partition_epoch + 1
            )));
        }
        let pick = |new: &Option<Vec<BrokerId>>, old: &Vec<BrokerId>| {
            new.clone().unwrap_or_else(|| old.clone())
        };
        let next = PartitionRegistration {
            replicas: pick(&change.replicas, &self.replicas),
            isr: pick(&change.isr, &self.isr),
            elr: pick(&change.elr, &self.elr),
            adding_replicas: pick(&change.adding_replicas, &self.adding_replicas),
            removing_replicas: pick(&change.removing_replicas, &self.removing_replicas),
            leader: change.leader.unwrap_or(self.leader),
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch,
        };
        next.check()?;
        Ok(next)
    }

    /// The models' partition invariants, checked locally.
    pub fn check(&self) -> Result<(), MetadataError> {
        let broken = |what: &str| Err(MetadataError::Invariant(format!("{what}: {self:?}")));
        if has_duplicates(&self.replicas) || has_duplicates(&self.isr) {
            return broken("duplicate broker ids");
        }
        if self.has_leader() && !self.replicas.contains(&self.leader) {
            return broken("leader-in-replicas");
        }
        if !self.isr.iter().all(|b| self.replicas.contains(b)) {
            return broken("isr-subset-of-replicas");
        }
        if self.has_leader() && !self.isr.contains(&self.leader) {
            return broken("leader-in-isr");
        }
        if self.elr.iter().any(|b| self.isr.contains(b)) {
            return broken("ELR and ISR overlap");
        }
        if !self
            .adding_replicas
            .iter()
            .all(|b| self.replicas.contains(b))
            || !self
                .removing_replicas
                .iter()
                .all(|b| self.replicas.contains(b))
        {
            return broken("adding/removing replicas outside the replica set");
        }
        Ok(())
    }
}

fn has_duplicates(ids: &[BrokerId]) -> bool {
    ids.iter().enumerate().any(|(i, b)| ids[..i].contains(b))
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MetadataError {
    #[error("metadata record does not decode: {0}")]
    Decode(String),
    #[error("metadata record breaks an invariant ({0})")]
    Invariant(String),
    #[error("metadata record has a wrong epoch: {0}")]
    Epoch(String),
    #[error("metadata record names an unknown {0}")]
    Unknown(String),
    #[error("metadata record at offset {offset} applied after offset {applied}")]
    Order { offset: i64, applied: i64 },
}

impl MetadataRecord {
    /// The record's value in the metadata log. JSON: metadata is small and rare, and a readable
    /// log is worth more here than a few bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata records serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, MetadataError> {
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Decode(e.to_string()))
    }
}

/// A broker as the controller registered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokerRegistration {
    pub broker_id: BrokerId,
    pub broker_epoch: BrokerEpoch,
    pub incarnation_id: Uuid,
    pub endpoint: String,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
    pub unclean_shutdown: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: BTreeMap<i32, PartitionRegistration>,
}

/// Everything a broker knows from the committed metadata log, up to `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetadataImage {
    /// Offset of the last record applied (-1: none).
    pub offset: i64,
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    pub topics: BTreeMap<Uuid, TopicImage>,
    pub topic_ids: BTreeMap<String, Uuid>,
}

impl Default for MetadataImage {
    fn default() -> Self {
        MetadataImage {
            offset: -1,
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
        }
    }
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRegistration> {
        self.topic(topic)?.partitions.get(&partition)
    }

    /// Brokers that are registered and not fenced (they may lead and join ISRs).
    pub fn active_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Apply the committed record at `offset`. Records must come in log order; a record that
    /// breaks an invariant is refused and the image stays as it was.
    pub fn apply(&mut self, offset: i64, record: &MetadataRecord) -> Result<(), MetadataError> {
        if offset <= self.offset {
            return Err(MetadataError::Order {
                offset,
                applied: self.offset,
            });
        }
        match record {
            MetadataRecord::RegisterBroker {
                broker_id,
                broker_epoch,
                incarnation_id,
                endpoint,
                fenced,
                unclean_shutdown,
            } => {
                if let Some(old) = self.brokers.get(broker_id) {
                    if *broker_epoch <= old.broker_epoch {
                        return Err(MetadataError::Epoch(format!(
                            "broker {broker_id} registered with epoch {broker_epoch} after {}",
                            old.broker_epoch
                        )));
                    }
                }
                self.brokers.insert(
                    *broker_id,
                    BrokerRegistration {
                        broker_id: *broker_id,
                        broker_epoch: *broker_epoch,
                        incarnation_id: *incarnation_id,
                        endpoint: endpoint.clone(),
                        fenced: *fenced,
                        in_controlled_shutdown: false,
                        unclean_shutdown: *unclean_shutdown,
                    },
                );
            }
            MetadataRecord::BrokerRegistrationChange {
                broker_id,
                broker_epoch,
                fenced,
                in_controlled_shutdown,
            } => {
                let b = self.registered(*broker_id, *broker_epoch)?;
                if let Some(f) = fenced {
                    b.fenced = *f;
                }
                if let Some(s) = in_controlled_shutdown {
                    b.in_controlled_shutdown = *s;
                }
            }
            MetadataRecord::UnregisterBroker {
                broker_id,
                broker_epoch,
            } => {
                self.registered(*broker_id, *broker_epoch)?;
                self.brokers.remove(broker_id);
            }
            MetadataRecord::Topic { name, topic_id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(topic_id) {
                    return Err(MetadataError::Invariant(format!(
                        "topic '{name}' ({topic_id}) created twice"
                    )));
                }
                self.topic_ids.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    TopicImage {
                        name: name.clone(),
                        topic_id: *topic_id,
                        partitions: BTreeMap::new(),
                    },
                );
            }
            MetadataRecord::RemoveTopic { topic_id } => {
                let topic = self
                    .topics
                    .remove(topic_id)
                    .ok_or_else(|| MetadataError::Unknown(format!("topic {topic_id}")))?;
                self.topic_ids.remove(&topic.name);
            }
            MetadataRecord::Partition {
                topic_id,
                partition_id,
                registration,
            } => {
                registration.check()?;
                let topic = self
                    .topics
                    .get_mut(topic_id)
                    .ok_or_else(|| MetadataError::Unknown(format!("topic {topic_id}")))?;
                if topic.partitions.contains_key(partition_id) {
                    return Err(MetadataError::Invariant(format!(
                        "partition {partition_id} of topic {topic_id} created twice"
                    )));
                }
                topic.partitions.insert(*partition_id, registration.clone());
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition_id,
                change,
            } => {
                let current = self
                    .topics
                    .get_mut(topic_id)
                    .and_then(|t| t.partitions.get_mut(partition_id))
                    .ok_or_else(|| {
                        MetadataError::Unknown(format!("partition {topic_id}-{partition_id}"))
                    })?;
                *current = current.merge(change)?;
            }
            MetadataRecord::NoOp => {}
        }
        self.offset = offset;
        Ok(())
    }

    fn registered(
        &mut self,
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
    ) -> Result<&mut BrokerRegistration, MetadataError> {
        match self.brokers.get_mut(&broker_id) {
            Some(b) if b.broker_epoch == broker_epoch => Ok(b),
            Some(b) => Err(MetadataError::Epoch(format!(
                "broker {broker_id} epoch {broker_epoch} is not its current {}",
                b.broker_epoch
            ))),
            None => Err(MetadataError::Unknown(format!("broker {broker_id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(topic_id: Uuid) -> MetadataImage {
        let mut image = MetadataImage::default();
        image
            .apply(
                0,
                &MetadataRecord::Topic {
                    name: "t".into(),
                    topic_id,
                },
            )
            .unwrap();
        image
            .apply(
                1,
                &MetadataRecord::Partition {
                    topic_id,
                    partition_id: 0,
                    registration: PartitionRegistration {
                        replicas: vec![1, 2, 3],
                        isr: vec![1, 2, 3],
                        elr: vec![],
                        adding_replicas: vec![],
                        removing_replicas: vec![],
                        leader: 1,
                        leader_epoch: 0,
                        partition_epoch: 0,
                    },
                },
            )
            .unwrap();
        image
    }

    fn change(leader: Option<i32>, isr: Vec<i32>, le: i32, pe: i32) -> PartitionChange {
        PartitionChange {
            leader,
            isr: Some(isr),
            leader_epoch: le,
            partition_epoch: pe,
            ..PartitionChange::default()
        }
    }

    fn apply_change(
        image: &mut MetadataImage,
        offset: i64,
        id: Uuid,
        c: PartitionChange,
    ) -> Result<(), MetadataError> {
        image.apply(
            offset,
            &MetadataRecord::PartitionChange {
                topic_id: id,
                partition_id: 0,
                change: c,
            },
        )
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let id = Uuid::new_v4();
        let records = [
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id: id,
            },
            MetadataRecord::PartitionChange {
                topic_id: id,
                partition_id: 2,
                change: change(Some(3), vec![3], 4, 9),
            },
            MetadataRecord::NoOp,
        ];
        for r in records {
            assert_eq!(MetadataRecord::decode(&r.encode()).unwrap(), r);
        }
        assert!(matches!(
            MetadataRecord::decode(b"{\"type\":\"Nope\"}"),
            Err(MetadataError::Decode(_))
        ));
    }

    #[test]
    fn isr_shrink_keeps_the_leader_epoch_and_bumps_the_partition_epoch() {
        let id = Uuid::new_v4();
        let mut image = created(id);
        apply_change(&mut image, 2, id, change(None, vec![1, 2], 0, 1)).unwrap();
        let p = image.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (1, 0, 1));
        assert_eq!(p.isr, vec![1, 2]);
    }

    #[test]
    fn a_change_that_breaks_an_invariant_is_refused_and_changes_nothing() {
        let id = Uuid::new_v4();
        let mut image = created(id);
        let before = image.clone();
        // Leader outside the ISR.
        let err = apply_change(&mut image, 2, id, change(Some(2), vec![1, 3], 1, 1));
        assert!(matches!(err, Err(MetadataError::Invariant(m)) if m.contains("leader-in-isr")));
        // ISR outside the replicas.
        let err = apply_change(&mut image, 2, id, change(None, vec![1, 4], 0, 1));
        assert!(matches!(err, Err(MetadataError::Invariant(m)) if m.contains("isr-subset")));
        // A new leader without a new leader epoch, a stale partition epoch.
        let err = apply_change(&mut image, 2, id, change(Some(2), vec![2], 0, 1));
        assert!(matches!(err, Err(MetadataError::Epoch(_))));
        let err = apply_change(&mut image, 2, id, change(None, vec![1], 0, 0));
        assert!(matches!(err, Err(MetadataError::Epoch(_))));
        assert_eq!(image, before);
        // Records out of log order.
        let err = apply_change(&mut image, 1, id, change(None, vec![1], 0, 1));
        assert!(matches!(err, Err(MetadataError::Order { .. })));
    }

    #[test]
    fn a_broker_reregisters_only_with_a_larger_epoch() {
        let mut image = MetadataImage::default();
        let reg = |epoch| MetadataRecord::RegisterBroker {
            broker_id: 1,
            broker_epoch: epoch,
            incarnation_id: Uuid::nil(),
            endpoint: "127.0.0.1:9092".into(),
            fenced: true,
            unclean_shutdown: false,
        };
        image.apply(5, &reg(5)).unwrap();
        assert!(image.apply(6, &reg(5)).is_err());
        image
            .apply(
                6,
                &MetadataRecord::BrokerRegistrationChange {
                    broker_id: 1,
                    broker_epoch: 5,
                    fenced: Some(false),
                    in_controlled_shutdown: None,
                },
            )
            .unwrap();
        assert_eq!(image.active_brokers().count(), 1);
        // A change naming the broker's previous incarnation is refused (KIP-903).
        image.apply(7, &reg(7)).unwrap();
        let stale = MetadataRecord::BrokerRegistrationChange {
            broker_id: 1,
            broker_epoch: 5,
            fenced: Some(false),
            in_controlled_shutdown: None,
        };
        assert!(matches!(
            image.apply(8, &stale),
            Err(MetadataError::Epoch(_))
        ));
    }
}

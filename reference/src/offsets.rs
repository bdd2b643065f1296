//! Durable committed consumer offsets, kept in an internal log like `__consumer_offsets`
//! (Kafka 0.8.2 moved offsets from ZooKeeper into such a log).
//!
//! Each OffsetCommit appends one record batch whose records are keyed by
//! (group, topic, partition); the latest value wins. On start-up the log is recovered like any
//! partition (CRC-checked, torn tail truncated) and replayed into the in-memory map. Commits
//! are fsynced before they are acknowledged whatever the data flush policy, because a consumer
//! that was told its offset is committed must resume after it.

use crate::batch;
use crate::log::{LogConfig, LogError, PartitionLog, ReadResult};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::collections::HashMap;
use std::path::Path;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

pub type OffsetKey = (String, String, i32);

pub struct OffsetStore {
    log: PartitionLog,
    offsets: HashMap<OffsetKey, Committed>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Some(a)
}

fn take_str(buf: &mut &[u8]) -> Option<String> {
    let n = u16::from_be_bytes(take(buf, 2)?.try_into().ok()?) as usize;
    String::from_utf8(take(buf, n)?.to_vec()).ok()
}

/// Key schema v1: version, group, topic, partition (as Kafka's OffsetCommitKey).
pub fn encode_key(k: &OffsetKey) -> Vec<u8> {
    let mut out = 1u16.to_be_bytes().to_vec();
    put_str(&mut out, &k.0);
    put_str(&mut out, &k.1);
    out.extend_from_slice(&k.2.to_be_bytes());
    out
}

pub fn decode_key(mut b: &[u8]) -> Option<OffsetKey> {
    let b = &mut b;
    if take(b, 2)? != [0, 1] {
        return None;
    }
    let group = take_str(b)?;
    let topic = take_str(b)?;
    let partition = i32::from_be_bytes(take(b, 4)?.try_into().ok()?);
    Some((group, topic, partition))
}

pub fn encode_value(c: &Committed) -> Vec<u8> {
    let mut out = 1u16.to_be_bytes().to_vec();
    out.extend_from_slice(&c.offset.to_be_bytes());
    out.extend_from_slice(&c.leader_epoch.to_be_bytes());
    put_str(&mut out, &c.metadata);
    out
}

pub fn decode_value(mut b: &[u8]) -> Option<Committed> {
    let b = &mut b;
    if take(b, 2)? != [0, 1] {
        return None;
    }
    let offset = i64::from_be_bytes(take(b, 8)?.try_into().ok()?);
    let leader_epoch = i32::from_be_bytes(take(b, 4)?.try_into().ok()?);
    let metadata = take_str(b)?;
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
    })
}

impl OffsetStore {
    pub fn open(data_dir: &Path) -> Result<OffsetStore, LogError> {
        let dir = data_dir.join(format!("{OFFSETS_TOPIC}-0"));
        let (log, report) = PartitionLog::open(&dir, LogConfig::default())?;
        if report.truncated.is_some() {
            tracing::warn!(?report, "offsets log recovered with truncation");
        }
        let mut offsets = HashMap::new();
        let mut next = log.log_start_offset();
        let leo = log.log_end_offset();
        while next < leo {
            let ReadResult::Records(bytes) = log.read(next, 1 << 20, leo)? else {
                break;
            };
            if bytes.is_empty() {
                break;
            }
            let scan = batch::scan(&bytes);
            for (pos, h) in &scan.batches {
                let mut b = Bytes::copy_from_slice(&bytes[*pos..pos + h.size]);
                if let Ok(set) = RecordBatchDecoder::decode(&mut b) {
                    for r in set.records {
                        let (Some(k), Some(v)) = (
                            r.key.as_deref().and_then(decode_key),
                            r.value.as_deref().and_then(decode_value),
                        ) else {
                            continue;
                        };
                        offsets.insert(k, v);
                    }
                }
                next = h.last_offset() + 1;
            }
            if scan.batches.is_empty() {
                break;
            }
        }
        tracing::info!(entries = offsets.len(), "loaded committed offsets");
        Ok(OffsetStore { log, offsets })
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<&Committed> {
        self.offsets
            .get(&(group.to_owned(), topic.to_owned(), partition))
    }

    /// Appends and fsyncs the commits, then makes them visible.
    pub fn commit(&mut self, entries: Vec<(OffsetKey, Committed)>) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let records: Vec<Record> = entries
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: self.log.log_end_offset() + i as i64,
                sequence: -1,
                timestamp: now,
                key: Some(Bytes::from(encode_key(k))),
                value: Some(Bytes::from(encode_value(v))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| LogError::Io {
            path: self.log.dir().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let scan = batch::scan(&buf);
        self.log.append(&buf, &scan.batches)?;
        self.log.flush()?;
        for (k, v) in entries {
            self.offsets.insert(k, v);
        }
        Ok(())
    }

    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// Forget the offsets of a deleted topic (in memory; the log keeps history).
    pub fn forget_topic(&mut self, topic: &str) {
        self.offsets.retain(|k, _| k.1 != topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_reopen_latest_wins() {
        let d = tempfile::tempdir().unwrap();
        let mut s = OffsetStore::open(d.path()).unwrap();
        let k = ("g".to_string(), "t".to_string(), 0);
        let c = |o| Committed {
            offset: o,
            leader_epoch: 0,
            metadata: "m".into(),
        };
        s.commit(vec![(k.clone(), c(5))]).unwrap();
        s.commit(vec![(k.clone(), c(9)), (("g".into(), "t".into(), 1), c(3))])
            .unwrap();
        drop(s);
        let s = OffsetStore::open(d.path()).unwrap();
        assert_eq!(s.get("g", "t", 0), Some(&c(9)));
        assert_eq!(s.get("g", "t", 1).map(|c| c.offset), Some(3));
        assert_eq!(s.get("h", "t", 0), None);
    }

    #[test]
    fn key_value_roundtrip_and_garbage() {
        let k = ("grp".to_string(), "topic".to_string(), 7);
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        assert_eq!(decode_key(&[0, 1, 0]), None);
        assert_eq!(decode_value(&[9]), None);
    }
}

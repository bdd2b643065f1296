//! The `__cluster_metadata-0` log on a controller's (or observer's) disk, and its
//! `quorum-state` file.
//!
//! The log is the broker's own segmented [`PartitionLog`] holding record batch v2 batches, one
//! KRaft entry per batch: `partitionLeaderEpoch` is the entry's epoch (so the log's
//! leader-epoch checkpoint doubles as KRaft's epoch cache) and the leader-change record is a
//! control batch, as in Kafka. The same bytes go over the wire in Fetch responses.
//!
//! `quorum-state` (KIP-595) is a small JSON file replaced atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the directory): a voter that crashes half-way
//! through finds either its old vote or its new one, never none, so it cannot vote twice in an
//! epoch after a restart.

use crate::batch::{self, ATTRIBUTES, CRC, HEADER_SIZE, LOG_OVERHEAD};
use crate::log::{LogConfig, LogError, PartitionLog, ReadResult};
use crate::raft::{Entry, Epoch, NodeId, Output, QuorumState};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const METADATA_TOPIC: &str = "__cluster_metadata";
pub const METADATA_PARTITION_DIR: &str = "__cluster_metadata-0";
pub const QUORUM_STATE_FILE: &str = "quorum-state";
/// Batch attribute bit of control batches (KIP-98).
const CONTROL_ATTRIBUTE: i16 = 0x20;

#[derive(Debug, Error)]
pub enum MetadataLogError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt quorum-state ({reason}); restore it from a backup or remove the controller's data directory to rejoin as a new node")]
    QuorumState { path: PathBuf, reason: String },
    #[error(
        "__cluster_metadata batch at offset {offset} is not a single-record KRaft entry: {reason}"
    )]
    Entry { offset: i64, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MetadataLogError + '_ {
    move |source| MetadataLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct QuorumStateFile {
    leader_epoch: Epoch,
    voted_id: i32,
    leader_id: i32,
}

/// Writes `quorum-state` atomically (tmp + fsync + rename + directory fsync).
pub fn write_quorum_state(dir: &Path, q: &QuorumState) -> Result<(), MetadataLogError> {
    let path = dir.join(QUORUM_STATE_FILE);
    let tmp = dir.join(format!("{QUORUM_STATE_FILE}.tmp"));
    let body = serde_json::to_vec(&QuorumStateFile {
        leader_epoch: q.leader_epoch,
        voted_id: q.voted_for.unwrap_or(-1),
        leader_id: q.leader_id.unwrap_or(-1),
    })
    .expect("quorum-state serializes");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    crate::log::fsync_dir(dir).map_err(io(dir))?;
    Ok(())
}

pub fn read_quorum_state(dir: &Path) -> Result<QuorumState, MetadataLogError> {
    let path = dir.join(QUORUM_STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(QuorumState::default()),
        Err(e) => return Err(io(&path)(e)),
    };
    let f: QuorumStateFile =
        serde_json::from_slice(&bytes).map_err(|e| MetadataLogError::QuorumState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let id = |v: i32| (v >= 0).then_some(v as NodeId);
    Ok(QuorumState {
        leader_epoch: f.leader_epoch,
        voted_for: id(f.voted_id),
        leader_id: id(f.leader_id),
    })
}

/// One entry as a record batch v2 with one record (key null, value = the entry's bytes).
pub fn encode_entry(offset: i64, entry: &Entry) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(0u8); // record attributes
    put_varint(&mut body, 0); // timestamp delta
    put_varint(&mut body, 0); // offset delta
    put_varint(&mut body, -1); // null key
    put_varint(&mut body, entry.value.len() as i64);
    body.extend_from_slice(&entry.value);
    put_varint(&mut body, 0); // no headers
    let mut record = Vec::new();
    put_varint(&mut record, body.len() as i64);
    record.extend_from_slice(&body);
    let attributes = if entry.control { CONTROL_ATTRIBUTE } else { 0 };
    let mut b = Vec::with_capacity(HEADER_SIZE + record.len());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + record.len()) as i32).to_be_bytes());
    b.extend_from_slice(&entry.epoch.to_be_bytes());
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // crc
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    b.extend_from_slice(&0i64.to_be_bytes()); // base timestamp
    b.extend_from_slice(&0i64.to_be_bytes()); // max timestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&1i32.to_be_bytes()); // record count
    b.extend_from_slice(&record);
    let crc = crc32c::crc32c(&b[ATTRIBUTES..]);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Entries encoded back to back (a Fetch response's records).
pub fn encode_entries(base_offset: i64, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        out.extend_from_slice(&encode_entry(base_offset + i as i64, e));
    }
    out
}

/// Decodes batches written by [`encode_entry`], checking CRCs and that offsets are contiguous
/// from `base_offset`. Never panics on bad bytes.
pub fn decode_entries(base_offset: i64, buf: &[u8]) -> Result<Vec<Entry>, MetadataLogError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let offset = base_offset + out.len() as i64;
        let bad = |reason: String| MetadataLogError::Entry { offset, reason };
        let h = batch::parse(&buf[pos..]).map_err(|e| bad(e.to_string()))?;
        if h.base_offset != offset || h.record_count != 1 || h.last_offset_delta != 0 {
            return Err(bad(format!(
                "base offset {} with {} records",
                h.base_offset, h.record_count
            )));
        }
        let records = &buf[pos + HEADER_SIZE..pos + h.size];
        let value = decode_single_value(records).ok_or_else(|| bad("bad record".into()))?;
        out.push(Entry {
            epoch: h.partition_leader_epoch,
            control: h.attributes & CONTROL_ATTRIBUTE != 0,
            value: Bytes::copy_from_slice(value),
        });
        pos += h.size;
    }
    Ok(out)
}

fn decode_single_value(mut r: &[u8]) -> Option<&[u8]> {
    let len = get_varint(&mut r)?;
    let body = r.get(..usize::try_from(len).ok()?)?;
    let mut b = body.get(1..)?; // attributes
    get_varint(&mut b)?; // timestamp delta
    get_varint(&mut b)?; // offset delta
    let key = get_varint(&mut b)?;
    if key > 0 {
        b = b.get(key as usize..)?;
    }
    let vlen = usize::try_from(get_varint(&mut b)?).ok()?;
    b.get(..vlen)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        z |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// A node's durable KRaft state.
pub struct MetadataLog {
    dir: PathBuf,
    log: Option<PartitionLog>,
}

impl MetadataLog {
    /// Opens `<data_dir>/__cluster_metadata-0` and `<data_dir>/quorum-state`, returning the
    /// persisted quorum-state and entries to restore the KRaft node from.
    pub fn open(
        data_dir: &Path,
    ) -> Result<(MetadataLog, QuorumState, Vec<Entry>), MetadataLogError> {
        fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let dir = data_dir.join(METADATA_PARTITION_DIR);
        let (log, report) = PartitionLog::open(&dir, LogConfig::default())?;
        if let Some((path, _, offset, dropped, reason)) = &report.truncated {
            tracing::warn!(file = %path.display(), offset, dropped, %reason, "metadata log tail truncated on recovery");
        }
        let mut entries = Vec::new();
        let leo = log.log_end_offset();
        while (entries.len() as i64) < leo {
            let at = entries.len() as i64;
            match log.read(at, 1 << 20, leo)? {
                ReadResult::Records(bytes) if !bytes.is_empty() => {
                    entries.extend(decode_entries(at, &bytes)?);
                }
                _ => {
                    return Err(MetadataLogError::Entry {
                        offset: at,
                        reason: "unreadable".into(),
                    })
                }
            }
        }
        let quorum = read_quorum_state(data_dir)?;
        Ok((
            MetadataLog {
                dir: data_dir.to_path_buf(),
                log: Some(log),
            },
            quorum,
            entries,
        ))
    }

    fn log(&mut self) -> &mut PartitionLog {
        self.log.as_mut().expect("log open")
    }

    pub fn log_end_offset(&mut self) -> i64 {
        self.log().log_end_offset()
    }

    /// Makes a KRaft node's outputs durable, in order; sends are ignored. fsyncs once at the
    /// end when the log changed.
    pub fn persist(&mut self, outputs: &[Output]) -> Result<(), MetadataLogError> {
        let mut dirty = false;
        for o in outputs {
            match o {
                Output::PersistQuorumState(q) => write_quorum_state(&self.dir, q)?,
                Output::Append {
                    base_offset,
                    entries,
                } => {
                    assert_eq!(
                        *base_offset,
                        self.log().log_end_offset(),
                        "metadata log append out of order"
                    );
                    let data = encode_entries(*base_offset, entries);
                    let headers = batch::scan(&data).batches;
                    self.log().append(&data, &headers)?;
                    dirty = true;
                }
                Output::Truncate { offset } => {
                    if dirty {
                        self.log().flush()?;
                        dirty = false;
                    }
                    self.truncate(*offset)?;
                }
                Output::Send { .. } => {}
            }
        }
        if dirty {
            self.log().flush()?;
        }
        Ok(())
    }

    /// Removes entries at `offset` and above: cut the segment holding it (as recovery cuts a
    /// torn tail), delete later segments, reopen (which rebuilds indexes and epoch cache).
    fn truncate(&mut self, offset: i64) -> Result<(), MetadataLogError> {
        let dir = self.log().dir().to_path_buf();
        self.log = None;
        let mut bases: Vec<i64> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        for base in bases.into_iter().rev() {
            let path = dir.join(format!("{base:020}.log"));
            if base >= offset && base > 0 {
                fs::remove_file(&path).map_err(io(&path))?;
                let _ = fs::remove_file(dir.join(format!("{base:020}.index")));
                continue;
            }
            let data = fs::read(&path).map_err(io(&path))?;
            let cut = batch::scan(&data)
                .batches
                .iter()
                .find(|(_, h)| h.base_offset >= offset)
                .map(|(p, _)| *p as u64);
            if let Some(cut) = cut {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(cut).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            break;
        }
        let (log, _) = PartitionLog::open(&dir, LogConfig::default())?;
        assert_eq!(log.log_end_offset(), offset, "metadata log truncation");
        self.log = Some(log);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: Epoch, v: &str) -> Entry {
        Entry {
            epoch,
            control: v.is_empty(),
            value: Bytes::from(v.to_owned()),
        }
    }

    #[test]
    fn entries_and_quorum_state_survive_reopen_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, q, entries) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!((q, entries.len()), (QuorumState::default(), 0));
        let q = QuorumState {
            leader_epoch: 3,
            voted_for: Some(2),
            leader_id: None,
        };
        let written = vec![e(1, ""), e(1, "a"), e(2, "b"), e(3, "c")];
        log.persist(&[
            Output::PersistQuorumState(q.clone()),
            Output::Append {
                base_offset: 0,
                entries: written.clone(),
            },
        ])
        .unwrap();
        drop(log);
        let (mut log, q2, entries) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!((q2, entries.clone()), (q, written.clone()));
        log.persist(&[
            Output::Truncate { offset: 2 },
            Output::Append {
                base_offset: 2,
                entries: vec![e(3, "d")],
            },
        ])
        .unwrap();
        drop(log);
        let (_, _, entries) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(entries, vec![e(1, ""), e(1, "a"), e(3, "d")]);
    }

    #[test]
    fn corrupt_quorum_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(QUORUM_STATE_FILE), b"{nope").unwrap();
        let err = MetadataLog::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("corrupt quorum-state"), "{err}");
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        let good = encode_entries(5, &[e(1, "x"), e(1, "y")]);
        assert_eq!(decode_entries(5, &good).unwrap().len(), 2);
        assert!(decode_entries(4, &good).is_err());
        for cut in 0..good.len() {
            let _ = decode_entries(5, &good[..cut]);
        }
        let mut flipped = good.clone();
        flipped[70] ^= 0xff;
        assert!(decode_entries(5, &flipped).is_err());
    }
}

//! Durable per-partition segmented log (Kafka's `UnifiedLog`/`LogSegment`, much reduced).
//!
//! On-disk layout of one partition directory `<topic>-<partition>/`:
//! - `<baseOffset:020>.log`   record batches exactly as producers sent them (offsets assigned)
//! - `<baseOffset:020>.index` sparse offset index: (relative offset u32, position u32) big-endian
//! - `leader-epoch-checkpoint` KIP-101 epoch -> start offset entries
//! - `recovery-point-offset-checkpoint` offset below which the log is known flushed
//! - `replication-offset-checkpoint` last checkpointed high watermark
//!
//! Recovery (KAFKA-1211/KIP-101 spirit): every batch's CRC-32C is checked at start-up. A
//! damaged batch at or above the recovery point is a torn write from a crash: the tail is
//! truncated and logged. A damaged batch below the recovery point was acknowledged as
//! flushed, so the broker refuses to start rather than serve or drop committed data.

use crate::batch::{self, BatchError, BatchHeader, HEADER_SIZE};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// When the log fsyncs (Kafka's `flush.messages` / `flush.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync every append before acknowledging it.
    Always,
    /// fsync from a background timer every N milliseconds.
    IntervalMs(u64),
    /// Leave it to the OS page cache (Kafka's default; durability comes from replication).
    Never,
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            other => other
                .strip_prefix("interval-ms=")
                .or_else(|| other.strip_prefix("interval-ms:"))
                .and_then(|n| n.parse().ok())
                .map(FlushPolicy::IntervalMs)
                .ok_or_else(|| {
                    format!("bad flush policy {other:?}: want always, never or interval-ms N")
                }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub index_interval_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
        }
    }
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "corrupt record batch below the recovery point {recovery_point} in {path} at byte {position} \
         (offset {offset}): {reason}; refusing to start"
    )]
    CorruptBelowRecoveryPoint {
        path: PathBuf,
        position: u64,
        offset: i64,
        recovery_point: i64,
        reason: String,
    },
    #[error("malformed checkpoint {path}: {detail}")]
    BadCheckpoint { path: PathBuf, detail: String },
}

/// Why a follower could not append what it fetched.
#[derive(Debug, Error)]
pub enum FollowerAppendError {
    #[error("fetched records are corrupt: {0}")]
    Corrupt(BatchError),
    #[error("fetched batch at offset {base_offset} does not continue the log at its LEO {log_end_offset}")]
    OutOfOrder {
        base_offset: i64,
        log_end_offset: i64,
    },
    #[error(transparent)]
    Log(LogError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What recovery found, for the start-up log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub batches: usize,
    pub log_end_offset: i64,
    /// (file, byte position, first dropped offset, bytes dropped, reason) for a torn tail.
    pub truncated: Option<(PathBuf, u64, i64, u64, String)>,
    /// Whole segment files removed because they followed a torn tail.
    pub removed_segments: Vec<PathBuf>,
}

/// KIP-101 leader-epoch cache: (leader epoch, first offset written in that epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    pub entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Records that `epoch` starts at `offset` if it is newer than the latest entry.
    /// Returns true when the cache changed (and needs checkpointing).
    pub fn assign(&mut self, epoch: i32, offset: i64) -> bool {
        if epoch < 0 || self.entries.last().is_some_and(|&(e, _)| e >= epoch) {
            return false;
        }
        self.entries.push((epoch, offset));
        true
    }
    /// Drops entries starting at or after `offset` (log truncated to `offset`).
    pub fn truncate_from_end(&mut self, offset: i64) {
        self.entries.retain(|&(_, start)| start < offset);
    }
    /// KIP-101 `OffsetsForLeaderEpoch`: end offset of `epoch` on this log (start offset of the
    /// next higher epoch, or `leo` for the latest), with the largest epoch <= the requested.
    pub fn end_offset_for(&self, epoch: i32, leo: i64) -> Option<(i32, i64)> {
        let idx = self.entries.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = self.entries.get(idx + 1).map_or(leo, |&(_, s)| s);
        Some((self.entries[idx].0, end))
    }
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }
}

struct Segment {
    base_offset: i64,
    path: PathBuf,
    file: File,
    index_file: File,
    /// Logical size in bytes (everything below is valid batches).
    size: u64,
    /// Sparse index: (batch base offset, position).
    index: Vec<(i64, u32)>,
    bytes_since_index: usize,
}

impl Segment {
    fn file_name(base: i64, ext: &str) -> String {
        format!("{base:020}.{ext}")
    }

    fn create(dir: &Path, base_offset: i64) -> Result<Segment, LogError> {
        let path = dir.join(Segment::file_name(base_offset, "log"));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let ipath = dir.join(Segment::file_name(base_offset, "index"));
        let index_file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&ipath)
            .map_err(io_err(&ipath))?;
        fsync_dir(dir).map_err(io_err(dir))?;
        Ok(Segment {
            base_offset,
            path,
            file,
            index_file,
            size: 0,
            index: Vec::new(),
            bytes_since_index: usize::MAX,
        })
    }

    fn note_batch(&mut self, h: &BatchHeader, position: u64, cfg: &LogConfig) -> io::Result<()> {
        if self.bytes_since_index >= cfg.index_interval_bytes {
            let rel = (h.base_offset - self.base_offset) as u32;
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&rel.to_be_bytes());
            e[4..].copy_from_slice(&(position as u32).to_be_bytes());
            self.index_file.write_all(&e)?;
            self.index.push((h.base_offset, position as u32));
            self.bytes_since_index = 0;
        }
        self.bytes_since_index = self.bytes_since_index.saturating_add(h.size);
        Ok(())
    }

    /// Position to start scanning from for `offset`: the last indexed batch at or below it.
    fn lookup(&self, offset: i64) -> u64 {
        let i = self.index.partition_point(|&(o, _)| o <= offset);
        if i == 0 {
            0
        } else {
            u64::from(self.index[i - 1].1)
        }
    }

    fn read_header(&self, pos: u64) -> io::Result<BatchHeader> {
        let mut h = [0u8; HEADER_SIZE];
        self.file.read_exact_at(&mut h, pos)?;
        header_fields(&h).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Header fields of a batch whose CRC was already validated at append or recovery.
fn header_fields(h: &[u8; HEADER_SIZE]) -> Result<BatchHeader, BatchError> {
    let size = batch::peek_size(h)?;
    let i32at = |at: usize| i32::from_be_bytes(h[at..at + 4].try_into().expect("4"));
    let i64at = |at: usize| i64::from_be_bytes(h[at..at + 8].try_into().expect("8"));
    Ok(BatchHeader {
        base_offset: i64at(batch::BASE_OFFSET),
        size,
        partition_leader_epoch: i32at(batch::PARTITION_LEADER_EPOCH),
        last_offset_delta: i32at(batch::LAST_OFFSET_DELTA),
        max_timestamp: i64at(batch::MAX_TIMESTAMP),
        record_count: i32at(batch::RECORD_COUNT),
        attributes: i16::from_be_bytes([h[batch::ATTRIBUTES], h[batch::ATTRIBUTES + 1]]),
    })
}

/// Result of a read: raw batch bytes, ready to be sent to a consumer unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    Records(Vec<u8>),
    OutOfRange,
}

pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    segments: Vec<Segment>,
    log_start_offset: i64,
    leo: i64,
    /// Offsets below this are known to be fsynced.
    recovery_point: i64,
    /// Offsets below this are appended but maybe not fsynced.
    unflushed: bool,
    epochs: EpochCache,
}

pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
pub const HW_FILE: &str = "replication-offset-checkpoint";
pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// Writes a checkpoint atomically (tmp file, fsync, rename), as Kafka's CheckpointFile does:
/// version line, entry count, one entry per line.
pub fn write_checkpoint(path: &Path, entries: &[String]) -> Result<(), LogError> {
    let tmp = path.with_extension("tmp");
    let mut body = format!("0\n{}\n", entries.len());
    for e in entries {
        body.push_str(e);
        body.push('\n');
    }
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(body.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fsync_dir(dir).map_err(io_err(dir))
}

/// fsyncs a directory, making the names in it durable. A file's own fsync covers its data,
/// not its directory entry: without this, a power loss after creating a segment or renaming
/// a checkpoint can bring back the directory without the new name (ext4 and xfs document
/// this; Kafka's `Utils.atomicMoveWithFallback` and segment creation flush the parent too).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a checkpoint written by [`write_checkpoint`]; a missing file is an empty checkpoint.
pub fn read_checkpoint(path: &Path) -> Result<Vec<String>, LogError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let bad = |detail: &str| LogError::BadCheckpoint {
        path: path.to_path_buf(),
        detail: detail.into(),
    };
    let mut lines = text.lines();
    if lines.next() != Some("0") {
        return Err(bad("unknown version"));
    }
    let n: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("bad entry count"))?;
    let entries: Vec<String> = lines.map(str::to_owned).collect();
    if entries.len() != n {
        return Err(bad("entry count does not match"));
    }
    Ok(entries)
}

fn read_offset_checkpoint(path: &Path) -> Result<Option<i64>, LogError> {
    let e = read_checkpoint(path)?;
    match e.first() {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| LogError::BadCheckpoint {
            path: path.to_path_buf(),
            detail: format!("not an offset: {s:?}"),
        }),
    }
}

impl PartitionLog {
    /// Opens (creating if needed) and recovers the log in `dir`.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(PartitionLog, RecoveryReport), LogError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            // The partition directory's own name lives in its parent.
            if let Some(parent) = dir.parent() {
                fsync_dir(parent).map_err(io_err(parent))?;
            }
        }
        let recovery_point = read_offset_checkpoint(&dir.join(RECOVERY_POINT_FILE))?.unwrap_or(0);
        let mut bases: Vec<i64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<i64>().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut report = RecoveryReport::default();
        let mut segments = Vec::new();
        let mut epochs = EpochCache::default();
        let mut next_offset: Option<i64> = None;
        let mut torn = false;
        for base in bases {
            let path = dir.join(Segment::file_name(base, "log"));
            if torn {
                tracing::warn!(file = %path.display(), "removing segment after a torn tail");
                fs::remove_file(&path).map_err(io_err(&path))?;
                let _ = fs::remove_file(dir.join(Segment::file_name(base, "index")));
                report.removed_segments.push(path);
                fsync_dir(dir).map_err(io_err(dir))?;
                continue;
            }
            let data = fs::read(&path).map_err(io_err(&path))?;
            let mut seg = Segment::create(dir, base)?;
            let scan = batch::scan(&data);
            let mut valid = 0usize;
            let mut problem: Option<String> = scan.stopped.as_ref().map(|e| e.to_string());
            for (pos, h) in &scan.batches {
                let expected = next_offset.unwrap_or(base);
                if h.base_offset != expected && !(next_offset.is_none() && h.base_offset >= base) {
                    problem = Some(format!(
                        "batch base offset {} where {} was expected",
                        h.base_offset, expected
                    ));
                    break;
                }
                seg.note_batch(h, *pos as u64, &config)
                    .map_err(io_err(&path))?;
                epochs.assign(h.partition_leader_epoch, h.base_offset);
                next_offset = Some(h.last_offset() + 1);
                valid = pos + h.size;
                report.batches += 1;
            }
            if let Some(reason) = problem.filter(|_| valid < data.len()) {
                let offset = next_offset.unwrap_or(base);
                if offset < recovery_point {
                    return Err(LogError::CorruptBelowRecoveryPoint {
                        path,
                        position: valid as u64,
                        offset,
                        recovery_point,
                        reason,
                    });
                }
                let dropped = (data.len() - valid) as u64;
                tracing::warn!(file = %path.display(), position = valid, offset, dropped_bytes = dropped,
                    %reason, "truncating torn log tail");
                seg.file.set_len(valid as u64).map_err(io_err(&path))?;
                seg.file.sync_all().map_err(io_err(&path))?;
                report.truncated = Some((path.clone(), valid as u64, offset, dropped, reason));
                torn = true;
            }
            seg.size = valid as u64;
            if next_offset.is_none() {
                next_offset = Some(base);
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0)?);
        }
        let log_start_offset = segments[0].base_offset;
        let leo = next_offset.unwrap_or(log_start_offset);
        report.log_end_offset = leo;
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            leo,
            recovery_point: leo,
            unflushed: false,
            epochs,
        };
        log.checkpoint_epochs()?;
        log.checkpoint_recovery_point()?;
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn log_end_offset(&self) -> i64 {
        self.leo
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }
    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// Appends batches whose offsets were already assigned (by [`crate::partition`]);
    /// `headers` are their parsed headers, positions relative to `data`.
    pub fn append(
        &mut self,
        data: &[u8],
        headers: &[(usize, BatchHeader)],
    ) -> Result<(), LogError> {
        let Some(&(_, first)) = headers.first() else {
            return Ok(());
        };
        let last = headers.last().expect("non-empty").1;
        if self.active().size > 0
            && self.active().size + data.len() as u64 > self.config.segment_bytes
        {
            self.roll(first.base_offset)?;
        }
        let seg = self.segments.last_mut().expect("always one segment");
        let start = seg.size;
        let path = seg.path.clone();
        seg.file.write_all(data).map_err(io_err(&path))?;
        for (pos, h) in headers {
            seg.note_batch(h, start + *pos as u64, &self.config)
                .map_err(io_err(&path))?;
        }
        seg.size += data.len() as u64;
        self.leo = last.last_offset() + 1;
        self.unflushed = true;
        let mut epochs_changed = false;
        for (_, h) in headers {
            epochs_changed |= self.epochs.assign(h.partition_leader_epoch, h.base_offset);
        }
        if epochs_changed {
            self.checkpoint_epochs()?;
        }
        Ok(())
    }

    /// Appends batches a follower fetched from its leader (offsets and leader epochs already
    /// assigned by the leader). Every batch must pass its CRC and continue the log exactly at
    /// the LEO: a gap or an overlap means the fetcher lost track of its position, and writing
    /// it would break the log's offset order, so it is refused.
    pub fn append_as_follower(&mut self, data: &[u8]) -> Result<usize, FollowerAppendError> {
        let scan = batch::scan(data);
        if let Some(e) = scan.stopped {
            // A fetch response may end in a partial batch (the leader cut at max bytes):
            // Kafka drops the partial tail, and so do we, as long as at least one whole
            // batch came before it or the data is only a partial one.
            if !matches!(e, BatchError::Truncated { .. }) {
                return Err(FollowerAppendError::Corrupt(e));
            }
        }
        let mut expected = self.leo;
        for (_, h) in &scan.batches {
            if h.base_offset != expected {
                return Err(FollowerAppendError::OutOfOrder {
                    base_offset: h.base_offset,
                    log_end_offset: expected,
                });
            }
            expected = h.last_offset() + 1;
        }
        let end = scan.batches.last().map_or(0, |(pos, h)| pos + h.size);
        self.append(&data[..end], &scan.batches)
            .map_err(FollowerAppendError::Log)?;
        Ok(scan.batches.len())
    }

    /// Truncates the log to `offset` (Kafka's `UnifiedLog.truncateTo`): every batch whose
    /// last offset is at or above it goes, whole, so the new LEO is the end of the last
    /// batch kept (at most `offset`). The leader-epoch cache drops the epochs that started in
    /// the removed tail (KIP-101's `truncateFromEnd`). Returns the new LEO.
    ///
    /// A truncation at or above the LEO removes no record but still drops the epochs that
    /// start at the LEO, as Kafka's `UnifiedLog.truncateTo` does: a replica that was elected
    /// and deposed before it appended anything holds its epoch's entry with no record behind
    /// it; the new leader never had that epoch and answers the follower's fetch with the end
    /// of an older one, equal to the follower's LEO. Keeping the entry made the follower
    /// truncate to its LEO and ask again with the same epoch, forever: it never caught up,
    /// the ISR stayed below min.insync.replicas and the HW below the last acknowledged
    /// records (harness finding 8).
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError> {
        if offset >= self.leo {
            if self
                .epochs
                .entries
                .last()
                .is_some_and(|&(_, s)| s >= self.leo)
            {
                self.epochs.truncate_from_end(self.leo);
                self.checkpoint_epochs()?;
            }
            return Ok(self.leo);
        }
        let offset = offset.max(self.log_start_offset);
        let mut removed = false;
        while self.segments.len() > 1
            && self.segments.last().expect("non-empty").base_offset >= offset
        {
            let seg = self.segments.pop().expect("non-empty");
            let index = self.dir.join(Segment::file_name(seg.base_offset, "index"));
            drop(seg.file);
            drop(seg.index_file);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            let _ = fs::remove_file(&index);
            removed = true;
        }
        if removed {
            // Removed segments must stay removed: one that came back after a power loss
            // would bring back the divergent records this truncation exists to drop.
            fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        let seg = self.segments.last_mut().expect("always one segment");
        let mut pos = seg.lookup(offset);
        let mut new_leo = seg.base_offset;
        if pos > 0 {
            // The indexed batch starts at or below `offset`; the batches before it are kept.
            let i = seg.index.partition_point(|&(o, _)| o <= offset);
            new_leo = seg.index[i - 1].0;
        }
        while pos < seg.size {
            let h = seg.read_header(pos).map_err(io_err(&seg.path))?;
            if h.last_offset() >= offset {
                break;
            }
            new_leo = h.last_offset() + 1;
            pos += h.size as u64;
        }
        seg.file.set_len(pos).map_err(io_err(&seg.path))?;
        // Durable for the same reason (a lost truncation resurrects a divergent suffix).
        seg.file.sync_data().map_err(io_err(&seg.path))?;
        seg.size = pos;
        seg.index.retain(|&(_, p)| u64::from(p) < pos);
        let kept = (seg.index.len() * 8) as u64;
        let ipath = self.dir.join(Segment::file_name(seg.base_offset, "index"));
        seg.index_file.set_len(kept).map_err(io_err(&ipath))?;
        seg.index_file
            .seek(io::SeekFrom::Start(kept))
            .map_err(io_err(&ipath))?;
        seg.bytes_since_index = usize::MAX;
        self.leo = new_leo;
        self.recovery_point = self.recovery_point.min(new_leo);
        self.epochs.truncate_from_end(new_leo);
        self.checkpoint_epochs()?;
        self.checkpoint_recovery_point()?;
        Ok(new_leo)
    }

    /// Records that `epoch` starts at the LEO: a new leader does this before its first append
    /// so that OffsetsForLeaderEpoch / diverging-epoch answers see its epoch (KIP-101).
    pub fn assign_epoch_at_leo(&mut self, epoch: i32) -> Result<(), LogError> {
        if self.epochs.assign(epoch, self.leo) {
            self.checkpoint_epochs()?;
        }
        Ok(())
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("always one segment")
    }

    fn roll(&mut self, base: i64) -> Result<(), LogError> {
        self.flush()?;
        self.segments.push(Segment::create(&self.dir, base)?);
        Ok(())
    }

    /// fsyncs the active segment and advances the in-memory recovery point to the LEO.
    /// The recovery point checkpoint file is written separately (it may lag, which is safe).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if !self.unflushed {
            return Ok(());
        }
        let seg = self.segments.last().expect("always one segment");
        seg.file.sync_data().map_err(io_err(&seg.path))?;
        self.recovery_point = self.leo;
        self.unflushed = false;
        Ok(())
    }

    /// First half of a flush that runs outside the broker lock: a handle on the active
    /// segment and the LEO it will make durable. None when nothing is unflushed.
    pub fn begin_flush(&self) -> Option<(File, i64)> {
        if !self.unflushed {
            return None;
        }
        let seg = self.segments.last().expect("always one segment");
        seg.file.try_clone().ok().map(|f| (f, self.leo))
    }

    /// Second half: the data below `upto` is fsynced. (A segment roll in between fsyncs the
    /// rolled segment itself, so `upto` is durable either way.)
    pub fn complete_flush(&mut self, upto: i64) {
        self.recovery_point = self.recovery_point.max(upto);
        if self.leo == upto {
            self.unflushed = false;
        }
    }

    pub fn checkpoint_recovery_point(&self) -> Result<(), LogError> {
        write_checkpoint(
            &self.dir.join(RECOVERY_POINT_FILE),
            &[self.recovery_point.to_string()],
        )
    }

    pub fn checkpoint_hw(&self, hw: i64) -> Result<(), LogError> {
        write_checkpoint(&self.dir.join(HW_FILE), &[hw.to_string()])
    }

    pub fn read_hw_checkpoint(dir: &Path) -> Result<Option<i64>, LogError> {
        read_offset_checkpoint(&dir.join(HW_FILE))
    }

    fn checkpoint_epochs(&self) -> Result<(), LogError> {
        let e: Vec<String> = self
            .epochs
            .entries
            .iter()
            .map(|(e, o)| format!("{e} {o}"))
            .collect();
        write_checkpoint(&self.dir.join(EPOCH_FILE), &e)
    }

    /// Reads whole batches starting with the one containing `offset`, stopping before `upto`
    /// (the high watermark: consumers never see uncommitted data) and after about `max_bytes`
    /// (but always at least one batch, KIP-74, so a big batch cannot stall a consumer).
    pub fn read(&self, offset: i64, max_bytes: usize, upto: i64) -> Result<ReadResult, LogError> {
        if offset < self.log_start_offset || offset > self.leo {
            return Ok(ReadResult::OutOfRange);
        }
        let upto = upto.min(self.leo);
        if offset >= upto {
            return Ok(ReadResult::Records(Vec::new()));
        }
        let si = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        for seg in &self.segments[si..] {
            let mut pos = seg.lookup(offset);
            let mut start = None;
            let mut end = pos;
            while pos < seg.size {
                let h = seg.read_header(pos).map_err(io_err(&seg.path))?;
                if h.base_offset >= upto {
                    break;
                }
                if h.last_offset() >= offset {
                    if start.is_some() && (end - start.unwrap_or(0)) as usize + h.size > max_bytes {
                        break;
                    }
                    start.get_or_insert(pos);
                    end = pos + h.size as u64;
                }
                pos += h.size as u64;
            }
            if let Some(s) = start {
                let mut buf = vec![0u8; (end - s) as usize];
                seg.file
                    .read_exact_at(&mut buf, s)
                    .map_err(io_err(&seg.path))?;
                return Ok(ReadResult::Records(buf));
            }
        }
        Ok(ReadResult::Records(Vec::new()))
    }

    /// Offset of the first batch whose max timestamp is >= `ts` (ListOffsets by time), or None.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<i64>, LogError> {
        for seg in &self.segments {
            let mut pos = 0;
            while pos < seg.size {
                let h = seg.read_header(pos).map_err(io_err(&seg.path))?;
                if h.max_timestamp >= ts {
                    return Ok(Some(h.base_offset));
                }
                pos += h.size as u64;
            }
        }
        Ok(None)
    }

    /// Removes the partition directory (DeleteTopics).
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{assign, build, scan};
    use proptest::prelude::*;

    fn append_n(log: &mut PartitionLog, counts: &[i32], epoch: i32) {
        for &n in counts {
            let mut b = build(0, n, 16, 1000);
            assign(&mut b, log.log_end_offset(), epoch);
            let s = scan(&b);
            log.append(&b, &s.batches).unwrap();
        }
    }

    fn offsets_in(bytes: &[u8]) -> Vec<i64> {
        scan(bytes)
            .batches
            .iter()
            .flat_map(|(_, h)| h.base_offset..=h.last_offset())
            .collect()
    }

    #[test]
    fn append_read_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 300,
            index_interval_bytes: 100,
        };
        let (mut log, _) = PartitionLog::open(d.path(), cfg).unwrap();
        append_n(&mut log, &[3, 1, 5, 2, 4], 0);
        append_n(&mut log, &[2], 3);
        assert_eq!(log.log_end_offset(), 17);
        assert!(log.segments.len() > 1, "small segment size rolls segments");
        let ReadResult::Records(r) = log.read(6, 1 << 20, 17).unwrap() else {
            panic!()
        };
        assert_eq!(
            offsets_in(&r).first(),
            Some(&4),
            "batch containing offset 6 starts at 4"
        );
        assert_eq!(log.read(18, 100, 17).unwrap(), ReadResult::OutOfRange);
        log.flush().unwrap();
        drop(log);
        let (log, rep) = PartitionLog::open(d.path(), cfg).unwrap();
        assert_eq!((log.log_end_offset(), rep.truncated), (17, None));
        assert_eq!(log.epochs().entries, vec![(0, 0), (3, 15)]);
        assert_eq!(log.epochs().end_offset_for(1, 17), Some((0, 15)));
    }

    #[test]
    fn split_flush_advances_recovery_point() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(d.path(), LogConfig::default()).unwrap();
        assert!(log.begin_flush().is_none());
        append_n(&mut log, &[2, 3], 0);
        let (f, upto) = log.begin_flush().unwrap();
        append_n(&mut log, &[1], 0);
        f.sync_data().unwrap();
        log.complete_flush(upto);
        assert_eq!((log.recovery_point(), upto), (5, 5));
        assert!(log.begin_flush().is_some(), "offset 5 is still unflushed");
        log.flush().unwrap();
        assert_eq!(log.recovery_point(), 6);
    }

    #[test]
    fn truncating_at_the_leo_drops_an_epoch_with_no_records() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(d.path(), LogConfig::default()).unwrap();
        append_n(&mut log, &[2, 1], 0);
        // Elected in epoch 1, deposed before appending anything.
        log.assign_epoch_at_leo(1).unwrap();
        assert_eq!(log.epochs().entries, vec![(0, 0), (1, 3)]);
        assert_eq!(log.truncate_to(5).unwrap(), 3, "no record removed");
        assert_eq!(log.epochs().entries, vec![(0, 0)]);
        let cp = read_checkpoint(&d.path().join(EPOCH_FILE)).unwrap();
        assert_eq!(cp, vec!["0 0".to_string()], "the checkpoint follows");
        // An epoch that has records stays.
        append_n(&mut log, &[1], 2);
        assert_eq!(log.truncate_to(4).unwrap(), 4);
        assert_eq!(log.epochs().entries, vec![(0, 0), (2, 3)]);
    }

    #[test]
    fn torn_tail_above_recovery_point_is_truncated() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(d.path(), LogConfig::default()).unwrap();
        append_n(&mut log, &[2, 2], 0);
        log.flush().unwrap();
        log.checkpoint_recovery_point().unwrap();
        append_n(&mut log, &[2], 0);
        drop(log);
        let seg = d.path().join(Segment::file_name(0, "log"));
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (log, rep) = PartitionLog::open(d.path(), LogConfig::default()).unwrap();
        assert_eq!(log.log_end_offset(), 4);
        let (_, _, first_dropped, _, _) = rep.truncated.unwrap();
        assert_eq!(first_dropped, 4);
    }

    #[test]
    fn corruption_below_recovery_point_refuses_to_start() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(d.path(), LogConfig::default()).unwrap();
        append_n(&mut log, &[2, 2, 2], 0);
        log.flush().unwrap();
        log.checkpoint_recovery_point().unwrap();
        drop(log);
        let seg = d.path().join(Segment::file_name(0, "log"));
        let mut data = fs::read(&seg).unwrap();
        let one = build(0, 2, 16, 1000).len();
        data[one + 70] ^= 0xff; // inside the second batch's records
        fs::write(&seg, &data).unwrap();
        let err = PartitionLog::open(d.path(), LogConfig::default())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            matches!(err, LogError::CorruptBelowRecoveryPoint { offset: 2, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("00000000000000000000.log") && msg.contains("offset 2"),
            "{msg}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Any sequence of appends reads back in offset order from any start offset, across
        /// segment rolls and a reopen, and reads never pass the high watermark.
        #[test]
        fn reads_return_contiguous_offsets(counts in proptest::collection::vec(1i32..6, 1..20),
                                           from in 0i64..60, hw_back in 0i64..5) {
            let d = tempfile::tempdir().unwrap();
            let cfg = LogConfig { segment_bytes: 400, index_interval_bytes: 150 };
            let (mut log, _) = PartitionLog::open(d.path(), cfg).unwrap();
            append_n(&mut log, &counts, 1);
            drop(log);
            let (log, _) = PartitionLog::open(d.path(), cfg).unwrap();
            let leo = log.log_end_offset();
            prop_assert_eq!(leo, counts.iter().map(|&c| i64::from(c)).sum::<i64>());
            let hw = (leo - hw_back).max(0);
            match log.read(from, 250, hw).unwrap() {
                ReadResult::OutOfRange => prop_assert!(from > leo),
                ReadResult::Records(r) => {
                    let offs = offsets_in(&r);
                    if from < hw {
                        prop_assert!(!offs.is_empty());
                        prop_assert!(offs[0] <= from && *offs.last().unwrap() >= from);
                    }
                    prop_assert!(offs.windows(2).all(|w| w[1] == w[0] + 1));
                    prop_assert!(scan(&r).batches.iter().all(|(_, h)| h.base_offset < hw));
                }
            }
        }
    }
}

//! Kafka record batch v2 (magic 2, KIP-98) header handling, without decoding records.
//!
//! The broker stores batches exactly as producers sent them and serves them to consumers
//! without re-encoding (Kafka's zero-copy fetch path). All it ever touches are the fixed
//! header fields: it rewrites `baseOffset` (offset assignment) and `partitionLeaderEpoch`
//! (KIP-101), both of which lie *before* the CRC-covered region, so the producer's CRC-32C
//! stays valid and the records are never re-encoded.

use thiserror::Error;

/// Byte offsets of the v2 batch header fields.
pub const BASE_OFFSET: usize = 0;
pub const BATCH_LENGTH: usize = 8;
pub const PARTITION_LEADER_EPOCH: usize = 12;
pub const MAGIC: usize = 16;
pub const CRC: usize = 17;
pub const ATTRIBUTES: usize = 21;
pub const LAST_OFFSET_DELTA: usize = 23;
pub const MAX_TIMESTAMP: usize = 35;
pub const RECORD_COUNT: usize = 57;
/// Size of the whole v2 header; records follow it.
pub const HEADER_SIZE: usize = 61;
/// Bytes before `batchLength`'s coverage starts (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;

/// Why a byte range is not a valid v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {0} is smaller than the v2 header")]
    BadLength(i32),
    #[error("unsupported magic {0} (only record batch v2 is accepted)")]
    BadMagic(i8),
    #[error("CRC-32C mismatch: header says {stored:#010x}, data gives {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record count {count} does not match lastOffsetDelta {last_offset_delta}")]
    BadCount { count: i32, last_offset_delta: i32 },
}

/// The header fields of one batch the broker needs, plus where it sits in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total size on the wire/disk (`LOG_OVERHEAD + batchLength`).
    pub size: usize,
    pub partition_leader_epoch: i32,
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    pub record_count: i32,
    pub attributes: i16,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    /// Number of offsets the batch occupies (compacted batches may have gaps, so this is
    /// `lastOffsetDelta + 1`, not the record count).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }
    /// Control batches (transaction markers, KIP-98) carry attribute bit 5.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Total size of the batch starting at `buf[0]`, from its length field alone (what a reader
/// needs to know before it has read the whole batch).
pub fn peek_size(buf: &[u8]) -> Result<usize, BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated {
            needed: LOG_OVERHEAD,
            available: buf.len(),
        });
    }
    let length = be_i32(buf, BATCH_LENGTH);
    if length < (HEADER_SIZE - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(length));
    }
    Ok(LOG_OVERHEAD + length as usize)
}

/// Parses and fully validates (size, magic, CRC-32C) the batch at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let size = peek_size(buf)?;
    if buf.len() < HEADER_SIZE.min(size) || buf.len() < size {
        return Err(BatchError::Truncated {
            needed: size,
            available: buf.len(),
        });
    }
    let magic = buf[MAGIC] as i8;
    if magic != 2 {
        return Err(BatchError::BadMagic(magic));
    }
    let stored = u32::from_be_bytes(buf[CRC..CRC + 4].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&buf[ATTRIBUTES..size]);
    if stored != computed {
        return Err(BatchError::BadCrc { stored, computed });
    }
    let header = BatchHeader {
        base_offset: be_i64(buf, BASE_OFFSET),
        size,
        partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH),
        last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
        max_timestamp: be_i64(buf, MAX_TIMESTAMP),
        record_count: be_i32(buf, RECORD_COUNT),
        attributes: be_i16(buf, ATTRIBUTES),
    };
    if header.last_offset_delta < 0
        || header.record_count < 0
        || (header.record_count > 0 && header.last_offset_delta < header.record_count - 1)
    {
        return Err(BatchError::BadCount {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Outcome of scanning a buffer that should hold back-to-back batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Valid batches with their byte position in the buffer, in order.
    pub batches: Vec<(usize, BatchHeader)>,
    /// Bytes covered by `batches`.
    pub valid_bytes: usize,
    /// Why scanning stopped before the end of the buffer, if it did.
    pub stopped: Option<BatchError>,
}

/// Walks `buf` batch by batch, validating each; stops at the first invalid or torn batch.
/// Used both for produce requests (which must be valid in full) and log recovery (where a
/// torn tail after a crash is expected).
pub fn scan(buf: &[u8]) -> Scan {
    let mut batches = Vec::new();
    let mut pos = 0;
    let mut stopped = None;
    while pos < buf.len() {
        match parse(&buf[pos..]) {
            Ok(h) => {
                batches.push((pos, h));
                pos += h.size;
            }
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
    }
    Scan {
        batches,
        valid_bytes: pos,
        stopped,
    }
}

/// Stamps the broker-assigned base offset and leader epoch into a batch header in place.
/// Neither field is covered by the CRC, so the batch stays valid as the producer sent it.
pub fn assign(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Builds a minimal valid v2 batch (uncompressed, records with null key/value bodies given
/// as raw bytes) for tests and the benchmark. `records` are already-encoded record bodies;
/// pass `record_count` records of `value_len` bytes each.
pub fn build(base_offset: i64, record_count: i32, value_len: usize, timestamp: i64) -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..record_count {
        let mut body = Vec::new();
        body.push(0u8); // attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, i64::from(i)); // offset delta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, value_len as i64);
        body.extend(std::iter::repeat_n(b'x', value_len));
        put_varint(&mut body, 0); // no headers
        put_varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let mut b = Vec::with_capacity(HEADER_SIZE + records.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // crc placeholder
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(record_count - 1).max(0).to_be_bytes()); // last offset delta
    b.extend_from_slice(&timestamp.to_be_bytes()); // base timestamp
    b.extend_from_slice(&timestamp.to_be_bytes()); // max timestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&record_count.to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[ATTRIBUTES..]);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn built_batch_parses_and_assign_keeps_crc_valid() {
        let mut b = build(0, 5, 10, 1000);
        let h = parse(&b).unwrap();
        assert_eq!((h.record_count, h.last_offset(), h.size), (5, 4, b.len()));
        assign(&mut b, 42, 7);
        let h = parse(&b).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.partition_leader_epoch),
            (42, 46, 7)
        );
    }

    #[test]
    fn flipped_payload_bit_is_a_crc_error() {
        let mut b = build(0, 3, 8, 0);
        let last = b.len() - 2;
        b[last] ^= 1;
        assert!(matches!(parse(&b), Err(BatchError::BadCrc { .. })));
    }

    #[test]
    fn scan_stops_at_torn_tail() {
        let mut buf = build(0, 2, 4, 0);
        let second = build(2, 2, 4, 0);
        buf.extend_from_slice(&second[..second.len() - 3]);
        let s = scan(&buf);
        assert_eq!(s.batches.len(), 1);
        assert_eq!(s.valid_bytes, build(0, 2, 4, 0).len());
        assert!(matches!(s.stopped, Some(BatchError::Truncated { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The segment reader never panics and never reports bytes past the buffer, whatever
        /// the bytes (random, or valid batches with random corruption).
        #[test]
        fn scan_never_panics(noise in proptest::collection::vec(any::<u8>(), 0..300),
                             n in 0usize..4, flip in any::<(usize, u8)>()) {
            let mut buf = Vec::new();
            for i in 0..n { buf.extend_from_slice(&build(i as i64 * 3, 3, 5, 0)); }
            buf.extend_from_slice(&noise);
            if !buf.is_empty() { let at = flip.0 % buf.len(); buf[at] ^= flip.1; }
            let s = scan(&buf);
            prop_assert!(s.valid_bytes <= buf.len());
            let mut pos = 0;
            for (p, h) in &s.batches { prop_assert_eq!(*p, pos); pos += h.size; }
            prop_assert_eq!(pos, s.valid_bytes);
        }
    }
}

//! Verifying frames fetched from a leader before `LogStore::append_frames` writes them: every
//! frame's CRC, version and flags, dense offsets, whole batches (markers counting down to 0, one
//! term and one producer per batch, control records alone), terms never going down, the payload
//! size limit. The result summarises each batch for the writer (producer table, epochs, sparse
//! index), so the bytes themselves are written exactly as received, without re-encoding.

use std::path::PathBuf;

use bytes::Bytes;

use super::{
    error::LogError,
    record::{self, DecodeError},
};

/// One verified batch of a [`VerifiedFrames`].
#[derive(Debug, Clone)]
pub struct BatchSummary {
    /// Byte range of the batch within the received bytes.
    pub range: std::ops::Range<usize>,
    /// Offset of its first record.
    pub first: u64,
    /// Number of records.
    pub count: u32,
    /// Its term.
    pub term: u64,
    /// Timestamp of its first record (what the producer table records, as on the leader).
    pub timestamp_ms: u64,
    /// Newest timestamp in it (for age retention).
    pub max_timestamp_ms: u64,
    /// `(producer id, first sequence)` of a producer batch.
    pub producer: Option<(String, u64)>,
    /// A control record (a batch of its own).
    pub control: bool,
}

/// Frames that passed [`verify`], with what the writer needs to know about them.
#[derive(Debug, Clone, Default)]
pub struct VerifiedFrames {
    /// The bytes, as received.
    pub bytes: Bytes,
    /// The batches, in order.
    pub batches: Vec<BatchSummary>,
    /// `(offset, byte position in bytes)` of frames at least `index_interval` bytes apart (the
    /// first frame included): candidates for the sparse index.
    pub index: Vec<(u64, usize)>,
}

impl VerifiedFrames {
    /// Offset of the first record (`None` when empty).
    pub fn first(&self) -> Option<u64> {
        self.batches.first().map(|b| b.first)
    }

    /// Term of the first record.
    pub fn first_term(&self) -> Option<u64> {
        self.batches.first().map(|b| b.term)
    }
}

/// The error for frames that do not verify: nothing is written.
fn refuse(position: usize, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        file: PathBuf::from("(fetched frames)"),
        position: position as u64,
        reason: reason.into(),
    }
}

/// Verify `bytes` as whole batches of frames with dense offsets (where they must start is the
/// writer's check) and summarise them.
///
/// # Errors
/// [`LogError::Corrupt`] naming the byte position within `bytes` and what failed.
pub fn verify(
    bytes: Bytes,
    max_record_bytes: usize,
    index_interval: u32,
) -> Result<VerifiedFrames, LogError> {
    let mut out = VerifiedFrames {
        bytes: Bytes::new(),
        batches: Vec::new(),
        index: Vec::new(),
    };
    let mut pos = 0usize;
    let mut expected: Option<u64> = None;
    let mut last_term: Option<u64> = None;
    let mut current: Option<(BatchSummary, u32)> = None; // the open batch and its last marker
    let mut last_indexed: Option<usize> = None;
    while pos < bytes.len() {
        let head = record::peek(&bytes[pos..]).map_err(|e| match e {
            DecodeError::Incomplete { .. } => refuse(pos, "the bytes end inside a frame"),
            DecodeError::Invalid(reason) => refuse(pos, reason),
        })?;
        if let Some(want) = expected {
            if head.offset != want {
                return Err(refuse(
                    pos,
                    format!("record offset {} where {want} was expected", head.offset),
                ));
            }
        }
        if head.is_control() {
            if current.is_some() {
                return Err(refuse(pos, "a control record inside a batch"));
            }
        } else if head.payload_len() > max_record_bytes {
            return Err(LogError::RecordTooLarge {
                size: head.payload_len(),
                max: max_record_bytes,
            });
        }
        let frame = &bytes[pos..pos + head.len];
        let producer = head.producer_id(frame);
        match &mut current {
            Some((batch, marker)) => {
                if head.batch_remaining.checked_add(1) != Some(*marker) {
                    return Err(refuse(pos, "batch marker out of sequence"));
                }
                if head.term != batch.term {
                    return Err(refuse(pos, "term changes inside a batch"));
                }
                let i = u64::from(batch.count);
                let same = match (&batch.producer, producer) {
                    (None, None) => true,
                    (Some((id, seq)), Some(p)) => id == p && seq.checked_add(i) == Some(head.producer_seq),
                    _ => false,
                };
                if !same {
                    return Err(refuse(pos, "producer or sequence changes inside a batch"));
                }
                batch.count += 1;
                batch.max_timestamp_ms = batch.max_timestamp_ms.max(head.timestamp_ms);
                *marker = head.batch_remaining;
            }
            None => {
                if last_term.is_some_and(|t| head.term < t) {
                    return Err(refuse(
                        pos,
                        format!("term {} after term {}", head.term, last_term.unwrap_or(0)),
                    ));
                }
                let batch = BatchSummary {
                    range: pos..pos,
                    first: head.offset,
                    count: 1,
                    term: head.term,
                    timestamp_ms: head.timestamp_ms,
                    max_timestamp_ms: head.timestamp_ms,
                    producer: producer.map(|p| (p.to_owned(), head.producer_seq)),
                    control: head.is_control(),
                };
                if let Some((_, seq)) = &batch.producer {
                    if seq.checked_add(u64::from(head.batch_remaining)).is_none() {
                        return Err(refuse(pos, "producer sequence overflows"));
                    }
                }
                current = Some((batch, head.batch_remaining));
            }
        }
        if last_indexed.is_none_or(|p| pos >= p + index_interval as usize) {
            out.index.push((head.offset, pos));
            last_indexed = Some(pos);
        }
        last_term = Some(head.term);
        expected = head.offset.checked_add(1);
        pos += head.len;
        if head.batch_remaining == 0 {
            if let Some((mut batch, _)) = current.take() {
                batch.range.end = pos;
                out.batches.push(batch);
            }
        }
    }
    if current.is_some() {
        return Err(refuse(pos, "the bytes end inside an atomic batch"));
    }
    out.bytes = bytes;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{encode, encode_frame, ProducerSeq, Record};

    fn frame(buf: &mut Vec<u8>, offset: u64, term: u64, producer: Option<(&str, u64)>, remaining: u32) {
        let rec = Record {
            offset,
            term,
            timestamp_ms: 1000 + offset,
            producer: producer.map(|(id, seq)| ProducerSeq {
                producer_id: id.into(),
                seq,
            }),
            payload: Bytes::from(vec![b'x'; 10]),
        };
        encode(buf, &rec, remaining);
    }

    /// Batches are summarised with their producer, term and byte ranges.
    #[test]
    fn summarises_batches() {
        let mut buf = Vec::new();
        frame(&mut buf, 5, 2, Some(("p", 7)), 1);
        frame(&mut buf, 6, 2, Some(("p", 8)), 0);
        let control = Record {
            offset: 7,
            term: 3,
            timestamp_ms: 9,
            producer: None,
            payload: Bytes::new(),
        };
        encode_frame(&mut buf, &control, 0, true);
        frame(&mut buf, 8, 3, None, 0);
        let v = verify(Bytes::from(buf.clone()), 100, 1).expect("valid");
        assert_eq!(v.batches.len(), 3);
        assert_eq!(v.batches[0].count, 2);
        assert_eq!(v.batches[0].producer, Some(("p".into(), 7)));
        assert!(v.batches[1].control);
        assert_eq!(v.batches[2].range.end, buf.len());
        assert_eq!(v.first(), Some(5));
        assert_eq!(v.index.len(), 4);
    }

    /// Gaps, partial batches, terms going down, producer changes inside a batch, oversized
    /// payloads and damaged bytes are all refused.
    #[test]
    fn refuses_what_does_not_fit() {
        let check = |build: &dyn Fn(&mut Vec<u8>)| {
            let mut buf = Vec::new();
            build(&mut buf);
            verify(Bytes::from(buf), 100, 4096).expect_err("refused")
        };
        check(&|b| {
            frame(b, 0, 1, None, 0);
            frame(b, 2, 1, None, 0);
        });
        check(&|b| frame(b, 0, 1, None, 1));
        check(&|b| {
            frame(b, 0, 2, None, 0);
            frame(b, 1, 1, None, 0);
        });
        check(&|b| {
            frame(b, 0, 1, Some(("p", 0)), 1);
            frame(b, 1, 1, Some(("q", 1)), 0);
        });
        check(&|b| {
            frame(b, 0, 1, Some(("p", 0)), 1);
            frame(b, 1, 1, Some(("p", 5)), 0);
        });
        check(&|b| {
            frame(b, 0, 1, None, 1);
            frame(b, 1, 2, None, 0);
        });
        check(&|b| {
            frame(b, 0, 1, None, 0);
            let n = b.len();
            b[n - 1] ^= 1;
        });
        check(&|b| {
            frame(b, 0, 1, None, 0);
            b.truncate(b.len() - 3);
        });
        let mut big = Vec::new();
        frame(&mut big, 0, 1, None, 0);
        assert!(matches!(
            verify(Bytes::from(big), 5, 4096),
            Err(LogError::RecordTooLarge { size: 10, max: 5 })
        ));
    }
}

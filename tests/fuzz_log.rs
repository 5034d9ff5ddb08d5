//! Property tests (the CI side of `fuzz/`, see `docs/fuzzing.md`) for what reads the log's bytes
//! back: the frame codec (`decode(encode(x)) == x`, and an accepted frame is the only encoding of
//! its record), the segment scan that recovery runs (any damage to a segment is refused or cut to
//! a prefix of whole, intact batches ending before the damage; arbitrary bytes never panic), the
//! verification of fetched frames, the high-watermark slot, and a reopened store whose side files
//! (index, snapshot, epoch and HW checkpoints) were damaged.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use simpleloggers::log::{
    fuzzing::{
        decode_hw_slot, encode_hw_slot, scan_segment, verify_frames, FrameInfo, ScanMode, ScanOutcome,
        HW_SLOT_LEN,
    },
    record::{self, DecodeError},
    Durability, LogConfig, LogError, LogStore, ProducerSeq, Record,
};

/// A record's content before offsets are assigned.
#[derive(Debug, Clone)]
struct Draft {
    timestamp_ms: u64,
    payload: Vec<u8>,
}

/// One atomic batch: data records of one term and producer, or a lone control record.
#[derive(Debug, Clone)]
enum DraftBatch {
    Data {
        bump_term: bool,
        producer: Option<(String, u64)>,
        records: Vec<Draft>,
    },
    Control,
}

fn draft() -> impl Strategy<Value = Draft> {
    (any::<u64>(), prop::collection::vec(any::<u8>(), 0..80)).prop_map(|(timestamp_ms, payload)| Draft {
        timestamp_ms,
        payload,
    })
}

fn draft_batch() -> impl Strategy<Value = DraftBatch> {
    prop_oneof![
        8 => (
            prop::bool::weighted(0.2),
            prop::option::of(("[a-zA-Z0-9é-]{0,12}", 0u64..1 << 40)),
            prop::collection::vec(draft(), 1..4),
        )
            .prop_map(|(bump_term, producer, records)| DraftBatch::Data { bump_term, producer, records }),
        1 => Just(DraftBatch::Control),
    ]
}

/// A segment's batches with offsets from `base` and terms that never go down.
fn batches(base: u64, drafts: &[DraftBatch]) -> Vec<Vec<(Record, bool)>> {
    let (mut offset, mut term) = (base, 1u64);
    let mut out = Vec::new();
    for d in drafts {
        let batch: Vec<(Record, bool)> = match d {
            DraftBatch::Control => {
                term += 1;
                vec![(
                    Record {
                        offset,
                        term,
                        timestamp_ms: 7,
                        producer: None,
                        payload: Bytes::new(),
                    },
                    true,
                )]
            }
            DraftBatch::Data {
                bump_term,
                producer,
                records,
            } => {
                term += u64::from(*bump_term);
                records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let record = Record {
                            offset: offset + i as u64,
                            term,
                            timestamp_ms: r.timestamp_ms,
                            producer: producer.as_ref().map(|(id, seq)| ProducerSeq {
                                producer_id: id.clone(),
                                seq: seq + i as u64,
                            }),
                            payload: Bytes::from(r.payload.clone()),
                        };
                        (record, false)
                    })
                    .collect()
            }
        };
        offset += batch.len() as u64;
        out.push(batch);
    }
    out
}

/// The bytes of `batches` and the byte position where each batch ends.
fn encode_segment(batches: &[Vec<(Record, bool)>]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for batch in batches {
        for (i, (record, control)) in batch.iter().enumerate() {
            record::encode_frame(&mut buf, record, (batch.len() - 1 - i) as u32, *control);
        }
        ends.push(buf.len());
    }
    (buf, ends)
}

/// Whether what a scan delivered for one frame is exactly `record`.
fn same(info: &FrameInfo, record: &Record, control: bool) -> bool {
    info.offset == record.offset
        && info.term == record.term
        && info.timestamp_ms == record.timestamp_ms
        && info.producer == record.producer
        && info.control == control
}

/// Scans `buf` as the segment at `base` and returns the outcome with every delivered batch.
fn scan(buf: &[u8], base: u64, mode: ScanMode) -> (Result<ScanOutcome, LogError>, Vec<Vec<FrameInfo>>) {
    let mut seen = Vec::new();
    let out = scan_segment(Path::new("seg.log"), buf, base, mode, |b| seen.push(b.to_vec()));
    (out, seen)
}

/// One way to damage a segment's bytes.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR the byte at this fraction of the length with a non-zero mask.
    Flip { at: f64, mask: u8 },
    /// Cut the file at this fraction (a torn write).
    Truncate { at: f64 },
    /// Insert bytes at this fraction.
    Insert { at: f64, bytes: Vec<u8> },
    /// Overwrite a run with zeros (a lost block), from this fraction.
    Zero { at: f64, len: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64, 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        (0.0..1.0f64).prop_map(|at| Damage::Truncate { at }),
        (0.0..=1.0f64, prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (0.0..1.0f64, 1usize..64).prop_map(|(at, len)| Damage::Zero { at, len }),
    ]
}

/// Applies `d` to `buf`; returns the first damaged position, or `None` when the bytes did not
/// change (zeros over zeros).
fn apply(buf: &mut Vec<u8>, d: &Damage) -> Option<usize> {
    let pos = |at: f64, len: usize| ((at * len as f64) as usize).min(len.saturating_sub(1));
    match d {
        Damage::Flip { at, mask } => {
            let p = pos(*at, buf.len());
            buf[p] ^= mask;
            Some(p)
        }
        Damage::Truncate { at } => {
            let p = pos(*at, buf.len());
            buf.truncate(p);
            Some(p)
        }
        Damage::Insert { at, bytes } => {
            let p = ((at * buf.len() as f64) as usize).min(buf.len());
            buf.splice(p..p, bytes.iter().copied());
            Some(p)
        }
        Damage::Zero { at, len } => {
            let p = pos(*at, buf.len());
            let end = (p + len).min(buf.len());
            let first = buf[p..end].iter().position(|b| *b != 0).map(|i| p + i);
            buf[p..end].fill(0);
            first
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every record decodes to itself, and a decoded frame re-encodes to the same bytes.
    #[test]
    fn frames_round_trip(drafts in prop::collection::vec(draft_batch(), 1..6), base in 0u64..1 << 50) {
        let batches = batches(base, &drafts);
        let (buf, _) = encode_segment(&batches);
        let mut at = 0;
        for (i, (record, control)) in batches.iter().flatten().enumerate() {
            let frame = record::decode(&buf[at..], |r| Bytes::copy_from_slice(&buf[at + r.start..at + r.end]))
                .map_err(|e| TestCaseError::fail(format!("frame {i}: {e:?}")))?;
            prop_assert_eq!(&frame.record, record);
            prop_assert_eq!(frame.control, *control);
            let mut again = Vec::new();
            record::encode_frame(&mut again, &frame.record, frame.batch_remaining, frame.control);
            prop_assert_eq!(again.as_slice(), &buf[at..at + frame.len]);
            at += frame.len;
        }
        prop_assert_eq!(at, buf.len());
    }

    /// A whole segment scans strictly to exactly its batches; a damaged one is either refused as
    /// corrupt (repair mode: only when the damage is followed by a valid frame) or cut back to a
    /// prefix of whole, unchanged batches that end before the damage.
    #[test]
    fn damaged_segments_keep_an_intact_prefix(
        drafts in prop::collection::vec(draft_batch(), 1..8),
        base in 0u64..1 << 50,
        hit in damage(),
    ) {
        let batches = batches(base, &drafts);
        let (clean, ends) = encode_segment(&batches);
        let (out, seen) = scan(&clean, base, ScanMode::Strict);
        let out = out.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.good_len as usize, clean.len());
        prop_assert_eq!(seen.len(), batches.len());

        let mut buf = clean.clone();
        let Some(damaged_at) = apply(&mut buf, &hit) else { return Ok(()) };
        let (out, seen) = scan(&buf, base, ScanMode::RepairTail);
        match out {
            Ok(out) => {
                let kept = seen.len();
                prop_assert!(kept <= batches.len());
                for (got, want) in seen.iter().zip(&batches) {
                    prop_assert_eq!(got.len(), want.len());
                    for (info, (record, control)) in got.iter().zip(want) {
                        prop_assert!(same(info, record, *control), "{info:?} vs {record:?}");
                    }
                }
                let good = if kept == 0 { 0 } else { ends[kept - 1] };
                prop_assert_eq!(out.good_len as usize, good);
                prop_assert!(good <= damaged_at, "kept bytes up to {} past the damage at {}", good, damaged_at);
                let records: usize = batches[..kept].iter().map(Vec::len).sum();
                prop_assert_eq!(out.end, base + records as u64);
                prop_assert_eq!(out.torn.is_none(), good == buf.len());
                // What recovery keeps scans strictly to the same batches.
                let (again, seen_again) = scan(&buf[..good], base, ScanMode::Strict);
                prop_assert!(again.is_ok());
                prop_assert_eq!(seen_again.len(), kept);
            }
            Err(LogError::Corrupt { position, .. }) => {
                prop_assert!(position as usize <= buf.len());
                // Corruption (not a torn tail) means intact data follows the damage.
                let cut = matches!(hit, Damage::Truncate { .. });
                prop_assert!(!cut, "a cut tail refused as corrupt");
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
        // Strict mode (sealed segments) keeps nothing damaged: only a cut at a batch end passes.
        let (strict, _) = scan(&buf, base, ScanMode::Strict);
        if strict.is_ok() {
            let cut_at_batch_end = matches!(hit, Damage::Truncate { .. }) && (buf.is_empty() || ends.contains(&buf.len()));
            prop_assert!(cut_at_batch_end, "a strict scan accepted {:?}", hit);
        }
    }

    /// Arbitrary bytes never panic the scan; what repair keeps is itself a clean segment.
    #[test]
    fn arbitrary_bytes_scan_safely(buf in prop::collection::vec(any::<u8>(), 0..600), base in 0u64..1 << 50) {
        let (out, seen) = scan(&buf, base, ScanMode::RepairTail);
        if let Ok(out) = out {
            prop_assert!(out.good_len as usize <= buf.len());
            let (strict, again) = scan(&buf[..out.good_len as usize], base, ScanMode::Strict);
            let strict = strict.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(strict.end, out.end);
            prop_assert_eq!(again.len(), seen.len());
        }
    }

    /// Fetched frames verify to exactly their batches; damaged ones are refused unless the damage
    /// is a cut at a batch end (then the batches before it).
    #[test]
    fn fetched_frames_verify_or_are_refused(
        drafts in prop::collection::vec(draft_batch(), 1..6),
        base in 0u64..1 << 50,
        hit in damage(),
    ) {
        let batches = batches(base, &drafts);
        let (clean, ends) = encode_segment(&batches);
        let verified = verify_frames(Bytes::from(clean.clone()), 1 << 20, 64)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(verified.batches.len(), batches.len());
        for (summary, batch) in verified.batches.iter().zip(&batches) {
            prop_assert_eq!(summary.first, batch[0].0.offset);
            prop_assert_eq!(summary.count as usize, batch.len());
            prop_assert_eq!(summary.term, batch[0].0.term);
            prop_assert_eq!(summary.control, batch[0].1);
            let producer = batch[0].0.producer.as_ref().map(|p| (p.producer_id.clone(), p.seq));
            prop_assert_eq!(&summary.producer, &producer);
        }
        let mut buf = clean;
        if apply(&mut buf, &hit).is_none() {
            return Ok(());
        }
        match verify_frames(Bytes::from(buf.clone()), 1 << 20, 64) {
            Ok(v) => {
                let cut = matches!(hit, Damage::Truncate { .. });
                prop_assert!(cut, "damage accepted: {:?}", hit);
                let kept = ends.iter().position(|&e| e == buf.len()).map_or(0, |i| i + 1);
                prop_assert_eq!(v.batches.len(), kept);
            }
            Err(LogError::Corrupt { .. } | LogError::RecordTooLarge { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    /// A high-watermark slot decodes to what was encoded; any other byte in its 24 is detected.
    #[test]
    fn hw_slots_detect_damage(seq in any::<u64>(), hw in any::<u64>(), at in 0usize..HW_SLOT_LEN, mask in 1u8..=255) {
        let slot = encode_hw_slot(seq, hw);
        prop_assert_eq!(decode_hw_slot(&slot), Some((seq, hw)));
        let mut bad = slot;
        bad[at] ^= mask;
        prop_assert_eq!(decode_hw_slot(&bad), None);
        prop_assert_eq!(decode_hw_slot(&slot[..at]), None);
    }

    /// Arbitrary bytes are never a slot unless they are one exactly.
    #[test]
    fn hw_slot_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        if let Some((seq, hw)) = decode_hw_slot(&bytes) {
            prop_assert_eq!(&encode_hw_slot(seq, hw)[..], &bytes[..HW_SLOT_LEN]);
        }
    }
}

/// A frame whose batch marker is `u32::MAX` after a frame expecting one more is refused (it used
/// to overflow `marker + 1`, a panic in debug builds), by the scan and by fetched-frame checks.
#[test]
fn batch_marker_at_u32_max_is_refused() {
    let rec = |offset| Record {
        offset,
        term: 1,
        timestamp_ms: 1,
        producer: None,
        payload: Bytes::from_static(b"x"),
    };
    let mut buf = Vec::new();
    record::encode(&mut buf, &rec(0), 1);
    record::encode(&mut buf, &rec(1), u32::MAX);
    let (out, seen) = scan(&buf, 0, ScanMode::RepairTail);
    let out = out.expect("a torn tail, not corruption");
    assert_eq!((out.good_len, out.end, seen.len()), (0, 0, 0));
    assert!(out.torn.expect("torn").reason.contains("batch marker"));
    assert!(matches!(
        verify_frames(Bytes::from(buf), 1 << 20, 64),
        Err(LogError::Corrupt { reason, .. }) if reason.contains("batch marker")
    ));
}

/// A frame without the producer flag but with a producer-id length or a producer sequence is
/// refused: decoding it used to drop those bytes silently (the record has no producer), so it was
/// not the frame of any record the encoder writes. The sequence case was found by `record_decode`.
#[test]
fn producer_fields_without_flag_are_refused() {
    let rec = Record {
        offset: 3,
        term: 1,
        timestamp_ms: 1,
        producer: Some(ProducerSeq {
            producer_id: "pid".into(),
            seq: 0,
        }),
        payload: Bytes::from_static(b"payload"),
    };
    let without_id = Record {
        producer: None,
        ..rec.clone()
    };
    let mut with_id = Vec::new();
    record::encode(&mut with_id, &rec, 0);
    with_id[9] = 0; // clear FLAG_PRODUCER, keep the id length of 3
    let mut with_seq = Vec::new();
    record::encode(&mut with_seq, &without_id, 0);
    with_seq[40] = 7; // a sequence in a frame without a producer
    for mut buf in [with_id, with_seq] {
        let crc = crc32c(&buf);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        match record::decode(&buf, |r| Bytes::copy_from_slice(&buf[r])) {
            Err(DecodeError::Invalid(reason)) => assert!(reason.contains("producer flag"), "{reason}"),
            other => panic!("accepted: {other:?}"),
        }
    }
}

/// CRC32C of a frame as `docs/log-format.md` defines it: the length field, then everything after
/// the CRC field (computed here from the spec, bitwise, independently of the codec).
fn crc32c(frame: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in frame[0..4].iter().chain(&frame[8..]) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Damaged side files (sparse index, producer snapshot, epoch checkpoint, HW checkpoint) are
/// caches: after any damage the store reopens and serves exactly the records it held.
#[test]
fn damaged_side_files_do_not_change_the_records() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(12));
    let damage = (
        prop::collection::vec((0usize..8, 0.0..1.0f64, 1u8..=255), 1..6),
        any::<bool>(),
    );
    runner
        .run(&damage, |(hits, truncate)| {
            rt.block_on(async {
                let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected = build_store(dir.path())
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut side: Vec<_> = std::fs::read_dir(dir.path())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_none_or(|x| x != "log"))
                    .filter(|p| p.file_name().is_none_or(|n| n != "incarnation"))
                    .collect();
                side.sort();
                prop_assert!(side.len() >= 3, "side files: {side:?}");
                for (which, at, mask) in &hits {
                    let path = &side[which % side.len()];
                    let mut bytes = std::fs::read(path).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if bytes.is_empty() {
                        continue;
                    }
                    let p = ((at * bytes.len() as f64) as usize).min(bytes.len() - 1);
                    if truncate {
                        bytes.truncate(p);
                    } else {
                        bytes[p] ^= mask;
                    }
                    std::fs::write(path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                let log = LogStore::open(config(dir.path()))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got = log
                    .read(0, 10_000, usize::MAX)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, expected);
                prop_assert_eq!(log.producer_last_seq("p"), Some(29));
                log.close()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                Ok(())
            })
        })
        .map_err(|e| e.to_string().into())
}

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 600;
    c.index_interval_bytes = 64;
    c.durability = Durability::Always;
    c
}

/// Three terms of producer batches over several segments; returns every record.
async fn build_store(dir: &Path) -> Result<Vec<Record>, LogError> {
    let log = LogStore::open(config(dir)).await?;
    for i in 0..10u64 {
        let term = 1 + i / 4;
        let batch = simpleloggers::log::ProducerBatch {
            producer_id: "p".into(),
            seq: i * 3,
            pending_from: None,
        };
        let payloads = (0..3).map(|j| Bytes::from(format!("m-{i}-{j}"))).collect();
        log.append(term, Some(batch), payloads).await?;
    }
    let records = log.read(0, 10_000, usize::MAX).await?;
    log.close().await?;
    Ok(records)
}

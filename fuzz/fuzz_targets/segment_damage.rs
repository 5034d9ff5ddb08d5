//! Damage to a valid segment (`log::segment::scan` in repair mode, as recovery runs it on the
//! active segment): the scan either refuses the segment as corrupt, or keeps a prefix of whole,
//! unchanged batches that ends at or before the first damaged byte — never a record past the damage,
//! never a changed one.
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use simpleloggers::log::{
    fuzzing::{scan_segment, ScanMode},
    record, ProducerSeq, Record,
};

#[derive(Debug, Arbitrary)]
struct Batch {
    control: bool,
    bump_term: bool,
    producer: Option<(u8, u32)>,
    payloads: Vec<Vec<u8>>,
}

#[derive(Debug, Arbitrary)]
enum Damage {
    Flip { at: u16, mask: u8 },
    Truncate { at: u16 },
    Insert { at: u16, bytes: Vec<u8> },
    Zero { at: u16, len: u8 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    base: u32,
    batches: Vec<Batch>,
    damage: Vec<Damage>,
}

fuzz_target!(|input: Input| {
    let base = u64::from(input.base);
    let (mut offset, mut term) = (base, 1u64);
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    let mut records: Vec<Vec<Record>> = Vec::new();
    for b in input.batches.iter().take(12) {
        let control = b.control || b.payloads.is_empty();
        term += u64::from(b.bump_term || control);
        let n = if control { 1 } else { b.payloads.len().min(4) };
        let batch: Vec<Record> = (0..n)
            .map(|i| Record {
                offset: offset + i as u64,
                term,
                timestamp_ms: offset,
                producer: (!control)
                    .then_some(b.producer)
                    .flatten()
                    .map(|(id, seq)| ProducerSeq {
                        producer_id: format!("p{id}"),
                        seq: u64::from(seq) + i as u64,
                    }),
                payload: if control {
                    Bytes::new()
                } else {
                    Bytes::from(b.payloads[i].clone())
                },
            })
            .collect();
        for (i, r) in batch.iter().enumerate() {
            record::encode_frame(&mut buf, r, (n - 1 - i) as u32, control);
        }
        offset += n as u64;
        ends.push(buf.len());
        records.push(batch);
    }
    if buf.is_empty() {
        return;
    }
    let clean = buf.clone();
    for d in input.damage.iter().take(3) {
        let len = buf.len();
        if len == 0 {
            break;
        }
        let p = |at: u16| usize::from(at) % len;
        match d {
            Damage::Flip { at, mask } if *mask != 0 => {
                buf[p(*at)] ^= mask;
            }
            Damage::Truncate { at } => {
                buf.truncate(p(*at));
            }
            Damage::Insert { at, bytes } if !bytes.is_empty() => {
                let at = usize::from(*at) % (len + 1);
                buf.splice(at..at, bytes.iter().copied());
            }
            Damage::Zero { at, len: n } => {
                let start = p(*at);
                let end = (start + usize::from(*n)).min(len);
                buf[start..end].fill(0);
            }
            _ => {}
        }
    }
    // The first byte where the damaged bytes differ from the clean ones (later damage may undo
    // earlier damage, so this is measured, not tracked).
    let first_damage = clean
        .iter()
        .zip(&buf)
        .position(|(a, b)| a != b)
        .unwrap_or(clean.len().min(buf.len()));
    let mut seen = Vec::new();
    let out = scan_segment(Path::new("fuzz.log"), &buf, base, ScanMode::RepairTail, |b| {
        seen.push(b.to_vec())
    });
    let Ok(out) = out else { return };
    if buf == clean {
        assert_eq!(seen.len(), records.len());
    }
    let kept = seen.len();
    assert!(kept <= records.len());
    for (got, want) in seen.iter().zip(&records) {
        assert_eq!(got.len(), want.len());
        for (info, r) in got.iter().zip(want) {
            assert_eq!(
                (info.offset, info.term, info.timestamp_ms),
                (r.offset, r.term, r.timestamp_ms)
            );
            assert_eq!(info.producer, r.producer);
        }
    }
    let good = if kept == 0 { 0 } else { ends[kept - 1] };
    assert_eq!(out.good_len as usize, good);
    if buf != clean {
        assert!(
            good <= first_damage,
            "kept {good} bytes, damage at {first_damage}"
        );
    }
});

//! Verification of frames fetched from a leader (`log::frames::verify`, what `append_frames` runs
//! on a fetch answer's body before writing it): any bytes are refused or summarised into whole
//! batches that tile the bytes exactly, with dense offsets, terms that never go down, and counts
//! and producers that match the frames.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use simpleloggers::log::{fuzzing::verify_frames, record};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = verify_frames(Bytes::copy_from_slice(data), 1 << 16, 64) else {
        return;
    };
    let mut at = 0;
    let mut next: Option<u64> = None;
    let mut last_term = 0;
    for b in &v.batches {
        assert_eq!(b.range.start, at, "batches do not tile the bytes");
        assert!(next.is_none_or(|n| n == b.first));
        assert!(b.term >= last_term);
        let mut pos = b.range.start;
        for i in 0..b.count {
            let head = record::peek(&data[pos..]).expect("a verified frame");
            assert_eq!(head.offset, b.first + u64::from(i));
            assert_eq!(head.term, b.term);
            assert_eq!(head.batch_remaining, b.count - 1 - i);
            assert_eq!(head.is_control(), b.control);
            let producer = head.producer_id(&data[pos..pos + head.len]);
            assert_eq!(producer, b.producer.as_ref().map(|(id, _)| id.as_str()));
            if let Some((_, seq)) = &b.producer {
                assert_eq!(head.producer_seq, seq + u64::from(i));
            }
            pos += head.len;
        }
        assert_eq!(pos, b.range.end);
        at = b.range.end;
        next = Some(b.first + u64::from(b.count));
        last_term = b.term;
    }
    assert_eq!(at, data.len());
});

//! Segment scan (`log::segment::scan`, what recovery runs on every segment) over arbitrary bytes:
//! never a panic, what tail repair keeps is a valid prefix that scans strictly to the same batches,
//! and the batches handed to recovery have dense offsets from the segment's base.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use simpleloggers::log::fuzzing::{scan_segment, ScanMode};

fuzz_target!(|input: (u32, bool, &[u8])| {
    let (base, strict, buf) = input;
    let base = u64::from(base);
    let mode = if strict {
        ScanMode::Strict
    } else {
        ScanMode::RepairTail
    };
    let mut seen = Vec::new();
    let Ok(out) = scan_segment(Path::new("fuzz.log"), buf, base, mode, |b| seen.push(b.to_vec())) else {
        return;
    };
    assert!(out.good_len as usize <= buf.len());
    let offsets: Vec<u64> = seen.iter().flatten().map(|f| f.offset).collect();
    assert!(
        offsets.iter().copied().eq(base..base + offsets.len() as u64),
        "offsets not dense: {offsets:?}"
    );
    assert_eq!(out.end, base + offsets.len() as u64);
    assert_eq!(out.torn.is_none(), out.good_len as usize == buf.len());
    if strict {
        assert!(out.torn.is_none(), "a strict scan cut a tail");
    }
    let mut again = 0;
    let kept = &buf[..out.good_len as usize];
    let strict_out = scan_segment(Path::new("fuzz.log"), kept, base, ScanMode::Strict, |_| {
        again += 1
    })
    .expect("what repair keeps scans strictly");
    assert_eq!((strict_out.end, again), (out.end, seen.len()));
});

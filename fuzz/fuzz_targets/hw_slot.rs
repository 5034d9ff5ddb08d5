//! The high-watermark checkpoint slot (`log::hw`): arbitrary bytes are no slot unless their first
//! 24 bytes are exactly the encoding of the `(sequence, high watermark)` they decode to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpleloggers::log::fuzzing::{decode_hw_slot, encode_hw_slot, HW_SLOT_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some((seq, hw)) = decode_hw_slot(data) {
        assert_eq!(&encode_hw_slot(seq, hw)[..], &data[..HW_SLOT_LEN]);
    }
});

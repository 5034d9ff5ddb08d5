//! Frame decoder (`log::record`): any bytes either fail to decode or decode to a frame whose
//! re-encoding is exactly the bytes it was decoded from (one encoding per record, nothing dropped).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use simpleloggers::log::record;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = record::decode(data, |r| Bytes::copy_from_slice(&data[r])) else {
        return;
    };
    let head = record::peek(data).expect("decode accepted what peek refuses");
    assert_eq!(head.len, frame.len);
    let mut again = Vec::new();
    record::encode_frame(&mut again, &frame.record, frame.batch_remaining, frame.control);
    assert_eq!(
        again.as_slice(),
        &data[..frame.len],
        "accepted a frame that is not canonical"
    );
});

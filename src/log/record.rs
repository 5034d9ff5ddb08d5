//! One log record and its on-disk frame: length + CRC32C (covering the length, header and payload),
//! a format version, the batch marker that makes multi-record appends atomic, then the payload.
//! Data records are format version 1; control records (a new leader's term-start record) are
//! version 2 with [`FLAG_CONTROL`]. The byte layout is documented in `docs/log-format.md`.

use bytes::{BufMut, Bytes};

/// Frame format version of data records (kept at 1 so that logs without control records stay
/// readable by older binaries).
pub const FORMAT_VERSION: u8 = 1;
/// Frame format version of control records: older binaries (which know only version 1) refuse
/// them instead of serving them as data. Readers accept versions 1 and 2.
pub const FORMAT_VERSION_CONTROL: u8 = 2;
/// Bytes of the length + CRC prefix.
pub const PREFIX_LEN: usize = 8;
/// Bytes of a frame before the producer id and payload.
pub const HEADER_LEN: usize = 48;
/// Flag bit: the record carries a producer id and sequence.
pub const FLAG_PRODUCER: u8 = 0x01;
/// Flag bit (version 2 only): a control record, never returned by `read` (a term-start record
/// has an empty payload and no producer).
pub const FLAG_CONTROL: u8 = 0x02;
/// Upper bound on a frame's length field accepted when scanning; anything larger is damage.
pub const MAX_FRAME_BODY: u64 = 1 << 30;

/// A producer's identity and per-record sequence number, for idempotent retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    /// Stable producer identity chosen by the producer.
    pub producer_id: String,
    /// Sequence of this record (a batch's record `i` carries `seq + i`).
    pub seq: u64,
}

/// A record as stored and as returned by reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Dense position in the log, starting at 0.
    pub offset: u64,
    /// Fencing token of the leader that wrote it.
    pub term: u64,
    /// Milliseconds since the Unix epoch, assigned by the store on append.
    pub timestamp_ms: u64,
    /// Producer id and sequence, when the producer is idempotent.
    pub producer: Option<ProducerSeq>,
    /// The message bytes.
    pub payload: Bytes,
}

/// A decoded frame: the record plus the framing facts recovery needs.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The record.
    pub record: Record,
    /// Records that follow this one in the same atomic batch (0 = last of its batch).
    pub batch_remaining: u32,
    /// Total bytes of the frame on disk.
    pub len: usize,
    /// A control record ([`FLAG_CONTROL`]).
    pub control: bool,
}

/// The fixed header of a frame whose CRC and version were checked, decoded without copying the
/// producer id or payload (what replication needs to find batch boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Total bytes of the frame.
    pub len: usize,
    /// Flag bits.
    pub flags: u8,
    /// Length of the producer id (bytes 48 .. 48 + this).
    pub producer_id_len: usize,
    /// Records that follow this one in its batch.
    pub batch_remaining: u32,
    /// Record offset.
    pub offset: u64,
    /// Record term.
    pub term: u64,
    /// Record timestamp.
    pub timestamp_ms: u64,
    /// Producer sequence (0 without a producer).
    pub producer_seq: u64,
}

impl FrameHead {
    /// A control record.
    pub fn is_control(&self) -> bool {
        self.flags & FLAG_CONTROL != 0
    }

    /// Carries a producer id and sequence.
    pub fn has_producer(&self) -> bool {
        self.flags & FLAG_PRODUCER != 0
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        self.len - HEADER_LEN - self.producer_id_len
    }

    /// The producer id of the frame `frame` (which this head was read from), if it has one.
    pub fn producer_id<'a>(&self, frame: &'a [u8]) -> Option<&'a str> {
        if !self.has_producer() {
            return None;
        }
        std::str::from_utf8(&frame[HEADER_LEN..HEADER_LEN + self.producer_id_len]).ok()
    }
}

/// Why bytes at a position are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the frame does; `need` is the frame's full size when known.
    Incomplete {
        /// Total frame size, once the length field could be read.
        need: Option<usize>,
    },
    /// The bytes are damaged or not a frame.
    Invalid(String),
}

/// Size of the frame for a record with this producer id and payload length.
pub fn frame_len(producer_id_len: usize, payload_len: usize) -> usize {
    HEADER_LEN + producer_id_len + payload_len
}

/// Append the frame of one data record to `buf` (format version 1).
pub fn encode(buf: &mut Vec<u8>, record: &Record, batch_remaining: u32) {
    encode_frame(buf, record, batch_remaining, false);
}

/// Append the frame of one record to `buf`: a data record (version 1) or, with `control`, a
/// control record (version 2, [`FLAG_CONTROL`]).
pub fn encode_frame(buf: &mut Vec<u8>, record: &Record, batch_remaining: u32, control: bool) {
    let pid = record
        .producer
        .as_ref()
        .map(|p| p.producer_id.as_bytes())
        .unwrap_or(&[]);
    let total = frame_len(pid.len(), record.payload.len());
    let body_len = (total - PREFIX_LEN) as u32;
    let start = buf.len();
    buf.reserve(total);
    buf.put_u32_le(body_len);
    buf.put_u32_le(0); // CRC, filled below
    let mut flags = if record.producer.is_some() {
        FLAG_PRODUCER
    } else {
        0
    };
    if control {
        flags |= FLAG_CONTROL;
    }
    buf.put_u8(if control {
        FORMAT_VERSION_CONTROL
    } else {
        FORMAT_VERSION
    });
    buf.put_u8(flags);
    buf.put_u16_le(pid.len() as u16);
    buf.put_u32_le(batch_remaining);
    buf.put_u64_le(record.offset);
    buf.put_u64_le(record.term);
    buf.put_u64_le(record.timestamp_ms);
    buf.put_u64_le(record.producer.as_ref().map_or(0, |p| p.seq));
    buf.put_slice(pid);
    buf.put_slice(&record.payload);
    let crc = frame_crc(&buf[start..start + total]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C over the length field and everything after the CRC field.
fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[0..4]);
    crc32c::crc32c_append(crc, &frame[PREFIX_LEN..])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Check the frame at the start of `buf` (length, CRC, version, flags) and read its fixed
/// header, without copying anything.
pub fn peek(buf: &[u8]) -> Result<FrameHead, DecodeError> {
    peek_checked(buf, true)
}

/// [`peek`] without the CRC: the frame's structure only. For walking frames that are checked
/// elsewhere — a leader serving its own log to followers, which verify every frame before they
/// store it (`frames::verify`), as Kafka's followers do with what a leader serves.
pub fn peek_structure(buf: &[u8]) -> Result<FrameHead, DecodeError> {
    peek_checked(buf, false)
}

fn peek_checked(buf: &[u8], verify_crc: bool) -> Result<FrameHead, DecodeError> {
    if buf.len() < PREFIX_LEN {
        return Err(DecodeError::Incomplete { need: None });
    }
    let body_len = u32_at(buf, 0) as u64;
    if body_len < (HEADER_LEN - PREFIX_LEN) as u64 || body_len > MAX_FRAME_BODY {
        return Err(DecodeError::Invalid(format!(
            "implausible frame length {body_len}"
        )));
    }
    let total = PREFIX_LEN + body_len as usize;
    if buf.len() < total {
        return Err(DecodeError::Incomplete { need: Some(total) });
    }
    let frame = &buf[..total];
    if verify_crc {
        let stored = u32_at(frame, 4);
        let actual = frame_crc(frame);
        if stored != actual {
            return Err(DecodeError::Invalid(format!(
                "CRC mismatch (stored {stored:#010x}, computed {actual:#010x})"
            )));
        }
    }
    let flags = frame[9];
    let known = match frame[8] {
        FORMAT_VERSION => FLAG_PRODUCER,
        FORMAT_VERSION_CONTROL => FLAG_PRODUCER | FLAG_CONTROL,
        v => return Err(DecodeError::Invalid(format!("unknown format version {v}"))),
    };
    if flags & !known != 0 {
        return Err(DecodeError::Invalid(format!(
            "unknown flags {flags:#04x} for format version {}",
            frame[8]
        )));
    }
    let producer_id_len = u16::from_le_bytes([frame[10], frame[11]]) as usize;
    let producer_seq = u64_at(frame, 40);
    if flags & FLAG_PRODUCER == 0 && (producer_id_len != 0 || producer_seq != 0) {
        // The encoder writes length 0 and sequence 0 without a producer; decoding would drop them.
        return Err(DecodeError::Invalid(format!(
            "producer id length {producer_id_len} or sequence {producer_seq} without the producer flag"
        )));
    }
    if HEADER_LEN + producer_id_len > total {
        return Err(DecodeError::Invalid(format!(
            "producer id length {producer_id_len} exceeds frame"
        )));
    }
    let head = FrameHead {
        len: total,
        flags,
        producer_id_len,
        batch_remaining: u32_at(frame, 12),
        offset: u64_at(frame, 16),
        term: u64_at(frame, 24),
        timestamp_ms: u64_at(frame, 32),
        producer_seq,
    };
    if head.has_producer() && head.producer_id(frame).is_none() {
        return Err(DecodeError::Invalid("producer id is not UTF-8".into()));
    }
    if head.is_control() && (head.has_producer() || head.payload_len() != 0 || head.batch_remaining != 0) {
        return Err(DecodeError::Invalid(
            "a control record must be a batch of its own, without producer or payload".into(),
        ));
    }
    Ok(head)
}

/// Decode the frame at the start of `buf`. `payload_source` turns the payload range into `Bytes`
/// (so a caller holding a `Bytes` buffer can slice without copying).
pub fn decode(
    buf: &[u8],
    payload_source: impl FnOnce(std::ops::Range<usize>) -> Bytes,
) -> Result<Frame, DecodeError> {
    let head = peek(buf)?;
    let frame = &buf[..head.len];
    let producer = head.producer_id(frame).map(|id| ProducerSeq {
        producer_id: id.to_owned(),
        seq: head.producer_seq,
    });
    let payload = payload_source(HEADER_LEN + head.producer_id_len..head.len);
    Ok(Frame {
        record: Record {
            offset: head.offset,
            term: head.term,
            timestamp_ms: head.timestamp_ms,
            producer,
            payload,
        },
        batch_remaining: head.batch_remaining,
        len: head.len,
        control: head.is_control(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(producer: bool) -> Record {
        Record {
            offset: 42,
            term: 7,
            timestamp_ms: 1_700_000_000_000,
            producer: producer.then(|| ProducerSeq {
                producer_id: "p-1".into(),
                seq: 9,
            }),
            payload: Bytes::from_static(b"hello world"),
        }
    }

    /// Encoding then decoding returns the same record, with and without a producer.
    #[test]
    fn round_trip() {
        for producer in [false, true] {
            let rec = sample(producer);
            let mut buf = Vec::new();
            encode(&mut buf, &rec, 3);
            assert_eq!(buf.len(), frame_len(if producer { 3 } else { 0 }, 11));
            let f = decode(&buf, |r| Bytes::copy_from_slice(&buf[r])).expect("valid frame");
            assert_eq!(f.record, rec);
            assert_eq!(f.batch_remaining, 3);
            assert_eq!(f.len, buf.len());
        }
    }

    /// Flipping any single byte of a frame is detected (CRC covers length, header and payload).
    #[test]
    fn every_byte_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, &sample(true), 0);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                decode(&bad, |r| Bytes::copy_from_slice(&bad[r])).is_err(),
                "flip at {i} undetected"
            );
        }
    }

    /// Every strict prefix of a frame decodes as incomplete, never as a record.
    #[test]
    fn prefixes_are_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, &sample(false), 0);
        for cut in 0..buf.len() {
            let r = decode(&buf[..cut], |r| Bytes::copy_from_slice(&buf[r]));
            assert!(
                matches!(r, Err(DecodeError::Incomplete { .. })),
                "cut {cut}: {r:?}"
            );
        }
    }

    /// A control record is written as version 2 with the control flag and decodes as such; data
    /// records stay version 1, so logs without control records read as before.
    #[test]
    fn control_records_are_version_2() {
        let rec = Record {
            payload: Bytes::new(),
            ..sample(false)
        };
        let mut buf = Vec::new();
        encode_frame(&mut buf, &rec, 0, true);
        assert_eq!(buf[8], FORMAT_VERSION_CONTROL);
        assert_eq!(buf[9], FLAG_CONTROL);
        let f = decode(&buf, |r| Bytes::copy_from_slice(&buf[r])).expect("valid control frame");
        assert!(f.control);
        assert_eq!(f.record, rec);
        let head = peek(&buf).expect("valid head");
        assert!(head.is_control());
        assert_eq!(head.payload_len(), 0);
        let mut data = Vec::new();
        encode(&mut data, &sample(true), 0);
        assert_eq!(data[8], FORMAT_VERSION);
        assert!(
            !decode(&data, |r| Bytes::copy_from_slice(&data[r]))
                .expect("valid")
                .control
        );
    }

    /// A version-1 frame claiming the control flag, a control frame with a payload, and an unknown
    /// version are refused (with a correct CRC, so only the header check can catch them).
    #[test]
    fn invalid_headers_are_refused() {
        let reseal = |buf: &mut Vec<u8>| {
            let crc = frame_crc(buf);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
        };
        let mut v1_control = Vec::new();
        encode(&mut v1_control, &sample(false), 0);
        v1_control[9] = FLAG_CONTROL;
        reseal(&mut v1_control);
        assert!(matches!(peek(&v1_control), Err(DecodeError::Invalid(_))));
        let mut with_payload = Vec::new();
        encode_frame(&mut with_payload, &sample(false), 0, true);
        assert!(matches!(peek(&with_payload), Err(DecodeError::Invalid(_))));
        let mut v3 = Vec::new();
        encode(&mut v3, &sample(false), 0);
        v3[8] = 3;
        reseal(&mut v3);
        assert!(matches!(peek(&v3), Err(DecodeError::Invalid(_))));
    }
}

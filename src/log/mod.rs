//! Durable, append-only, segmented log store: the leader writes every accepted message here and
//! acknowledges it only once durable; replication ships the same records.
//!
//! # Layout
//! - [`record`]: the record type and its CRC32C-checked frame (see `docs/log-format.md`).
//! - `segment`: segment files named by base offset; frame scan; positional reads.
//! - [`epochs`]: the epoch cache (term → first offset), persisted and verified on open; what
//!   replication's truncation by epoch asks.
//! - `index`: the sparse offset index and the `.index` / `.snapshot` side files.
//! - `hw`: the persisted high watermark (`hw.checkpoint`) of a replicated log.
//! - `incarnation`: the data directory's UUID (`incarnation`), created once with it.
//! - `frames`: verification of frames fetched from a leader before they are appended as they are.
//! - `producer`: per-producer sequence history for idempotent retries, gap refusal, expiry.
//! - `recovery`: opening a directory: torn-tail repair, corruption refusal, state rebuild.
//! - [`store`]: [`LogStore`], the handle, and the state it shares with its writer thread;
//!   `store/writer.rs`: the group-committing writer and sync threads, failed-write rollback and
//!   the poisoned state after a failed write or sync; `store/maintenance.rs`: segment roll (with
//!   the producer snapshot), retention, suffix truncation, recovery of a poisoned store.
//! - [`config`], [`error`], [`fault`]: settings, typed errors, test fault injection.
//!
//! # Tailing
//! Read from your offset until the returned list is empty, then `wait_for(next).await` (or
//! `subscribe()` and `changed().await`) and read again. Reads stop at the high watermark; control
//! records (a term-start record per leadership) are skipped, so offsets can have gaps of one.

pub mod config;
pub mod epochs;
pub mod error;
pub mod fault;
pub(crate) mod frames;
pub(crate) mod hw;
pub(crate) mod incarnation;
pub(crate) mod index;
pub(crate) mod producer;
pub mod record;
pub(crate) mod recovery;
pub(crate) mod segment;
pub mod store;

/// Crate-private parsers re-exported for the fuzz targets (`fuzz/`) and the property tests
/// (`tests/fuzz_*.rs`); hidden, not a stable API (see `docs/fuzzing.md`).
#[doc(hidden)]
pub mod fuzzing {
    pub use super::{
        frames::{verify as verify_frames, BatchSummary, VerifiedFrames},
        hw::{decode as decode_hw_slot, encode as encode_hw_slot, SLOT_LEN as HW_SLOT_LEN},
        segment::{scan as scan_segment, FrameInfo, ScanMode, ScanOutcome, TornTail},
    };
}

pub use config::{Durability, LogConfig, ParseDurabilityError};
pub use epochs::{Epoch, EpochCache};
pub use error::LogError;
pub use fault::FaultInjector;
pub use producer::{ProducerBatch, DEFAULT_PRODUCER_ID_EXPIRY, PRODUCER_WINDOW};
pub use record::{ProducerSeq, Record};
pub use store::{AppendOutcome, FrameChunk, LogStore, WriteHealth};

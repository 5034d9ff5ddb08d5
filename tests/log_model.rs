//! Property test: random appends (single and batched, with and without idempotent producers and
//! retries), stale terms, reads, truncations and reopens agree with an in-memory model of the log
//! (its records, producer sequences and epoch cache).

use bytes::Bytes;
use proptest::prelude::*;
use simpleloggers::log::{
    AppendOutcome, Durability, Epoch, LogConfig, LogError, LogStore, ProducerBatch, ProducerSeq,
};

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of payloads of these sizes, maybe as a producer, maybe bumping the term.
    Append {
        sizes: Vec<usize>,
        producer: Option<usize>,
        bump_term: bool,
    },
    /// Retry the given producer's most recent batch.
    Retry { producer: usize },
    /// Append with a term below the last one (must be fenced).
    StaleTerm,
    /// Read from a fraction of the end with limits.
    Read {
        from_permille: u64,
        max_records: usize,
        max_bytes: usize,
    },
    /// Truncate from a fraction of the end.
    Truncate { from_permille: u64 },
    /// Close and reopen the store.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec(0usize..90, 1..5), prop::option::of(0usize..3), prop::bool::weighted(0.15))
            .prop_map(|(sizes, producer, bump_term)| Op::Append { sizes, producer, bump_term }),
        1 => (0usize..3).prop_map(|producer| Op::Retry { producer }),
        1 => Just(Op::StaleTerm),
        2 => (0u64..=1000, 1usize..20, 1usize..400)
            .prop_map(|(from_permille, max_records, max_bytes)| Op::Read { from_permille, max_records, max_bytes }),
        1 => (0u64..=1000).prop_map(|from_permille| Op::Truncate { from_permille }),
        1 => Just(Op::Reopen),
    ]
}

/// A batch as the model remembers it.
#[derive(Debug, Clone)]
struct Batch {
    first: u64,
    term: u64,
    payloads: Vec<Bytes>,
    producer: Option<(String, u64)>,
}

/// `(term, payload, producer id and seq)` of one model record.
type ModelRecord = (u64, Bytes, Option<(String, u64)>);

/// The in-memory model: a list of batches.
#[derive(Debug, Default)]
struct Model {
    batches: Vec<Batch>,
    /// Highest term ever accepted before any truncation lowered it.
    term: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches
            .last()
            .map_or(0, |b| b.first + b.payloads.len() as u64)
    }
    fn last_term(&self) -> Option<(u64, u64)> {
        self.batches
            .last()
            .map(|b| (b.term, b.first + b.payloads.len() as u64 - 1))
    }
    fn last_batch_of(&self, id: &str) -> Option<&Batch> {
        self.batches
            .iter()
            .rev()
            .find(|b| b.producer.as_ref().is_some_and(|(p, _)| p == id))
    }
    fn last_seq(&self, id: &str) -> Option<u64> {
        self.last_batch_of(id)
            .and_then(|b| b.producer.as_ref().map(|(_, s)| s + b.payloads.len() as u64 - 1))
    }
    fn record(&self, offset: u64) -> Option<ModelRecord> {
        let b = self.batches.iter().rev().find(|b| b.first <= offset)?;
        let i = (offset - b.first) as usize;
        let p = b.payloads.get(i)?;
        Some((
            b.term,
            p.clone(),
            b.producer.as_ref().map(|(id, s)| (id.clone(), s + i as u64)),
        ))
    }
    /// Where each term begins: what the store's epoch cache must hold.
    fn epochs(&self) -> Vec<Epoch> {
        let mut out: Vec<Epoch> = Vec::new();
        for b in self.batches.iter().filter(|b| !b.payloads.is_empty()) {
            if out.last().is_none_or(|e| e.term != b.term) {
                out.push(Epoch {
                    term: b.term,
                    start: b.first,
                });
            }
        }
        out
    }
    fn truncate(&mut self, from: u64) {
        self.batches.retain(|b| b.first < from);
        if let Some(b) = self.batches.last_mut() {
            b.payloads.truncate((from - b.first) as usize);
        }
    }
}

fn pid(i: usize) -> String {
    format!("producer-{i}")
}

fn body(n: u64, size: usize) -> Bytes {
    let mut v = format!("{n}:").into_bytes();
    v.resize(size.max(v.len()), b'a' + (n % 26) as u8);
    Bytes::from(v)
}

async fn run(ops: Vec<Op>, segment_bytes: u64, always: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut cfg = LogConfig::new(dir.path());
    cfg.segment_bytes = segment_bytes;
    cfg.index_interval_bytes = 64;
    cfg.durability = if always {
        Durability::Always
    } else {
        Durability::Never
    };
    let fail = |e: LogError| TestCaseError::fail(e.to_string());
    let mut log = LogStore::open(cfg.clone()).await.map_err(fail)?;
    let mut model = Model {
        term: 1,
        ..Model::default()
    };
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append {
                sizes,
                producer,
                bump_term,
            } => {
                if bump_term {
                    model.term += 1;
                }
                let term = model.term.max(model.last_term().map_or(0, |t| t.0));
                model.term = term;
                let payloads: Vec<Bytes> = sizes
                    .iter()
                    .map(|&s| {
                        counter += 1;
                        body(counter, s)
                    })
                    .collect();
                let producer = producer.map(|p| (pid(p), model.last_seq(&pid(p)).map_or(0, |s| s + 1)));
                let ps = producer.as_ref().map(|(id, seq)| {
                    ProducerBatch::from(ProducerSeq {
                        producer_id: id.clone(),
                        seq: *seq,
                    })
                });
                let out = log.append(term, ps, payloads.clone()).await.map_err(fail)?;
                let first = model.end();
                prop_assert_eq!(
                    out,
                    AppendOutcome::Appended {
                        first,
                        count: payloads.len() as u32
                    }
                );
                model.batches.push(Batch {
                    first,
                    term,
                    payloads,
                    producer,
                });
            }
            Op::Retry { producer } => {
                let id = pid(producer);
                let Some(b) = model.last_batch_of(&id).cloned() else {
                    continue;
                };
                let seq = b.producer.as_ref().map_or(0, |p| p.1);
                let ps = Some(ProducerBatch::from(ProducerSeq { producer_id: id, seq }));
                let term = model.last_term().map_or(model.term, |t| t.0);
                let out = log.append(term, ps, b.payloads.clone()).await.map_err(fail)?;
                prop_assert_eq!(
                    out,
                    AppendOutcome::Duplicate {
                        first: b.first,
                        count: b.payloads.len() as u32
                    }
                );
            }
            Op::StaleTerm => {
                let Some((last, _)) = model.last_term() else {
                    continue;
                };
                if last == 0 {
                    continue;
                }
                let r = log.append(last - 1, None, vec![body(0, 1)]).await;
                prop_assert!(matches!(r, Err(LogError::StaleTerm { .. })), "{:?}", r);
            }
            Op::Read {
                from_permille,
                max_records,
                max_bytes,
            } => {
                let from = model.end() * from_permille / 1000;
                let got = log.read(from, max_records, max_bytes).await.map_err(fail)?;
                prop_assert!(got.len() <= max_records);
                if from < model.end() {
                    prop_assert!(!got.is_empty());
                }
                if got.len() > 1 {
                    prop_assert!(got.iter().map(|r| r.payload.len()).sum::<usize>() <= max_bytes);
                }
                for (i, r) in got.iter().enumerate() {
                    prop_assert_eq!(r.offset, from + i as u64);
                    let (term, payload, producer) = model.record(r.offset).ok_or_else(|| {
                        TestCaseError::fail(format!("store returned offset {} beyond the model", r.offset))
                    })?;
                    prop_assert_eq!(r.term, term);
                    prop_assert_eq!(&r.payload, &payload);
                    prop_assert_eq!(
                        r.producer.as_ref().map(|p| (p.producer_id.clone(), p.seq)),
                        producer
                    );
                }
            }
            Op::Truncate { from_permille } => {
                let from = model.end() * from_permille / 1000;
                log.truncate_suffix(from).await.map_err(fail)?;
                model.truncate(from);
            }
            Op::Reopen => {
                log.close().await.map_err(fail)?;
                log = LogStore::open(cfg.clone()).await.map_err(fail)?;
            }
        }
        prop_assert_eq!(log.end_offset(), model.end());
        prop_assert_eq!(log.last_term(), model.last_term());
        prop_assert_eq!(log.epochs(), model.epochs());
        for p in 0..3 {
            prop_assert_eq!(log.producer_last_seq(&pid(p)), model.last_seq(&pid(p)));
        }
    }
    let all = log.read(0, usize::MAX, usize::MAX).await.map_err(fail)?;
    prop_assert_eq!(all.len() as u64, model.end());
    for r in &all {
        prop_assert_eq!(Some(r.payload.clone()), model.record(r.offset).map(|x| x.1));
    }
    log.close().await.map_err(fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of appends, retries, fenced appends, reads, truncations and reopens leaves the
    /// store agreeing with the model: same end, last term, epoch cache, producer sequences and
    /// record contents.
    #[test]
    fn store_agrees_with_model(
        ops in prop::collection::vec(op(), 1..40),
        segment_bytes in 200u64..1500,
        always in prop::bool::weighted(0.25),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run(ops, segment_bytes, always))?;
    }
}

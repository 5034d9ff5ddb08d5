//! Replication (issue 11, design in `docs/replication.md`): followers pull the leader's records,
//! the in-sync replica set lives in Consul, and the high watermark decides what is committed.
//! What exists so far is the follower's truncation rule, the pure decision that keeps a follower's
//! log a prefix of the leader's without ever dropping a record readers may have seen, and the
//! Consul side: the ISR key and its guarded changes, and the decision of who may contend.
//!
//! # Layout
//! - [`truncation`]: truncation by epoch (KIP-101/279): given the follower's epoch cache and the
//!   leader's answer to "where does my last term end", truncate, ask again, fetch, or refuse.
//! - [`isr`]: the ISR, term and report keys in Consul and the transactions that change them.
//! - [`bootstrap`]: who may contend (normal, cluster start, Consul state loss, unclean, not in
//!   the ISR), as a pure function of one read of those keys.

pub mod bootstrap;
pub mod isr;
pub mod truncation;

pub use truncation::{decide, first_step, Decision, FollowerLog, Refusal};

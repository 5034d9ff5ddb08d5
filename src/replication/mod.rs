//! Replication (issue 11, design in `docs/replication.md`): followers pull the leader's records
//! over the internal endpoint, the in-sync replica set lives in Consul, and the high watermark
//! decides what is committed (acknowledged and visible).
//!
//! # Layout
//! - [`truncation`]: truncation by epoch (KIP-101/279): given the follower's epoch cache and the
//!   leader's answer to "where does my last term end", truncate, ask again, fetch, or refuse.
//! - [`isr`]: the ISR, term and report keys in Consul and the transactions that change them.
//! - [`bootstrap`]: who may contend (normal, cluster start, Consul state loss, unclean, not in
//!   the ISR), as a pure function of one read of those keys.
//! - [`protocol`]: the internal endpoint's queries, headers and refusals, and the follower's client.
//! - [`leader`]: follower progress, the HW, ISR shrink/expand and write admission (pure
//!   decisions), and the loop that applies them while this node leads.
//! - [`follower`]: the loop that follows the leader: truncation rule, long-poll fetch, append.
//! - [`http`]: the internal endpoint's handlers (secret check, end-offset, fetch).
//! - [`state`]: [`Replication`], the node's shared replication state.

pub mod bootstrap;
pub mod follower;
pub mod http;
pub mod isr;
pub mod leader;
pub mod protocol;
pub mod state;
pub mod truncation;

pub use leader::WriteRefusal;
pub use state::{Replication, ReplicationSettings, ReplicationStatus, TruncationRefused};
pub use truncation::{decide, first_step, Decision, FollowerLog, Refusal};

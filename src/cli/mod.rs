//! The operator subcommands that look at a running cluster: `status` (members as a table or
//! JSON) and `tail` (print the leader's messages, following across failovers), plus the cluster
//! view they share with the node's dashboard API.

pub mod cluster;
pub mod replication;
pub mod status;
pub mod tail;

pub use cluster::{ClusterView, LeaderSummary, Member};
pub use replication::ReplicationStatus;
pub use status::{Output, StatusConfig};
pub use tail::TailConfig;

//! simpleloggers: a distributed, durable log service whose nodes elect one leader through
//! HashiCorp Consul (a session and a KV lock); only the leader accepts messages.
//!
//! # Layout
//! - [`cli`]: `simpleloggers status` and `tail`, and the cluster view they share with the dashboard.
//! - [`consul`]: typed Consul HTTP client (KV, sessions, agent, health, txn, blocking watches).
//! - [`demo`]: `simpleloggers demo`: the whole system on one machine, verified at the end.
//! - [`discovery`]: the leader record under the election key, and a watch that follows it.
//! - [`election`]: the Elector: Consul session, one contend transaction (ISR check, lock, term key),
//!   lease, reports; publishes the LeaderState.
//! - [`flags`]: the flag groups shared by subcommands (Consul, election key, election timing).
//! - [`k8s`]: best-effort Kubernetes integration: LogCluster CRD and status, pod role label,
//!   leadership Events, leader-driven rolling update.
//! - [`local_cluster`]: a dev Consul and N nodes as local processes, for the demo, tests and benchmarks.
//! - [`log`]: the durable, segmented, append-only log store.
//! - [`metrics`]: the `simpleloggers_` Prometheus metrics.
//! - [`node`]: `simpleloggers node`: the HTTP API, probes and status around the elector and log.
//! - [`producer`]: the producer: finds the leader, batches messages and sends them with retries
//!   that never duplicate (idempotency headers) or drop silently (a summary of every outcome).
//! - [`replication`]: replication between nodes (`docs/replication.md`); so far the follower's
//!   truncation-by-epoch rule, the ISR/term/report keys and who may contend for the lock.
//! - [`shutdown`]: cancellation plumbing shared by every long-running task.
//! - [`telemetry`]: tracing subscriber set-up.

pub mod cli;
pub mod consul;
pub mod demo;
pub mod discovery;
pub mod election;
pub mod flags;
pub mod k8s;
pub mod local_cluster;
pub mod log;
pub mod metrics;
pub mod node;
pub mod producer;
pub mod replication;
pub mod shutdown;
pub mod telemetry;

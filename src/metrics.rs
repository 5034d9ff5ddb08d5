//! The `simpleloggers_` Prometheus metrics of a node, rendered in the text format at `/metrics`.

use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of an HTTP request metric. Every value comes from a bounded set, whatever clients
/// send: a route of the router, a standard method, a status the node answers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route pattern (`/api/v1/log`, `/assets/{file}`), or `unmatched`.
    pub route: String,
    /// The HTTP method: see [`method_label`].
    pub method: &'static str,
    /// The response status code.
    pub status: u16,
}

/// The `method` label of a request: the standard method's name, else `other`, so that a client
/// inventing methods cannot create label values (each one a new time series).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// Labels of the connections the node closed itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why: `header_timeout` or `idle_timeout`.
    pub reason: String,
}

/// Labels of a Consul error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error kind (`unavailable`, `timeout`, ...).
    pub kind: String,
}

/// Labels of a Consul request metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation (`kv`, `session/renew`, ...).
    pub op: String,
}

/// Labels of a per-follower replication metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// The follower's node name (bounded by the cluster's size).
    pub member: String,
}

/// Labels of an ISR change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `shrink` or `expand`.
    pub change: &'static str,
}

/// Every metric a node exports. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// 1 while this node is the leader with a valid lease.
    pub is_leader: Gauge,
    /// The current term (ours when leading, else the known leader's).
    pub term: Gauge,
    /// Role changes since start.
    pub leadership_changes: Counter,
    /// Messages durably appended by this node.
    pub messages_appended: Counter,
    /// Payload bytes durably appended.
    pub bytes_appended: Counter,
    /// Retried batches answered from the idempotency history.
    pub duplicates: Counter,
    /// Time from a write's arrival to its durability.
    pub append_seconds: Histogram,
    /// The next offset this node's log will assign.
    pub log_end_offset: Gauge,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request latency by route.
    pub http_seconds: Histogram,
    /// Open HTTP connections (at most `--http-max-connections`).
    pub http_connections: Gauge,
    /// HTTP connections closed by a deadline, by reason.
    pub http_connections_closed: Family<ReasonLabels, Counter>,
    /// Consul request failures by kind.
    pub consul_errors: Family<ErrorLabels, Counter>,
    /// Consul request latency by operation.
    pub consul_seconds: Family<OpLabels, Histogram>,
    /// The high watermark this node exposes (one past the last committed record).
    pub replication_high_watermark: Gauge,
    /// Members of the in-sync replica set, as this node knows it.
    pub replication_isr_members: Gauge,
    /// Records each follower is behind the leader's log end (leader only).
    pub replication_follower_lag_records: Family<MemberLabels, Gauge>,
    /// ISR changes this node made as leader, by kind (members removed or added).
    pub replication_isr_changes: Family<ChangeLabels, Counter>,
    /// Suffix truncations this node made as a follower (the truncation rule).
    pub replication_truncations: Counter,
    /// Truncations refused because they would remove records below the high watermark.
    pub replication_truncation_refusals: Counter,
    /// Writes refused by this node as leader, by reason (`not_enough_replicas`, ...).
    pub writes_refused: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under `simpleloggers_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("simpleloggers");
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 18);
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            is_leader: Gauge::default(),
            term: Gauge::default(),
            leadership_changes: Counter::default(),
            messages_appended: Counter::default(),
            bytes_appended: Counter::default(),
            duplicates: Counter::default(),
            append_seconds: Histogram::new(buckets()),
            log_end_offset: Gauge::default(),
            http_requests: Family::default(),
            http_seconds: Histogram::new(buckets()),
            http_connections: Gauge::default(),
            http_connections_closed: Family::default(),
            consul_errors: Family::default(),
            consul_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.000_1, 2.0, 18,
                ))
            }),
            replication_high_watermark: Gauge::default(),
            replication_isr_members: Gauge::default(),
            replication_follower_lag_records: Family::default(),
            replication_isr_changes: Family::default(),
            replication_truncations: Counter::default(),
            replication_truncation_refusals: Counter::default(),
            writes_refused: Family::default(),
        };
        registry.register(
            "is_leader",
            "1 while this node leads with a valid lease",
            m.is_leader.clone(),
        );
        registry.register(
            "term",
            "Current leadership term (Consul LockIndex)",
            m.term.clone(),
        );
        registry.register(
            "leadership_changes",
            "Role changes of this node",
            m.leadership_changes.clone(),
        );
        registry.register(
            "messages_appended",
            "Messages durably appended",
            m.messages_appended.clone(),
        );
        registry.register(
            "appended_bytes",
            "Payload bytes durably appended",
            m.bytes_appended.clone(),
        );
        registry.register(
            "duplicates",
            "Retried batches answered without storing",
            m.duplicates.clone(),
        );
        registry.register(
            "append_duration_seconds",
            "Time from a write's arrival to its durability",
            m.append_seconds.clone(),
        );
        registry.register(
            "log_end_offset",
            "Next offset of the local log",
            m.log_end_offset.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            m.http_seconds.clone(),
        );
        registry.register(
            "http_connections",
            "Open HTTP connections",
            m.http_connections.clone(),
        );
        registry.register(
            "http_connections_closed",
            "HTTP connections the node closed because a deadline passed, by reason",
            m.http_connections_closed.clone(),
        );
        registry.register(
            "consul_errors",
            "Failed Consul requests by kind",
            m.consul_errors.clone(),
        );
        registry.register(
            "consul_request_duration_seconds",
            "Consul request latency by operation (blocking queries included)",
            m.consul_seconds.clone(),
        );
        registry.register(
            "replication_high_watermark",
            "High watermark: one past the last committed record",
            m.replication_high_watermark.clone(),
        );
        registry.register(
            "replication_isr_members",
            "Members of the in-sync replica set",
            m.replication_isr_members.clone(),
        );
        registry.register(
            "replication_follower_lag_records",
            "Records a follower is behind the leader's log end (leader only)",
            m.replication_follower_lag_records.clone(),
        );
        registry.register(
            "replication_isr_changes",
            "Changes of the in-sync replica set made by this node as leader",
            m.replication_isr_changes.clone(),
        );
        registry.register(
            "replication_truncations",
            "Suffix truncations made by the follower's truncation rule",
            m.replication_truncations.clone(),
        );
        registry.register(
            "replication_truncation_refusals",
            "Truncations refused because they would remove records below the high watermark",
            m.replication_truncation_refusals.clone(),
        );
        registry.register(
            "writes_refused",
            "Writes refused by the leader, by reason",
            m.writes_refused.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// An observer for [`crate::consul::ConsulClient::with_observer`]: times every request and
    /// counts failures — transport errors by kind, 403 as `permission_denied`, 5xx as
    /// `unavailable` (a 404 is an answer, not a failure).
    pub fn consul_observer(&self) -> crate::consul::RequestObserver {
        let metrics = self.clone();
        std::sync::Arc::new(move |op, elapsed, outcome| {
            metrics
                .consul_seconds
                .get_or_create(&OpLabels { op: op.to_string() })
                .observe(elapsed.as_secs_f64());
            let kind = match outcome {
                Err(err) => Some(err.kind()),
                Ok(403) => Some("permission_denied"),
                Ok(status) if status >= 500 => Some("unavailable"),
                Ok(_) => None,
            };
            if let Some(kind) = kind {
                metrics
                    .consul_errors
                    .get_or_create(&ErrorLabels {
                        kind: kind.to_string(),
                    })
                    .inc();
            }
        })
    }

    /// Counts `n` members removed from the ISR.
    pub fn isr_shrink(&self, n: u64) {
        if n > 0 {
            self.replication_isr_changes
                .get_or_create(&ChangeLabels { change: "shrink" })
                .inc_by(n);
        }
    }

    /// Counts `n` members added to the ISR.
    pub fn isr_expand(&self, n: u64) {
        if n > 0 {
            self.replication_isr_changes
                .get_or_create(&ChangeLabels { change: "expand" })
                .inc_by(n);
        }
    }

    /// Counts a write refused for `reason` (a stable code such as `not_enough_replicas`).
    pub fn write_refused(&self, reason: &str) {
        self.writes_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric carries the prefix and counters render with `_total`.
    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.messages_appended.inc_by(3);
        m.http_requests
            .get_or_create(&HttpLabels {
                route: "/r".into(),
                method: "GET",
                status: 200,
            })
            .inc();
        let text = m.render();
        assert!(text.contains("simpleloggers_messages_appended_total 3"), "{text}");
        assert!(text.contains(r#"simpleloggers_http_requests_total{route="/r",method="GET",status="200"} 1"#));
        assert!(text.contains("simpleloggers_append_duration_seconds_bucket"));
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.starts_with("simpleloggers_"), "{line}");
        }
    }

    /// Standard methods are their own label; anything else is `other`.
    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
        assert_eq!(method_label(&axum::http::Method::OPTIONS), "OPTIONS");
        for invented in ["FOOBAR", "get", "X-ANYTHING"] {
            let method = axum::http::Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented}");
        }
    }
}

//! `simpleloggers status`: the members of the cluster, their roles, terms, log end offsets,
//! replication (high watermark, lag, ISR membership, election case, refused writes and
//! truncations), Consul checks and sessions, as a `kubectl get`-like table or JSON for scripts.

use std::time::Duration;

use super::{
    cluster::{self, ClusterView},
    replication,
};
use crate::{
    consul::{ConsulClient, ConsulError},
    flags::{ClusterArgs, ServiceArgs},
};

/// Output format of `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// A JSON array of members for scripts, each with its `replication` report (null for a
    /// node that predates replication), `in_isr` and the leader's `follower_progress`.
    Json,
}

/// Flags of `simpleloggers status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusConfig {
    /// How long each member's /api/v1/status may take before it is shown as unreachable.
    #[arg(long = "timeout", default_value = "1s", value_parser = humantime::parse_duration)]
    pub member_timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// The nodes' read token (their `--read-token`, or their write token), sent as
    /// `Authorization: Bearer` to every member's `/api/v1/status`.
    #[arg(long = "read-token", env = "SIMPLELOGGERS_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// Consul and the election key.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The Consul service whose instances are the members.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Takes the view and renders it in the chosen format (the text ends with a newline).
///
/// # Errors
/// Consul cannot be reached (the message names the address), or the client cannot be built.
pub async fn run(config: &StatusConfig) -> Result<String, ConsulError> {
    let consul = ConsulClient::new(&config.cluster.consul)?;
    let http = reqwest::Client::builder()
        .default_headers(
            crate::node::auth::bearer_headers(config.read_token.as_deref(), "--read-token")
                .map_err(ConsulError::Config)?,
        )
        .connect_timeout(config.member_timeout)
        .build()
        .map_err(|e| ConsulError::Config(format!("cannot build the HTTP client: {e}")))?;
    let view = cluster::collect(
        &consul,
        &http,
        &config.service.service_name,
        &config.cluster.election_key,
        config.member_timeout,
    )
    .await?;
    Ok(render(&view, config.output))
}

/// Renders a view as a table (then, after a blank line, the cluster's replication settings and
/// ISR and every member's refusals, when any node reports replication) or as a JSON array of
/// members.
pub fn render(view: &ClusterView, output: Output) -> String {
    match output {
        Output::Table if view.members.is_empty() => {
            format!(
                "no instances of service {:?} are registered in Consul (with Consul ACLs on, the \
                 token also needs service:read on it and node:read: docs/consul-acl.md)\n",
                view.service
            )
        }
        Output::Table => {
            let notes = replication::notes(&view.members) + &write_notes(&view.members);
            let table = cluster::render_table(view);
            if notes.is_empty() {
                table
            } else {
                format!("{table}\n{notes}")
            }
        }
        Output::Json => serde_json::to_string_pretty(&view.members).unwrap_or_else(|_| "[]".into()) + "\n",
    }
}

/// One line per member that refuses writes for a reason other than being a follower (Consul
/// unreachable or denying, a lapsed lease, too few replicas, ...).
fn write_notes(members: &[cluster::Member]) -> String {
    let mut out = String::new();
    for m in members {
        if let Some(w) = m
            .writes
            .as_ref()
            .filter(|w| !w.accepting && w.reason != "not_leader")
        {
            out.push_str(&format!(
                "{}: writes refused ({}): {}\n",
                m.name, w.reason, w.detail
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::cli::{LeaderSummary, Member};

    fn leader() -> LeaderSummary {
        LeaderSummary {
            name: "n0".into(),
            address: "10.0.0.1:3000".into(),
            since: "2025-01-01T00:00:00Z".into(),
            term: 4,
            session: "sess-n0-0123456789".into(),
        }
    }

    /// What a node answers on `/api/v1/status`, with `replication` when given.
    fn status(name: &str, role: &str, end: u64, replication: Option<Value>) -> Value {
        let mut s = json!({
            "name": name, "address": "x", "role": role, "ready": role == "leader",
            "leader": null, "term": 4, "lease_remaining_ms": null, "reason": "r",
            "role_since": "2025-01-01T00:00:00Z", "transitions": 1, "log_end_offset": end,
            "log_start_offset": 0, "consul_reachable": true,
            "session": format!("sess-{name}-0123456789"),
        });
        if let Some(r) = replication {
            s["replication"] = r;
        }
        s
    }

    /// The view `collect` would build from these `/api/v1/status` answers (None: unreachable).
    fn view(statuses: Vec<(&str, Option<Value>)>) -> ClusterView {
        let leader = leader();
        let mut members: Vec<Member> = statuses
            .into_iter()
            .map(|(name, status)| {
                let mut m = Member::registered(name, &format!("{name}:3000"), name, "passing");
                if let Some(s) = status {
                    m.absorb_status(&s, Some(&leader)).unwrap();
                }
                m
            })
            .collect();
        replication::annotate(&mut members);
        ClusterView {
            service: "simpleloggers".into(),
            leader: Some(leader),
            members,
            observed_at_ms: 1,
        }
    }

    /// A three-node cluster whose leader refuses writes (one follower out of the ISR) and whose
    /// other follower refused a truncation, plus an unreachable fourth node.
    fn troubled() -> ClusterView {
        view(vec![
            (
                "n0",
                Some(status(
                    "n0",
                    "leader",
                    125,
                    Some(json!({
                "replicas": 3, "min_insync": 2, "acks": "all", "high_watermark": 123,
                "log_end": 125, "log_start": 0, "case": "normal", "isr": ["n0"],
                "members": [
                    {"name": "n1", "incarnation": "i1", "log_end": 120, "lag_records": 5,
                     "in_isr": false, "caught_up_ms_ago": 4200},
                    {"name": "n2", "incarnation": "i2", "log_end": 125, "lag_records": 0,
                     "in_isr": false, "caught_up_ms_ago": 12}],
                "leader": "n0",
                "writes_refused": "not_enough_replicas: 1 in sync, --min-insync 2",
                "truncation_refused": null})),
                )),
            ),
            (
                "n1",
                Some(status(
                    "n1",
                    "follower",
                    120,
                    Some(json!({
                "replicas": 3, "min_insync": 2, "acks": "all", "high_watermark": 118,
                "log_end": 120, "log_start": 0,
                "case": {"state_loss_waiting": {"reported": 2, "missing": ["n3"]}},
                "isr": ["n0"], "members": [], "leader": "n0", "writes_refused": null,
                "truncation_refused": null})),
                )),
            ),
            (
                "n2",
                Some(status(
                    "n2",
                    "follower",
                    125,
                    Some(json!({
                "replicas": 3, "min_insync": 2, "acks": "all", "high_watermark": 123,
                "log_end": 125, "log_start": 0, "case": "not_in_isr", "isr": ["n0"],
                "members": [], "leader": "n0", "writes_refused": null,
                "truncation_refused": {"divergence": 100, "high_watermark": 123,
                                       "reason": "the leader's log diverges below our high watermark"}})),
                )),
            ),
            ("n3", None),
        ])
    }

    fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name} in {table}"))
            .split_whitespace()
            .collect()
    }

    /// The table shows each member's HW, the leader's view of its lag (with the time since it
    /// was caught up), ISR membership (from the leader's report of Consul's ISR) and its own
    /// election case; below it, the settings and ISR, why the leader refuses writes, the refused
    /// truncation with its divergence point and HW, and the details of a waiting case.
    #[test]
    fn table_shows_replication() {
        let out = render(&troubled(), Output::Table);
        let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "ROLE",
                "READY",
                "TERM",
                "LOG-END",
                "HW",
                "LAG",
                "ISR",
                "CASE",
                "CONSUL-CHECK",
                "SESSION",
                "ADDRESS"
            ]
        );
        assert_eq!(
            row(&out, "n0")[1..9],
            ["leader", "true", "4", "125", "123", "-", "yes", "normal"]
        );
        assert_eq!(
            row(&out, "n1")[4..10],
            ["120", "118", "5", "(4.2s)", "no", "state_loss_waiting"]
        );
        assert_eq!(
            row(&out, "n2")[4..10],
            ["125", "123", "0", "(12ms)", "no", "not_in_isr"]
        );
        assert_eq!(
            row(&out, "n3")[1..9],
            ["unreachable", "-", "-", "-", "-", "-", "no", "-"]
        );
        let notes: Vec<&str> = out
            .split("\n\n")
            .nth(1)
            .expect("notes after a blank line")
            .lines()
            .collect();
        assert_eq!(
            notes,
            [
                "replication: 3 replicas, min-insync 2, acks all, high watermark 123, ISR [n0] (as n0 reports)",
                "n0: writes refused: not_enough_replicas: 1 in sync, --min-insync 2",
                "n1: election case state_loss_waiting: 2 reported, missing n3",
                "n2: truncation refused: diverged at 100, below the high watermark 123: the leader's log diverges below our high watermark",
            ]
        );
    }

    /// Nodes that predate replication (no `replication` in their status) still make a table:
    /// dashes in the replication columns and no notes; the JSON says `null`.
    #[test]
    fn old_nodes_without_replication() {
        let v = view(vec![
            ("n0", Some(status("n0", "leader", 7, None))),
            ("n1", Some(status("n1", "follower", 7, None))),
        ]);
        let out = render(&v, Output::Table);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert_eq!(
            row(&out, "n0")[1..9],
            ["leader", "true", "4", "7", "-", "-", "-", "-"]
        );
        let json: Value = serde_json::from_str(&render(&v, Output::Json)).unwrap();
        assert!(
            json[0]["replication"].is_null() && json[0]["in_isr"].is_null(),
            "{json}"
        );
        assert_eq!(json[0]["holds_lock"], true);
    }

    /// The JSON output carries each member's replication report as the node gave it, plus the
    /// derived ISR membership and the leader's view of its progress.
    #[test]
    fn json_carries_replication() {
        let json: Value = serde_json::from_str(&render(&troubled(), Output::Json)).unwrap();
        let members = json.as_array().unwrap();
        assert_eq!(members.len(), 4);
        let n0 = &members[0];
        assert_eq!(n0["replication"]["high_watermark"], 123);
        assert_eq!(n0["replication"]["isr"], json!(["n0"]));
        assert_eq!(
            n0["replication"]["writes_refused"],
            "not_enough_replicas: 1 in sync, --min-insync 2"
        );
        assert_eq!(n0["replication"]["members"][0]["lag_records"], 5);
        assert_eq!(n0["in_isr"], true);
        assert!(n0["follower_progress"].is_null());
        let n1 = &members[1];
        assert_eq!(n1["in_isr"], false);
        assert_eq!(n1["follower_progress"]["lag_records"], 5);
        assert_eq!(n1["follower_progress"]["caught_up_ms_ago"], 4200);
        assert_eq!(
            n1["replication"]["case"],
            json!({"state_loss_waiting": {"reported": 2, "missing": ["n3"]}})
        );
        assert_eq!(members[2]["replication"]["truncation_refused"]["divergence"], 100);
        assert_eq!(members[3]["reachable"], false);
        assert!(members[3]["replication"].is_null());
        // What the CLI prints reads back as the view (the dashboard's /api/v1/cluster shape).
        let back: Vec<Member> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, troubled().members);
    }

    /// Without a reachable leader, ISR membership comes from whichever node reports the ISR,
    /// and a follower's own HW and case still show.
    #[test]
    fn followers_alone() {
        let r = json!({"replicas": 2, "min_insync": 2, "acks": "leader", "high_watermark": 9,
                       "log_end": 9, "case": "normal", "isr": ["n0", "n1"], "members": [],
                       "leader": "n0", "writes_refused": null, "truncation_refused": null});
        let v = view(vec![
            ("n0", None),
            ("n1", Some(status("n1", "follower", 9, Some(r)))),
        ]);
        let out = render(&v, Output::Table);
        assert_eq!(
            row(&out, "n0")[1..9],
            ["unreachable", "-", "-", "-", "-", "-", "yes", "-"]
        );
        assert_eq!(row(&out, "n1")[4..9], ["9", "9", "-", "yes", "normal"]);
        assert!(out.contains("replication: 2 replicas, min-insync 2, acks leader, high watermark 9, ISR [n0 n1] (as n1 reports)"), "{out}");
    }
}

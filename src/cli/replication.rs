//! The replication part of the cluster view: the `replication` object each node's
//! `/api/v1/status` carries (HW, log end, ISR, election case, why writes or a truncation are
//! refused; `docs/replication.md`, Observability), read leniently so that a node built before or
//! after this shape never makes its whole status unreadable, plus what the `status` table and the
//! dashboard derive from it per member (ISR membership, the leader's view of its lag).

use std::fmt::Write as _;

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::cluster::Member;

/// A node's own replication report (`replication` in `/api/v1/status`). Every field is optional:
/// absent, null or of an unexpected type, it reads as `None` (or empty) rather than failing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicationStatus {
    /// `--replicas`: the cluster's size.
    #[serde(default, deserialize_with = "lenient")]
    pub replicas: Option<u32>,
    /// `--min-insync`: fewest in-sync replicas with which writes are accepted.
    #[serde(default, deserialize_with = "lenient")]
    pub min_insync: Option<u32>,
    /// `--acks`: `all` or `leader`.
    #[serde(default, deserialize_with = "lenient")]
    pub acks: Option<String>,
    /// One past the last committed record: what readers see up to.
    #[serde(default, deserialize_with = "lenient")]
    pub high_watermark: Option<u64>,
    /// One past the last record of this node's log.
    #[serde(default, deserialize_with = "lenient")]
    pub log_end: Option<u64>,
    /// First retained offset of this node's log.
    #[serde(default, deserialize_with = "lenient")]
    pub log_start: Option<u64>,
    /// The election case as this node's elector publishes it: a name (`normal`, `cluster_start`,
    /// `unclean`, `not_in_isr`) or a name with details (`state_loss_waiting` with who reported
    /// and who is missing). Kept as JSON so that any spelling of the details survives; read it
    /// through [`case_name`] and [`case_detail`].
    #[serde(default)]
    pub case: Option<Value>,
    /// The in-sync replicas as Consul holds them (names).
    #[serde(default, deserialize_with = "lenient")]
    pub isr: Option<Vec<String>>,
    /// The leader's view of every follower; empty on followers.
    #[serde(default, deserialize_with = "lenient_vec")]
    pub members: Vec<FollowerProgress>,
    /// The leader this node follows (or itself).
    #[serde(default, deserialize_with = "lenient")]
    pub leader: Option<String>,
    /// Why this node refuses writes right now, e.g. `not_enough_replicas: 1 in sync, --min-insync 2`.
    #[serde(default, deserialize_with = "lenient")]
    pub writes_refused: Option<String>,
    /// A truncation this follower refused because it would remove committed records.
    #[serde(default, deserialize_with = "lenient")]
    pub truncation_refused: Option<TruncationRefused>,
    /// This follower's last failure to fetch from its leader, e.g. a refused cluster secret.
    #[serde(default, deserialize_with = "lenient")]
    pub follower_error: Option<String>,
}

/// What the leader knows about one follower (an entry of `replication.members`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's name.
    pub name: String,
    /// Its data directory's incarnation (a new one after its disk was lost).
    #[serde(default, deserialize_with = "lenient")]
    pub incarnation: Option<String>,
    /// Its durable log end as of its last fetch.
    #[serde(default, deserialize_with = "lenient")]
    pub log_end: Option<u64>,
    /// Records it is behind the leader's log end.
    #[serde(default, deserialize_with = "lenient")]
    pub lag_records: Option<u64>,
    /// Whether it is in the ISR.
    #[serde(default, deserialize_with = "lenient")]
    pub in_isr: Option<bool>,
    /// Milliseconds since it last had everything the leader had.
    #[serde(default, deserialize_with = "lenient")]
    pub caught_up_ms_ago: Option<u64>,
}

/// A truncation a follower refused (`replication.truncation_refused`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TruncationRefused {
    /// Where its log diverged from the leader's.
    #[serde(default, deserialize_with = "lenient")]
    pub divergence: Option<u64>,
    /// Its high watermark, above the divergence point.
    #[serde(default, deserialize_with = "lenient")]
    pub high_watermark: Option<u64>,
    /// Why, in words.
    #[serde(default, deserialize_with = "lenient")]
    pub reason: Option<String>,
}

/// Reads any JSON value, keeping it only if it has the expected type.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Reads a JSON array, keeping the elements of the expected type (anything else reads as empty).
fn lenient_vec<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(match value {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// Reads the `replication` object of a status, `None` when absent (an older node) or not an object.
pub(crate) fn from_status(status: &Value) -> Option<ReplicationStatus> {
    status
        .get("replication")
        .filter(|v| v.is_object())
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The election case's name: `"normal"`, or the tag of a case with details
/// (`{"state_loss_waiting": {..}}`, or `{"case"|"kind"|"type": "state_loss_waiting", ..}`).
pub fn case_name(case: &Value) -> Option<String> {
    match case {
        Value::String(name) => Some(name.clone()),
        Value::Object(map) => ["case", "kind", "type"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_string))
            .or_else(|| (map.len() == 1).then(|| map.keys().next().cloned()).flatten()),
        _ => None,
    }
}

/// The details of a case that has some, in words: `2 reported, missing n2`.
pub fn case_detail(case: &Value) -> Option<String> {
    let Value::Object(map) = case else {
        return None;
    };
    let details = match map.values().next() {
        Some(Value::Object(inner)) if map.len() == 1 => inner.clone(),
        _ => map.clone(),
    };
    // Who reported, then who is missing, then anything else by name: the same order whatever
    // order the node wrote them in.
    let rank = |k: &str| ["reported", "missing"].iter().position(|w| *w == k).unwrap_or(2);
    let mut keys: Vec<&String> = details
        .keys()
        .filter(|k| !["case", "kind", "type"].contains(&k.as_str()))
        .collect();
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    let mut parts = Vec::new();
    for key in keys {
        let value = &details[key];
        let shown = match value {
            Value::Array(items) if items.is_empty() => "none".to_string(),
            Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
            other => plain(other),
        };
        parts.push(match value {
            Value::Number(_) => format!("{shown} {key}"),
            _ => format!("{key} {shown}"),
        });
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds as people read them: `12ms`, `3.2s`, `2m5s`.
pub fn short_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// The member whose replication report speaks for the cluster: the reachable lock holder's,
/// else any reachable leader's, else the first member that reports replication at all.
pub fn authority(members: &[Member]) -> Option<&Member> {
    let reporting = |m: &&Member| m.replication.is_some();
    members
        .iter()
        .filter(reporting)
        .find(|m| m.holds_lock)
        .or_else(|| {
            members
                .iter()
                .filter(reporting)
                .find(|m| m.role.as_deref() == Some("leader"))
        })
        .or_else(|| members.iter().find(reporting))
}

/// Fills in what each member's row derives from the cluster's replication reports: whether it
/// is in the ISR (as the [`authority`] reads it from Consul) and the leader's view of its
/// progress. Members stay untouched (`None`) when no node reports replication (older nodes).
pub fn annotate(members: &mut [Member]) {
    let Some(source) = authority(members).and_then(|m| m.replication.clone()) else {
        return;
    };
    for m in members.iter_mut() {
        m.follower_progress = source.members.iter().find(|p| p.name == m.name).cloned();
        m.in_isr = source
            .isr
            .as_ref()
            .map(|isr| isr.contains(&m.name))
            .or_else(|| m.follower_progress.as_ref().and_then(|p| p.in_isr));
    }
}

/// The table's replication cells of one member: HW, LAG, ISR, CASE (`-` when unknown).
pub fn cells(m: &Member) -> [String; 4] {
    let dash = || "-".to_string();
    let r = m.replication.as_ref();
    let lag = m.follower_progress.as_ref().and_then(|p| {
        p.lag_records.map(|lag| match p.caught_up_ms_ago {
            Some(ms) => format!("{lag} ({})", short_ms(ms)),
            None => lag.to_string(),
        })
    });
    [
        r.and_then(|r| r.high_watermark)
            .map_or_else(dash, |hw| hw.to_string()),
        lag.unwrap_or_else(dash),
        m.in_isr
            .map_or_else(dash, |yes| if yes { "yes" } else { "no" }.to_string()),
        r.and_then(|r| r.case.as_ref())
            .and_then(case_name)
            .unwrap_or_else(dash),
    ]
}

/// The lines under the table: the cluster's replication settings and ISR (from the
/// [`authority`]), then every member's refusals and case details. Empty when no node reports
/// replication.
pub fn notes(members: &[Member]) -> String {
    let mut out = String::new();
    let Some(source) = authority(members) else {
        return out;
    };
    let r = source
        .replication
        .as_ref()
        .expect("the authority reports replication");
    let num = |v: Option<u32>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    let _ = write!(
        out,
        "replication: {} replicas, min-insync {}, acks {}",
        num(r.replicas),
        num(r.min_insync),
        r.acks.as_deref().unwrap_or("?")
    );
    if let Some(hw) = r.high_watermark {
        let _ = write!(out, ", high watermark {hw}");
    }
    match &r.isr {
        Some(isr) => {
            let _ = write!(out, ", ISR [{}]", isr.join(" "));
        }
        None => out.push_str(", ISR unknown"),
    }
    let _ = writeln!(out, " (as {} reports)", source.name);
    for m in members {
        let Some(r) = &m.replication else { continue };
        if let Some(why) = &r.writes_refused {
            let _ = writeln!(out, "{}: writes refused: {why}", m.name);
        }
        if let Some(why) = &r.follower_error {
            let _ = writeln!(out, "{}: cannot replicate: {why}", m.name);
        }
        if let Some(t) = &r.truncation_refused {
            let at = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
            let _ = write!(
                out,
                "{}: truncation refused: diverged at {}, below the high watermark {}",
                m.name,
                at(t.divergence),
                at(t.high_watermark)
            );
            match &t.reason {
                Some(reason) => {
                    let _ = writeln!(out, ": {reason}");
                }
                None => out.push('\n'),
            }
        }
        if let Some(case) = &r.case {
            if let (Some(name), Some(detail)) = (case_name(case), case_detail(case)) {
                let _ = writeln!(out, "{}: election case {name}: {detail}", m.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A full report reads field by field; an old node's status (no `replication`) reads as
    /// `None`; a field of the wrong type reads as `None` without losing the others.
    #[test]
    fn reads_leniently() {
        let full = json!({"replication": {
            "replicas": 3, "min_insync": 2, "acks": "all", "high_watermark": 123, "log_end": 125,
            "log_start": 0, "case": "normal", "isr": ["n0", "n1"], "leader": "n0",
            "members": [{"name": "n1", "incarnation": "ab", "log_end": 120, "lag_records": 5,
                         "in_isr": true, "caught_up_ms_ago": 12}],
            "writes_refused": null, "truncation_refused": null, "future_field": {"x": 1}}});
        let r = from_status(&full).unwrap();
        assert_eq!(r.high_watermark, Some(123));
        assert_eq!(r.isr.as_deref(), Some(&["n0".to_string(), "n1".to_string()][..]));
        assert_eq!(r.members[0].lag_records, Some(5));
        assert_eq!(r.members[0].caught_up_ms_ago, Some(12));
        assert_eq!(r.writes_refused, None);
        assert_eq!(from_status(&json!({"name": "old"})), None);
        assert_eq!(from_status(&json!({"replication": null})), None);
        let odd = from_status(&json!({"replication": {
            "high_watermark": "lots", "log_end": 7, "isr": "n0", "members": [{"name": "n1"}, 3],
            "truncation_refused": {"divergence": 4, "high_watermark": 9, "reason": "unclean"}}}))
        .unwrap();
        assert_eq!((odd.high_watermark, odd.log_end, odd.isr), (None, Some(7), None));
        assert_eq!(odd.members.len(), 1);
        assert_eq!(odd.truncation_refused.unwrap().divergence, Some(4));
    }

    /// Unit cases are their name; a case with details is named by its tag in either JSON
    /// spelling serde uses, and its details read as words.
    #[test]
    fn election_cases() {
        assert_eq!(
            case_name(&json!("cluster_start")).as_deref(),
            Some("cluster_start")
        );
        assert_eq!(case_detail(&json!("normal")), None);
        let external = json!({"state_loss_waiting": {"reported": 2, "missing": ["n2", "n3"]}});
        assert_eq!(case_name(&external).as_deref(), Some("state_loss_waiting"));
        assert_eq!(
            case_detail(&external).as_deref(),
            Some("2 reported, missing n2,n3")
        );
        let internal = json!({"case": "state_loss_waiting", "reported": ["n0"], "missing": []});
        assert_eq!(case_name(&internal).as_deref(), Some("state_loss_waiting"));
        assert_eq!(
            case_detail(&internal).as_deref(),
            Some("reported n0, missing none")
        );
        assert_eq!(case_name(&json!(3)), None);
    }

    /// Durations are short and readable at each scale.
    #[test]
    fn short_durations() {
        assert_eq!(short_ms(12), "12ms");
        assert_eq!(short_ms(3_240), "3.2s");
        assert_eq!(short_ms(125_000), "2m5s");
    }
}

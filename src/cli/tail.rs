//! `simpleloggers tail`: finds the leader through Consul and prints its messages one per line;
//! with `--follow` it keeps streaming (`/api/v1/log/stream`, decoded by the `sse-stream` crate)
//! and, when leadership moves, rediscovers the leader and resumes there after the last offset it
//! printed (the log is replicated: offsets are the same on every node).

use std::{io::Write, time::Duration};

use futures::StreamExt;
use serde::Deserialize;
use sse_stream::{Sse, SseStream};

use crate::{
    consul::{ConsulClient, ConsulError},
    discovery::{watch_leader, CurrentLeader},
    flags::ClusterArgs,
    shutdown::CancellationToken,
};

/// Entries fetched per read without `--follow`.
const PAGE: usize = 1000;
/// Longest pause between attempts to reach a leader that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How much of an event that cannot be understood is quoted in the report.
const EXCERPT_CHARS: usize = 200;

/// Flags of `simpleloggers tail`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    after_help = "Output: one line per message, OFFSET<TAB>TERM<TAB>MESSAGE (newlines in a message \
are printed as \\n; a message that is not UTF-8 as base64:<data>).\n\n\
Every node holds the same replicated log (offsets are the same on every node) and serves it up to \
its high watermark, so nothing printed can later disappear. With --follow, tail resumes after a \
failover on the new leader after the last offset it printed: nothing is printed twice and nothing \
is skipped. An event that cannot be interpreted is reported on stderr with its id and data."
)]
pub struct TailConfig {
    /// First offset to print (default: the oldest the leader retains).
    #[arg(long)]
    pub from: Option<u64>,
    /// Keep printing new messages, following the leader across failovers, until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How long to wait for a leader to be elected.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// The nodes' read token (their `--read-token`, or their write token), sent as
    /// `Authorization: Bearer`.
    #[arg(long = "read-token", env = "SIMPLELOGGERS_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// Consul and the election key that names the leader.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why `tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The Consul client could not be built.
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// No node held the election lock in time.
    #[error("no leader found under the election key {key:?} within {wait:?} (is Consul at {consul} and a node running?)")]
    NoLeader {
        /// The election key.
        key: String,
        /// How long we waited.
        wait: Duration,
        /// The Consul address.
        consul: String,
    },
    /// The leader could not be read.
    #[error("cannot read the log of the leader at {leader}: {message}")]
    Read {
        /// The leader's address.
        leader: String,
        /// What went wrong.
        message: String,
    },
    /// The leader answered 401: it requires a read token this `tail` did not present.
    #[error("the leader at {leader} refused the read (401): set --read-token / SIMPLELOGGERS_READ_TOKEN to the nodes' --read-token (or --api-token)")]
    Unauthorized {
        /// The leader's address.
        leader: String,
    },
    /// Standard output failed.
    #[error("cannot write to standard output: {0}")]
    Io(#[from] std::io::Error),
}

/// The HTTP client of `tail`, presenting `--read-token` when given.
fn http_client(config: &TailConfig, builder: reqwest::ClientBuilder) -> Result<reqwest::Client, TailError> {
    let headers = crate::node::auth::bearer_headers(config.read_token.as_deref(), "--read-token")
        .map_err(ConsulError::Config)?;
    Ok(builder
        .default_headers(headers)
        .build()
        .map_err(|e| ConsulError::Config(format!("cannot build the HTTP client: {e}")))?)
}

/// One entry as the node serializes it (`read.rs` `Entry`).
#[derive(Debug, Deserialize)]
pub struct TailEntry {
    /// Offset in the leader's log.
    pub offset: u64,
    /// Term of the leader that stored it.
    pub term: u64,
    /// The message, when UTF-8.
    #[serde(default)]
    pub message: Option<String>,
    /// The message in base64 otherwise.
    #[serde(default)]
    pub message_base64: Option<String>,
}

impl TailEntry {
    /// The printed line (without the newline).
    pub fn line(&self) -> String {
        let message = match (&self.message, &self.message_base64) {
            (Some(m), _) => m.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r"),
            (None, Some(b)) => format!("base64:{b}"),
            (None, None) => String::new(),
        };
        format!("{}\t{}\t{}", self.offset, self.term, message)
    }
}

#[derive(Deserialize)]
struct ReadAnswer {
    entries: Vec<TailEntry>,
    next: u64,
    end_offset: u64,
}

/// Runs `tail`, printing to `out`. Returns the number of messages printed.
///
/// # Errors
/// No leader within `--wait`, an unreadable leader (without `--follow`), or a failed write.
pub async fn run(
    config: &TailConfig,
    out: &mut (impl Write + Send),
    shutdown: CancellationToken,
) -> Result<u64, TailError> {
    let consul = ConsulClient::new(&config.cluster.consul)?;
    let watch_stop = shutdown.child_token();
    let _stop_watch = watch_stop.clone().drop_guard();
    let mut leaders = watch_leader(consul.clone(), config.cluster.election_key.clone(), watch_stop);
    let no_leader = || TailError::NoLeader {
        key: config.cluster.election_key.clone(),
        wait: config.wait,
        consul: consul.base_url().to_string(),
    };
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Ok(0),
        found = tokio::time::timeout(config.wait, leaders.wait_for(Option::is_some)) => match found {
            Ok(Ok(leader)) => leader.clone(),
            _ => return Err(no_leader()),
        },
    };
    let leader = first.ok_or_else(no_leader)?;
    if config.follow {
        follow(config, out, leaders, shutdown).await
    } else {
        print_existing(config, out, &leader).await
    }
}

async fn print_existing(
    config: &TailConfig,
    out: &mut (impl Write + Send),
    leader: &CurrentLeader,
) -> Result<u64, TailError> {
    let http = http_client(
        config,
        reqwest::Client::builder().timeout(Duration::from_secs(10)),
    )?;
    let read_err = |message: String| TailError::Read {
        leader: leader.record.address.clone(),
        message,
    };
    let mut from = config.from;
    let mut until = None;
    let mut printed = 0;
    loop {
        let mut url = format!("{}/api/v1/log?limit={PAGE}", leader.record.url());
        if let Some(from) = from {
            url.push_str(&format!("&from={from}"));
        }
        let resp = http.get(&url).send().await.map_err(|e| read_err(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(TailError::Unauthorized {
                leader: leader.record.address.clone(),
            });
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(read_err(format!("{status}: {body}")));
        }
        let answer: ReadAnswer = resp.json().await.map_err(|e| read_err(e.to_string()))?;
        // Print what existed when we started; stop there even under a steady stream of writes.
        let until = *until.get_or_insert(answer.end_offset);
        for entry in &answer.entries {
            if entry.offset >= until {
                break;
            }
            writeln!(out, "{}", entry.line())?;
            printed += 1;
        }
        out.flush()?;
        if answer.entries.is_empty() || answer.next >= until {
            return Ok(printed);
        }
        from = Some(answer.next);
    }
}

/// Whether two leader sightings are the same tenure.
fn same_tenure(a: &CurrentLeader, b: &CurrentLeader) -> bool {
    a.record.name == b.record.name && a.term == b.term && a.record.address == b.record.address
}

async fn follow(
    config: &TailConfig,
    out: &mut (impl Write + Send),
    mut leaders: tokio::sync::watch::Receiver<Option<CurrentLeader>>,
    shutdown: CancellationToken,
) -> Result<u64, TailError> {
    let http = http_client(
        config,
        reqwest::Client::builder().connect_timeout(Duration::from_secs(2)),
    )?;
    // Next offset to print: offsets are the same on every node (the log is replicated).
    let mut next: Option<u64> = None;
    let mut printed = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let leader = loop {
            if let Some(l) = leaders.borrow_and_update().clone() {
                break l;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(printed),
                changed = leaders.changed() => if changed.is_err() { return Ok(printed) },
            }
        };
        let name = leader.record.name.clone();
        let from = next.or(config.from).unwrap_or(0);
        let url = format!("{}/api/v1/log/stream?from={from}", leader.record.url());
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Ok(printed),
            resp = http.get(&url).send() => resp,
        };
        if let Ok(resp) = &connected {
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                return Err(TailError::Unauthorized {
                    leader: leader.record.address.clone(),
                });
            }
        }
        let connected = connected.and_then(|r| r.error_for_status());
        let resp = match connected {
            Ok(resp) => {
                eprintln!(
                    "tail: following {name} at {} (term {}) from offset {from}",
                    leader.record.address, leader.term
                );
                resp
            }
            Err(err) => {
                tracing::debug!(%err, leader = %name, "cannot reach the leader; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(printed),
                    _ = tokio::time::sleep(backoff) => {}
                    _ = leaders.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut events = Box::pin(SseStream::new(reqwest::Body::from(resp)));
        // Entries this connection delivered: the back-off resets only on a stream that worked.
        let mut streamed = 0u64;
        let mut ended = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(printed),
                changed = leaders.changed() => {
                    if changed.is_err() {
                        return Ok(printed);
                    }
                    let moved = leaders
                        .borrow()
                        .as_ref()
                        .is_some_and(|now| !same_tenure(now, &leader));
                    if moved {
                        break;
                    }
                }
                event = events.next() => match event {
                    Some(Ok(event)) => match interpret(&event) {
                        StreamItem::Entry(entry) => {
                            next = Some(entry.offset + 1);
                            writeln!(out, "{}", entry.line())?;
                            out.flush()?;
                            printed += 1;
                            streamed += 1;
                            backoff = Duration::from_millis(100);
                        }
                        StreamItem::Problem(problem) => {
                            // Reported, not printed: a reconnect resumes after it, not at it.
                            if let Some(offset) = event.id.as_deref().and_then(|id| id.parse::<u64>().ok()) {
                                next = Some(offset + 1);
                            }
                            eprintln!("tail: {name}: {problem}");
                        }
                        StreamItem::Metadata => {}
                    },
                    Some(Err(err)) => {
                        eprintln!("tail: the stream from {name} broke: {err}");
                        ended = true;
                        break;
                    }
                    // The stream ended (the node stopped): rediscover.
                    None => {
                        ended = true;
                        break;
                    }
                },
            }
        }
        eprintln!("tail: stream from {name} ended; looking for the leader");
        // A stream that ends again and again (a node closing it at once) must not become a busy
        // reconnect loop: wait the back-off unless leadership moves meanwhile.
        if ended && streamed == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(printed),
                _ = tokio::time::sleep(backoff) => {}
                _ = leaders.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// What one event of the node's stream means to `tail`.
#[derive(Debug)]
pub enum StreamItem {
    /// A message to print.
    Entry(TailEntry),
    /// Something the user must be told (on stderr): an event that cannot be understood, or an
    /// error the node reported. Never dropped silently.
    Problem(String),
    /// A block without data (the `retry:` hint): nothing to print.
    Metadata,
}

/// Interprets one decoded SSE block (comments and keep-alives never reach here).
pub fn interpret(event: &Sse) -> StreamItem {
    let Some(data) = event.data.as_deref() else {
        return StreamItem::Metadata;
    };
    let at = event
        .id
        .as_deref()
        .map(|id| format!(" (id {id})"))
        .unwrap_or_default();
    match event.event.as_deref() {
        None | Some("message") => match serde_json::from_str::<TailEntry>(data) {
            Ok(entry) => StreamItem::Entry(entry),
            Err(err) => {
                StreamItem::Problem(format!("cannot parse event{at}: {err}; data: {}", excerpt(data)))
            }
        },
        Some("error") => StreamItem::Problem(format!("the node reported an error{at}: {}", excerpt(data))),
        Some(other) => StreamItem::Problem(format!(
            "unexpected event type {other:?}{at}; data: {}",
            excerpt(data)
        )),
    }
}

/// The start of `data`, for a report.
fn excerpt(data: &str) -> String {
    match data.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{:?}…", &data[..cut]),
        None => format!("{data:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: Option<&str>, id: &str, data: &str) -> Sse {
        Sse {
            event: event.map(str::to_string),
            data: Some(data.to_string()),
            id: Some(id.to_string()),
            retry: None,
        }
    }

    /// Entries become lines; the retry hint is metadata.
    #[test]
    fn entries_are_printed() {
        let event = data(
            None,
            "3",
            r#"{"offset":3,"term":2,"timestamp_ms":1,"message":"a\nb"}"#,
        );
        match interpret(&event) {
            StreamItem::Entry(entry) => assert_eq!(entry.line(), "3\t2\ta\\nb"),
            other => panic!("{other:?}"),
        }
        let event = data(None, "4", r#"{"offset":4,"term":2,"message_base64":"/w=="}"#);
        assert!(matches!(interpret(&event), StreamItem::Entry(e) if e.line() == "4\t2\tbase64:/w=="));
        let retry = Sse {
            retry: Some(1000),
            ..Sse::default()
        };
        assert!(matches!(interpret(&retry), StreamItem::Metadata));
    }

    /// An event that is not an entry, an error event and an unknown event type are reported
    /// with their id and data, never dropped.
    #[test]
    fn problems_are_reported() {
        let cases = [
            (data(None, "7", "{\"offset\":"), "cannot parse event (id 7)"),
            (
                data(Some("error"), "", "disk on fire"),
                "the node reported an error",
            ),
            (
                data(Some("weird"), "8", "x"),
                "unexpected event type \"weird\" (id 8)",
            ),
        ];
        for (event, expected) in cases {
            match interpret(&event) {
                StreamItem::Problem(problem) => {
                    assert!(problem.contains(expected), "{problem}");
                    assert!(
                        problem.contains(&format!("{:?}", event.data.as_deref().unwrap())),
                        "{problem}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let long = "é".repeat(EXCERPT_CHARS * 2);
        match interpret(&data(None, "9", &long)) {
            StreamItem::Problem(problem) => {
                assert!(problem.chars().count() < EXCERPT_CHARS + 100, "{problem}")
            }
            other => panic!("{other:?}"),
        }
    }
}

//! The follower's side of replication: follow the leader the election key names, check the local
//! log against the leader's with the truncation rule ([`super::truncation`]) after every leader
//! change, start and `diverged` answer, then long-poll fetches, append the leader's frames as
//! they are (durable on return, so the next fetch's `from` is a durable end) and expose the
//! leader's high watermark up to the local end. A truncation below the high watermark is refused
//! and stops replication (reported in the status); every error backs off.

use std::time::Duration;

use super::{
    protocol::{ClientError, FetchQuery, FetchRefusal, ReplicationClient, DEFAULT_MAX_BYTES},
    state::TruncationRefused,
    truncation::{decide, first_step, Decision, FollowerLog, Refusal},
    Replication,
};
use crate::{
    consul::Backoff,
    election::{Elector, LeaderState, Role},
    log::{EpochCache, LogError},
    shutdown::CancellationToken,
};

/// How long a fetch may be held by the leader when it has nothing new.
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// The leader to follow: its name, address and term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Leader name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Its term as the election publishes it.
    pub term: u64,
}

/// The leader a node in `state` follows (`None`: it leads, stops, or knows no leader).
pub fn target(state: &LeaderState, name: &str) -> Option<Target> {
    if !matches!(state.role, Role::Follower | Role::Starting) {
        return None;
    }
    let leader = state.leader.as_ref().filter(|l| l.name != name)?;
    Some(Target {
        name: leader.name.clone(),
        address: leader.address.clone(),
        term: state.term,
    })
}

/// Why following one leader ended.
#[derive(Debug)]
enum Ended {
    /// Replication stops until the leader changes: the truncation was refused.
    Refused(TruncationRefused),
    /// Try again after a back-off.
    Retry(String),
}

impl From<LogError> for Ended {
    fn from(err: LogError) -> Self {
        Ended::Retry(format!("the local log: {err}"))
    }
}

impl From<ClientError> for Ended {
    fn from(err: ClientError) -> Self {
        Ended::Retry(err.to_string())
    }
}

/// Follows the leader until `shutdown`.
pub async fn run(
    repl: Replication,
    elector: Elector,
    client: ReplicationClient,
    shutdown: CancellationToken,
) {
    let name = repl.settings().name.clone();
    let mut states = elector.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut seen_term = repl.store().last_term().map_or(0, |(t, _)| t);
    loop {
        let Some(leader) = target(&states.borrow_and_update(), &name) else {
            repl.set_following(None);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = states.changed() => if changed.is_err() { return },
            }
            continue;
        };
        repl.set_following(Some(leader.name.clone()));
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed_target(&mut states, &name, &leader) => {
                backoff.reset();
                continue;
            }
            ended = follow(&repl, &client, &leader, &mut seen_term, &mut backoff) => ended,
        };
        match ended {
            Ended::Refused(refused) => {
                tracing::error!(
                    leader = %leader.name,
                    divergence = refused.divergence,
                    high_watermark = refused.high_watermark,
                    "{}; replication stopped until the leader changes",
                    refused.reason
                );
                repl.metrics().replication_truncation_refusals.inc();
                repl.set_truncation_refused(Some(refused));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = changed_target(&mut states, &name, &leader) => {}
                }
            }
            Ended::Retry(error) => {
                // Logged as a warning once per streak of the same error (a refused secret must
                // not go unnoticed), then at debug on every retry.
                if repl.follower_status().last_error.as_deref() == Some(error.as_str()) {
                    tracing::debug!(leader = %leader.name, %error, "replication: backing off");
                } else {
                    tracing::warn!(leader = %leader.name, %error, "cannot replicate from the leader; retrying with back-off");
                }
                repl.set_follower_error(Some(error));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = changed_target(&mut states, &name, &leader) => backoff.reset(),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Resolves once the leader to follow is no longer `current`.
async fn changed_target(
    states: &mut tokio::sync::watch::Receiver<LeaderState>,
    name: &str,
    current: &Target,
) {
    loop {
        if states.changed().await.is_err() {
            return std::future::pending().await;
        }
        if target(&states.borrow_and_update(), name).as_ref() != Some(current) {
            return;
        }
    }
}

/// Checks the log against `leader`'s and fetches from it until something ends it.
async fn follow(
    repl: &Replication,
    client: &ReplicationClient,
    leader: &Target,
    seen_term: &mut u64,
    backoff: &mut Backoff,
) -> Ended {
    loop {
        if let Err(ended) = check_log(repl, client, &leader.address).await {
            return ended;
        }
        repl.set_truncation_refused(None);
        match fetch_loop(repl, client, leader, seen_term, backoff).await {
            // A leader that keeps answering `diverged` to a log the rule found a prefix must not
            // make this a hot loop: the back-off grows until a fetch succeeds.
            Resync::Again => tokio::time::sleep(backoff.next_delay()).await,
            Resync::Stop(ended) => return ended,
        }
    }
}

/// The truncation rule against the leader at `addr`, until the log is a prefix of the leader's.
async fn check_log(repl: &Replication, client: &ReplicationClient, addr: &str) -> Result<(), Ended> {
    let store = repl.store();
    // Every step lowers the term asked or the log end; the bound only guards against a leader
    // that keeps changing its answers.
    let mut decision = first_step(&follower_log(repl, &mut EpochCache::new()));
    for _ in 0..10_000 {
        let mut cache = EpochCache::new();
        match decision {
            Decision::FetchFrom(_) => return Ok(()),
            Decision::AskAgain(term) => {
                let answer = client.end_offset(addr, term).await?;
                decision = decide(&follower_log(repl, &mut cache), term, answer.lookup());
            }
            Decision::Truncate(from) => {
                tracing::warn!(
                    from,
                    end = store.end_offset(),
                    "truncating the log's divergent suffix"
                );
                store.truncate_suffix(from).await?;
                repl.metrics().replication_truncations.inc();
                decision = first_step(&follower_log(repl, &mut cache));
            }
            Decision::Refuse(Refusal::BelowHighWatermark {
                divergence,
                high_watermark,
            }) => {
                return Err(Ended::Refused(TruncationRefused {
                    divergence,
                    high_watermark,
                    reason: Refusal::BelowHighWatermark {
                        divergence,
                        high_watermark,
                    }
                    .to_string(),
                }))
            }
            Decision::Refuse(refusal @ Refusal::BeforeLogStart { divergence, .. }) => {
                // Every retained record differs from the leader's. Retention keeps what is not
                // committed, so this means the log is not what the HW says: fail-stop, never
                // delete on an inconsistency (NATS, pitfall 13); an operator empties the volume.
                return Err(Ended::Refused(TruncationRefused {
                    divergence,
                    high_watermark: store.high_watermark(),
                    reason: refusal.to_string(),
                }));
            }
            Decision::Refuse(refusal @ Refusal::AnswerAboveQuestion { .. }) => {
                return Err(Ended::Retry(refusal.to_string()));
            }
        }
    }
    Err(Ended::Retry("the truncation rule did not converge".into()))
}

/// The follower's log as the truncation rule sees it (`cache` is filled with its epochs).
fn follower_log<'a>(repl: &Replication, cache: &'a mut EpochCache) -> FollowerLog<'a> {
    let store = repl.store();
    *cache = EpochCache::from_epochs(store.epochs()).unwrap_or_default();
    FollowerLog {
        epochs: cache,
        log_start: store.start_offset(),
        log_end: store.durable_end(),
        high_watermark: store.high_watermark(),
    }
}

/// How a fetch loop ended.
enum Resync {
    /// Run the truncation rule again (diverged, or the log was emptied).
    Again,
    /// Stop following this leader for now.
    Stop(Ended),
}

/// Fetches and appends until an answer needs the truncation rule again or an error.
async fn fetch_loop(
    repl: &Replication,
    client: &ReplicationClient,
    leader: &Target,
    seen_term: &mut u64,
    backoff: &mut Backoff,
) -> Resync {
    let store = repl.store();
    let settings = repl.settings();
    let incarnation = store.incarnation();
    loop {
        let query = FetchQuery {
            from: store.durable_end(),
            last_term: store.last_term().map(|(t, _)| t),
            term: *seen_term,
            name: settings.name.clone(),
            incarnation: incarnation.clone(),
            wait: FETCH_WAIT,
            max_bytes: DEFAULT_MAX_BYTES,
            hw: Some(store.high_watermark()),
        };
        let answer = match client.fetch(&leader.address, &query).await {
            Ok(answer) => answer,
            Err(ClientError::Refused(FetchRefusal::Diverged { term, end })) => {
                tracing::info!(leader = %leader.name, ?term, end, from = query.from, "diverged: running the truncation rule");
                return Resync::Again;
            }
            Err(ClientError::Refused(FetchRefusal::OffsetTrimmed { log_start })) => {
                tracing::warn!(
                    leader = %leader.name,
                    from = query.from,
                    log_start,
                    "not in the leader's log: emptying the log and fetching from the leader's first offset"
                );
                if let Err(err) = store.reset(log_start).await {
                    return Resync::Stop(err.into());
                }
                repl.metrics().replication_truncations.inc();
                return Resync::Again;
            }
            Err(err) => return Resync::Stop(err.into()),
        };
        if answer.term < *seen_term {
            return Resync::Stop(Ended::Retry(format!(
                "the leader answered in term {}, below term {} already seen: not following it",
                answer.term, *seen_term
            )));
        }
        *seen_term = answer.term;
        if !answer.frames.is_empty() {
            match store.append_frames(answer.frames).await {
                Ok(end) if end != answer.next => {
                    tracing::warn!(
                        end,
                        next = answer.next,
                        "the log end after appending is not the leader's next offset"
                    );
                }
                Ok(_) => {}
                Err(err) => return Resync::Stop(err.into()),
            }
        }
        let hw = answer.high_watermark.min(store.durable_end());
        match store.set_high_watermark(hw).await {
            Ok(now) => {
                repl.metrics().replication_high_watermark.set(now as i64);
            }
            Err(err) => return Resync::Stop(err.into()),
        }
        backoff.reset();
        repl.set_follower_error(None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::discovery::LeaderRecord;

    fn state(role: Role, leader: Option<&str>) -> LeaderState {
        LeaderState {
            role,
            case: crate::election::ElectionCase::Normal,
            term: 4,
            leader: leader.map(|n| LeaderRecord {
                name: n.into(),
                address: format!("{n}:1"),
                since: String::new(),
                term: Some(4),
            }),
            lease_until: Some(Instant::now()),
            session: Some("s".into()),
            consul_reachable: true,
            consul_denied: None,
            reason: String::new(),
            since: SystemTime::now(),
            transitions: 0,
        }
    }

    /// A follower follows the leader the key names; a leader, a stopping node or a node that
    /// knows no leader (or sees itself named) follows nobody.
    #[test]
    fn whom_to_follow() {
        assert_eq!(
            target(&state(Role::Follower, Some("n1")), "n2"),
            Some(Target {
                name: "n1".into(),
                address: "n1:1".into(),
                term: 4
            })
        );
        assert!(target(&state(Role::Starting, Some("n1")), "n2").is_some());
        assert_eq!(target(&state(Role::Follower, Some("n2")), "n2"), None);
        assert_eq!(target(&state(Role::Follower, None), "n2"), None);
        assert_eq!(target(&state(Role::Leader, Some("n2")), "n2"), None);
        assert_eq!(target(&state(Role::Stopping, Some("n1")), "n2"), None);
    }
}

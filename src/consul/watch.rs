//! Blocking-query watches: a reusable [`Watcher`] that follows Consul's index rules (index 0 is
//! treated as 1, an index going backwards resets, a timeout with the same index is not a change),
//! backs off with jitter on errors and rate-limits itself so a hot key cannot spin it.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use rand::Rng;

use super::{QueryMeta, QueryOptions, Result};

/// Exponential back-off with jitter, for retrying Consul after errors.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Back-off growing from `min` to at most `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay: `min·2^attempt` capped at `max`, with ±25 % jitter so many clients that
    /// failed together do not retry together.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::thread_rng().gen_range(0.75..=1.25);
        base.mul_f64(jitter).min(self.max)
    }

    /// Back to the minimum after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// A token bucket (burst 2, as Consul's docs recommend) that spaces out queries.
#[derive(Clone, Debug)]
struct RateLimit {
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    const BURST: f64 = 2.0;

    fn new(per_second: f64) -> Self {
        Self {
            tokens: Self::BURST,
            per_second,
            last: Instant::now(),
        }
    }

    /// How long to wait before the next query may go out (and takes the token).
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(Self::BURST);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// Drives one blocking query in a loop, yielding each change.
#[derive(Clone, Debug)]
pub struct Watcher {
    index: u64,
    wait: Duration,
    backoff: Backoff,
    failing: bool,
    limit: RateLimit,
    consistent: bool,
}

impl Watcher {
    /// A watcher whose queries block up to `wait` (Consul caps it at 10 min).
    pub fn new(wait: Duration) -> Self {
        Self {
            index: 0,
            wait,
            backoff: Backoff::default(),
            failing: false,
            limit: RateLimit::new(20.0),
            consistent: false,
        }
    }

    /// Uses `backoff` between failed queries.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Asks for `?consistent` reads (what a lock holder monitors with).
    pub fn consistent(mut self) -> Self {
        self.consistent = true;
        self
    }

    /// The last index seen (0 before the first answer).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Forgets the index so the next query answers at once (used after an acquire that lost to
    /// a lock-delay, when nothing will change on the key to wake a blocking query).
    pub fn reset(&mut self) {
        self.index = 0;
    }

    /// The options of the next query.
    pub fn options(&self) -> QueryOptions {
        QueryOptions {
            index: (self.index > 0).then_some(self.index),
            wait: Some(self.wait),
            consistent: self.consistent,
            stale: false,
        }
    }

    /// Applies Consul's index rules to an answer's index and says whether it is a change the
    /// caller should see: the first answer always is; an equal index (a timeout) is not; a
    /// lower index means the data was reset (a snapshot restore, a new server), which is
    /// reported and becomes the new base; an index of 0 counts as 1.
    pub fn observe(&mut self, answered: u64) -> bool {
        let answered = answered.max(1);
        let first = self.index == 0;
        let changed = first || answered != self.index;
        self.index = answered;
        changed
    }

    /// Runs `fetch` with this watcher's options until the answer is a change, and returns it.
    /// On an error the error is returned, and the next call waits a back-off first.
    ///
    /// # Errors
    /// The error of the failed query.
    pub async fn next<T, F, Fut>(&mut self, mut fetch: F) -> Result<T>
    where
        F: FnMut(QueryOptions) -> Fut,
        Fut: Future<Output = Result<(T, QueryMeta)>>,
    {
        loop {
            if self.failing {
                tokio::time::sleep(self.backoff.next_delay()).await;
            }
            let pause = self.limit.take(Instant::now());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match fetch(self.options()).await {
                Ok((value, meta)) => {
                    self.failing = false;
                    self.backoff.reset();
                    if self.observe(meta.index) {
                        return Ok(value);
                    }
                }
                Err(err) => {
                    self.failing = true;
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index rules: first answer yields, same index does not, higher yields, lower resets and
    /// yields, 0 is treated as 1.
    #[test]
    fn index_rules() {
        let mut w = Watcher::new(Duration::from_secs(1));
        assert!(w.options().index.is_none(), "the first query does not block");
        assert!(w.observe(0));
        assert_eq!(w.index(), 1);
        assert!(!w.observe(1), "a timeout with the same index is not a change");
        assert!(w.observe(10));
        assert_eq!(w.options().index, Some(10));
        assert!(w.observe(4), "an index going backwards is reported");
        assert_eq!(w.index(), 4, "and becomes the new base");
    }

    /// Back-off grows, stays within its bounds and resets.
    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    /// The bucket lets a burst of two through, then spaces queries at its rate.
    #[test]
    fn rate_limit_burst_two() {
        let mut r = RateLimit::new(10.0);
        let t = r.last;
        assert_eq!(r.take(t), Duration::ZERO);
        assert_eq!(r.take(t), Duration::ZERO);
        let wait = r.take(t);
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    /// `next` retries past an unchanged answer and returns the change; after an error it
    /// reports the error.
    #[tokio::test(start_paused = true)]
    async fn next_skips_timeouts() {
        let mut w = Watcher::new(Duration::from_secs(1));
        let mut answers = vec![Ok(("b", 7)), Ok(("a", 5)), Ok(("a", 5))];
        let mut fetch = |_opts: QueryOptions| {
            let next = answers.pop().unwrap();
            async move {
                next.map(|(v, i)| {
                    (
                        v,
                        QueryMeta {
                            index: i,
                            ..QueryMeta::default()
                        },
                    )
                })
            }
        };
        assert_eq!(w.next(&mut fetch).await.unwrap(), "a");
        assert_eq!(
            w.next(&mut fetch).await.unwrap(),
            "b",
            "the repeated index 5 was skipped"
        );
        assert_eq!(w.index(), 7);
    }
}

//! The chaos suite's steady load and what it watches: idempotent producers (the library's, each
//! with several batches in flight) sending `ID SEQ` lines at a fixed rate to whichever node Consul
//! names, every acknowledgement stamped with the instant it arrived; and a sampler asking every
//! node's `/readyz` all the time, keeping each 200 with its term and its request's time span.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use simpleloggers::{
    consul::ConsulConfig,
    producer::{self, Hooks, Summary},
    shutdown::CancellationToken,
};
use tokio::task::JoinHandle;

use crate::{
    invariants::{ReadySample, TimedAck},
    replication::paced_lines,
};

/// How often the sampler asks each node.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// One producer under load.
struct Running {
    id: String,
    run: JoinHandle<Result<Summary, producer::ProducerError>>,
    lines: JoinHandle<()>,
    collect: JoinHandle<()>,
}

/// Producers under load, and every acknowledgement they received so far.
pub struct Load {
    producers: Vec<Running>,
    acks: Arc<Mutex<Vec<TimedAck>>>,
    stop: CancellationToken,
}

impl Load {
    /// Starts one producer per `(id, max_in_flight)` at `rate` messages per second each, in
    /// batches of at most 10, retrying a batch for up to 10 minutes (longer than any fault) so
    /// that nothing is given up on.
    pub fn start(consul_url: &str, producers: &[(&str, usize)], rate: f64) -> Load {
        let stop = CancellationToken::new();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let producers = producers
            .iter()
            .map(|&(id, in_flight)| {
                let mut config = producer::Config::for_consul(ConsulConfig::new(consul_url));
                config.producer_id = Some(id.to_string());
                config.first_seq = Some(0);
                config.batch_max = 10;
                config.max_in_flight = in_flight;
                config.request_timeout = Duration::from_secs(5);
                config.retry_max_elapsed = Duration::from_secs(600);
                config.drain_timeout = Duration::from_secs(120);
                let (reader, lines) = paced_lines(id.to_string(), rate);
                let (mut hooks, _progress, mut received) = Hooks::observed();
                hooks.reader = Some(Box::new(reader));
                let run = tokio::spawn(producer::run_with(config, stop.clone(), hooks));
                let sink = acks.clone();
                let producer = id.to_string();
                let collect = tokio::spawn(async move {
                    while let Some(ack) = received.recv().await {
                        let timed = TimedAck {
                            producer: producer.clone(),
                            at: Instant::now(),
                            ack,
                        };
                        sink.lock().expect("acks lock").push(timed);
                    }
                });
                Running {
                    id: id.to_string(),
                    run,
                    lines,
                    collect,
                }
            })
            .collect();
        Load {
            producers,
            acks,
            stop,
        }
    }

    /// Every acknowledgement so far.
    pub fn acks(&self) -> Vec<TimedAck> {
        self.acks.lock().expect("acks lock").clone()
    }

    /// How many acknowledgements so far (an index into [`Load::acks`]).
    pub fn ack_count(&self) -> usize {
        self.acks.lock().expect("acks lock").len()
    }

    /// Whether every producer has had an acknowledgement that arrived after `after`; answers the
    /// instant the last of them arrived.
    pub fn all_acked_after(&self, after: Instant) -> Option<Instant> {
        let acks = self.acks.lock().expect("acks lock");
        self.producers
            .iter()
            .map(|p| {
                acks.iter()
                    .filter(|a| a.producer == p.id && a.at > after)
                    .map(|a| a.at)
                    .min()
            })
            .collect::<Option<Vec<Instant>>>()
            .and_then(|firsts| firsts.into_iter().max())
    }

    /// Stops the sources, lets every producer drain, and answers each one's summary; the
    /// acknowledgements stay readable with [`Load::acks`].
    ///
    /// # Errors
    /// A producer did not drain within 3 minutes, or failed.
    pub async fn stop(&mut self) -> Result<Vec<(String, Summary)>, String> {
        self.stop.cancel();
        let mut summaries = Vec::new();
        for p in std::mem::take(&mut self.producers) {
            let summary = tokio::time::timeout(Duration::from_secs(180), p.run)
                .await
                .map_err(|_| format!("producer {} did not drain", p.id))?
                .map_err(|e| format!("producer {} task: {e}", p.id))?
                .map_err(|e| format!("producer {}: {e}", p.id))?;
            p.lines.abort();
            // The acks channel closes with the producer; the collector ends after the last one.
            let _ = p.collect.await;
            summaries.push((p.id, summary));
        }
        Ok(summaries)
    }
}

/// Asks every node's `/readyz` every 50 ms (each node on its own task, so a paused node holds up
/// only its own samples) and keeps the 200s; stops when dropped.
pub struct ReadySampler {
    samples: Arc<Mutex<Vec<ReadySample>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ReadySampler {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ReadySampler {
    /// Starts sampling the nodes at `urls`.
    pub fn start(urls: Vec<String>) -> ReadySampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("HTTP client");
        let tasks = urls
            .into_iter()
            .map(|url| {
                let samples = samples.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    loop {
                        let sent = Instant::now();
                        if let Some(term) = ready_term(&http, &url).await {
                            samples.lock().expect("samples lock").push(ReadySample {
                                node: url.clone(),
                                term,
                                sent,
                                received: Instant::now(),
                            });
                        }
                        tokio::time::sleep(SAMPLE_EVERY).await;
                    }
                })
            })
            .collect();
        ReadySampler { samples, tasks }
    }

    /// Every Ready answer so far.
    pub fn samples(&self) -> Vec<ReadySample> {
        self.samples.lock().expect("samples lock").clone()
    }
}

/// The term of node `url`'s `/readyz` when it answers 200.
async fn ready_term(http: &reqwest::Client, url: &str) -> Option<u64> {
    let resp = http.get(format!("{url}/readyz")).send().await.ok()?;
    if resp.status() != 200 {
        return None;
    }
    let body: serde_json::Value = resp.json().await.ok()?;
    body["term"].as_u64()
}

//! The flag groups shared by subcommands, each flag declared once with its environment fallback
//! and a default taken from the constant the library uses: [`ClusterArgs`] (Consul and the
//! election key: every subcommand that talks to Consul), [`ServiceArgs`] (the nodes' Consul
//! service: `node`, `status`), [`ElectionArgs`] (the election's timing: `node`) and
//! [`ReplicationArgs`] (replicas, acks, the in-sync set: `node`).

use std::time::Duration;

use crate::{
    consul::ConsulConfig,
    discovery::{DEFAULT_ELECTION_KEY, DEFAULT_SERVICE_NAME},
    election::{
        default_lease_margin, ElectionConfig, DEFAULT_CHECK_INTERVAL, DEFAULT_LOCK_DELAY,
        DEFAULT_RENEW_INTERVAL, DEFAULT_SESSION_TTL,
    },
};

/// Which cluster to talk to: how to reach its Consul, and the KV key whose lock is leadership
/// (and whose value names the leader). Flattened into `node`, `producer`, `status` and `tail`.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Consul")]
pub struct ClusterArgs {
    /// How to reach Consul (address, token, TLS, timeout, with Consul's own variables).
    #[command(flatten)]
    pub consul: ConsulConfig,
    /// KV key whose lock is leadership; its value names the leader.
    #[arg(long, env = "SIMPLELOGGERS_ELECTION_KEY", default_value = DEFAULT_ELECTION_KEY)]
    pub election_key: String,
}

impl ClusterArgs {
    /// The cluster at `consul` under the default election key.
    pub fn new(consul: ConsulConfig) -> Self {
        Self {
            consul,
            election_key: DEFAULT_ELECTION_KEY.to_string(),
        }
    }
}

impl Default for ClusterArgs {
    fn default() -> Self {
        Self::new(ConsulConfig::default())
    }
}

/// The Consul service the nodes register under. Only for the subcommands that register or list
/// the nodes (`node`, `status`): the others find the leader through the election key alone.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Consul")]
pub struct ServiceArgs {
    /// Consul service name the nodes register under.
    #[arg(long, env = "SIMPLELOGGERS_SERVICE_NAME", default_value = DEFAULT_SERVICE_NAME)]
    pub service_name: String,
}

impl Default for ServiceArgs {
    fn default() -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.to_string(),
        }
    }
}

/// The election's timing (`node` only). The defaults are the `DEFAULT_*` constants of
/// [`crate::election`], the same ones [`ElectionConfig::new`] uses; `docs/election.md` explains
/// how they bound a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Election")]
pub struct ElectionArgs {
    /// Consul session TTL.
    #[arg(
        long,
        env = "SIMPLELOGGERS_SESSION_TTL",
        default_value = flag_default(DEFAULT_SESSION_TTL),
        value_parser = humantime::parse_duration
    )]
    pub session_ttl: Duration,
    /// Session lock-delay; the leader's lease is derived from it.
    #[arg(
        long,
        env = "SIMPLELOGGERS_LOCK_DELAY",
        default_value = flag_default(DEFAULT_LOCK_DELAY),
        value_parser = humantime::parse_duration
    )]
    pub lock_delay: Duration,
    /// How often the session is renewed.
    #[arg(
        long,
        env = "SIMPLELOGGERS_RENEW_INTERVAL",
        default_value = flag_default(DEFAULT_RENEW_INTERVAL),
        value_parser = humantime::parse_duration
    )]
    pub renew_interval: Duration,
    /// Interval of Consul's HTTP check on /consul-check.
    #[arg(
        long,
        env = "SIMPLELOGGERS_CHECK_INTERVAL",
        default_value = flag_default(DEFAULT_CHECK_INTERVAL),
        value_parser = humantime::parse_duration
    )]
    pub check_interval: Duration,
}

impl Default for ElectionArgs {
    fn default() -> Self {
        Self {
            session_ttl: DEFAULT_SESSION_TTL,
            lock_delay: DEFAULT_LOCK_DELAY,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

impl ElectionArgs {
    /// Sets these timings on `config`, with the lease margin derived from the lock-delay.
    pub fn apply_to(&self, config: &mut ElectionConfig) {
        config.session_ttl = self.session_ttl;
        config.lock_delay = self.lock_delay;
        config.lease_margin = default_lease_margin(self.lock_delay);
        config.renew_interval = self.renew_interval;
        config.check_interval = self.check_interval;
    }
}

/// When a write is acknowledged (`--acks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Once the high watermark passes it: every in-sync replica stored it durably.
    #[default]
    All,
    /// Once durable on the leader alone. Can lose acknowledged writes on failover.
    Leader,
}

/// `--replica-lag-max` unless given: how long a follower may stay behind the leader's log end
/// before it leaves the in-sync set.
pub const DEFAULT_REPLICA_LAG_MAX: Duration = Duration::from_secs(2);

/// Replication (`node` only): how many replicas the cluster has, when a write is acknowledged,
/// and how the in-sync set is kept. `docs/replication.md` is the protocol.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Replication")]
pub struct ReplicationArgs {
    /// How many nodes the cluster has (each holds a full copy of the log).
    #[arg(long, env = "SIMPLELOGGERS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replicas: u32,
    /// When a write is acknowledged: `all` (every in-sync replica has it durably) or `leader`
    /// (durable on the leader alone: can lose acknowledged writes on failover).
    #[arg(long, env = "SIMPLELOGGERS_ACKS", value_enum, default_value = "all")]
    pub acks: Acks,
    /// Fewest in-sync replicas (the leader included) with which writes are accepted (default: a
    /// majority of --replicas).
    #[arg(long, env = "SIMPLELOGGERS_MIN_INSYNC", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub min_insync: Option<u32>,
    /// A follower that has not caught up to the leader's log end for this long leaves the
    /// in-sync set.
    #[arg(
        long,
        env = "SIMPLELOGGERS_REPLICA_LAG_MAX",
        default_value = flag_default(DEFAULT_REPLICA_LAG_MAX),
        value_parser = humantime::parse_duration
    )]
    pub replica_lag_max: Duration,
    /// Shared secret every request to the internal replication endpoint must carry (as
    /// `Authorization: Bearer ...`); unset: the endpoint is open.
    #[arg(long, env = "SIMPLELOGGERS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// After Consul lost its state, let the most complete node that reported lead without waiting
    /// for every replica. Can lose acknowledged messages; for an operator, on purpose.
    #[arg(long, env = "SIMPLELOGGERS_UNCLEAN_LEADER_ELECTION")]
    pub unclean_leader_election: bool,
    /// Serve the internal replication endpoint on this address instead of the API's (so a
    /// NetworkPolicy can admit only peers to it); the leader publishes where followers dial.
    /// Unset: served on `--listen` beside the API.
    #[arg(long, env = "SIMPLELOGGERS_REPLICATION_LISTEN")]
    pub replication_listen: Option<std::net::SocketAddr>,
    /// Test hook: send every replication request (the follower's fetches) through this HTTP
    /// forward proxy, so tests can cut one follower off. Unset: no proxy at all, whatever
    /// `HTTP_PROXY` says. Never set in production.
    #[arg(long, env = "SIMPLELOGGERS_REPLICATION_PROXY", hide = true)]
    pub replication_proxy: Option<String>,
}

impl Default for ReplicationArgs {
    fn default() -> Self {
        Self {
            replicas: 1,
            acks: Acks::All,
            min_insync: None,
            replica_lag_max: DEFAULT_REPLICA_LAG_MAX,
            cluster_secret: None,
            unclean_leader_election: false,
            replication_listen: None,
            replication_proxy: None,
        }
    }
}

impl ReplicationArgs {
    /// `--min-insync`, or a majority of `--replicas`.
    pub fn min_insync(&self) -> u32 {
        self.min_insync.unwrap_or(self.replicas / 2 + 1)
    }

    /// Checks the flags against each other; the message names the flag.
    ///
    /// # Errors
    /// `--min-insync` above `--replicas`, a zero `--replica-lag-max`, an empty secret.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_insync() > self.replicas {
            return Err(format!(
                "--min-insync ({}) must not exceed --replicas ({})",
                self.min_insync(),
                self.replicas
            ));
        }
        if self.replica_lag_max.is_zero() {
            return Err("--replica-lag-max must be positive".into());
        }
        if self
            .cluster_secret
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err("--cluster-secret must not be empty (leave it unset instead)".into());
        }
        Ok(())
    }
}

/// A duration as a flag default, spelled the way `humantime` parses it back (`10s`, `500ms`).
fn flag_default(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use clap::{Arg, Args, Command, FromArgMatches};

    use super::*;
    use crate::{
        cli::{StatusConfig, TailConfig},
        consul::{DEFAULT_ADDR, DEFAULT_TIMEOUT},
        demo::DemoConfig,
        node::NodeConfig,
        producer,
    };

    /// Every subcommand that talks to Consul, as `main.rs` declares it.
    fn consul_subcommands() -> Vec<Command> {
        vec![
            NodeConfig::augment_args(Command::new("node")),
            producer::Config::augment_args(Command::new("producer")),
            StatusConfig::augment_args(Command::new("status")),
            TailConfig::augment_args(Command::new("tail")),
        ]
    }

    /// What a user sees of a flag: long name, env variable, defaults, value name, help, heading.
    fn spec(arg: &Arg) -> String {
        format!(
            "--{:?} env={:?} default={:?} value={:?} help={:?} heading={:?}",
            arg.get_long(),
            arg.get_env(),
            arg.get_default_values(),
            arg.get_value_names(),
            arg.get_help().map(ToString::to_string),
            arg.get_help_heading(),
        )
    }

    /// The flags of a group, as declared once.
    fn group<T: Args>() -> Vec<Arg> {
        T::augment_args(Command::new("group"))
            .get_arguments()
            .cloned()
            .collect()
    }

    /// Asserts that `cmd` has every flag of `group` exactly as the group declares it.
    fn assert_has(cmd: &Command, group: &[Arg]) {
        for want in group {
            let got = cmd
                .get_arguments()
                .find(|a| a.get_id() == want.get_id())
                .unwrap_or_else(|| panic!("{} lacks {:?}", cmd.get_name(), want.get_long()));
            assert_eq!(spec(got), spec(want), "{}", cmd.get_name());
        }
    }

    /// Whether `cmd` has any flag named like one of `group`'s.
    fn has_any(cmd: &Command, group: &[Arg]) -> bool {
        cmd.get_arguments()
            .any(|a| group.iter().any(|g| g.get_long() == a.get_long()))
    }

    /// `node`, `producer`, `status` and `tail` all take the one Consul group, with the same
    /// names, env fallbacks, defaults and help; `--service-name` only where the service is used,
    /// the election timing only on `node`; `demo` and `dev-consul` declare none of them.
    #[test]
    fn every_consul_subcommand_takes_the_one_group() {
        let cluster = group::<ClusterArgs>();
        let service = group::<ServiceArgs>();
        let election = group::<ElectionArgs>();
        for cmd in consul_subcommands() {
            assert_has(&cmd, &cluster);
            let name = cmd.get_name().to_string();
            let wants_service = name == "node" || name == "status";
            assert_eq!(has_any(&cmd, &service), wants_service, "{name}: --service-name");
            if wants_service {
                assert_has(&cmd, &service);
            }
            assert_eq!(
                has_any(&cmd, &election),
                name == "node",
                "{name}: election timing"
            );
            if name == "node" {
                assert_has(&cmd, &election);
            }
            // A heading carries over to the flags declared after a group: groups go last, and
            // no other flag may end up under the Consul or Election heading.
            let replication = group::<ReplicationArgs>();
            let shared: Vec<&Arg> = cluster
                .iter()
                .chain(&service)
                .chain(&election)
                .chain(&replication)
                .collect();
            for arg in cmd.get_arguments() {
                if !shared.iter().any(|g| g.get_id() == arg.get_id()) {
                    let heading = arg.get_help_heading();
                    assert!(
                        !matches!(heading, Some("Consul" | "Election" | "Replication")),
                        "{name}: {:?} under {heading:?}",
                        arg.get_long()
                    );
                }
            }
        }
        let others = [
            DemoConfig::augment_args(Command::new("demo")),
            devconsul::Config::augment_args(Command::new("dev-consul")),
        ];
        for cmd in others {
            for g in [&cluster, &service, &election] {
                assert!(
                    !has_any(&cmd, g),
                    "{} declares its own Consul flags",
                    cmd.get_name()
                );
            }
        }
    }

    /// The names and env variables users, the README and the Helm chart rely on.
    #[test]
    fn flag_and_env_names_are_the_documented_ones() {
        let names = |args: Vec<Arg>| -> Vec<(String, String)> {
            args.iter()
                .map(|a| {
                    let long = a.get_long().unwrap_or_default().to_string();
                    let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                    (long, env.unwrap_or_default())
                })
                .collect()
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(l, e)| (l.to_string(), e.to_string())).collect()
        };
        assert_eq!(
            names(group::<ClusterArgs>()),
            pairs(&[
                ("consul-addr", "CONSUL_HTTP_ADDR"),
                ("consul-token", "CONSUL_HTTP_TOKEN"),
                ("consul-ssl", "CONSUL_HTTP_SSL"),
                ("consul-cacert", "CONSUL_CACERT"),
                ("consul-client-cert", "CONSUL_CLIENT_CERT"),
                ("consul-client-key", "CONSUL_CLIENT_KEY"),
                ("consul-tls-server-name", "CONSUL_TLS_SERVER_NAME"),
                ("consul-ssl-verify", "CONSUL_HTTP_SSL_VERIFY"),
                ("consul-timeout", "SIMPLELOGGERS_CONSUL_TIMEOUT"),
                ("election-key", "SIMPLELOGGERS_ELECTION_KEY"),
            ])
        );
        assert_eq!(
            names(group::<ServiceArgs>()),
            pairs(&[("service-name", "SIMPLELOGGERS_SERVICE_NAME")])
        );
        assert_eq!(
            names(group::<ElectionArgs>()),
            pairs(&[
                ("session-ttl", "SIMPLELOGGERS_SESSION_TTL"),
                ("lock-delay", "SIMPLELOGGERS_LOCK_DELAY"),
                ("renew-interval", "SIMPLELOGGERS_RENEW_INTERVAL"),
                ("check-interval", "SIMPLELOGGERS_CHECK_INTERVAL"),
            ])
        );
    }

    /// Parses a group from a command line, ignoring the environment (whatever the test runner's
    /// `CONSUL_HTTP_ADDR` and friends are).
    fn parse<T: Args + FromArgMatches>(argv: &[&str]) -> T {
        let matches = T::augment_args(Command::new("t").no_binary_name(true))
            .mut_args(|a| a.env(None))
            .try_get_matches_from(argv)
            .expect("the flags parse");
        T::from_arg_matches(&matches).expect("the matches convert")
    }

    /// The flag defaults are the library's constants, which `ElectionConfig::new` also uses, and
    /// the help shows them as the README documents them.
    #[test]
    fn defaults_come_from_the_constants() {
        let timing: ElectionArgs = parse(&[]);
        assert_eq!(timing, ElectionArgs::default());
        let library = ElectionConfig::new("n", "h:1");
        let mut applied = library.clone();
        timing.apply_to(&mut applied);
        assert_eq!(format!("{applied:?}"), format!("{library:?}"));

        let cluster: ClusterArgs = parse(&[]);
        assert_eq!(format!("{cluster:?}"), format!("{:?}", ClusterArgs::default()));
        assert_eq!(cluster.consul.addr, DEFAULT_ADDR);
        assert_eq!(cluster.consul.timeout, DEFAULT_TIMEOUT);
        assert_eq!(cluster.election_key, DEFAULT_ELECTION_KEY);
        let service: ServiceArgs = parse(&[]);
        assert_eq!(service.service_name, DEFAULT_SERVICE_NAME);

        let shown: Vec<String> = group::<ElectionArgs>()
            .iter()
            .map(|a| a.get_default_values()[0].to_string_lossy().into_owned())
            .collect();
        assert_eq!(shown, ["10s", "500ms", "125ms", "1s"]);
    }

    /// Flags override the defaults, and the lease margin follows the given lock-delay.
    #[test]
    fn flags_override_the_timing() {
        let timing: ElectionArgs = parse(&["--lock-delay", "4s", "--renew-interval", "250ms"]);
        assert_eq!(timing.lock_delay, Duration::from_secs(4));
        assert_eq!(timing.renew_interval, Duration::from_millis(250));
        assert_eq!(timing.session_ttl, DEFAULT_SESSION_TTL);
        let mut config = ElectionConfig::new("n", "h:1");
        timing.apply_to(&mut config);
        assert_eq!(config.lock_delay, Duration::from_secs(4));
        assert_eq!(config.lease_margin, Duration::from_millis(500));
        assert!(config.validate().is_ok());
    }
}

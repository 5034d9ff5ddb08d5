//! The dev server's settings: the `simpleloggers dev-consul` flags (a `clap::Args` group with
//! `SIMPLELOGGERS_DEV_CONSUL_*` environment fallbacks) and the defaults tests and the demo use.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::acl::Acl;

/// Parses a human duration (`10s`, `1m`, `500ms`) for flags.
fn parse_flag_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Dev server settings; every flag has a `SIMPLELOGGERS_DEV_CONSUL_*` environment fallback.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve Consul's HTTP API on (Consul's default port is 8500; port 0 = any free port).
    #[arg(
        long,
        env = "SIMPLELOGGERS_DEV_CONSUL_LISTEN",
        default_value = "127.0.0.1:8500"
    )]
    pub listen: SocketAddr,
    /// Shortest session TTL accepted (Consul's `session_ttl_min`, default 10s); lower it for tests.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_SESSION_TTL_MIN", default_value = "10s", value_parser = parse_flag_duration)]
    pub session_ttl_min: Duration,
    /// Shortest interval an HTTP/TCP check runs at (Consul's `checks.MinInterval`, 1s: a lower
    /// `Interval` is registered but probed once a second); lower it for fast tests.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_CHECK_INTERVAL_MIN", default_value = "1s", value_parser = parse_flag_duration)]
    pub check_interval_min: Duration,
    /// When set, ACLs are enforced: every request must carry this token (`?token=`,
    /// `X-Consul-Token` or `Authorization: Bearer`), except `/v1/status/leader`.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_ACL_TOKEN", hide_env_values = true)]
    pub acl_token: Option<String>,
    /// When set, ACLs are enforced with the tokens and rules of this JSON file (Consul's JSON
    /// rule syntax; docs/dev-consul.md "ACLs"); `--acl-token`, if also given, is a management
    /// token next to them.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_ACL_CONFIG")]
    pub acl_config: Option<PathBuf>,
    /// Name of the single emulated node.
    #[arg(
        long,
        env = "SIMPLELOGGERS_DEV_CONSUL_NODE_NAME",
        default_value = "dev-consul"
    )]
    pub node_name: String,
    /// Datacenter name reported by the agent.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_DATACENTER", default_value = "dc1")]
    pub datacenter: String,
    /// How often services with long-critical checks are reaped (Consul: 30s). Test knob.
    #[arg(long, hide = true, env = "SIMPLELOGGERS_DEV_CONSUL_CHECK_REAP_INTERVAL", default_value = "30s", value_parser = parse_flag_duration)]
    pub check_reap_interval: Duration,
    /// Lower bound applied to `DeregisterCriticalServiceAfter` (Consul: 1m). Test knob.
    #[arg(long, hide = true, env = "SIMPLELOGGERS_DEV_CONSUL_CHECK_DEREGISTER_MIN", default_value = "1m", value_parser = parse_flag_duration)]
    pub check_deregister_min: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8500)),
            session_ttl_min: Duration::from_secs(10),
            check_interval_min: Duration::from_secs(1),
            acl_token: None,
            acl_config: None,
            node_name: "dev-consul".to_string(),
            datacenter: "dc1".to_string(),
            check_reap_interval: Duration::from_secs(30),
            check_deregister_min: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// The ACL system to enforce: from `--acl-config`, plus `--acl-token` as a management token;
    /// `None` (ACLs off) when neither is set.
    ///
    /// # Errors
    /// The file cannot be read or parsed (the message names it).
    pub fn acl(&self) -> Result<Option<Arc<Acl>>, String> {
        let acl = match (&self.acl_config, self.acl_token.as_deref()) {
            (None, None) => return Ok(None),
            (None, Some(token)) => Acl::single(token),
            (Some(path), token) => {
                let acl = Acl::load(path)?;
                match token {
                    Some(token) => acl.with_management(token),
                    None => acl,
                }
            }
        };
        Ok(Some(Arc::new(acl)))
    }

    /// The defaults, but listening on `127.0.0.1:0` (any free port): what tests want.
    pub fn ephemeral() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        }
    }
}

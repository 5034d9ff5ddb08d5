//! Client configuration from Consul's standard environment (`CONSUL_HTTP_ADDR`,
//! `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_SSL`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`, `CONSUL_HTTP_SSL_VERIFY`), each overridable by
//! a flag.

use std::{path::PathBuf, time::Duration};

use super::ConsulError;

/// The Consul address when neither `--consul-addr` nor `CONSUL_HTTP_ADDR` is given (Consul's own).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8500";
/// The timeout of a non-blocking request when `--consul-timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach Consul. Part of [`crate::flags::ClusterArgs`], the flag group of every
/// subcommand that talks to Consul.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsulConfig {
    /// Consul HTTP address, with or without scheme (`127.0.0.1:8500`, `https://consul:8501`).
    #[arg(long = "consul-addr", env = "CONSUL_HTTP_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// ACL token, sent as `X-Consul-Token`.
    #[arg(long = "consul-token", env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Use HTTPS when the address has no scheme.
    #[arg(long = "consul-ssl", env = "CONSUL_HTTP_SSL", action = clap::ArgAction::Set, default_value_t = false)]
    pub ssl: bool,
    /// PEM file of the CA that signed Consul's certificate.
    #[arg(long = "consul-cacert", env = "CONSUL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate presented to Consul (mTLS, `verify_incoming`); needs
    /// `--consul-client-key`.
    #[arg(long = "consul-client-cert", env = "CONSUL_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--consul-client-cert`.
    #[arg(long = "consul-client-key", env = "CONSUL_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Name to verify Consul's certificate against and send as SNI, when it differs from the
    /// address's host (e.g. `server.dc1.consul`).
    #[arg(long = "consul-tls-server-name", env = "CONSUL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Verify Consul's certificate (`false` turns verification off: for experiments only).
    #[arg(long = "consul-ssl-verify", env = "CONSUL_HTTP_SSL_VERIFY", action = clap::ArgAction::Set, default_value_t = true)]
    pub ssl_verify: bool,
    /// Timeout of a non-blocking request to Consul.
    #[arg(
        long = "consul-timeout",
        env = "SIMPLELOGGERS_CONSUL_TIMEOUT",
        default_value = humantime::format_duration(DEFAULT_TIMEOUT).to_string(),
        value_parser = humantime::parse_duration
    )]
    pub timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self::new(DEFAULT_ADDR)
    }
}

impl ConsulConfig {
    /// A configuration for the given address with every other setting at its default.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            token: None,
            ssl: false,
            cacert: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            ssl_verify: true,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The base URL (`scheme://host:port`, no trailing slash).
    ///
    /// # Errors
    /// Fails when the address is empty or not a valid URL.
    pub fn base_url(&self) -> Result<url::Url, ConsulError> {
        let addr = self.addr.trim();
        if addr.is_empty() {
            return Err(ConsulError::Config(
                "the Consul address (CONSUL_HTTP_ADDR / --consul-addr) is empty".into(),
            ));
        }
        let with_scheme = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else if addr.contains("://") {
            return Err(ConsulError::Config(format!(
                "unsupported scheme in Consul address {addr:?}: use http:// or https://"
            )));
        } else {
            let scheme = if self.ssl { "https" } else { "http" };
            format!("{scheme}://{addr}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| ConsulError::Config(format!("invalid Consul address {addr:?}: {e}")))?;
        if url.host_str().is_none() {
            return Err(ConsulError::Config(format!(
                "Consul address {addr:?} has no host"
            )));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address without scheme gets http, or https with CONSUL_HTTP_SSL; an explicit scheme wins.
    #[test]
    fn scheme_rules() {
        let mut c = ConsulConfig::new("127.0.0.1:8500");
        assert_eq!(c.base_url().unwrap().as_str(), "http://127.0.0.1:8500/");
        c.ssl = true;
        assert_eq!(c.base_url().unwrap().as_str(), "https://127.0.0.1:8500/");
        c.addr = "http://consul:8500".into();
        assert_eq!(c.base_url().unwrap().as_str(), "http://consul:8500/");
        c.addr = "unix:///tmp/consul.sock".into();
        assert!(matches!(c.base_url(), Err(ConsulError::Config(_))));
        c.addr = "  ".into();
        assert!(matches!(c.base_url(), Err(ConsulError::Config(_))));
    }
}

//! TLS to Consul with Consul's own variables: the CA (`CONSUL_CACERT`), a client certificate for
//! mTLS (`CONSUL_CLIENT_CERT` + `CONSUL_CLIENT_KEY`), the name to verify and send as SNI instead
//! of the address's host (`CONSUL_TLS_SERVER_NAME`), and verification itself
//! (`CONSUL_HTTP_SSL_VERIFY=false` turns it off). Applied to the client's reqwest builder.

use std::{net::SocketAddr, sync::Arc};

use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    ClientBuilder,
};

use super::{ConsulConfig, ConsulError};

/// Applies the TLS settings of `config` to `builder`; answers the base URL requests go to (its
/// host replaced by `CONSUL_TLS_SERVER_NAME` when set, which then resolves to the real host).
///
/// # Errors
/// An unreadable or malformed CA, certificate or key (the message names the variable), a
/// certificate without its key or the reverse.
pub(crate) fn configure(
    config: &ConsulConfig,
    mut builder: ClientBuilder,
    mut base: url::Url,
) -> Result<(ClientBuilder, url::Url), ConsulError> {
    if let Some(path) = &config.cacert {
        let pem = read(path, "CONSUL_CACERT")?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            ConsulError::Config(format!(
                "CONSUL_CACERT {} is not a PEM certificate: {e}",
                path.display()
            ))
        })?;
        builder = builder.add_root_certificate(cert);
    }
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert, "CONSUL_CLIENT_CERT")?;
            pem.push(b'\n');
            pem.extend(read(key, "CONSUL_CLIENT_KEY")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ConsulError::Config(format!(
                    "CONSUL_CLIENT_CERT {} / CONSUL_CLIENT_KEY {} are not a PEM certificate and \
                     its private key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        (Some(_), None) => {
            return Err(ConsulError::Config(
                "CONSUL_CLIENT_CERT (--consul-client-cert) is set without CONSUL_CLIENT_KEY (--consul-client-key)"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ConsulError::Config(
                "CONSUL_CLIENT_KEY (--consul-client-key) is set without CONSUL_CLIENT_CERT (--consul-client-cert)"
                    .into(),
            ))
        }
        (None, None) => {}
    }
    if !config.ssl_verify {
        tracing::warn!("CONSUL_HTTP_SSL_VERIFY=false: Consul's certificate is not verified");
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(name) = config.tls_server_name.as_deref().filter(|n| !n.is_empty()) {
        if base.scheme() == "https" {
            let real = base.host_str().unwrap_or_default().to_string();
            base.set_host(Some(name)).map_err(|e| {
                ConsulError::Config(format!("CONSUL_TLS_SERVER_NAME {name:?} is not a host name: {e}"))
            })?;
            builder = builder.dns_resolver(Arc::new(ServerNameResolver {
                server_name: name.to_string(),
                real: real.trim_start_matches('[').trim_end_matches(']').to_string(),
            }));
        }
    }
    Ok((builder, base))
}

fn read(path: &std::path::Path, var: &str) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path).map_err(|e| ConsulError::Config(format!("cannot read {var} {}: {e}", path.display())))
}

/// Resolves `server_name` (the host of the base URL, so that it is the name verified and sent as
/// SNI) to the addresses of the configured host; any other name as usual.
#[derive(Debug)]
struct ServerNameResolver {
    /// `CONSUL_TLS_SERVER_NAME`.
    server_name: String,
    /// The host of `CONSUL_HTTP_ADDR`.
    real: String,
}

impl Resolve for ServerNameResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = if name.as_str() == self.server_name {
            self.real.clone()
        } else {
            name.as_str().to_string()
        };
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server name replaces the host of an https base URL (not of an http one); a lone
    /// certificate or key is refused naming both variables.
    #[test]
    fn settings() {
        let mut config = ConsulConfig::new("https://127.0.0.1:8501");
        config.tls_server_name = Some("consul.example".into());
        let base = config.base_url().unwrap();
        let (_, base) = configure(&config, reqwest::Client::builder(), base).unwrap();
        assert_eq!(base.as_str(), "https://consul.example:8501/");
        config.addr = "http://127.0.0.1:8500".into();
        let base = config.base_url().unwrap();
        let (_, base) = configure(&config, reqwest::Client::builder(), base).unwrap();
        assert_eq!(base.as_str(), "http://127.0.0.1:8500/");

        config.client_cert = Some("/nonexistent/cert.pem".into());
        let err = configure(&config, reqwest::Client::builder(), base.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONSUL_CLIENT_KEY"), "{err}");
        config.client_key = Some("/nonexistent/key.pem".into());
        let err = configure(&config, reqwest::Client::builder(), base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONSUL_CLIENT_CERT"), "{err}");
    }
}

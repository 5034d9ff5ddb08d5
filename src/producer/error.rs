//! The producer's error type: only what stops it from starting (bad configuration, a Consul or
//! HTTP client that cannot be built, a leader refusing to say where the producer id stopped). Failed sends are not errors: they are counted in the
//! [`super::Summary`], so the caller always learns what was and was not acknowledged.

use crate::consul::ConsulError;

/// Why [`super::run`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// The configuration is inconsistent or malformed (e.g. `--stdin` with `--file`, a bad URL).
    #[error("invalid producer configuration: {0}")]
    Config(String),
    /// The Consul client could not be built from the Consul settings.
    #[error("cannot set up the Consul client")]
    Consul(#[source] ConsulError),
    /// The leader refused to say where the producer id stopped (e.g. an id it does not accept).
    #[error("cannot resume the producer id: {0}")]
    Resume(String),
    /// The HTTP client could not be built (e.g. TLS initialisation failed).
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
}

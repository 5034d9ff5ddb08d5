//! `simpleloggers status`: the members of the cluster, their roles, terms, log end offsets,
//! Consul checks and sessions, as a `kubectl get`-like table or JSON for scripts.

use std::time::Duration;

use super::cluster::{self, ClusterView};
use crate::{
    consul::{ConsulClient, ConsulError},
    flags::{ClusterArgs, ServiceArgs},
};

/// Output format of `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// A JSON array of members for scripts.
    Json,
}

/// Flags of `simpleloggers status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusConfig {
    /// How long each member's /api/v1/status may take before it is shown as unreachable.
    #[arg(long = "timeout", default_value = "1s", value_parser = humantime::parse_duration)]
    pub member_timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Consul and the election key.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The Consul service whose instances are the members.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Takes the view and renders it in the chosen format (the text ends with a newline).
///
/// # Errors
/// Consul cannot be reached (the message names the address), or the client cannot be built.
pub async fn run(config: &StatusConfig) -> Result<String, ConsulError> {
    let consul = ConsulClient::new(&config.cluster.consul)?;
    let http = reqwest::Client::builder()
        .connect_timeout(config.member_timeout)
        .build()
        .map_err(|e| ConsulError::Config(format!("cannot build the HTTP client: {e}")))?;
    let view = cluster::collect(
        &consul,
        &http,
        &config.service.service_name,
        &config.cluster.election_key,
        config.member_timeout,
    )
    .await?;
    Ok(render(&view, config.output))
}

/// Renders a view as a table or as a JSON array of members.
pub fn render(view: &ClusterView, output: Output) -> String {
    match output {
        Output::Table if view.members.is_empty() => {
            format!(
                "no instances of service {:?} are registered in Consul\n",
                view.service
            )
        }
        Output::Table => cluster::render_table(view),
        Output::Json => serde_json::to_string_pretty(&view.members).unwrap_or_else(|_| "[]".into()) + "\n",
    }
}

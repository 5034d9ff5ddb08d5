//! The `simpleloggers` binary: parses flags, sets up tracing and signals, and calls the library.

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use simpleloggers::{
    cli::{self, StatusConfig, TailConfig},
    demo,
    node::{self, NodeConfig},
    producer, shutdown,
    telemetry::{self, LogFormat},
};

/// A distributed, durable log service elected through HashiCorp Consul.
#[derive(Parser, Debug)]
#[command(name = "simpleloggers", version, about, args_override_self = true)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "SIMPLELOGGERS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a log node: contend for leadership through Consul and serve the HTTP API.
    Node(Box<NodeConfig>),
    /// Send messages to the leader (found through Consul, or at `--target`), batching under load
    /// and retrying without duplicates; prints a summary and exits non-zero if any message was
    /// not acknowledged.
    Producer(Box<producer::Config>),
    /// Run the embedded, in-memory, single-node Consul-compatible dev server.
    DevConsul(devconsul::Config),
    /// Run the whole system on this machine: dev Consul, three nodes, a producer; verify at the end.
    Demo(demo::DemoConfig),
    /// Show the cluster's members from Consul and their own status: role, readiness, term,
    /// log end offset, Consul check and session (`-o json` for scripts).
    Status(StatusConfig),
    /// Print the leader's messages (found through Consul), one per line; with --follow keep
    /// streaming across failovers.
    Tail(TailConfig),
    /// Print the LogCluster CustomResourceDefinition as YAML (what the chart ships in `crds/`).
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own status lines; its in-process producer only warns.
    let default_filter = if matches!(
        cli.command,
        Command::Demo(_) | Command::Status(_) | Command::Tail(_)
    ) {
        "warn"
    } else {
        "info"
    };
    telemetry::init(cli.log_format, default_filter);
    match cli.command {
        Command::Crd => {
            let yaml = simpleloggers::k8s::crd::crd_yaml().context("cannot render the CRD")?;
            print!("{yaml}");
            std::io::stdout().flush().context("cannot write the CRD")?;
        }
        Command::Node(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
            println!(
                "simpleloggers node listening on http://{}",
                listener.local_addr()?
            );
            node::run(*config, listener, shutdown::on_signal())
                .await
                .context("node failed")?;
        }
        Command::DevConsul(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
            println!(
                "simpleloggers dev-consul listening on http://{}",
                listener.local_addr()?
            );
            devconsul::run(listener, config, shutdown::on_signal())
                .await
                .context("dev-consul failed")?;
        }
        Command::Demo(config) => {
            let verified = demo::run(config, shutdown::on_signal())
                .await
                .context("the demo could not run")?;
            if !verified {
                anyhow::bail!("verification failed: see the report above");
            }
        }
        Command::Status(config) => {
            let text = cli::status::run(&config).await.with_context(|| {
                format!(
                    "cannot show the status (Consul at {})",
                    config.cluster.consul.addr
                )
            })?;
            print!("{text}");
            std::io::stdout().flush().context("cannot write the status")?;
        }
        Command::Tail(config) => {
            let mut out = std::io::stdout();
            match cli::tail::run(&config, &mut out, shutdown::on_signal()).await {
                Ok(_) => {}
                // `tail | head` closes the pipe: that is the reader's choice, not a failure.
                Err(cli::tail::TailError::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(err) => return Err(err).context("tail failed"),
            }
        }
        Command::Producer(config) => {
            let summary = producer::run(*config, shutdown::on_signal())
                .await
                .context("the producer could not start")?;
            println!("{summary}");
            std::io::stdout().flush().context("cannot write the summary")?;
            let code = if summary.all_acknowledged() {
                0
            } else {
                eprintln!(
                    "error: {} of {} message(s) not acknowledged ({} failed)",
                    summary.sent.saturating_sub(summary.acknowledged),
                    summary.sent,
                    summary.failed
                );
                1
            };
            // Exit here rather than return: a `--stdin` read still blocked on its thread would
            // otherwise hold the runtime's shutdown until the next line (tokio's stdin caveat).
            std::process::exit(code);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The subcommands that take the Consul flag group are exactly the ones whose flag types
    /// `simpleloggers::flags`' tests check, so a new Consul-talking subcommand cannot slip by.
    #[test]
    fn consul_subcommands_are_the_checked_ones() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let with_consul: Vec<&str> = cli
            .get_subcommands()
            .filter(|c| c.get_arguments().any(|a| a.get_long() == Some("consul-addr")))
            .map(|c| c.get_name())
            .collect();
        assert_eq!(with_consul, ["node", "producer", "status", "tail"]);
    }
}

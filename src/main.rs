//! The `simpleloggers` binary: parses flags, sets up tracing and signals, and calls the library.

use clap::{Parser, Subcommand};
use simpleloggers::telemetry::{self, LogFormat};

/// A distributed, durable log service elected through HashiCorp Consul.
#[derive(Parser, Debug)]
#[command(name = "simpleloggers", version, about)]
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
    /// Placeholder.
    Version,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Version => println!("{}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

//! Cancellation plumbing: `main` owns the OS signals and hands a [`CancellationToken`] to every
//! long-running `run(..., shutdown)`; the library never installs signal handlers itself.

pub use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C). Only binaries call this.
///
/// # Errors
/// Fails when the signal handlers cannot be installed.
pub async fn signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

/// A token cancelled on the first SIGTERM/SIGINT; a second signal is left to the default handler
/// only after the first has been observed.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        match signal().await {
            Ok(name) => tracing::info!(signal = name, "shutdown requested"),
            Err(err) => tracing::error!(%err, "cannot listen for signals"),
        }
        child.cancel();
    });
    token
}

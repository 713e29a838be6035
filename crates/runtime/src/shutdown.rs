//! Shutdown, written once: the first SIGTERM/SIGINT asks every task to finish, a second one
//! exits at once, and a failing task stops the others.

use tokio_util::sync::CancellationToken;

/// A cloneable stop signal shared by every task of a service.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that fires only when [`trigger`](Self::trigger)ed (tests use this).
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A signal that fires on SIGTERM or SIGINT; a second signal exits the process with
    /// status 130 without waiting. Must be called inside a tokio runtime.
    pub fn on_signals() -> Shutdown {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Shutdown requested; finishing in-flight work");
            trigger.trigger();
            wait_for_signal().await;
            tracing::warn!("Second signal; exiting now");
            std::process::exit(130);
        });
        shutdown
    }

    /// Asks everything to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether stopping was asked for.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when stopping is asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers we can still stop on Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

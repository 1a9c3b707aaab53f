//! Hot reload: on SIGHUP and when the config file changes, validate the new file and swap it in;
//! on any error, log every problem and keep serving the running config.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::ReloadLabels;
use crate::state::{Runtime, Shared};

/// Reloads once. Returns whether the new config was installed.
pub(crate) async fn reload(shared: &Arc<Shared>, trigger: &'static str) -> bool {
    let current = shared.current.load_full();
    let result = match Config::load(&shared.config_path) {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!(trigger, location = %w.location, problem = %w.message, "Config warning.");
            }
            if config.listeners != current.config.listeners {
                tracing::warn!(
                    trigger,
                    "Listener addresses changed; they take effect only after a restart."
                );
            }
            Runtime::start(config, &shared.background, shared.inherit(&current)).await
        }
        Err(errors) => Err(errors),
    };
    match result {
        Ok(next) => {
            shared.install(next);
            shared
                .metrics
                .reloads
                .get_or_create(&ReloadLabels { result: "applied" })
                .inc();
            tracing::info!(trigger, path = %shared.config_path.display(), "Config reloaded.");
            true
        }
        Err(errors) => {
            shared
                .metrics
                .reloads
                .get_or_create(&ReloadLabels { result: "rejected" })
                .inc();
            for e in &errors.0 {
                tracing::error!(trigger, location = %e.location, problem = %e.message, "Config error.");
            }
            tracing::error!(
                trigger,
                errors = errors.0.len(),
                "Config rejected; still serving the previous config."
            );
            false
        }
    }
}

/// Watches for SIGHUP and file changes on the background runtime until `stop` is cancelled;
/// the returned handle finishes when the watcher has stopped.
pub(crate) fn spawn_watcher(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let handle = shared.background.clone();
    // Registered here, before the gateway listens, not when the task first runs: until then a
    // SIGHUP would still have its default action and end the process (seen in debug builds,
    // whose background runtime reached the task seconds after start).
    let hup = {
        let _runtime = handle.enter();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGHUP; only file changes will reload.");
                None
            }
        }
    };
    handle.spawn(async move {
        let mut hup = hup;
        let poll = shared.current.load().config.server.reload_poll;
        let mut last = std::fs::read(&shared.config_path).ok();
        loop {
            let hup_fired = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let tick = async {
                if poll.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(poll).await
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = hup_fired => {
                    last = std::fs::read(&shared.config_path).ok();
                    reload(&shared, "sighup").await;
                }
                _ = tick => {
                    let now = std::fs::read(&shared.config_path).ok();
                    if now.is_some() && now != last {
                        last = now;
                        reload(&shared, "file_change").await;
                    }
                }
            }
        }
    })
}

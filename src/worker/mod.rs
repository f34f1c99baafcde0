//! The worker: claim loop, leases, pacing, dial and decide, outcomes, shutdown.
pub mod app;
pub mod batch;
pub mod breaker;
mod dial;
pub mod outcomes;
pub mod pacing;
pub mod run;

use crate::clock::Clock;
use crate::config::Settings;
use crate::store::DynStore;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a worker cannot start: a configuration fault (exit 2) or a runtime one.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration key `{0}`: {1}")]
    Config(&'static str, String),
    #[error("{0}")]
    Runtime(String),
}

/// Builds a worker from configuration: engine, client, pacing.
pub fn build(
    settings: Settings,
    store: DynStore,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<app::App, StartError> {
    if let Some(host) = settings.cleartext_api_host() {
        tracing::warn!(
            host = %host,
            "revdesk.base_url is plain http:// to a host that is not loopback: the API key \
             crosses the network in clear text unless something on the way adds TLS"
        );
    }
    let engine = crate::compliance::Engine::new(&settings.compliance)
        .map_err(|e| StartError::Config("compliance", e.to_string()))?;
    let key = settings.revdesk.api_key.clone().ok_or_else(|| {
        StartError::Config(
            "revdesk.api_key",
            "is required to dial (or REVDESK_API_KEY, or revdesk.api_key_file)".into(),
        )
    })?;
    if settings.webhook.secret.is_none() {
        return Err(StartError::Config(
            "webhook.secret",
            "is required to verify RevDesk webhooks (or webhook.secret_file)".into(),
        ));
    }
    let client = crate::revdesk::client::Client::new(
        &settings.revdesk.base_url,
        &key,
        settings.revdesk.connect_timeout.get(),
        settings.revdesk.timeout.get(),
        settings.worker.max_in_flight as usize,
        settings.revdesk.http2,
    )
    .map_err(|e| StartError::Config("revdesk", e.to_string()))?;
    app::App::new(store, settings, engine, client, clock, cancel)
        .map_err(|e| StartError::Config("rate", e.to_string()))
}

/// Runs a built worker: the HTTP side on `listener`, heartbeats and recovery, and
/// the claim loop, until `app.cancel` fires (or, with `until_idle`, until nothing is
/// due or in flight). Stops cleanly: in-flight jobs finish or are released.
pub async fn serve(
    app: Arc<app::App>,
    listener: TcpListener,
    until_idle: bool,
) -> anyhow::Result<()> {
    app.check_single_sqlite_worker().await?;
    app.store
        .register_worker(&app.worker_id, &app.worker_id, app.now().timestamp_millis())
        .await?;
    let http_cancel = CancellationToken::new();
    let router = crate::http::router(app.clone());
    let http = tokio::spawn({
        let c = http_cancel.clone();
        let keep_alive = app.settings.http.keep_alive_connections as usize;
        let header_timeout = crate::http::HEADER_READ_TIMEOUT;
        async move { crate::http::serve(listener, router, keep_alive, header_timeout, c).await }
    });
    let maint = tokio::spawn({
        let app = app.clone();
        async move { app.maintenance_loop().await }
    });
    let reconcile = tokio::spawn({
        let app = app.clone();
        async move { app.reconcile_loop().await }
    });
    tracing::info!(worker_id = %app.worker_id, backend = app.store.backend().as_str(), "worker started");
    let result = app.claim_loop(until_idle).await;
    app.cancel.cancel();
    // The rest of the stop is bounded too: a database that does not answer or a
    // webhook connection that stays open must not keep the process alive past
    // the grace period (Kubernetes would SIGKILL it anyway).
    let tail = async {
        let _ = maint.await;
        let _ = reconcile.await;
        app.store.deregister_worker(&app.worker_id).await.ok();
        http_cancel.cancel();
        let _ = http.await;
    };
    if tokio::time::timeout(app.settings.worker.shutdown_grace.get(), tail)
        .await
        .is_err()
    {
        tracing::warn!("shutdown tail exceeded worker.shutdown_grace; exiting anyway");
    }
    tracing::info!(worker_id = %app.worker_id, "worker stopped");
    result
}

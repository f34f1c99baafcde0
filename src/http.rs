//! The HTTP side of `dialer run` (SPEC section 9): signed webhooks, metrics, probes.

use crate::metrics as m;
use crate::revdesk::signature;
use crate::revdesk::wire::{PHONE_CALL_ENDED, WebhookEvent};
use crate::store::InboxEvent;
use crate::worker::app::App;
use crate::worker::outcomes::WebhookResult;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/webhooks/revdesk", post(webhook))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(app)
}

fn count(kind: &str, result: &'static str) {
    // The type label is bounded: the known type or "other".
    let kind = if kind == PHONE_CALL_ENDED {
        PHONE_CALL_ENDED
    } else {
        "other"
    };
    metrics::counter!(m::WEBHOOK_EVENTS, "type" => kind, "result" => result).increment(1);
}

/// `POST /webhooks/revdesk`: 401 for a bad signature, 400 for a body that is not an
/// event (both change nothing), 2xx once the event is stored (a repeated id is
/// acknowledged and not applied again), 500 when the database fails (RevDesk retries).
async fn webhook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let Some(secret) = app.settings.webhook.secret.as_ref() else {
        tracing::error!("webhook received but webhook.secret is not configured: rejecting");
        count("unknown", "rejected_no_secret");
        return (StatusCode::UNAUTHORIZED, "webhook secret not configured\n");
    };
    let header = headers
        .get("revdesk-signature")
        .and_then(|v| v.to_str().ok());
    let now = app.now().timestamp();
    if let Err(e) = signature::verify(
        secret.expose_secret().as_bytes(),
        header,
        &body,
        now,
        app.settings.webhook.tolerance.get(),
    ) {
        tracing::warn!(error = %e, "webhook rejected: signature");
        count("unknown", "rejected_signature");
        return (StatusCode::UNAUTHORIZED, "invalid signature\n");
    }
    let event: WebhookEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "webhook rejected: not a valid event");
            count("unknown", "rejected_body");
            return (StatusCode::BAD_REQUEST, "not a valid event\n");
        }
    };
    if event.id.trim().is_empty() || event.data.id.trim().is_empty() {
        count(&event.kind, "rejected_body");
        return (
            StatusCode::BAD_REQUEST,
            "event id and data.id are required\n",
        );
    }
    if event.kind != PHONE_CALL_ENDED {
        count(&event.kind, "ignored");
        return (StatusCode::OK, "ignored\n");
    }
    let stored = InboxEvent {
        event_id: event.id.clone(),
        call_id: event.data.id.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    // Stored (group-committed with other deliveries), then applied; answered once
    // the event is durable, so an acknowledged event is never lost.
    match app.receive_webhook(stored, event.data).await {
        Ok(WebhookResult::Duplicate) => {
            count(&event.kind, "duplicate");
            (StatusCode::OK, "duplicate\n")
        }
        Ok(WebhookResult::Stored(result)) => {
            count(&event.kind, result);
            (StatusCode::OK, "ok\n")
        }
        Ok(WebhookResult::StoredNotApplied) => {
            // Stored: applied by the inbox sweeper or when its 202 is recorded.
            count(&event.kind, "error");
            (StatusCode::OK, "stored\n")
        }
        Err(e) => {
            tracing::error!(error = %e, "webhook: cannot store the event");
            count(&event.kind, "error");
            (StatusCode::INTERNAL_SERVER_ERROR, "storage error\n")
        }
    }
}

async fn metrics_text() -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], m::render())
}

/// Ready when the database answers; a halt of dialing does not make the pod unready
/// (the webhook Service must keep its endpoints).
async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
    }
}

//! Delivery of signed `phone_call.ended` webhooks: after the call's outcome delay,
//! with retries on non-2xx (doubling backoff), optional duplicates and jitter that
//! reorders events.

use super::scenario::WebhookDelivery;
use crate::clock::Clock;
use crate::revdesk::signature;
use crate::revdesk::wire::WebhookEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One delivery attempt, as `GET /_sim/webhooks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub call_id: String,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// HTTP status of the receiver's answer; none when the request failed.
    pub status: Option<u16>,
    pub duplicate: bool,
}

pub(crate) struct Sender {
    http: reqwest::Client,
    /// Parsed once: a `&str` would be parsed again (host through IDNA) per delivery.
    url: reqwest::Url,
    secret: Vec<u8>,
    cfg: WebhookDelivery,
    clock: Clock,
    cancel: CancellationToken,
    pub(crate) log: Mutex<Vec<DeliveryRecord>>,
}

impl Sender {
    pub(crate) fn new(
        url: String,
        secret: &str,
        cfg: WebhookDelivery,
        clock: Clock,
        cancel: CancellationToken,
    ) -> anyhow::Result<Sender> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .retry(reqwest::retry::never())
            .build()?;
        let url = reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!("webhook_url {url:?} is not a URL: {e}"))?;
        Ok(Sender {
            http,
            url,
            secret: secret.as_bytes().to_vec(),
            cfg,
            clock,
            cancel,
            log: Mutex::new(Vec::new()),
        })
    }

    /// Delivers `event` (retrying), then once more when `duplicate`.
    /// Returns early, undelivered, when the simulator shuts down.
    pub(crate) async fn deliver(&self, event: WebhookEvent, jitter: Duration, duplicate: bool) {
        if !self.sleep(jitter).await {
            return;
        }
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a webhook event");
                return;
            }
        };
        let delivered = self.deliver_with_retries(&event, &body, false).await;
        if delivered && duplicate {
            self.deliver_with_retries(&event, &body, true).await;
        }
    }

    async fn deliver_with_retries(
        &self,
        event: &WebhookEvent,
        body: &[u8],
        duplicate: bool,
    ) -> bool {
        let mut backoff = self.cfg.backoff;
        for attempt in 0..=self.cfg.retries {
            if attempt > 0 {
                if !self.sleep(backoff).await {
                    return false;
                }
                backoff = backoff.saturating_mul(2);
            }
            let header = signature::sign(&self.secret, self.clock.now().timestamp(), body);
            let sent = self
                .http
                .post(self.url.clone())
                .header("content-type", "application/json")
                .header(signature::HEADER, header)
                .body(body.to_vec())
                .send()
                .await;
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            if let Ok(mut log) = self.log.lock() {
                log.push(DeliveryRecord {
                    event_id: event.id.clone(),
                    call_id: event.data.id.clone(),
                    attempt,
                    at: self.clock.now(),
                    status,
                    duplicate,
                });
            }
            if status.is_some_and(|s| (200..300).contains(&s)) {
                return true;
            }
        }
        tracing::warn!(event_id = %event.id, "webhook not delivered after every retry");
        false
    }

    /// Sleeps unless the simulator shuts down first (then false).
    async fn sleep(&self, d: Duration) -> bool {
        if d.is_zero() {
            return !self.cancel.is_cancelled();
        }
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.cancel.cancelled() => false,
        }
    }
}

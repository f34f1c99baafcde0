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
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest webhook body taken (413 past it, before the signature is checked).
/// An event is one call resource, about half a kilobyte (`revdesk-api-errors.md`);
/// axum's default of 2 MiB per request let each open connection hold that much
/// before anything was verified.
pub const WEBHOOK_BODY_LIMIT: usize = 64 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/webhooks/revdesk",
            post(webhook).layer(axum::extract::DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(app)
}

/// How long a connection may take to send a request's headers, counted from when
/// the server starts waiting for them, so it also bounds how long a kept-alive
/// connection may sit idle between requests. The listener faces RevDesk (through an
/// ingress): without it a client that opens connections and never finishes a
/// request (slowloris) holds each one, and its buffers, for good. 30 s is hyper's
/// own default, which hyper applies only when the server is given a timer.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` fires, then lets open requests finish
/// (each connection closes after its current response) and returns once every
/// connection has closed.
///
/// HTTP/1 keep-alive is decided per connection: while `keep_alive` connections are
/// open, a newly accepted one is served and closed after its response. A burst of
/// webhook deliveries (RevDesk sends each outcome on its own request, all at once)
/// then leaves at most `keep_alive` idle connections behind instead of hundreds,
/// each holding buffers. The bound must not be too low either: past it, the sender
/// opens a new connection for each delivery: at 64 that churn cost about 7 % of the
/// dial rate (docs/benchmarks.md, Load, session 8), at 256 4-6 % and a fifth of the
/// sender's CPU (session 12; the default is now 1,024). Every connection is still
/// accepted and answered, so no delivery waits on another's idle connection.
///
/// A connection that has not sent a request's headers within `header_timeout` of
/// the server waiting for them is closed ([`HEADER_READ_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    keep_alive: usize,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    /// Counts a connection as open until it is dropped.
    struct Open(Arc<AtomicUsize>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    let open = Arc::new(AtomicUsize::new(0));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let keep = open.fetch_add(1, Ordering::Relaxed) < keep_alive;
        let guard = Open(open.clone());
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let conn = http1::Builder::new()
                .keep_alive(keep)
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http: connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(guard);
        });
    }
    connections.close();
    connections.wait().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends one `GET /` on `conn` and returns the response head, lowercased.
    async fn request(conn: &mut TcpStream) -> String {
        conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        // The body is "ok": the response ends with it.
        while !buf.ends_with(b"\r\n\r\nok") {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response ended");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(buf).unwrap().to_lowercase()
    }

    /// True when the server has closed `conn` (EOF on the next read).
    async fn closed(conn: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(conn.read(&mut byte).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn connections_past_the_keep_alive_bound_are_answered_then_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(serve(
            listener,
            router,
            1,
            HEADER_READ_TIMEOUT,
            stop.clone(),
        ));

        // The first connection is kept alive: two requests on it.
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert!(!request(&mut first).await.contains("connection: close"));
        assert!(!request(&mut first).await.contains("connection: close"));

        // While it is open, another one is answered, told so, and closed.
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(request(&mut second).await.contains("connection: close"));
        assert!(closed(&mut second).await);

        // Once the first has gone, a new connection is kept alive again.
        drop(first);
        let mut third = None;
        for _ in 0..1_000 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if !request(&mut c).await.contains("connection: close") {
                third = Some(c);
                break;
            }
            // The server has not yet seen the first connection's close.
            tokio::task::yield_now().await;
        }
        let mut third = third.expect("a connection kept alive once the first closed");
        assert!(!request(&mut third).await.contains("connection: close"));

        // Stopping closes the open connection and returns.
        stop.cancel();
        assert!(closed(&mut third).await);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_headers_or_sits_idle_is_closed() {
        use std::time::{Duration, Instant};
        const TIMEOUT: Duration = Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(serve(listener, router, 8, TIMEOUT, stop.clone()));

        // Half a request head, then nothing (slowloris): closed after the timeout,
        // not before, and not left open (bounded wait: 10 s).
        let start = Instant::now();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: te").await.unwrap();
        let eof = tokio::time::timeout(Duration::from_secs(10), closed(&mut slow)).await;
        assert_eq!(
            eof,
            Ok(true),
            "the half-sent request's connection is closed"
        );
        assert!(
            start.elapsed() >= TIMEOUT,
            "closed after {:?}",
            start.elapsed()
        );

        // A kept-alive connection is answered, then closed once idle that long.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(!request(&mut idle).await.contains("connection: close"));
        let answered = Instant::now();
        let eof = tokio::time::timeout(Duration::from_secs(10), closed(&mut idle)).await;
        assert_eq!(eof, Ok(true), "the idle connection is closed");
        assert!(
            answered.elapsed() >= TIMEOUT,
            "closed after {:?}",
            answered.elapsed()
        );

        // A request sent in time on a fresh connection is served as before.
        let mut fine = TcpStream::connect(addr).await.unwrap();
        assert!(request(&mut fine).await.ends_with("ok"));

        stop.cancel();
        server.await.unwrap();
    }
}

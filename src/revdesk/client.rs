//! The RevDesk HTTP client: `POST /v1/calls/dial` and `GET /v1/calls/{id}`.
//!
//! It only classifies answers into [`DialResult`] / [`CallLookupError`]; what to do
//! with them is `crate::decision`'s job. It never retries on its own (reqwest's
//! retry policy is switched off): every resend is a decision, made with the same
//! idempotency key and the same stored body bytes (SPEC.md section 7).
//!
//! The API key lives only in a sensitive header value built once; it is in no
//! `Debug` output, log line or error message.

use super::wire::{ApiError, CallResource, DialResult, Envelope};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// The longest body excerpt kept from a response that is not the envelope.
pub const EXCERPT_CHARS: usize = 200;
/// Bodies are read up to this many bytes; the rest of a huge proxy page is ignored.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Errors building the client (bad configuration, reported at start).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("revdesk.base_url `{0}` is not an http(s) URL")]
    BaseUrl(String),
    #[error("revdesk.api_key is empty or not a valid header value")]
    ApiKey,
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

/// Why `GET /v1/calls/{id}` gave no call resource.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallLookupError {
    /// 404 `not_found`: the vendor does not know (or no longer knows) this call.
    #[error("the vendor does not know this call")]
    NotFound,
    #[error("the vendor answered {status} {}", error.code)]
    Api { status: u16, error: ApiError },
    #[error("the vendor answered {status} with a body that is not the API's: {body_excerpt}")]
    NotEnvelope { status: u16, body_excerpt: String },
    #[error("no answer within the timeout")]
    Timeout,
    #[error("connection error: {detail}")]
    Connection { detail: String },
}

/// A RevDesk API client with a warm keep-alive connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    dial_url: reqwest::Url,
    calls_url: String,
    /// `Bearer KEY`, marked sensitive so `http`'s own Debug hides it too.
    auth: HeaderValue,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("dial_url", &self.dial_url.as_str())
            .field("api_key", &"[redacted]")
            .finish()
    }
}

impl Client {
    /// `base_url` like `https://api.revdesk.com` (a trailing `/` is fine);
    /// `connect_timeout` bounds the TCP/TLS handshake, `timeout` the whole request
    /// including the body; `pool_size` idle connections are kept per host. `http2`:
    /// one multiplexed HTTP/2 connection, negotiated over TLS (HTTP/1.1 if the server
    /// has no h2), assumed without TLS (`http://`); else HTTP/1.1 only.
    pub fn new(
        base_url: &str,
        api_key: &SecretString,
        connect_timeout: Duration,
        timeout: Duration,
        pool_size: usize,
        http2: bool,
    ) -> Result<Client, ClientError> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BaseUrl(base_url.to_owned()));
        }
        let key = api_key.expose_secret();
        if key.trim().is_empty() {
            return Err(ClientError::ApiKey);
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| ClientError::ApiKey)?;
        auth.set_sensitive(true);
        let mut defaults = HeaderMap::new();
        defaults.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .pool_max_idle_per_host(pool_size)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30));
        let builder = match (http2, base.starts_with("https://")) {
            (false, _) => builder.http1_only(),
            // TLS offers both in ALPN and the server picks: HTTP/1.1 if it has no h2.
            (true, true) => builder,
            // No TLS, no negotiation: the endpoint must speak HTTP/2 (h2c).
            (true, false) => builder.http2_prior_knowledge(),
        };
        let http = builder
            // Never follow a redirect: reqwest's default follows up to 10, which
            // would send a dial again to wherever `Location` points (307/308: the
            // same body and Idempotency-Key, perhaps to another host) or turn it
            // into a GET (301-303) whose answer would be read as the dial's. The 3xx
            // itself is decided as a response that is not the envelope (SPEC section
            // 8: the worker's dialing halts; the attempt may be placed, so its key is
            // kept and it counts).
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .default_headers(defaults)
            .user_agent(concat!("revdesk-dialer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.without_url().to_string()))?;
        // Parsed once: a `&str` would be parsed again (host through IDNA) on every dial.
        let dial_url = reqwest::Url::parse(&format!("{base}/v1/calls/dial"))
            .map_err(|_| ClientError::BaseUrl(base_url.to_owned()))?;
        Ok(Client {
            http,
            dial_url,
            calls_url: format!("{base}/v1/calls/"),
            auth,
        })
    }

    /// `POST /v1/calls/dial` with exactly `body` (the stored, serialized request) and
    /// `Idempotency-Key: idempotency_key`. Never fails: every outcome is a [`DialResult`].
    pub async fn dial(&self, idempotency_key: &str, body: &[u8]) -> DialResult {
        let key = match HeaderValue::from_str(idempotency_key) {
            Ok(key) => key,
            // Our own keys are ASCII; one that is not is a bug, and nothing was sent.
            Err(_) => {
                return DialResult::Connection {
                    detail: "idempotency key is not a valid header value; request not sent"
                        .to_owned(),
                };
            }
        };
        let sent = self
            .http
            .post(self.dial_url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header("Idempotency-Key", key)
            .body(body.to_vec())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return transport_failure(e),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), Utc::now());
        let bytes = match read_bounded(response).await {
            Ok(bytes) => bytes,
            Err(e) => return transport_failure(e),
        };
        classify_dial(status, retry_after, &bytes)
    }

    /// `GET /v1/calls/{id}`: the call resource, bare or inside `{"data": ...}`.
    pub async fn get_call(&self, call_id: &str) -> Result<CallResource, CallLookupError> {
        let url = format!("{}{}", self.calls_url, encode_path_segment(call_id));
        let response = self
            .http
            .get(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(lookup_failure)?;
        let status = response.status();
        let bytes = read_bounded(response).await.map_err(lookup_failure)?;
        if status.is_success() {
            return parse_call(&bytes).ok_or_else(|| CallLookupError::NotEnvelope {
                status: status.as_u16(),
                body_excerpt: excerpt(&bytes),
            });
        }
        match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(envelope)
                if status == StatusCode::NOT_FOUND || envelope.error.code == "not_found" =>
            {
                Err(CallLookupError::NotFound)
            }
            Ok(envelope) => Err(CallLookupError::Api {
                status: status.as_u16(),
                error: envelope.error,
            }),
            Err(_) => Err(CallLookupError::NotEnvelope {
                status: status.as_u16(),
                body_excerpt: excerpt(&bytes),
            }),
        }
    }
}

/// Turns a status, the parsed `Retry-After` and the body into a [`DialResult`].
/// Public so the classification can be tested without a server.
pub fn classify_dial(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> DialResult {
    if status.is_success() {
        return match call_id_of(body) {
            Some(call_id) => DialResult::Accepted { call_id },
            None => DialResult::NotEnvelope {
                status: status.as_u16(),
                body_excerpt: excerpt(body),
            },
        };
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => DialResult::Api {
            status: status.as_u16(),
            error: envelope.error,
            retry_after,
        },
        Err(_) => DialResult::NotEnvelope {
            status: status.as_u16(),
            body_excerpt: excerpt(body),
        },
    }
}

/// The call id of a 2xx dial answer: `data.id`, `data.call_id` or `call_id` (the
/// vendor documents only "returns the call_id").
fn call_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let data = value.get("data");
    [
        data.and_then(|d| d.get("id")),
        data.and_then(|d| d.get("call_id")),
        value.get("call_id"),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn parse_call(body: &[u8]) -> Option<CallResource> {
    #[derive(serde::Deserialize)]
    struct Wrapped {
        data: CallResource,
    }
    serde_json::from_slice::<Wrapped>(body)
        .map(|w| w.data)
        .or_else(|_| serde_json::from_slice::<CallResource>(body))
        .ok()
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 section 10.2.3), as a
/// delay from `now`. A date in the past is a zero delay; garbage is ignored.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is an RFC 2822 date.
    let at = DateTime::parse_from_rfc2822(raw).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Up to [`EXCERPT_CHARS`] characters of a body, for logs and `NotEnvelope`.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(out)
}

fn transport_failure(e: reqwest::Error) -> DialResult {
    if e.is_timeout() {
        DialResult::Timeout
    } else {
        DialResult::Connection {
            detail: describe(e),
        }
    }
}

fn lookup_failure(e: reqwest::Error) -> CallLookupError {
    if e.is_timeout() {
        CallLookupError::Timeout
    } else {
        CallLookupError::Connection {
            detail: describe(e),
        }
    }
}

/// The error and its causes on one line, without the URL (no query strings or ids).
fn describe(e: reqwest::Error) -> String {
    let phase = if e.is_connect() { "connect" } else { "request" };
    let e = e.without_url();
    let mut detail = format!("{phase}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

/// Call ids are opaque: percent-encode anything outside the unreserved set.
fn encode_path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> DialResult {
        classify_dial(StatusCode::ACCEPTED, None, body.as_bytes())
    }

    #[test]
    fn the_call_id_is_read_from_data_id_then_data_call_id_then_call_id() {
        let accepted = |id: &str| DialResult::Accepted {
            call_id: id.to_owned(),
        };
        assert_eq!(
            ok(r#"{"data":{"id":"a","call_id":"b"},"call_id":"c"}"#),
            accepted("a")
        );
        assert_eq!(
            ok(r#"{"data":{"call_id":"b"},"call_id":"c"}"#),
            accepted("b")
        );
        assert_eq!(ok(r#"{"call_id":"c"}"#), accepted("c"));
    }

    #[test]
    fn a_2xx_without_a_call_id_breaks_the_contract() {
        for body in [r#"{"data":{}}"#, "", "<html>ok</html>", r#"{"call_id":""}"#] {
            assert!(
                matches!(ok(body), DialResult::NotEnvelope { status: 202, .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn an_error_envelope_keeps_code_category_fields_and_retry_after() {
        let body =
            r#"{"error":{"code":"rate_limited","category":"account_limit","message":"slow"}}"#;
        let got = classify_dial(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            body.as_bytes(),
        );
        let DialResult::Api {
            status,
            error,
            retry_after,
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!(
            (status, error.code.as_str(), error.category.as_deref()),
            (429, "rate_limited", Some("account_limit"))
        );
        assert_eq!(retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn html_empty_and_truncated_bodies_are_not_the_envelope() {
        let html = format!("<html>{}</html>", "x".repeat(1000));
        for body in [html.as_str(), "", r#"{"error":{"code":"internal_er"#] {
            let got = classify_dial(StatusCode::BAD_GATEWAY, None, body.as_bytes());
            let DialResult::NotEnvelope {
                status,
                body_excerpt,
            } = got
            else {
                panic!("{got:?}")
            };
            assert_eq!(status, 502);
            assert!(body_excerpt.chars().count() <= EXCERPT_CHARS + 1);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now =
            DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").map(|d| d.with_timezone(&Utc));
        let now = now.expect("valid date");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("ascii"));
            retry_after(&h, now)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            with("Wed, 25 Nov 2026 12:01:30 GMT"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(with("Wed, 25 Nov 2026 11:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let key = SecretString::from("sk_live_supersecret");
        let client = Client::new(
            "http://127.0.0.1:1",
            &key,
            Duration::from_secs(1),
            Duration::from_secs(1),
            4,
            false,
        )
        .expect("valid config");
        let debug = format!("{client:?} {:?}", client.auth);
        assert!(!debug.contains("supersecret"), "{debug}");
    }

    #[test]
    fn an_empty_key_or_a_non_http_base_url_is_refused_at_construction() {
        let d = Duration::from_secs(1);
        assert!(matches!(
            Client::new("http://x", &SecretString::from(" "), d, d, 1, false),
            Err(ClientError::ApiKey)
        ));
        assert!(matches!(
            Client::new("ftp://x", &SecretString::from("k"), d, d, 1, false),
            Err(ClientError::BaseUrl(_))
        ));
    }

    #[test]
    fn call_ids_are_percent_encoded_in_the_path() {
        assert_eq!(encode_path_segment("call_a1-b.c~"), "call_a1-b.c~");
        assert_eq!(encode_path_segment("../x y"), "..%2Fx%20y");
    }
}

//! Wire types of the RevDesk API and the classified result of one dial request.
//!
//! The client (`revdesk::client`) produces a [`DialResult`]; the decision table
//! (`crate::decision`) consumes it. Neither branches on `message` text.

use super::codes::{Category, Code};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `{"error": {...}}`, the body of every failed request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub error: ApiError,
}

/// The error object. `code` and `category` are kept as strings so that unknown
/// values survive; [`ApiError::known_code`] and [`ApiError::known_category`] parse them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_url: Option<String>,
    /// Maps a request field to a per-field explanation (`validation_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn known_code(&self) -> Option<Code> {
        Code::parse(&self.code)
    }

    pub fn known_category(&self) -> Option<Category> {
        self.category.as_deref().and_then(Category::parse)
    }

    /// True when `fields` names `field`.
    pub fn names_field(&self, field: &str) -> bool {
        self.fields.as_ref().is_some_and(|f| f.contains_key(field))
    }
}

/// The body of `POST /v1/calls/dial`. Stored before sending and re-sent byte for
/// byte on every retry of the same attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialRequest {
    pub from_number: String,
    pub to_number: String,
}

/// The classified answer to one dial request.
#[derive(Debug, Clone, PartialEq)]
pub enum DialResult {
    /// 202: the call was placed.
    Accepted { call_id: String },
    /// A non-2xx answer with the vendor's error envelope.
    Api {
        status: u16,
        error: ApiError,
        /// `Retry-After` as sent (seconds or an HTTP date), already converted to a
        /// delay from now; unclamped.
        retry_after: Option<Duration>,
    },
    /// A non-2xx answer whose body is not the envelope (HTML from a proxy, empty,
    /// truncated JSON), or a 2xx that breaks the contract (no call id).
    NotEnvelope { status: u16, body_excerpt: String },
    /// No complete answer within `revdesk.timeout`: the vendor may have placed the call.
    Timeout,
    /// The connection failed or dropped: the vendor may have placed the call
    /// (unless the failure happened before the request was sent).
    Connection { detail: String },
}

impl DialResult {
    /// True when the vendor may have placed the call without us knowing.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            DialResult::Accepted { .. } => false,
            DialResult::Api { status, .. } | DialResult::NotEnvelope { status, .. } => {
                *status >= 500
            }
            DialResult::Timeout | DialResult::Connection { .. } => true,
        }
    }

    /// The code label for metrics: the wire code, or a fixed word.
    pub fn code_label(&self) -> &str {
        match self {
            DialResult::Accepted { .. } => "accepted",
            DialResult::Api { error, .. } => {
                if error.known_code().is_some() {
                    &error.code
                } else {
                    "unknown"
                }
            }
            DialResult::NotEnvelope { .. } => "not_envelope",
            DialResult::Timeout => "timeout",
            DialResult::Connection { .. } => "connection_error",
        }
    }
}

/// The call resource (`GET /v1/calls/{id}` and the webhook's `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResource {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnection_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_number: Option<String>,
}

/// States of a call that has not ended yet.
pub const IN_PROGRESS_STATUSES: &[&str] = &["queued", "ringing", "in_progress", "initiated"];

impl CallResource {
    /// True when the resource describes an ended call (a final outcome).
    pub fn is_final(&self) -> bool {
        match self.status.as_deref() {
            Some(s) => !IN_PROGRESS_STATUSES.contains(&s),
            None => self.failure_code.is_some() || self.call_outcome.is_some(),
        }
    }
}

/// A `phone_call.ended` webhook event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    pub data: CallResource,
}

pub const PHONE_CALL_ENDED: &str = "phone_call.ended";

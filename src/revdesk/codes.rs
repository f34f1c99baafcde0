//! Every error code of RevDesk's reference (`shared/revdesk-api-errors.md`) as data.
//!
//! One row per code with its category, HTTP status, retryable flag and the phase in
//! which it arrives. The dialer's decisions (`crate::decision`) branch on [`Code`];
//! unknown codes are kept as strings and fall back to their category, then to the
//! HTTP status.

use serde::{Deserialize, Serialize};

/// The vendor's generalized error bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    InvalidRequest,
    ComplianceBlocked,
    AccountLimit,
    Unreachable,
    Voicemail,
    ProviderError,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::InvalidRequest,
        Category::ComplianceBlocked,
        Category::AccountLimit,
        Category::Unreachable,
        Category::Voicemail,
        Category::ProviderError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidRequest => "invalid_request",
            Category::ComplianceBlocked => "compliance_blocked",
            Category::AccountLimit => "account_limit",
            Category::Unreachable => "unreachable",
            Category::Voicemail => "voicemail",
            Category::ProviderError => "provider_error",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// When a code arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Synchronously, on `POST /v1/calls/dial`.
    Sync,
    /// On the call resource and the `phone_call.ended` webhook.
    Async,
    /// The generic HTTP and authentication errors of every endpoint (no category).
    Http,
}

/// Every code the vendor documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // synchronous
    DestinationMissing,
    DestinationInvalid,
    NoActiveNumber,
    CallerIdNotVerified,
    DestinationBlocked,
    DncSuppressed,
    RecipientOptedOut,
    NoConsent,
    OutsideCallingWindow,
    CallingDayNotAllowed,
    FrequencyCapExceeded,
    VoiceUsageExhausted,
    NoActiveSubscription,
    NoNumberAvailable,
    RateLimited,
    RoomCreationFailed,
    AgentDispatchFailed,
    SipGatewayFailed,
    ProviderApiError,
    InternalError,
    // asynchronous
    Busy,
    NoAnswer,
    NumberUnreachable,
    CallDeclined,
    CarrierRejected,
    VoicemailReached,
    // generic HTTP
    ValidationError,
    Unauthorized,
    Forbidden,
    NotFound,
    IdempotencyConflict,
}

/// One row of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    pub code: Code,
    pub name: &'static str,
    /// `None` for the generic HTTP errors, which come without a category.
    pub category: Option<Category>,
    pub http_status: Option<u16>,
    pub retryable: bool,
    pub phase: Phase,
}

const fn row(
    code: Code,
    name: &'static str,
    category: Option<Category>,
    http_status: Option<u16>,
    retryable: bool,
    phase: Phase,
) -> CodeInfo {
    CodeInfo {
        code,
        name,
        category,
        http_status,
        retryable,
        phase,
    }
}

use Category as C;
use Phase::{Async, Http, Sync};

/// The reference, row for row and in its order. `rate_limited` and `internal_error`
/// appear twice: as call errors (with a category) and as generic HTTP errors
/// (without one); the decision is the same either way.
pub const REFERENCE: &[CodeInfo] = &[
    row(
        Code::DestinationMissing,
        "destination_missing",
        Some(C::InvalidRequest),
        Some(400),
        false,
        Sync,
    ),
    row(
        Code::DestinationInvalid,
        "destination_invalid",
        Some(C::InvalidRequest),
        Some(400),
        false,
        Sync,
    ),
    row(
        Code::NoActiveNumber,
        "no_active_number",
        Some(C::InvalidRequest),
        Some(409),
        false,
        Sync,
    ),
    row(
        Code::CallerIdNotVerified,
        "caller_id_not_verified",
        Some(C::InvalidRequest),
        Some(422),
        false,
        Sync,
    ),
    row(
        Code::DestinationBlocked,
        "destination_blocked",
        Some(C::ComplianceBlocked),
        Some(403),
        false,
        Sync,
    ),
    row(
        Code::DncSuppressed,
        "dnc_suppressed",
        Some(C::ComplianceBlocked),
        Some(403),
        false,
        Sync,
    ),
    row(
        Code::RecipientOptedOut,
        "recipient_opted_out",
        Some(C::ComplianceBlocked),
        Some(403),
        false,
        Sync,
    ),
    row(
        Code::NoConsent,
        "no_consent",
        Some(C::ComplianceBlocked),
        Some(403),
        false,
        Sync,
    ),
    row(
        Code::OutsideCallingWindow,
        "outside_calling_window",
        Some(C::ComplianceBlocked),
        Some(403),
        true,
        Sync,
    ),
    row(
        Code::CallingDayNotAllowed,
        "calling_day_not_allowed",
        Some(C::ComplianceBlocked),
        Some(403),
        true,
        Sync,
    ),
    row(
        Code::FrequencyCapExceeded,
        "frequency_cap_exceeded",
        Some(C::ComplianceBlocked),
        Some(429),
        true,
        Sync,
    ),
    row(
        Code::VoiceUsageExhausted,
        "voice_usage_exhausted",
        Some(C::AccountLimit),
        Some(402),
        false,
        Sync,
    ),
    row(
        Code::NoActiveSubscription,
        "no_active_subscription",
        Some(C::AccountLimit),
        Some(402),
        false,
        Sync,
    ),
    row(
        Code::NoNumberAvailable,
        "no_number_available",
        Some(C::AccountLimit),
        Some(429),
        true,
        Sync,
    ),
    row(
        Code::RateLimited,
        "rate_limited",
        Some(C::AccountLimit),
        Some(429),
        true,
        Sync,
    ),
    row(
        Code::RoomCreationFailed,
        "room_creation_failed",
        Some(C::ProviderError),
        Some(502),
        true,
        Sync,
    ),
    row(
        Code::AgentDispatchFailed,
        "agent_dispatch_failed",
        Some(C::ProviderError),
        Some(502),
        true,
        Sync,
    ),
    row(
        Code::SipGatewayFailed,
        "sip_gateway_failed",
        Some(C::ProviderError),
        Some(502),
        true,
        Sync,
    ),
    row(
        Code::ProviderApiError,
        "provider_api_error",
        Some(C::ProviderError),
        Some(502),
        true,
        Sync,
    ),
    row(
        Code::InternalError,
        "internal_error",
        Some(C::ProviderError),
        Some(500),
        true,
        Sync,
    ),
    row(Code::Busy, "busy", Some(C::Unreachable), None, true, Async),
    row(
        Code::NoAnswer,
        "no_answer",
        Some(C::Unreachable),
        None,
        true,
        Async,
    ),
    row(
        Code::NumberUnreachable,
        "number_unreachable",
        Some(C::Unreachable),
        None,
        false,
        Async,
    ),
    row(
        Code::CallDeclined,
        "call_declined",
        Some(C::Unreachable),
        None,
        false,
        Async,
    ),
    row(
        Code::CarrierRejected,
        "carrier_rejected",
        Some(C::Unreachable),
        None,
        false,
        Async,
    ),
    row(
        Code::VoicemailReached,
        "voicemail_reached",
        Some(C::Voicemail),
        None,
        true,
        Async,
    ),
    row(
        Code::ValidationError,
        "validation_error",
        None,
        Some(400),
        false,
        Http,
    ),
    row(
        Code::Unauthorized,
        "unauthorized",
        None,
        Some(401),
        false,
        Http,
    ),
    row(Code::Forbidden, "forbidden", None, Some(403), false, Http),
    row(Code::NotFound, "not_found", None, Some(404), false, Http),
    row(
        Code::IdempotencyConflict,
        "idempotency_conflict",
        None,
        Some(409),
        false,
        Http,
    ),
    row(
        Code::RateLimited,
        "rate_limited",
        None,
        Some(429),
        true,
        Http,
    ),
    row(
        Code::InternalError,
        "internal_error",
        None,
        Some(500),
        true,
        Http,
    ),
];

impl Code {
    /// The code's primary row (the first in [`REFERENCE`]).
    pub fn info(self) -> &'static CodeInfo {
        REFERENCE
            .iter()
            .find(|r| r.code == self)
            .expect("every Code has a row in REFERENCE")
    }

    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// Parses a wire code; `None` for a code the reference does not list.
    pub fn parse(s: &str) -> Option<Code> {
        REFERENCE.iter().find(|r| r.name == s).map(|r| r.code)
    }

    pub fn category(self) -> Option<Category> {
        self.info().category
    }

    pub fn http_status(self) -> Option<u16> {
        self.info().http_status
    }

    pub fn retryable(self) -> bool {
        self.info().retryable
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks every table row of the vendor's reference page and checks it against
    /// [`REFERENCE`]: same codes, categories, statuses and retryable flags.
    #[test]
    fn table_matches_every_row_of_the_vendor_reference() {
        let doc = include_str!("../../docs/revdesk-api-errors.md");
        let mut section = None;
        let mut seen = Vec::new();
        for line in doc.lines() {
            if line.starts_with("## Synchronous codes") {
                section = Some(Sync);
            } else if line.starts_with("## Asynchronous codes") {
                section = Some(Async);
            } else if line.starts_with("## HTTP and authentication") {
                section = Some(Http);
            } else if line.starts_with("## ") {
                section = None;
            }
            let Some(phase) = section else { continue };
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            if !line.starts_with('|') || cells[0] == "code" || cells[0].starts_with("---") {
                continue;
            }
            let name = cells[0];
            let row = REFERENCE
                .iter()
                .find(|r| r.name == name && r.phase == phase)
                .unwrap_or_else(|| panic!("{name} ({phase:?}) missing from REFERENCE"));
            match phase {
                Sync => {
                    assert_eq!(row.category.map(Category::as_str), Some(cells[1]), "{name}");
                    assert_eq!(row.http_status, Some(cells[2].parse().unwrap()), "{name}");
                    assert_eq!(row.retryable, cells[3] == "yes", "{name}");
                }
                Async => {
                    assert_eq!(row.category.map(Category::as_str), Some(cells[1]), "{name}");
                    assert_eq!(row.retryable, cells[2] == "yes", "{name}");
                }
                Http => {
                    assert_eq!(row.category, None, "{name}");
                    assert_eq!(row.http_status, Some(cells[1].parse().unwrap()), "{name}");
                }
            }
            seen.push((name, phase));
        }
        assert_eq!(
            seen.len(),
            REFERENCE.len(),
            "the reference and the table differ in length"
        );
    }

    #[test]
    fn unknown_codes_do_not_parse() {
        assert_eq!(Code::parse("scope_missing"), None);
        assert_eq!(Code::parse("busy"), Some(Code::Busy));
        assert_eq!(Code::RateLimited.category(), Some(Category::AccountLimit));
    }
}

//! `RevDesk-Signature` webhook signatures: `t=UNIX,v1=HEX`, where HEX is
//! HMAC-SHA256(secret, "UNIX.BODY") (SPEC.md section 9).
//!
//! Pure: the caller passes the current time, so both the simulator (which signs)
//! and the webhook receiver (which verifies) share this code and tests need no clock.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// The header that carries the signature.
pub const HEADER: &str = "RevDesk-Signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Every variant means "answer 401, change nothing".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the RevDesk-Signature header is missing")]
    Missing,
    #[error("the RevDesk-Signature header is malformed: {0}")]
    Malformed(&'static str),
    /// Positive skew: the timestamp is in the past (stale, perhaps replayed);
    /// negative: it is in the future.
    #[error("the signature timestamp is {skew_secs}s away from now, outside the tolerance")]
    OutsideTolerance { skew_secs: i64 },
    #[error("no v1 signature matches the body")]
    Mismatch,
}

fn mac(secret: &[u8], unix_ts: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (longer ones are hashed): this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(unix_ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` signed at `unix_ts`: `t=UNIX,v1=HEX`.
pub fn sign(secret: &[u8], unix_ts: i64, body: &[u8]) -> String {
    let tag = mac(secret, unix_ts, body).finalize().into_bytes();
    format!("t={unix_ts},v1={}", hex::encode(tag))
}

/// Checks a `RevDesk-Signature` header against `body`.
///
/// Several `v1=` entries are accepted (the vendor sends one per active secret while
/// a secret is being rotated); one match is enough. Each comparison is constant time
/// (`verify_slice`). Unknown schemes (`v0=`, ...) are ignored.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.trim().is_empty() {
        return Err(SignatureError::Missing);
    }
    let mut timestamp: Option<i64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an entry is not key=value"))?;
        match key.trim() {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t= entry"));
                }
                let t = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("t= is not a unix timestamp"))?;
                timestamp = Some(t);
            }
            "v1" => {
                let raw = hex::decode(value.trim())
                    .map_err(|_| SignatureError::Malformed("v1= is not hexadecimal"))?;
                if raw.len() != 32 {
                    return Err(SignatureError::Malformed("v1= is not 32 bytes"));
                }
                candidates.push(raw);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t= entry"))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1= entry"));
    }
    let skew_secs = now_unix.saturating_sub(timestamp);
    let tolerance_secs = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if skew_secs.unsigned_abs() > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance { skew_secs });
    }
    let expected = mac(secret, timestamp, body);
    if candidates
        .iter()
        .any(|candidate| expected.clone().verify_slice(candidate).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"phone_call.ended"}"#;
    const NOW: i64 = 1_790_000_000;
    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn a_fresh_signature_over_the_same_body_is_accepted() {
        let header = sign(SECRET, NOW - 10, BODY);
        assert!(header.starts_with(&format!("t={},v1=", NOW - 10)));
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, FIVE_MIN), Ok(()));
    }

    #[test]
    fn the_signature_matches_an_independent_hmac_of_timestamp_dot_body() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_rejected() {
        let header = sign(b"other", NOW, BODY);
        assert_eq!(
            verify(SECRET, Some(&header), BODY, NOW, FIVE_MIN),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn an_altered_body_is_rejected() {
        let header = sign(SECRET, NOW, BODY);
        let altered = br#"{"id":"evt_2","type":"phone_call.ended"}"#;
        assert_eq!(
            verify(SECRET, Some(&header), altered, NOW, FIVE_MIN),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_rejected_even_with_a_valid_mac() {
        let header = sign(SECRET, NOW - 301, BODY);
        assert_eq!(
            verify(SECRET, Some(&header), BODY, NOW, FIVE_MIN),
            Err(SignatureError::OutsideTolerance { skew_secs: 301 })
        );
    }

    #[test]
    fn a_timestamp_from_the_future_beyond_tolerance_is_rejected() {
        let header = sign(SECRET, NOW + 301, BODY);
        assert_eq!(
            verify(SECRET, Some(&header), BODY, NOW, FIVE_MIN),
            Err(SignatureError::OutsideTolerance { skew_secs: -301 })
        );
    }

    #[test]
    fn a_timestamp_exactly_at_the_tolerance_edge_is_accepted() {
        let header = sign(SECRET, NOW - 300, BODY);
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, FIVE_MIN), Ok(()));
    }

    #[test]
    fn a_missing_or_blank_header_is_rejected_as_missing() {
        assert_eq!(
            verify(SECRET, None, BODY, NOW, FIVE_MIN),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("  "), BODY, NOW, FIVE_MIN),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn malformed_headers_are_rejected_as_malformed() {
        let good = sign(SECRET, NOW, BODY);
        let v1 = good
            .split_once(",v1=")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        for header in [
            "garbage".to_owned(),
            format!("v1={v1}"),
            format!("t={NOW}"),
            format!("t=yesterday,v1={v1}"),
            format!("t={NOW},v1=zz{}", &v1[2..]),
            format!("t={NOW},v1={}", &v1[..10]),
            format!("t={NOW},t={NOW},v1={v1}"),
        ] {
            assert!(
                matches!(
                    verify(SECRET, Some(&header), BODY, NOW, FIVE_MIN),
                    Err(SignatureError::Malformed(_))
                ),
                "{header} should be malformed"
            );
        }
    }

    #[test]
    fn any_of_several_v1_entries_may_match_during_secret_rotation() {
        let old = sign(b"old-secret", NOW, BODY);
        let new = sign(SECRET, NOW, BODY);
        let new_v1 = new.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        let both = format!("{old},v0=ignored,v1={new_v1}");
        assert_eq!(verify(SECRET, Some(&both), BODY, NOW, FIVE_MIN), Ok(()));
        assert_eq!(
            verify(b"old-secret", Some(&both), BODY, NOW, FIVE_MIN),
            Ok(())
        );
        assert_eq!(
            verify(b"third", Some(&both), BODY, NOW, FIVE_MIN),
            Err(SignatureError::Mismatch)
        );
    }
}

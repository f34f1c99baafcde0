//! Phone numbers: the validated E.164 type, NANP parts and special numbers.
//!
//! INTERIM VERSION: the compliance work replaces the internals (fast path, full
//! special-number classes); the public API below is the contract other modules use.

use std::fmt;

/// Why a raw string is not a dialable number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// An emergency or special-service number (never dialed): rule `destination_blocked`.
    #[error("special or emergency number ({0})")]
    Blocked(&'static str),
    /// Unparseable or not a valid number: rule `invalid_number`.
    #[error("invalid number: {0}")]
    Invalid(String),
}

impl PhoneError {
    /// The shared reason vocabulary: `destination_blocked` or `invalid_number`.
    pub fn reason(&self) -> &'static str {
        match self {
            PhoneError::Blocked(_) => "destination_blocked",
            PhoneError::Invalid(_) => "invalid_number",
        }
    }
}

/// A valid, dialable E.164 number. Only [`PhoneNumber::parse`] builds one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses E.164 or a 10-digit NANP number (optional punctuation, leading 1).
    pub fn parse(input: &str) -> Result<PhoneNumber, PhoneError> {
        let digits: String = input.chars().filter(|c| c.is_ascii_digit()).collect();
        if matches!(digits.as_str(), "911" | "112" | "988") {
            return Err(PhoneError::Blocked("emergency"));
        }
        let parsed = phonenumber::parse(Some(phonenumber::country::Id::US), input)
            .map_err(|e| PhoneError::Invalid(e.to_string()))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneError::Invalid("not a valid number".into()));
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        Ok(PhoneNumber(e164))
    }

    /// Wraps a number already stored in E.164 form by this program.
    pub fn from_trusted_e164(e164: &str) -> PhoneNumber {
        PhoneNumber(e164.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for +1 numbers (US, Canada and the rest of the NANP).
    pub fn is_nanp(&self) -> bool {
        self.0.starts_with("+1") && self.0.len() == 12
    }

    /// The NANP area code (NPA), for +1 numbers.
    pub fn npa(&self) -> Option<u16> {
        self.is_nanp().then(|| self.0[2..5].parse().ok()).flatten()
    }

    /// The NANP exchange (NXX), for +1 numbers.
    pub fn nxx(&self) -> Option<u16> {
        self.is_nanp().then(|| self.0[5..8].parse().ok()).flatten()
    }

    /// The number with all but the last 4 digits masked, for logs.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks every digit of `s` but the last four.
pub fn mask(s: &str) -> String {
    let n = s.chars().filter(|c| c.is_ascii_digit()).count();
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + 4 <= n { '*' } else { c }
            } else {
                c
            }
        })
        .collect()
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Debug` masks the number, so a stray `{:?}` never leaks it into a log.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

//! Phone numbers: the validated E.164 type, NANP parts and special numbers.
//!
//! Parsing has two paths that give the same answer:
//! - the general path, the `phonenumber` crate (libphonenumber's metadata, default
//!   region US), about 5 µs per parse + validate;
//! - a fast path for the canonical NANP shapes (`+1NXXNXXXXXX`, `NXXNXXXXXX`,
//!   `1NXXNXXXXXX`, `(NXX) NXX-XXXX`, `NXX-NXX-XXXX`, `NXX.NXX.XXXX`, `NXX NXX XXXX`,
//!   each optionally after `1`, `+1`, `1-`, `+1 ` ...). It looks the number's 7-digit
//!   block (NPA-NXX-X) up in a table of the crate's answers per block
//!   (`data/nanp_valid_blocks.txt`): every NANP number pattern in libphonenumber's
//!   metadata is a prefix of at most 7 digits followed by `\d{3}` or a longer `\d{n}`
//!   (the longest is Jamaica's `8766060\d{3}`), so validity is a function of the first
//!   7 digits. The property test `fast_path_agrees_with_the_crate` checks the two
//!   paths against each other on random numbers and shapes.
//!
//! Special numbers are checked on the digits before any parsing, so `911` is
//! `destination_blocked`, not `invalid_number`, even though the crate parses it.

use std::fmt;
use std::sync::OnceLock;

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
        if let Some(class) = special_class(input) {
            return Err(PhoneError::Blocked(class));
        }
        match fast_national(input.trim().as_bytes()) {
            Some(national) => {
                if nanp_block_is_valid(national) {
                    Ok(PhoneNumber(format!("+1{national}")))
                } else {
                    Err(PhoneError::Invalid("not a valid number".into()))
                }
            }
            None => Self::parse_with_crate(input),
        }
    }

    /// The general path alone (the oracle the fast path is tested against).
    pub fn parse_with_crate(input: &str) -> Result<PhoneNumber, PhoneError> {
        if let Some(class) = special_class(input) {
            return Err(PhoneError::Blocked(class));
        }
        let parsed = phonenumber::parse(Some(phonenumber::country::Id::US), input)
            .map_err(|e| PhoneError::Invalid(e.to_string()))?;
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        // The crate accepts shapes the digit check above does not read as NANP
        // (letters, `tel:` URIs, odd punctuation): check the result's digits too.
        if let Some(class) = special_class(&e164) {
            return Err(PhoneError::Blocked(class));
        }
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneError::Invalid("not a valid number".into()));
        }
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

/// The special-number class of a raw input, judged on its digits alone (SPEC.md
/// section 6: "checked on the digits first").
///
/// - 911 (47 CFR 9.3), 112 (GSM emergency, routed to 911 by US carriers), 988 (the
///   988 Suicide & Crisis Lifeline, 47 CFR 52.200): never dialed.
/// - N11 service codes 211..911 (47 CFR 52.15 and the FCC's N11 orders), as the whole
///   dialed number and as an area code `N11`.
/// - 555-0100..0199 (reserved for fiction by NANPA) and 555-1212 (directory
///   assistance), in any area code.
/// - 900 (pay-per-call, 47 CFR 64.1501): premium.
pub fn special_class(input: &str) -> Option<&'static str> {
    let mut buf = [0u8; 16];
    let mut n = 0usize;
    for b in input.bytes() {
        if b.is_ascii_digit() {
            if n == buf.len() {
                return None;
            }
            buf[n] = b;
            n += 1;
        }
    }
    let plus = input.trim_start().starts_with('+');
    let d = &buf[..n];
    // `+1911` is how the crate renders `911`: read a lone leading 1 as the country code.
    let short = match d {
        [b'1', rest @ ..] if rest.len() == 3 => rest,
        _ if !plus => d,
        _ => &[],
    };
    match short {
        b"911" => return Some("emergency 911"),
        b"112" => return Some("emergency 112"),
        b"988" => return Some("988 crisis line"),
        [b'2'..=b'9', b'1', b'1'] => return Some("N11 service code"),
        _ => {}
    }
    let national = match d {
        [b'1', rest @ ..] if rest.len() == 10 => rest,
        _ if d.len() == 10 && !plus => d,
        _ => return None,
    };
    let (npa, nxx, line) = (&national[0..3], &national[3..6], &national[6..10]);
    if matches!(npa, [b'2'..=b'9', b'1', b'1']) {
        return Some("N11 area code");
    }
    if npa == b"900" {
        return Some("premium 900");
    }
    if nxx == b"555" {
        if line == b"1212" {
            return Some("directory assistance 555-1212");
        }
        if line[0] == b'0' && line[1] == b'1' {
            return Some("fictional 555-0100..0199");
        }
    }
    None
}

/// The 10-digit national number of a canonical NANP shape, or `None` when the input
/// is any other shape (the crate then decides). Only NPAs starting 2-9 are taken.
fn fast_national(s: &[u8]) -> Option<u64> {
    let body = if let Some(rest) = s.strip_prefix(b"+1") {
        strip_sep(rest)
    } else if s.first() == Some(&b'+') {
        return None;
    } else if let Some(n) = body_national(s) {
        return Some(n);
    } else if let Some(rest) = s.strip_prefix(b"1") {
        strip_sep(rest)
    } else {
        return None;
    };
    body_national(body)
}

fn strip_sep(s: &[u8]) -> &[u8] {
    match s.first() {
        Some(b' ' | b'-' | b'.') => &s[1..],
        _ => s,
    }
}

/// `DDDDDDDDDD`, `DDD-DDD-DDDD` (same separator `-`, `.` or space twice), or
/// `(DDD) DDD-DDDD` / `(DDD)DDD-DDDD` / `(DDD) DDD DDDD`.
fn body_national(s: &[u8]) -> Option<u64> {
    let mut digits = [0u8; 10];
    match s.len() {
        10 => digits.copy_from_slice(s),
        12 if (s[3] == s[7]) && matches!(s[3], b'-' | b'.' | b' ') => {
            digits[..3].copy_from_slice(&s[..3]);
            digits[3..6].copy_from_slice(&s[4..7]);
            digits[6..].copy_from_slice(&s[8..]);
        }
        13 | 14 if s[0] == b'(' && s[4] == b')' => {
            let rest = if s.len() == 14 {
                if s[5] != b' ' {
                    return None;
                }
                &s[6..]
            } else {
                &s[5..]
            };
            if !matches!(rest[3], b'-' | b' ') {
                return None;
            }
            digits[..3].copy_from_slice(&s[1..4]);
            digits[3..6].copy_from_slice(&rest[..3]);
            digits[6..].copy_from_slice(&rest[4..]);
        }
        _ => return None,
    }
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'9').contains(&digits[0]) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')),
    )
}

/// The first and last 7-digit NANP blocks (NPA-NXX-X): NPA 200 to 999.
pub const FIRST_BLOCK: u32 = 2_000_000;
pub const LAST_BLOCK: u32 = 9_999_999;

/// The valid blocks as sorted, disjoint, inclusive ranges, from
/// `data/nanp_valid_blocks.txt` (written by `examples/gen_nanp_blocks.rs` from the
/// crate's answer on `data/nanp_metadata.xml`; `phone::tests` check they agree).
/// A lookup is a binary search over its 886 ranges, so neither the crate's
/// metadata nor its regular expressions are loaded by the worker or the importer:
/// that was about 2.2 MB of heap the worker kept for its lifetime (heaptrack,
/// docs/benchmarks.md, session 9).
fn valid_blocks() -> &'static [(u32, u32)] {
    static RANGES: OnceLock<Box<[(u32, u32)]>> = OnceLock::new();
    RANGES.get_or_init(|| {
        let ranges: Box<[(u32, u32)]> = include_str!("../data/nanp_valid_blocks.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (a, b) = l
                    .split_once(' ')
                    .expect("data/nanp_valid_blocks.txt: `first last`");
                let first = a
                    .parse()
                    .expect("data/nanp_valid_blocks.txt: a block number");
                let last = b
                    .parse()
                    .expect("data/nanp_valid_blocks.txt: a block number");
                (first, last)
            })
            .collect();
        assert!(
            ranges.windows(2).all(|w| w[0].1 < w[1].0) && ranges.iter().all(|r| r.0 <= r.1),
            "data/nanp_valid_blocks.txt: ranges must be sorted and disjoint"
        );
        ranges
    })
}

/// Whether the numbers of `national`'s 7-digit block are valid (the crate's answer,
/// tabled; see [`valid_blocks`]).
fn nanp_block_is_valid(national: u64) -> bool {
    let block = (national / 1000) as u32;
    let ranges = valid_blocks();
    // The last range starting at or before `block`.
    let i = ranges.partition_point(|r| r.0 <= block);
    i > 0 && block <= ranges[i - 1].1
}

/// The +1 part of the crate's metadata (`data/nanp_metadata.xml`, its 25 NANP
/// territories unchanged, made by `scripts/gen-nanp-metadata.py`), which the block
/// table is made from; the whole-world database gives the same answers
/// (`the_nanp_subset_agrees_with_the_whole_database_in_every_area_code`).
fn nanp_database() -> &'static phonenumber::metadata::Database {
    static DB: OnceLock<phonenumber::metadata::Database> = OnceLock::new();
    DB.get_or_init(|| {
        phonenumber::metadata::Database::parse(include_str!("../data/nanp_metadata.xml"))
            .expect("data/nanp_metadata.xml is the crate's own metadata and loads")
    })
}

/// The crate's own answer for a 7-digit block (`FIRST_BLOCK..=LAST_BLOCK`): what
/// `data/nanp_valid_blocks.txt` tables. For the generator and the tests.
#[doc(hidden)]
pub fn crate_block_is_valid(block: u32) -> bool {
    let db = nanp_database();
    phonenumber::parse_with(db, None, format!("+1{block}000"))
        .map(|p| phonenumber::is_valid_with(db, &p))
        .unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blocked(s: &str) -> bool {
        matches!(PhoneNumber::parse(s), Err(PhoneError::Blocked(_)))
    }

    #[test]
    fn emergency_and_crisis_numbers_are_destination_blocked_not_invalid() {
        for s in ["911", "9-1-1", "+1911", "1911", "112", "988", "+1 988"] {
            let e = PhoneNumber::parse(s).unwrap_err();
            assert_eq!(e.reason(), "destination_blocked", "{s}");
        }
    }

    #[test]
    fn the_crate_alone_parses_911_without_error_which_is_why_digits_come_first() {
        let p = phonenumber::parse(Some(phonenumber::country::Id::US), "911").unwrap();
        assert_eq!(
            p.format().mode(phonenumber::Mode::E164).to_string(),
            "+1911"
        );
    }

    #[test]
    fn every_n11_code_is_blocked_as_the_number_and_as_the_area_code() {
        for n in 2..=9 {
            assert!(blocked(&format!("{n}11")), "{n}11");
            assert!(blocked(&format!("+1 {n}11 234 5678")), "{n}11 NPA");
            assert!(blocked(&format!("{n}112345678")), "{n}11 NPA 10-digit");
        }
    }

    #[test]
    fn an_n11_exchange_inside_a_normal_number_is_not_special() {
        assert!(PhoneNumber::parse("+1 202 411 1234").is_ok());
    }

    #[test]
    fn fictional_555_01xx_and_directory_555_1212_are_blocked_in_any_area_code() {
        for s in [
            "+1 202 555 0100",
            "(202) 555-0123",
            "2025550199",
            "415-555-0150",
            "1-312-555-1212",
            "+12135551212",
        ] {
            assert_eq!(
                PhoneNumber::parse(s).unwrap_err().reason(),
                "destination_blocked",
                "{s}"
            );
        }
        // The neighbours of the reserved range are ordinary numbers.
        assert!(PhoneNumber::parse("+1 202 555 0200").is_ok());
        assert!(PhoneNumber::parse("+1 202 555 0099").is_ok());
    }

    #[test]
    fn the_crate_finds_a_fictional_555_number_valid_which_is_why_we_block_it() {
        let p = phonenumber::parse(None, "+1 202 555 0123").unwrap();
        assert!(phonenumber::is_valid(&p));
        assert!(blocked("+1 202 555 0123"));
    }

    #[test]
    fn premium_900_numbers_are_blocked() {
        assert!(blocked("+1 900 555 1234"));
        assert!(blocked("1-900-234-5678"));
    }

    #[test]
    fn invalid_numbers_are_invalid() {
        for s in [
            "",
            "abc",
            "12345",
            "+1 123 456 7890",
            "202555012",
            "+1 202 055 1234",
        ] {
            assert_eq!(
                PhoneNumber::parse(s).unwrap_err().reason(),
                "invalid_number",
                "{s:?}"
            );
        }
    }

    #[test]
    fn canonical_shapes_give_the_same_e164() {
        for s in [
            "+12025550234",
            "2025550234",
            "12025550234",
            "(202) 555-0234",
            "202-555-0234",
            "202.555.0234",
            "+1 202 555 0234",
            "1 (202) 555-0234",
        ] {
            assert_eq!(
                PhoneNumber::parse(s).unwrap().as_str(),
                "+12025550234",
                "{s}"
            );
        }
    }

    #[test]
    fn debug_output_masks_the_number() {
        let p = PhoneNumber::parse("+14155550234").unwrap();
        assert_eq!(format!("{p:?}"), "PhoneNumber(+*******0234)");
        assert_eq!(p.npa(), Some(415));
        assert_eq!(p.nxx(), Some(555));
    }

    fn shape() -> impl Strategy<Value = String> {
        (0u64..10_000_000_000, 0usize..12).prop_map(|(n, shape)| {
            let d = format!("{n:010}");
            let (a, b, c) = (&d[..3], &d[3..6], &d[6..]);
            match shape {
                0 => format!("+1{d}"),
                1 => d.clone(),
                2 => format!("1{d}"),
                3 => format!("({a}) {b}-{c}"),
                4 => format!("{a}-{b}-{c}"),
                5 => format!("{a}.{b}.{c}"),
                6 => format!("+1 {a} {b} {c}"),
                7 => format!("1-{a}-{b}-{c}"),
                8 => format!("+1 ({a}) {b}-{c}"),
                9 => format!("({a}){b}-{c}"),
                10 => format!("+1-{a}-{b}-{c}"),
                _ => format!("1 ({a}) {b} {c}"),
            }
        })
    }

    /// The +1 subset the worker validates with gives the whole-world database's
    /// answer on a block of every area code (and of a spread of exchanges).
    #[test]
    fn the_nanp_subset_agrees_with_the_whole_database_in_every_area_code() {
        let mut compared = 0;
        for npa in 200u64..1000 {
            for nxx_x in [2000u64, 2345, 5550, 6060, 7000, 9999, 4567, 8111] {
                let n = format!("+1{npa}{nxx_x:04}000");
                let whole = phonenumber::parse(None, &n).map(|p| phonenumber::is_valid(&p));
                let nanp = phonenumber::parse_with(nanp_database(), None, &n)
                    .map(|p| phonenumber::is_valid_with(nanp_database(), &p));
                assert_eq!(whole.ok(), nanp.ok(), "{n}");
                compared += 1;
            }
        }
        assert_eq!(compared, 6400);
    }

    /// `data/nanp_valid_blocks.txt` gives the crate's answer on both sides of every
    /// edge of every range, and on a spread of blocks between them.
    #[test]
    fn the_block_table_agrees_with_the_crate() {
        let ranges = valid_blocks();
        assert!(ranges.len() > 800, "{} ranges", ranges.len());
        let mut checked = 0;
        let mut check = |block: u32| {
            if (FIRST_BLOCK..=LAST_BLOCK).contains(&block) {
                let national = u64::from(block) * 1000 + 123;
                assert_eq!(
                    nanp_block_is_valid(national),
                    crate_block_is_valid(block),
                    "block {block}"
                );
                checked += 1;
            }
        };
        for &(first, last) in ranges {
            for b in [first - 1, first, last, last + 1] {
                check(b);
            }
        }
        for b in (FIRST_BLOCK..=LAST_BLOCK).step_by(1009) {
            check(b);
        }
        assert!(checked > 10_000, "{checked}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn fast_path_agrees_with_the_crate(s in shape()) {
            let fast = PhoneNumber::parse(&s).map_err(|e| e.reason());
            let slow = PhoneNumber::parse_with_crate(&s).map_err(|e| e.reason());
            prop_assert_eq!(fast, slow, "{}", s);
        }

        #[test]
        fn fast_path_agrees_with_the_crate_on_mostly_valid_area_codes(
            npa in prop::sample::select(vec![201u64, 202, 208, 212, 264, 268, 305, 340, 416, 505, 514, 658, 671, 684, 730, 787, 800, 850, 876, 907, 983]),
            rest in 0u64..10_000_000,
        ) {
            let s = format!("+1{npa}{rest:07}");
            let fast = PhoneNumber::parse(&s).map_err(|e| e.reason());
            let slow = PhoneNumber::parse_with_crate(&s).map_err(|e| e.reason());
            prop_assert_eq!(fast, slow, "{}", s);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,20}") {
            let _ = PhoneNumber::parse(&s);
        }
    }
}

//! `dialer check` and `dialer scrub`: the pre-flight verdict for one number or for
//! every row of a contacts file, with facts read from the database in batches.

use crate::compliance::{Engine, Policy, Verdict, explain_text};
use crate::config::Settings;
use crate::phone::PhoneNumber;
use crate::store::DynStore;
use crate::worker::app::{FACTS_LOOKBACK, campaign_ctx, engine_facts};
use chrono::{DateTime, Utc};
use std::io::Write;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl From<crate::store::StoreError> for ScrubError {
    fn from(e: crate::store::StoreError) -> Self {
        ScrubError::Runtime(e.to_string())
    }
}

/// The policy to check against: the campaign's, or the law alone for an
/// artificial-voice call (the stricter case) when no campaign is named.
async fn policy(
    store: &DynStore,
    settings: &Settings,
    campaign: Option<&str>,
) -> Result<Policy, ScrubError> {
    match campaign {
        None => Ok(Policy::check_default()),
        Some(name) => {
            let row = store
                .campaign(name)
                .await?
                .ok_or_else(|| ScrubError::Usage(format!("unknown campaign `{name}`")))?;
            Ok(campaign_ctx(row, settings)
                .map_err(|e| ScrubError::Runtime(e.to_string()))?
                .policy)
        }
    }
}

pub struct CheckArgs<'a> {
    pub phone: &'a str,
    pub campaign: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub state: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub json: bool,
}

/// The verdict for one number, rendered as text or JSON.
pub async fn check(
    store: &DynStore,
    settings: &Settings,
    engine: &Engine,
    a: CheckArgs<'_>,
) -> Result<String, ScrubError> {
    let tz = match a.timezone {
        Some(z) => Some(
            chrono_tz::Tz::from_str(z)
                .map_err(|_| ScrubError::Usage(format!("unknown time zone `{z}`")))?,
        ),
        None => None,
    };
    let policy = policy(store, settings, a.campaign).await?;
    let (shown, verdict) = match PhoneNumber::parse(a.phone) {
        Err(e) => (a.phone.to_owned(), Verdict::rejected(&e, a.phone)),
        Ok(phone) => {
            let since = (a.at - FACTS_LOOKBACK).timestamp_millis();
            let facts = store
                .facts(&[phone.as_str().to_owned()], a.campaign, since)
                .await?;
            let facts = facts.first().map(engine_facts).unwrap_or_default();
            let r = engine.recipient(
                &phone,
                tz,
                a.state.map(|s| s.to_ascii_uppercase()).as_deref(),
                None,
            );
            (
                phone.as_str().to_owned(),
                engine.evaluate(&r, &policy, &facts, a.at),
            )
        }
    };
    Ok(if a.json {
        format!("{}\n", verdict.to_json(&shown))
    } else {
        explain_text(&verdict, &shown)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

const SCRUB_BATCH: usize = 1000;

/// What to scrub and how to write it.
pub struct ScrubArgs<'a> {
    pub path: &'a std::path::Path,
    pub campaign: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub format: Format,
}

/// Streams a contacts file, writing one verdict per input row (bounded memory).
/// Returns the number of rows written.
pub async fn scrub(
    store: &DynStore,
    settings: &Settings,
    engine: &Engine,
    args: ScrubArgs<'_>,
    out: &mut (dyn Write + Send),
) -> Result<u64, ScrubError> {
    let ScrubArgs {
        path,
        campaign,
        at,
        format,
    } = args;
    let policy = policy(store, settings, campaign).await?;
    let file = std::fs::File::open(path)
        .map_err(|e| ScrubError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 16, file));
    let header: Vec<String> = rdr
        .byte_headers()
        .map_err(|e| ScrubError::Usage(format!("{}: bad header: {e}", path.display())))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_ascii_lowercase())
        .collect();
    let col = |n: &str| header.iter().position(|h| h == n);
    let (phone_i, tz_i, state_i, postal_i) = (
        col("phone"),
        col("timezone"),
        col("state"),
        col("postal_code"),
    );
    let Some(phone_i) = phone_i else {
        return Err(ScrubError::Usage(format!(
            "{}: the header has no `phone` column",
            path.display()
        )));
    };
    if format == Format::Csv {
        writeln!(out, "phone,verdict,rule,reason,zones,next_allowed_at").map_err(io)?;
    }
    let since = (at - FACTS_LOOKBACK).timestamp_millis();
    let mut rec = csv::ByteRecord::new();
    let mut written = 0u64;
    let mut batch: Vec<Row> = Vec::with_capacity(SCRUB_BATCH);
    let mut done = false;
    while !done {
        batch.clear();
        while batch.len() < SCRUB_BATCH {
            match rdr.read_byte_record(&mut rec) {
                Ok(false) => {
                    done = true;
                    break;
                }
                Ok(true) => {
                    let get = |i: Option<usize>| {
                        i.and_then(|i| rec.get(i))
                            .and_then(|b| std::str::from_utf8(b).ok())
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                    };
                    let raw = get(Some(phone_i)).unwrap_or_default();
                    batch.push(Row {
                        raw,
                        tz: get(tz_i),
                        state: get(state_i),
                        postal: get(postal_i),
                        parsed: None,
                    });
                }
                Err(e) => batch.push(Row {
                    raw: format!("<unreadable row: {e}>"),
                    tz: None,
                    state: None,
                    postal: None,
                    parsed: None,
                }),
            }
        }
        for r in batch.iter_mut() {
            r.parsed = Some(PhoneNumber::parse(&r.raw));
        }
        let phones: Vec<String> = batch
            .iter()
            .filter_map(|r| match &r.parsed {
                Some(Ok(p)) => Some(p.as_str().to_owned()),
                _ => None,
            })
            .collect();
        let facts = store.facts(&phones, campaign, since).await?;
        let mut fi = facts.iter();
        for r in &batch {
            let (shown, v) = match r.parsed.as_ref().expect("parsed above") {
                Err(e) => (r.raw.clone(), Verdict::rejected(e, &r.raw)),
                Ok(p) => {
                    let f = fi.next().map(engine_facts).unwrap_or_default();
                    let tz =
                        r.tz.as_deref()
                            .and_then(|z| chrono_tz::Tz::from_str(z).ok());
                    let rc = engine.recipient(p, tz, r.state.as_deref(), r.postal.as_deref());
                    (p.as_str().to_owned(), engine.evaluate(&rc, &policy, &f, at))
                }
            };
            match format {
                Format::Jsonl => writeln!(out, "{}", v.to_json(&shown)).map_err(io)?,
                Format::Csv => {
                    let mut w = csv::WriterBuilder::new()
                        .has_headers(false)
                        .from_writer(Vec::new());
                    w.write_record(v.csv_fields(&shown))
                        .map_err(|e| ScrubError::Runtime(e.to_string()))?;
                    out.write_all(
                        &w.into_inner()
                            .map_err(|e| ScrubError::Runtime(e.to_string()))?,
                    )
                    .map_err(io)?;
                }
            }
            written += 1;
        }
    }
    out.flush().map_err(io)?;
    Ok(written)
}

struct Row {
    raw: String,
    tz: Option<String>,
    state: Option<String>,
    postal: Option<String>,
    parsed: Option<Result<PhoneNumber, crate::phone::PhoneError>>,
}

fn io(e: std::io::Error) -> ScrubError {
    ScrubError::Runtime(format!("write failed: {e}"))
}

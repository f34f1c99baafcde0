//! Streaming CSV loaders (SPEC section 5): contacts, DNC, opt-outs, consents.
//!
//! A reader thread parses and validates rows and sends batches over a bounded
//! channel to the store, which loads them in one transaction: memory stays bounded,
//! and a failure part-way leaves nothing half-written. Bad rows are rejected with
//! their line number and reason; good rows load.

use crate::phone::PhoneNumber;
use crate::store::{ConsentRecord, ContactRecord, DncRecord, DynStore, OptOutRecord, StoreError};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use tokio::sync::mpsc;

/// Rows per batch sent to the store.
const BATCH: usize = 5_000;
/// Rejections kept for the report; past this they are only counted.
const MAX_LISTED_REJECTIONS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read or has no usable header: nothing was loaded.
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("import failed: {0}")]
    Other(String),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    pub reason: String,
}

/// The `--json` report: `{"read", "loaded", "duplicates", "rejected": [{"line", "reason"}]}`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub read: u64,
    pub loaded: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejection>,
    /// Rejections beyond the listed ones (only counted, to keep memory bounded).
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected_unlisted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ImportReport {
    pub fn rejected_count(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_unlisted
    }

    fn reject(&mut self, line: u64, reason: impl Into<String>) {
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(Rejection {
                line,
                reason: reason.into(),
            });
        } else {
            self.rejected_unlisted += 1;
        }
    }

    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: read {}, loaded {}, duplicates {}, rejected {}",
            self.read,
            self.loaded,
            self.duplicates,
            self.rejected_count()
        )
    }
}

/// Progress reporting: a bar on a terminal, nothing otherwise.
pub trait Progress: Send + Sync {
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

pub struct NoProgress;
impl Progress for NoProgress {
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

pub struct BarProgress(indicatif::ProgressBar);
impl BarProgress {
    pub fn new(total_bytes: u64) -> BarProgress {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        BarProgress(bar)
    }
}
impl Progress for BarProgress {
    fn advance(&self, bytes: u64) {
        self.0.set_position(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Counts bytes read, for the progress bar.
struct CountingReader<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}
impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

fn open(path: &Path) -> Result<(std::fs::File, u64), ImportError> {
    let unreadable = |e: std::io::Error| ImportError::Unreadable {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let f = std::fs::File::open(path).map_err(unreadable)?;
    let len = f.metadata().map_err(unreadable)?.len();
    if f.metadata().map_err(unreadable)?.is_dir() {
        return Err(ImportError::Unreadable {
            path: path.display().to_string(),
            message: "is a directory".into(),
        });
    }
    Ok((f, len))
}

/// The header of a CSV file: lower-cased, trimmed column names.
struct Header {
    names: Vec<String>,
}

impl Header {
    fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

fn field(rec: &csv::ByteRecord, idx: Option<usize>) -> Option<&str> {
    let i = idx?;
    let s = std::str::from_utf8(rec.get(i)?).ok()?.trim();
    (!s.is_empty()).then_some(s)
}

/// Runs a CSV parse on a blocking thread, feeding batches to `load`.
async fn pipeline<T, P, L, Fut>(
    path: &Path,
    progress: Box<dyn Progress>,
    parse: P,
    load: L,
) -> Result<ImportReport, ImportError>
where
    T: Send + 'static,
    P: FnOnce(Box<dyn Read + Send>, &mut ImportReport, &mpsc::Sender<Vec<T>>) -> Result<(), String>
        + Send
        + 'static,
    L: FnOnce(mpsc::Receiver<Vec<T>>) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let (file, _) = open(path)?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = CountingReader {
        inner: std::io::BufReader::with_capacity(1 << 16, file),
        count: count.clone(),
    };
    let (tx, rx) = mpsc::channel::<Vec<T>>(4);
    let parser = tokio::task::spawn_blocking(move || {
        let mut report = ImportReport::default();
        let result = parse(Box::new(reader), &mut report, &tx);
        (report, result)
    });
    let ticker = {
        let count = count.clone();
        let progress = std::sync::Arc::new(progress);
        let p2 = progress.clone();
        let handle = tokio::spawn(async move {
            loop {
                p2.advance(count.load(std::sync::atomic::Ordering::Relaxed));
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        (handle, progress)
    };
    let loaded = load(rx).await;
    let (mut report, parsed) = parser
        .await
        .map_err(|e| ImportError::Other(e.to_string()))?;
    ticker.0.abort();
    ticker.1.finish();
    // A parse failure (I/O error mid-way) never sent the end-of-stream marker, so
    // the store rolled its transaction back: nothing half-written.
    let loaded = loaded?;
    parsed.map_err(|m| ImportError::Unreadable {
        path: path.display().to_string(),
        message: m,
    })?;
    report.loaded = loaded;
    let valid = report.read - report.rejected_count();
    report.duplicates = valid.saturating_sub(report.loaded);
    Ok(report)
}

fn csv_reader(r: Box<dyn Read + Send>) -> csv::Reader<Box<dyn Read + Send>> {
    csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(r)
}

fn read_header(
    rdr: &mut csv::Reader<Box<dyn Read + Send>>,
    required: &[&str],
) -> Result<Header, String> {
    let h = rdr.byte_headers().map_err(|e| format!("bad header: {e}"))?;
    let names: Vec<String> = h
        .iter()
        .map(|b| {
            String::from_utf8_lossy(b)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase()
        })
        .collect();
    for r in required {
        if !names.iter().any(|n| n == r) {
            return Err(format!(
                "the header has no `{r}` column (found: {})",
                names.join(", ")
            ));
        }
    }
    Ok(Header { names })
}

/// Parses a date or time: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(format!("`{s}` is not a date (RFC 3339 or YYYY-MM-DD)"))
}

/// Two-letter codes of US states, DC, territories and Canadian provinces.
pub const REGION_CODES: &[&str] = &[
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS",
    "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY",
    "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV",
    "WI", "WY", "DC", "PR", "VI", "GU", "AS", "MP", "AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU",
    "ON", "PE", "QC", "SK", "YT",
];

fn valid_postal(s: &str) -> bool {
    let b = s.as_bytes();
    let us5 = b.len() == 5 && b.iter().all(u8::is_ascii_digit);
    let us9 = b.len() == 10 && b[5] == b'-' && b[..5].iter().chain(&b[6..]).all(u8::is_ascii_digit);
    let ca: Vec<u8> = b
        .iter()
        .filter(|c| **c != b' ')
        .map(u8::to_ascii_uppercase)
        .collect();
    let ca_ok = ca.len() == 6
        && ca.iter().enumerate().all(|(i, c)| {
            if i % 2 == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_digit()
            }
        });
    us5 || us9 || ca_ok
}

/// The checks every CSV row shares: its column count, UTF-8, and its phone.
fn checked_phone(
    h: &Header,
    phone_col: Option<usize>,
    rec: &csv::ByteRecord,
) -> Result<PhoneNumber, String> {
    if rec.len() != h.names.len() {
        return Err(format!(
            "wrong column count: expected {} fields, found {}",
            h.names.len(),
            rec.len()
        ));
    }
    if rec.iter().any(|f| std::str::from_utf8(f).is_err()) {
        return Err("the line is not valid UTF-8".into());
    }
    let raw = field(rec, phone_col).ok_or("invalid_number: the phone is empty")?;
    PhoneNumber::parse(raw).map_err(|e| format!("{}: `{raw}`: {e}", e.reason()))
}

const CONTACT_KNOWN: &[&str] = &[
    "phone",
    "external_id",
    "timezone",
    "state",
    "postal_code",
    "first_name",
    "last_name",
];

/// Validates one contact row; `Err` is the rejection reason.
fn contact_row(
    h: &Header,
    idx: &ContactIdx,
    rec: &csv::ByteRecord,
) -> Result<ContactRecord, String> {
    let phone = checked_phone(h, Some(idx.phone), rec)?;
    let timezone = match field(rec, idx.timezone) {
        Some(tz) => {
            chrono_tz::Tz::from_str(tz).map_err(|_| format!("unknown time zone `{tz}`"))?;
            Some(tz.to_owned())
        }
        None => None,
    };
    let state = match field(rec, idx.state) {
        Some(s) => {
            let up = s.to_ascii_uppercase();
            if !REGION_CODES.contains(&up.as_str()) {
                return Err(format!("unknown state or province `{s}`"));
            }
            Some(up)
        }
        None => None,
    };
    let postal_code = match field(rec, idx.postal_code) {
        Some(p) if valid_postal(p) => Some(p.to_ascii_uppercase()),
        Some(p) => return Err(format!("invalid postal code `{p}`")),
        None => None,
    };
    let attributes = if idx.extra.is_empty() {
        None
    } else {
        let mut m = serde_json::Map::new();
        for &i in &idx.extra {
            if let Some(v) = field(rec, Some(i)) {
                m.insert(h.names[i].clone(), serde_json::Value::String(v.to_owned()));
            }
        }
        (!m.is_empty()).then(|| serde_json::Value::Object(m).to_string())
    };
    Ok(ContactRecord {
        phone: phone.as_str().to_owned(),
        external_id: field(rec, idx.external_id).map(str::to_owned),
        timezone,
        state,
        postal_code,
        first_name: field(rec, idx.first_name).map(str::to_owned),
        last_name: field(rec, idx.last_name).map(str::to_owned),
        attributes,
    })
}

struct ContactIdx {
    phone: usize,
    external_id: Option<usize>,
    timezone: Option<usize>,
    state: Option<usize>,
    postal_code: Option<usize>,
    first_name: Option<usize>,
    last_name: Option<usize>,
    extra: Vec<usize>,
}

fn line_of(rec: &csv::ByteRecord) -> u64 {
    rec.position().map(|p| p.line()).unwrap_or(0)
}

/// Streams a CSV, calling `row` for each record and sending accepted rows in batches.
fn stream_csv<T>(
    r: Box<dyn Read + Send>,
    required: &[&str],
    report: &mut ImportReport,
    tx: &mpsc::Sender<Vec<T>>,
    mut row: impl FnMut(&Header, &csv::ByteRecord) -> Result<T, String>,
) -> Result<(), String> {
    let mut rdr = csv_reader(r);
    let header = read_header(&mut rdr, required)?;
    let mut rec = csv::ByteRecord::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                report.read += 1;
                match row(&header, &rec) {
                    Ok(v) => batch.push(v),
                    Err(reason) => report.reject(line_of(&rec), reason),
                }
            }
            Err(e) => {
                // A malformed CSV record (e.g. an unterminated quote): reject the
                // line and carry on with the next one.
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                report.read += 1;
                report.reject(line, format!("malformed CSV: {e}"));
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(format!("read error: {e}"));
                }
            }
        }
        if batch.len() >= BATCH
            && tx
                .blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            return Err("the database stopped accepting rows".into());
        }
    }
    if !batch.is_empty() && tx.blocking_send(batch).is_err() {
        return Err("the database stopped accepting rows".into());
    }
    end_of_stream(tx)
}

/// Sends the end-of-stream marker (an empty batch): only then does the store commit.
fn end_of_stream<T>(tx: &mpsc::Sender<Vec<T>>) -> Result<(), String> {
    tx.blocking_send(Vec::new())
        .map_err(|_| "the database stopped accepting rows".to_owned())
}

pub async fn import_contacts(
    store: &DynStore,
    campaign_id: i64,
    due_at_ms: i64,
    path: &Path,
    progress: Box<dyn Progress>,
) -> Result<ImportReport, ImportError> {
    precheck_header(path, &["phone"])?;
    let store = store.clone();
    pipeline(
        path,
        progress,
        move |r, report, tx| {
            let mut idx: Option<ContactIdx> = None;
            stream_csv(r, &["phone"], report, tx, |h, rec| {
                let idx = idx.get_or_insert_with(|| ContactIdx {
                    phone: h.find("phone").unwrap_or(0),
                    external_id: h.find("external_id"),
                    timezone: h.find("timezone"),
                    state: h.find("state"),
                    postal_code: h.find("postal_code"),
                    first_name: h.find("first_name"),
                    last_name: h.find("last_name"),
                    extra: (0..h.names.len())
                        .filter(|i| !CONTACT_KNOWN.contains(&h.names[*i].as_str()))
                        .collect(),
                });
                contact_row(h, idx, rec)
            })
        },
        move |rx| async move { store.import_contacts(campaign_id, due_at_ms, rx).await },
    )
    .await
}

/// Reads the header alone, so that a file with no usable header loads nothing and
/// exits 2 before any transaction starts.
fn precheck_header(path: &Path, required: &[&str]) -> Result<(), ImportError> {
    let (f, _) = open(path)?;
    let mut rdr = csv_reader(Box::new(f));
    read_header(&mut rdr, required)
        .map(|_| ())
        .map_err(|m| ImportError::Unreadable {
            path: path.display().to_string(),
            message: m,
        })
}

/// One DNC line: a number, the registry's `areacode,number`, or `NPAXXXXXXX`.
pub fn parse_dnc_line(line: &str, source: &str) -> Result<Option<DncRecord>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let joined: String = if line.contains(',') {
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        if parts.len() != 2 {
            return Err(format!(
                "expected `areacode,number`, found {} fields",
                parts.len()
            ));
        }
        format!("{}{}", parts[0], parts[1])
    } else {
        line.to_owned()
    };
    let upper = joined.to_ascii_uppercase();
    let digits_start = upper.trim_start_matches('+').trim_start_matches('1');
    if let Some(npa) = digits_start.strip_suffix("XXXXXXX") {
        if npa.len() == 3
            && npa.bytes().all(|b| b.is_ascii_digit())
            && (b'2'..=b'9').contains(&npa.as_bytes()[0])
        {
            return Ok(Some(DncRecord::AreaCode {
                npa: npa.to_owned(),
                source: source.to_owned(),
            }));
        }
        return Err(format!("`{line}` is not a whole area code like 201XXXXXXX"));
    }
    let phone =
        PhoneNumber::parse(&joined).map_err(|e| format!("{}: `{line}`: {e}", e.reason()))?;
    Ok(Some(DncRecord::Number {
        phone: phone.as_str().to_owned(),
        source: source.to_owned(),
    }))
}

pub async fn import_dnc(
    store: &DynStore,
    path: &Path,
    source: &str,
    now_ms: i64,
    progress: Box<dyn Progress>,
) -> Result<ImportReport, ImportError> {
    let store = store.clone();
    let source = source.to_owned();
    pipeline(
        path,
        progress,
        move |r, report, tx| {
            use std::io::BufRead;
            let mut batch = Vec::with_capacity(BATCH);
            let mut buf = Vec::new();
            let mut reader = std::io::BufReader::new(r);
            let mut line_no = 0u64;
            loop {
                buf.clear();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| format!("read error: {e}"))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                let Ok(text) = std::str::from_utf8(&buf) else {
                    report.read += 1;
                    report.reject(line_no, "the line is not valid UTF-8");
                    continue;
                };
                let t = text.trim();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                // The registry's CSV form may carry a header line.
                if line_no == 1
                    && t.chars().any(|c| c.is_ascii_alphabetic())
                    && !t.to_ascii_uppercase().contains("XXX")
                {
                    continue;
                }
                report.read += 1;
                match parse_dnc_line(t, &source) {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) => {}
                    Err(reason) => report.reject(line_no, reason),
                }
                if batch.len() >= BATCH
                    && tx
                        .blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    return Err("the database stopped accepting rows".into());
                }
            }
            if !batch.is_empty() && tx.blocking_send(batch).is_err() {
                return Err("the database stopped accepting rows".into());
            }
            end_of_stream(tx)
        },
        move |rx| async move { store.import_dnc(rx, now_ms).await },
    )
    .await
}

pub async fn import_opt_outs(
    store: &DynStore,
    path: &Path,
    now_ms: i64,
    progress: Box<dyn Progress>,
) -> Result<ImportReport, ImportError> {
    precheck_header(path, &["phone"])?;
    let store = store.clone();
    pipeline(
        path,
        progress,
        move |r, report, tx| {
            stream_csv(r, &["phone"], report, tx, |h, rec| {
                let phone = checked_phone(h, h.find("phone"), rec)?;
                let campaign = field(rec, h.find("campaign")).unwrap_or("").to_owned();
                if !campaign.is_empty() {
                    crate::campaign::validate_name(&campaign).map_err(|e| e.to_string())?;
                }
                let at = match field(rec, h.find("opted_out_at")) {
                    Some(s) => parse_time(s)?.timestamp_millis(),
                    None => now_ms,
                };
                Ok(OptOutRecord {
                    phone: phone.as_str().to_owned(),
                    campaign,
                    opted_out_at_ms: at,
                    source: field(rec, h.find("source")).unwrap_or("import").to_owned(),
                })
            })
        },
        move |rx| async move { store.import_opt_outs(rx).await },
    )
    .await
}

pub async fn import_consents(
    store: &DynStore,
    path: &Path,
    progress: Box<dyn Progress>,
) -> Result<ImportReport, ImportError> {
    precheck_header(path, &["phone", "kind", "granted_at"])?;
    let store = store.clone();
    pipeline(
        path,
        progress,
        move |r, report, tx| {
            stream_csv(r, &["phone", "kind", "granted_at"], report, tx, |h, rec| {
                let phone = checked_phone(h, h.find("phone"), rec)?;
                let campaign = field(rec, h.find("campaign")).unwrap_or("").to_owned();
                if !campaign.is_empty() {
                    crate::campaign::validate_name(&campaign).map_err(|e| e.to_string())?;
                }
                let kind = field(rec, h.find("kind"))
                    .ok_or("the kind is empty (express_written or express)")?;
                if kind != "express_written" && kind != "express" {
                    return Err(format!(
                        "unknown consent kind `{kind}` (express_written or express)"
                    ));
                }
                let granted =
                    parse_time(field(rec, h.find("granted_at")).ok_or("granted_at is empty")?)?;
                let expires = field(rec, h.find("expires_at"))
                    .map(parse_time)
                    .transpose()?;
                let revoked = field(rec, h.find("revoked_at"))
                    .map(parse_time)
                    .transpose()?;
                if let Some(e) = expires {
                    if e <= granted {
                        return Err("expires_at is not after granted_at".into());
                    }
                }
                Ok(ConsentRecord {
                    phone: phone.as_str().to_owned(),
                    campaign,
                    kind: kind.to_owned(),
                    granted_at_ms: granted.timestamp_millis(),
                    expires_at_ms: expires.map(|t| t.timestamp_millis()),
                    revoked_at_ms: revoked.map(|t| t.timestamp_millis()),
                })
            })
        },
        move |rx| async move { store.import_consents(rx).await },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnc_lines_in_every_form() {
        assert_eq!(
            parse_dnc_line("201XXXXXXX", "s").unwrap(),
            Some(DncRecord::AreaCode {
                npa: "201".into(),
                source: "s".into()
            })
        );
        assert_eq!(
            parse_dnc_line("201,2345678", "s").unwrap(),
            Some(DncRecord::Number {
                phone: "+12012345678".into(),
                source: "s".into()
            })
        );
        assert_eq!(parse_dnc_line("# comment", "s").unwrap(), None);
        assert_eq!(parse_dnc_line("   ", "s").unwrap(), None);
        assert!(parse_dnc_line("12XXXXXXX", "s").is_err());
    }

    #[test]
    fn postal_codes() {
        assert!(valid_postal("10001"));
        assert!(valid_postal("10001-1234"));
        assert!(valid_postal("K1A 0B1"));
        assert!(!valid_postal("1000"));
    }

    #[test]
    fn times() {
        assert!(parse_time("2026-01-02").is_ok());
        assert!(parse_time("2026-01-02T03:04:05Z").is_ok());
        assert!(parse_time("2026-13-02").is_err());
    }
}

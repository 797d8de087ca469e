//! `payrecon export`: final states for accounting, as CSV or JSON lines.
//! One row per payment that became final at or after `since`: its provider
//! references (never the secret ones), amount, final state, and the time
//! and source of finality. It reads the store directly (a stopped daemon)
//! or is served by `GET /v1/export` (a running one); both write the same
//! bytes.

use std::io::Write;

use serde::Serialize;

use crate::model::{Payment, ProviderId};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            _ => Err(format!("format `{s}` is not csv or jsonl")),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
        }
    }
}

/// `2026-11-01` (midnight UTC) or an RFC 3339 time, as unix ms.
pub fn parse_since(s: &str) -> Result<u64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis().max(0) as u64);
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_millis()
                .max(0) as u64
        })
        .map_err(|_| {
            format!("`{s}` is not a date like 2026-11-01 or a time like 2026-11-01T12:00:00Z")
        })
}

#[derive(Debug, Serialize)]
struct Row<'a> {
    payment_id: &'a str,
    provider: ProviderId,
    state: crate::state::State,
    final_at: String,
    final_source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount_minor: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    references: std::collections::BTreeMap<&'a str, &'a str>,
    /// What the provider reported when it named other money than tracked.
    #[serde(skip_serializing_if = "Option::is_none")]
    reported_amount: Option<&'a str>,
}

fn row(p: &Payment) -> Option<Row<'_>> {
    let final_ms = p.final_ms?;
    // Keys that are credentials, not references, are never exported.
    let secret = crate::providers::plugin(p.provider).secret_keys;
    Some(Row {
        payment_id: &p.id,
        provider: p.provider,
        state: p.state,
        final_at: chrono::DateTime::from_timestamp_millis(final_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        final_source: p.final_source.map(|s| s.as_str()).unwrap_or(""),
        amount_minor: p.amount_minor,
        currency: p.currency.as_deref(),
        references: p
            .keys
            .iter()
            .filter(|(k, _)| !secret.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        reported_amount: p.mismatch.as_ref().map(|m| m.reported.as_str()),
    })
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub const CSV_HEADER: &str =
    "payment_id,provider,state,final_at,final_source,amount_minor,currency,references,reported_amount";

/// Writes every payment final since `since_ms`, in creation order; returns
/// the number of rows.
pub async fn write<W: Write>(
    store: &Store,
    since_ms: u64,
    format: Format,
    out: &mut W,
) -> Result<usize, ExportError> {
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    let mut after: Option<String> = None;
    let mut rows = 0;
    loop {
        let page = store.list(None, None, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for p in &page {
            let Some(r) = row(p).filter(|_| p.final_ms >= Some(since_ms)) else {
                continue;
            };
            match format {
                Format::Jsonl => {
                    serde_json::to_writer(&mut *out, &r).map_err(std::io::Error::from)?;
                    writeln!(out)?;
                }
                Format::Csv => {
                    let refs: Vec<String> = r
                        .references
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let fields = [
                        r.payment_id.to_string(),
                        r.provider.to_string(),
                        r.state.to_string(),
                        r.final_at.clone(),
                        r.final_source.to_string(),
                        r.amount_minor.map(|a| a.to_string()).unwrap_or_default(),
                        r.currency.unwrap_or("").to_string(),
                        refs.join(";"),
                        r.reported_amount.unwrap_or("").to_string(),
                    ];
                    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    writeln!(out, "{}", line.join(","))?;
                }
            }
            rows += 1;
        }
    }
    Ok(rows)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_a_time() {
        assert_eq!(parse_since("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1_000);
        assert!(parse_since("yesterday").unwrap_err().contains("2026-11-01"));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

//! What `show`, `list` and `show-action` print for a person: aligned
//! fields and tables, amounts in major units, times in the local time
//! zone. `--json` prints the API's answer as it is, for scripts.

use std::fmt::Write;

use crate::action::Action;
use crate::listen::admin::{Page, PaymentView};
use crate::model::Payment;

/// A Unix-milliseconds time in the local zone, to the second.
pub fn local_time(ms: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms as i64).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%:z").to_string(),
        None => format!("{ms} ms"),
    }
}

/// An amount in minor units as its currency writes it: `12.50 EUR`.
pub fn amount(minor: Option<i64>, currency: Option<&str>) -> String {
    let Some(minor) = minor else {
        return "-".into();
    };
    let scale = crate::money::currency_scale(currency);
    let unit = 10i64.pow(scale);
    let sign = if minor < 0 { "-" } else { "" };
    let (whole, frac) = (
        minor.unsigned_abs() / unit as u64,
        minor.unsigned_abs() % unit as u64,
    );
    let mut s = format!("{sign}{whole}");
    if scale > 0 {
        let _ = write!(s, ".{frac:0width$}", width = scale as usize);
    }
    if let Some(c) = currency {
        let _ = write!(s, " {c}");
    }
    s
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < width.len() {
                let _ = write!(l, "{cell:<w$}  ", w = width[i]);
            } else {
                l.push_str(cell);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `name  value` lines, names padded to the longest.
fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

fn payment_fields(p: &Payment) -> Vec<(&'static str, String)> {
    let mut state = p.state.to_string();
    if let Some(raw) = &p.raw_status {
        let _ = write!(state, " ({raw})");
    }
    let mut out = vec![
        ("payment", p.id.clone()),
        ("provider", p.provider.to_string()),
        ("state", state),
        ("amount", amount(p.amount_minor, p.currency.as_deref())),
        (
            "keys",
            p.keys
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("tracked", local_time(p.created_ms)),
        ("updated", local_time(p.updated_ms)),
    ];
    if let (Some(at), Some(source)) = (p.final_ms, p.final_source) {
        out.push((
            "final",
            format!("{} (from {})", local_time(at), source.as_str()),
        ));
    }
    if let Some(w) = &p.window {
        let window = if w.open {
            format!(
                "open until {}, next poll {}, {} polls",
                local_time(w.ends_ms),
                local_time(w.next_ms),
                w.polls
            )
        } else {
            format!("closed at {}, {} polls", local_time(w.ends_ms), w.polls)
        };
        out.push(("polling", window));
    }
    if let Some(m) = &p.mismatch {
        out.push((
            "mismatch",
            format!(
                "the provider reported {} at {}",
                m.reported,
                local_time(m.at_ms)
            ),
        ));
    }
    out
}

/// `payrecon show`: the payment, its history and its actions.
pub fn payment(v: &PaymentView) -> String {
    let mut out = fields(&payment_fields(&v.payment));
    if let Some(history) = v.history.as_ref().filter(|h| !h.is_empty()) {
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|o| {
                vec![
                    o.seq.to_string(),
                    local_time(o.at_ms),
                    o.source.as_str().to_string(),
                    o.raw_status.clone(),
                    o.state.map_or("-".into(), |s| s.to_string()),
                    o.decision
                        .map_or("-".into(), |d| format!("{d:?}").to_lowercase()),
                    if o.repeats > 0 {
                        format!("+{} repeats", o.repeats)
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        out.push_str("\nhistory\n");
        out.push_str(&table(
            &["#", "time", "source", "status", "state", "decision", ""],
            &rows,
        ));
    }
    if let Some(actions) = v.actions.as_ref().filter(|a| !a.is_empty()) {
        out.push_str("\nactions\n");
        out.push_str(&action_table(actions));
    }
    out
}

fn action_table(actions: &[Action]) -> String {
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.request.name().to_string(),
                a.state.as_str().to_string(),
                a.attempts.to_string(),
                local_time(a.updated_ms),
            ]
        })
        .collect();
    table(&["action", "kind", "state", "attempts", "updated"], &rows)
}

/// `payrecon list`: one line per payment, and how to get the next page.
pub fn page(p: &Page) -> String {
    if p.payments.is_empty() {
        return "no payments\n".into();
    }
    let rows: Vec<Vec<String>> = p
        .payments
        .iter()
        .map(|v| {
            let p = &v.payment;
            vec![
                p.id.clone(),
                p.provider.to_string(),
                p.state.to_string(),
                amount(p.amount_minor, p.currency.as_deref()),
                local_time(p.updated_ms),
            ]
        })
        .collect();
    let mut out = table(
        &["payment", "provider", "state", "amount", "updated"],
        &rows,
    );
    if let Some(next) = &p.next_after {
        let _ = writeln!(out, "\nmore: --after {next}");
    }
    out
}

/// `payrecon show-action`.
pub fn action(a: &Action) -> String {
    let mut pairs = vec![
        ("action", a.id.clone()),
        ("payment", a.payment_id.clone()),
        ("provider", a.provider.to_string()),
        ("kind", a.request.name().to_string()),
        ("state", a.state.as_str().to_string()),
        ("attempts", a.attempts.to_string()),
        ("created", local_time(a.created_ms)),
        ("updated", local_time(a.updated_ms)),
        ("deadline", local_time(a.deadline_ms)),
    ];
    if let Some(k) = &a.idempotency_key {
        pairs.push(("idempotency", k.clone()));
    }
    if let Some(e) = &a.error {
        pairs.push(("error", e.clone()));
    }
    if let Some(answer) = &a.answer {
        pairs.push(("answer", answer.to_string()));
    }
    fields(&pairs)
}

#[cfg(test)]
mod tests {
    use super::{amount, table};

    #[test]
    fn amounts_are_written_in_their_currency_s_major_units() {
        assert_eq!(amount(Some(1250), Some("EUR")), "12.50 EUR");
        assert_eq!(amount(Some(-5), Some("EUR")), "-0.05 EUR");
        assert_eq!(amount(Some(250_000), Some("KWD")), "250.000 KWD");
        assert_eq!(amount(None, Some("EUR")), "-");
    }

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let t = table(
            &["id", "state", "note"],
            &[
                vec!["pay_1".into(), "succeeded".into(), "".into()],
                vec!["p".into(), "failed".into(), "declined".into()],
            ],
        );
        assert_eq!(
            t,
            "id     state      note\npay_1  succeeded\np      failed     declined\n"
        );
    }
}

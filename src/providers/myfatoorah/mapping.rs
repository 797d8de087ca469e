//! MyFatoorah's invoice statuses mapped to payrecon's states (an unpaid
//! invoice past its expiry is final), and an invoice read into a report.

use super::*;

/// An invoice's expiry (`ExpiryDate` + `ExpiryTime`, Kuwait time, UTC+3)
/// as unix ms; `Ok(None)` when it has none. Every step is checked: a date
/// at the edge of the calendar is unreadable, never a panic.
pub fn expiry_ms(inv: &Invoice) -> Result<Option<i64>, String> {
    let (Some(d), Some(t)) = (&inv.expiry_date, &inv.expiry_time) else {
        return Ok(None);
    };
    let unreadable = || format!("expiry `{d} {t}` is not a date and time payrecon can read");
    let date =
        chrono::NaiveDate::parse_from_str(d.trim(), "%B %d, %Y").map_err(|_| unreadable())?;
    let time =
        chrono::NaiveTime::parse_from_str(t.trim(), "%H:%M:%S%.f").map_err(|_| unreadable())?;
    let utc = date
        .and_time(time)
        .checked_sub_signed(chrono::TimeDelta::hours(3))
        .ok_or_else(unreadable)?;
    Ok(Some(utc.and_utc().timestamp_millis()))
}

/// Whether an invoice's expiry has passed at `now_ms`. An unreadable
/// expiry never expires an invoice ([`report_from`] records it).
pub fn expired(inv: &Invoice, now_ms: u64) -> bool {
    matches!(expiry_ms(inv), Ok(Some(ms)) if ms >= 0 && (ms as u64) < now_ms)
}

/// Maps an invoice to a normalized state, from its transactions.
pub fn map_invoice(inv: &Invoice, now_ms: u64) -> (String, Option<State>) {
    let has = |s: &str| {
        inv.invoice_transactions
            .iter()
            .any(|t| t.transaction_status == s)
    };
    let raw = |tx: &str| format!("{}/{tx}", inv.invoice_status);
    if has("Succss") {
        (raw("Succss"), Some(State::Succeeded))
    } else if has("Canceled") {
        (raw("Canceled"), Some(State::Reversed))
    } else if has("Authorize") {
        (raw("Authorize"), Some(State::Authorized))
    } else if inv.invoice_status == "Canceled" {
        (inv.invoice_status.clone(), Some(State::Failed))
    } else if expired(inv, now_ms) {
        (
            format!("{}/Expired", inv.invoice_status),
            Some(State::Failed),
        )
    } else if has("InProgress") || has("Failed") || inv.invoice_status == "Pending" {
        (
            raw(if has("InProgress") {
                "InProgress"
            } else {
                "Pending"
            }),
            Some(State::Pending),
        )
    } else {
        (inv.invoice_status.clone(), None)
    }
}

/// A report of an invoice's state.
pub fn report_from(inv: &Invoice, source: Source, now_ms: u64) -> Report {
    let (raw_status, state) = map_invoice(inv, now_ms);
    let mut fields = BTreeMap::new();
    fields.insert("invoice_status".into(), inv.invoice_status.clone());
    fields.insert("invoice_value".into(), inv.invoice_value.to_string());
    if let Some(r) = &inv.invoice_reference {
        fields.insert("invoice_reference".into(), r.clone());
    }
    if let (Some(d), Some(t)) = (&inv.expiry_date, &inv.expiry_time) {
        fields.insert("expiry".into(), format!("{d} {t} (Kuwait)"));
    }
    if let Err(why) = expiry_ms(inv) {
        fields.insert(crate::model::UNREADABLE.into(), why);
    }
    if let Some(t) = inv.invoice_transactions.last() {
        fields.insert("transaction_status".into(), t.transaction_status.clone());
        if let Some(p) = &t.payment_id {
            fields.insert("payment_id".into(), p.clone());
        }
    }
    Report {
        source,
        raw_status,
        state,
        fields,
        learned_keys: vec![],
    }
}

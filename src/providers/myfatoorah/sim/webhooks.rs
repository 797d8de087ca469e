//! The sandbox's webhooks: the v1 or v2 body of an invoice's last
//! transaction, signed as providers.md describes, and its delivery.

use super::*;

/// The webhook body for an invoice's last transaction, and its signature.
fn webhook_body(inv: &Invoice, version: u8, secret: &str, n: u64) -> (serde_json::Value, String) {
    use crate::providers::myfatoorah::webhook::{sign, signed_text};
    let tx = inv.invoice_transactions.last().cloned().unwrap_or_default();
    let status = match tx.transaction_status.as_str() {
        "Succss" => "SUCCESS",
        "Canceled" => "CANCELED",
        "Authorize" => "AUTHORIZE",
        "Failed" => "FAILED",
        _ => "INPROGRESS",
    };
    let body = if version == 1 {
        serde_json::json!({
            "EventType": 1, "Event": "TransactionsStatusChanged", "DateTime": "22112026030000", "CountryIsoCode": "KWT",
            "Data": {
                "InvoiceId": inv.invoice_id, "InvoiceReference": inv.invoice_reference, "CreatedDate": inv.created_date,
                "CustomerReference": inv.customer_reference, "CustomerName": inv.customer_name, "CustomerMobile": "+965",
                "CustomerEmail": null, "TransactionStatus": status, "PaymentMethod": "VISA/MASTER", "UserDefinedField": null,
                "ReferenceId": tx.reference_id, "TrackId": tx.track_id, "PaymentId": tx.payment_id,
                "AuthorizationId": tx.authorization_id, "InvoiceValueInBaseCurrency": inv.invoice_value.to_string(),
                "BaseCurrency": "KWD", "InvoiceValueInDisplayCurreny": inv.invoice_value.to_string(), "DisplayCurrency": "KWD",
                "InvoiceValueInPayCurrency": inv.invoice_value.to_string(), "PayCurrency": "KWD"
            }
        })
    } else {
        serde_json::json!({
            "Event": {"Code": 1, "Name": "PAYMENT_STATUS_CHANGED", "CountryIsoCode": "KWT", "CreationDate": "2026-11-22T03:00:00", "Reference": format!("WH-{}-{n}", inv.invoice_id)},
            "Data": {
                "Invoice": {"Id": inv.invoice_id, "Status": inv.invoice_status.to_ascii_uppercase(), "Reference": inv.invoice_reference, "ExternalIdentifier": null},
                "Transaction": {"Id": tx.transaction_id, "Status": status, "PaymentMethod": "VISA/MASTER", "PaymentId": tx.payment_id},
                "Amount": {"BaseCurrency": "KWD", "ValueInBaseCurrency": inv.invoice_value.to_string()}
            }
        })
    };
    let sig = signed_text(&body)
        .map(|(_, t)| sign(secret, &t))
        .unwrap_or_default();
    (body, sig)
}

/// One webhook event: where it goes, its body and signature. Its
/// `Event.Reference` is new for each event and kept across re-sends.
pub(super) fn webhook_event(inner: &Inner, inv: &Invoice) -> Option<(String, serde_json::Value, String)> {
    let (url, secret, version) = lock(&inner.webhook).clone()?;
    let n = inner.webhook_events.fetch_add(1, Ordering::SeqCst) + 1;
    let (body, sig) = webhook_body(inv, version, &secret, n);
    Some((url, body, sig))
}

/// Delivers an event once; the receiver's status.
pub(super) async fn deliver(
    inner: &Inner,
    (url, body, sig): &(String, serde_json::Value, String),
) -> Option<u16> {
    let status = inner
        .client
        .post(url)
        .header("MyFatoorah-Signature", sig)
        .json(body)
        .send()
        .await
        .ok()?
        .status()
        .as_u16();
    if status == 200 {
        inner.webhooks_acked.fetch_add(1, Ordering::SeqCst);
    }
    Some(status)
}

pub(super) async fn send_webhook(inner: &Inner, inv: &Invoice) -> Option<u16> {
    let event = webhook_event(inner, inv)?;
    deliver(inner, &event).await
}

//! MyFatoorah webhooks (providers.md): a JSON POST signed in the
//! `MyFatoorah-Signature` header with base64 HMAC-SHA256 over `key=value`
//! pairs joined by `,` (null as empty).
//!
//! - Version 1 (`EventType` 1, TransactionsStatusChanged): the pairs are
//!   every field of `Data`, sorted by name case-insensitively.
//! - Version 2 (`Event.Code` 1, PAYMENT_STATUS_CHANGED): the pairs are
//!   `Invoice.Id`, `Invoice.Status`, `Transaction.Status`,
//!   `Transaction.PaymentId`, `Invoice.ExternalIdentifier`, in that order
//!   (unconfirmed: providers.md marks it so; each pair is written with the
//!   dotted name).
//!
//! Both are de-duplicated on their signed text (with the version and, for
//! v1, the event type), never on unsigned fields: a replay that changes
//! v2's unsigned `Event.Reference` is still a repeat.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::state::State;

/// What a verified webhook says.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub version: u8,
    pub invoice_id: String,
    pub transaction_status: String,
    pub payment_id: Option<String>,
    /// De-duplication key: signed content only.
    pub dedupe: String,
    /// v2's `Event.Reference` (unsigned; informational).
    pub reference: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum WebhookError {
    Malformed(String),
    Forged,
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The signed text of a webhook body, and its version.
pub fn signed_text(body: &serde_json::Value) -> Result<(u8, String), WebhookError> {
    if body.get("EventType").is_some() {
        let data = body["Data"]
            .as_object()
            .ok_or_else(|| WebhookError::Malformed("v1 webhook without Data".into()))?;
        let mut keys: Vec<&String> = data.keys().collect();
        keys.sort_by_key(|k| k.to_lowercase());
        let text = keys
            .iter()
            .map(|k| format!("{k}={}", text_of(&data[k.as_str()])))
            .collect::<Vec<_>>()
            .join(",");
        return Ok((1, text));
    }
    if body["Event"].is_object() {
        let d = &body["Data"];
        let fields = [
            ("Invoice.Id", &d["Invoice"]["Id"]),
            ("Invoice.Status", &d["Invoice"]["Status"]),
            ("Transaction.Status", &d["Transaction"]["Status"]),
            ("Transaction.PaymentId", &d["Transaction"]["PaymentId"]),
            (
                "Invoice.ExternalIdentifier",
                &d["Invoice"]["ExternalIdentifier"],
            ),
        ];
        let text = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", text_of(v)))
            .collect::<Vec<_>>()
            .join(",");
        return Ok((2, text));
    }
    Err(WebhookError::Malformed(
        "neither a v1 (EventType) nor a v2 (Event) webhook".into(),
    ))
}

/// base64 HMAC-SHA256 of `text` with `secret`.
pub fn sign(secret: &str, text: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Verifies and reads a webhook.
pub fn verify(secret: &str, signature: Option<&str>, body: &[u8]) -> Result<Webhook, WebhookError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("body is not JSON: {e}")))?;
    let (version, text) = signed_text(&v)?;
    let given = signature.ok_or(WebhookError::Forged)?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .map_err(|_| WebhookError::Forged)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&given).map_err(|_| WebhookError::Forged)?;
    let d = &v["Data"];
    let (invoice_id, status, payment_id, dedupe, reference) = if version == 1 {
        (
            text_of(&d["InvoiceId"]),
            text_of(&d["TransactionStatus"]),
            d["PaymentId"].as_str().map(String::from),
            format!("v1|{}|{text}", text_of(&v["EventType"])),
            None,
        )
    } else {
        (
            text_of(&d["Invoice"]["Id"]),
            text_of(&d["Transaction"]["Status"]),
            d["Transaction"]["PaymentId"].as_str().map(String::from),
            format!("v2|{text}"),
            Some(text_of(&v["Event"]["Reference"])).filter(|r| !r.is_empty()),
        )
    };
    if invoice_id.is_empty() || status.is_empty() {
        return Err(WebhookError::Malformed(
            "webhook without invoice id or transaction status".into(),
        ));
    }
    Ok(Webhook {
        version,
        invoice_id,
        transaction_status: status,
        payment_id,
        dedupe,
        reference,
    })
}

/// Maps a webhook's transaction status (case-insensitive).
pub fn map_status(s: &str) -> Option<State> {
    match s.to_ascii_uppercase().as_str() {
        "SUCCESS" | "SUCCSS" | "PAID" => Some(State::Succeeded),
        "AUTHORIZE" | "AUTHORIZED" => Some(State::Authorized),
        "CANCELED" | "CANCELLED" | "RELEASED" => Some(State::Reversed),
        "INPROGRESS" | "PENDING" => Some(State::Pending),
        // A failed attempt: the customer may pay again; recorded only.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> serde_json::Value {
        serde_json::json!({"EventType": 1, "Event": "TransactionsStatusChanged", "DateTime": "22112026030000", "CountryIsoCode": "KWT",
            "Data": {"InvoiceId": 9001, "TransactionStatus": "SUCCESS", "PaymentId": "0707", "customerReference": null, "Amount": "100.000"}})
    }

    #[test]
    fn v1_signs_data_sorted_case_insensitively_with_null_as_empty() {
        let (version, text) = signed_text(&v1()).unwrap();
        assert_eq!(version, 1);
        assert_eq!(text, "Amount=100.000,customerReference=,InvoiceId=9001,PaymentId=0707,TransactionStatus=SUCCESS");
    }

    #[test]
    fn a_signed_webhook_verifies_and_a_forged_one_does_not() {
        let body = serde_json::to_vec(&v1()).unwrap();
        let sig = sign("s3cret", &signed_text(&v1()).unwrap().1);
        let w = verify("s3cret", Some(&sig), &body).unwrap();
        assert_eq!(
            (w.invoice_id.as_str(), w.transaction_status.as_str()),
            ("9001", "SUCCESS")
        );
        assert_eq!(
            verify("other", Some(&sig), &body),
            Err(WebhookError::Forged)
        );
        assert_eq!(verify("s3cret", None, &body), Err(WebhookError::Forged));
        let mut tampered = v1();
        tampered["Data"]["TransactionStatus"] = "FAILED".into();
        assert_eq!(
            verify(
                "s3cret",
                Some(&sig),
                &serde_json::to_vec(&tampered).unwrap()
            ),
            Err(WebhookError::Forged)
        );
    }

    #[test]
    fn v2_signs_the_five_fields_in_order() {
        let b = serde_json::json!({"Event": {"Code": 1, "Name": "PAYMENT_STATUS_CHANGED", "Reference": "WH-1"},
            "Data": {"Invoice": {"Id": 9001, "Status": "PAID", "ExternalIdentifier": null}, "Transaction": {"Status": "SUCCESS", "PaymentId": "0707"}}});
        let (v, text) = signed_text(&b).unwrap();
        assert_eq!(v, 2);
        assert_eq!(text, "Invoice.Id=9001,Invoice.Status=PAID,Transaction.Status=SUCCESS,Transaction.PaymentId=0707,Invoice.ExternalIdentifier=");
        let w = verify(
            "k",
            Some(&sign("k", &text)),
            &serde_json::to_vec(&b).unwrap(),
        )
        .unwrap();
        assert_eq!(w.reference.as_deref(), Some("WH-1"));
        // A replay with a new (unsigned) reference is the same event.
        let mut replay = b.clone();
        replay["Event"]["Reference"] = "WH-2".into();
        let again = verify(
            "k",
            Some(&sign("k", &text)),
            &serde_json::to_vec(&replay).unwrap(),
        )
        .unwrap();
        assert_eq!(again.dedupe, w.dedupe);
        assert!(!w.dedupe.contains("WH-1"));
    }
}

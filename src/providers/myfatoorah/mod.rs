//! MyFatoorah, from seed 004 and providers.md: `UpdatePaymentStatus`
//! (capture, release), `GetPaymentStatus` for polling and for settling
//! actions whose outcome is uncertain, the `IsSuccess/ValidationErrors/Data`
//! envelope, and bearer-token auth.
//!
//! Assumptions (docs/providers.md): `Operation` is sent in lower case as in
//! the seed's samples (`"capture"`, `"release"`); `KeyType` is sent as the
//! request model spells it (`InvoiceId`, `PaymentId`, `CustomerReference`);
//! a 5xx means the update was not applied; the invoice value payrecon
//! checks amounts against is the tracked `amount_minor` (or the last
//! inquiry's `InvoiceValue`).

pub mod actions;
pub mod config;
mod demo;
mod mapping;
pub mod sim;
pub mod webhook;
mod wire;
pub use mapping::*;
pub use wire::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    lookup_key, BoxFuture, CallbackError, Confirmed, InquiryError, Provider, RawCallback, Sent,
    TrackKeys,
};
pub use actions::Request;
use crate::action::{ActionCheck, ActionRequest, Confirmation, SendError};
use crate::model::{Keys, Payment, ProviderId, Report, Source};
use crate::money::{currency_scale, parse_amount};
use crate::settings::{PollingConfig, Secret};
use crate::state::State;
use crate::store::CallbackRecord;

const ID: ProviderId = ProviderId::Myfatoorah;

/// Key names: exactly one of these identifies the invoice.
pub const KEY_NAMES: [(&str, &str); 3] = [
    ("invoice_id", "InvoiceId"),
    ("payment_id", "PaymentId"),
    ("customer_reference", "CustomerReference"),
];

pub struct Myfatoorah {
    base_url: String,
    token: Secret,
    /// Verifies webhooks; without it every webhook is refused.
    webhook_secret: Option<Secret>,
    polling: PollingConfig,
    client: reqwest::Client,
}

impl Myfatoorah {
    pub fn new(
        base_url: String,
        token: Secret,
        webhook_secret: Option<Secret>,
        polling: PollingConfig,
    ) -> Myfatoorah {
        let client = super::http_client(polling.request_timeout);
        Myfatoorah {
            base_url,
            token,
            webhook_secret,
            polling,
            client,
        }
    }

    /// The invoice's Key and KeyType.
    fn key(payment: &Payment) -> (String, String) {
        for (name, key_type) in KEY_NAMES {
            if let Some(v) = payment.keys.get(name) {
                return (v.clone(), key_type.to_string());
            }
        }
        (String::new(), "InvoiceId".into())
    }

    async fn status(&self, payment: &Payment) -> Result<Invoice, InquiryError> {
        let (key, key_type) = Self::key(payment);
        let resp = self
            .client
            .post(format!("{}/v2/GetPaymentStatus", self.base_url))
            .bearer_auth(self.token.expose())
            .json(&StatusRequest { key, key_type })
            .send()
            .await
            .map_err(|e| InquiryError::Transient(e.without_url().to_string()))?;
        let status = resp.status();
        // 429: the rate limit; asked again at the next tick.
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(InquiryError::Transient(format!("HTTP {status}")));
        }
        let env: Envelope<Invoice> = resp
            .json()
            .await
            .map_err(|e| InquiryError::Invalid(format!("HTTP {status}: {}", e.without_url())))?;
        match env.data {
            Some(inv) if env.is_success => Ok(inv),
            // The sandbox and the live API answer an unknown key with a
            // validation error on `Key` that says "not found".
            _ if env.validation_errors.iter().flatten().any(|v| {
                v.name.eq_ignore_ascii_case("key") && v.error.to_lowercase().contains("not found")
            }) =>
            {
                Err(InquiryError::NotFound(describe(&env)))
            }
            _ => Err(InquiryError::Invalid(format!(
                "HTTP {status}: {}",
                describe(&env)
            ))),
        }
    }

    /// Invoice value in minor units, from the tracked amount.
    fn invoice_value(payment: &Payment) -> Option<i64> {
        payment.amount_minor
    }
}

fn describe<T>(env: &Envelope<T>) -> String {
    let mut s = env.message.clone().unwrap_or_default();
    for v in env.validation_errors.iter().flatten() {
        s.push_str(&format!("; {}: {}", v.name, v.error));
    }
    s
}

fn units_to_f64(units: i64, scale: u32) -> f64 {
    units as f64 / 10f64.powi(scale as i32)
}

impl Provider for Myfatoorah {
    fn id(&self) -> ProviderId {
        ID
    }

    fn polling(&self) -> &PollingConfig {
        &self.polling
    }

    fn track_keys(&self, keys: &Keys) -> Result<TrackKeys, String> {
        let given: Vec<_> = KEY_NAMES
            .iter()
            .filter(|(n, _)| keys.contains_key(*n))
            .collect();
        if given.len() != 1 {
            return Err("give exactly one of invoice_id, payment_id, customer_reference".into());
        }
        for k in keys.keys() {
            if !KEY_NAMES.iter().any(|(n, _)| n == k) {
                return Err(format!("unknown key `{k}` for myfatoorah"));
            }
        }
        let (name, _) = given[0];
        let v = &keys[*name];
        if v.is_empty()
            || v.len() > 64
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(format!("key `{name}` must be 1-64 letters, digits, - or _"));
        }
        if *name == "invoice_id" && !v.chars().all(|c| c.is_ascii_digit()) {
            return Err("key `invoice_id` is MyFatoorah's number".into());
        }
        Ok(TrackKeys {
            idempotency_key: lookup_key(ID, "idem", &format!("{name}/{v}")),
            lookup_keys: vec![lookup_key(ID, name, v)],
        })
    }

    fn lookup_by(&self, name: &str, value: &str) -> Option<String> {
        KEY_NAMES
            .iter()
            .any(|(n, _)| *n == name)
            .then(|| lookup_key(ID, name, value))
    }

    fn inquire<'a>(&'a self, payment: &'a Payment) -> BoxFuture<'a, Result<Report, InquiryError>> {
        Box::pin(async move {
            let inv = self.status(payment).await?;
            Ok(report_from(&inv, Source::Poll, crate::model::now_ms()))
        })
    }

    fn parse_callback(
        &self,
        raw: &RawCallback<'_>,
        received_ms: u64,
    ) -> Result<CallbackRecord, CallbackError> {
        use crate::providers::myfatoorah::webhook::{map_status, verify, WebhookError};
        let Some(secret) = &self.webhook_secret else {
            // Nothing to verify against: refuse rather than trust.
            return Err(CallbackError::Forged);
        };
        let sig = (raw.header)("MyFatoorah-Signature");
        let w = verify(secret.expose(), sig.as_deref(), raw.body).map_err(|e| match e {
            WebhookError::Malformed(m) => CallbackError::Malformed(m),
            WebhookError::Forged => CallbackError::Forged,
        })?;
        let mut fields = BTreeMap::new();
        fields.insert("webhook_version".to_string(), w.version.to_string());
        if let Some(p) = &w.payment_id {
            fields.insert("payment_id".into(), p.clone());
        }
        if let Some(r) = &w.reference {
            // Unsigned: kept as the first copy had it, never a key.
            fields.insert("event_reference".into(), r.clone());
        }
        Ok(CallbackRecord {
            dedupe_key: format!("myfatoorah|wh|{}", w.dedupe),
            match_key: lookup_key(ID, "invoice_id", &w.invoice_id),
            report: Report {
                source: Source::Callback,
                raw_status: format!("webhook:{}", w.transaction_status),
                state: map_status(&w.transaction_status),
                fields,
                learned_keys: vec![],
            },
            received_ms,
            // Both webhook versions sign the fields the state is read from.
            unsigned_claim: false,
        })
    }

    fn check_action(&self, payment: &Payment, req: &ActionRequest) -> Result<ActionCheck, String> {
        if payment.state.is_final() {
            return Err(format!(
                "the invoice is already {}; only an authorized invoice can be captured or released",
                payment.state
            ));
        }
        let scale = currency_scale(payment.currency.as_deref());
        let value = Self::invoice_value(payment).ok_or(
            "the invoice value is unknown: track the payment with amount_minor and currency",
        )?;
        match req.read()? {
            Request::Capture { amount } => {
                let a = parse_amount(&amount, scale)?;
                if a > value {
                    return Err(format!(
                        "capture amount {amount} is more than the invoice value {}",
                        units_to_f64(value, scale)
                    ));
                }
            }
            Request::Release {
                amount: Some(amount),
            } => {
                let a = parse_amount(&amount, scale)?;
                if a != value {
                    return Err(format!(
                        "release amount {amount} must equal the invoice value {}",
                        units_to_f64(value, scale)
                    ));
                }
            }
            Request::Release { amount: None } => {}
        }
        Ok(ActionCheck {
            exclusive_key: self.exclusive_key(payment, req),
        })
    }

    fn exclusive_key(&self, payment: &Payment, _: &ActionRequest) -> Option<String> {
        Some(lookup_key(ID, "op", &Self::key(payment).0))
    }

    fn send_action<'a>(
        &'a self,
        payment: &'a Payment,
        req: &'a ActionRequest,
    ) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let scale = currency_scale(payment.currency.as_deref());
            let value = Self::invoice_value(payment).unwrap_or(0);
            let typed = req.read().map_err(|message| SendError::Final {
                message,
                details: None,
            })?;
            let (operation, amount) = match typed {
                Request::Capture { amount } => {
                    ("capture", parse_amount(&amount, scale).unwrap_or(0))
                }
                Request::Release { amount } => (
                    "release",
                    amount
                        .as_deref()
                        .and_then(|a| parse_amount(a, scale).ok())
                        .unwrap_or(value),
                ),
            };
            let (key, key_type) = Self::key(payment);
            let body = UpdateRequest {
                operation: operation.into(),
                amount: units_to_f64(amount, scale),
                key,
                key_type,
            };
            let resp = self
                .client
                .post(format!("{}/v2/UpdatePaymentStatus", self.base_url))
                .bearer_auth(self.token.expose())
                .json(&body)
                .send()
                .await
                .map_err(super::send_error)?;
            let status = resp.status();
            if status.is_server_error() {
                return Err(SendError::Retryable(format!("HTTP {status}")));
            }
            let bytes = resp.bytes().await.map_err(super::send_error)?;
            let env: Envelope<Invoice> =
                serde_json::from_slice(&bytes).map_err(|e| SendError::Final {
                    message: format!("HTTP {status}: unreadable answer: {e}"),
                    details: None,
                })?;
            match env.data {
                Some(inv) if env.is_success => {
                    let report = report_from(&inv, Source::Action, crate::model::now_ms());
                    let answer = serde_json::json!({
                        "InvoiceId": inv.invoice_id,
                        "InvoiceStatus": inv.invoice_status,
                        "InvoiceValue": inv.invoice_value,
                        "TransactionStatus": inv.invoice_transactions.last().map(|t| t.transaction_status.clone()),
                    });
                    Ok((answer, vec![report]))
                }
                _ => Err(SendError::Final {
                    message: format!("HTTP {status}: {}", describe(&env)),
                    details: env
                        .validation_errors
                        .as_ref()
                        .and_then(|v| serde_json::to_value(v).ok()),
                }),
            }
        })
    }

    fn confirm_action<'a>(
        &'a self,
        payment: &'a Payment,
        req: &'a ActionRequest,
    ) -> Option<BoxFuture<'a, Confirmed>> {
        Some(Box::pin(async move {
            let inv = self.status(payment).await?;
            let wanted = match req.read() {
                Ok(Request::Release { .. }) => "Canceled",
                _ => "Succss",
            };
            let applied = inv
                .invoice_transactions
                .iter()
                .any(|t| t.transaction_status == wanted);
            let report = report_from(&inv, Source::Action, crate::model::now_ms());
            if applied {
                let answer = serde_json::json!({
                    "InvoiceId": inv.invoice_id,
                    "InvoiceStatus": inv.invoice_status,
                    "ConfirmedBy": "GetPaymentStatus",
                });
                Ok((Confirmation::Applied(answer), vec![report]))
            } else {
                Ok((Confirmation::NotApplied, vec![report]))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(statuses: &[&str]) -> Invoice {
        Invoice {
            invoice_id: 1,
            invoice_status: "Pending".into(),
            invoice_value: 100.0,
            invoice_transactions: statuses
                .iter()
                .map(|s| InvoiceTransaction {
                    transaction_status: s.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_seed_sample_answer_is_read() {
        let sample = r#"{"IsSuccess": true, "Message": "", "ValidationErrors": null, "Data": {
            "InvoiceId": 2834690, "InvoiceStatus": "Paid", "InvoiceReference": "2023018001",
            "CustomerReference": null, "CreatedDate": "2023-10-08T14:17:44.027",
            "ExpiryDate": "February 5, 2024", "ExpiryTime": "14:17:44.027", "InvoiceValue": 100,
            "Comments": null, "CustomerName": "Anonymous", "CustomerMobile": "+965", "CustomerEmail": null,
            "UserDefinedField": null, "InvoiceDisplayValue": "100.000 KD", "DueDeposit": 97.447,
            "DepositStatus": "Not Deposited", "InvoiceItems": [],
            "InvoiceTransactions": [
              {"TransactionDate": "2023-10-08T14:17:48.4466667", "PaymentGateway": "VISA/MASTER",
               "TransactionStatus": "Authorize", "TransationValue": "250.000", "CardNumber": "450875xxxxxx1019", "ErrorCode": ""},
              {"TransactionDate": "2023-10-08T14:18:56.5033333", "TransactionStatus": "Succss",
               "PaymentId": "07072834690172472072", "TransationValue": "100.000", "Error": null}
            ], "Suppliers": []}}"#;
        let env: Envelope<Invoice> = serde_json::from_str(sample).unwrap();
        let inv = env.data.unwrap();
        assert_eq!(inv.invoice_id, 2834690);
        assert_eq!(
            inv.invoice_transactions[0].transation_value.as_deref(),
            Some("250.000")
        );
        let r = report_from(&inv, Source::Poll, 0);
        assert_eq!(r.state, Some(State::Succeeded));
        assert_eq!(r.raw_status, "Paid/Succss");
        assert_eq!(r.fields["payment_id"], "07072834690172472072");
    }

    #[test]
    fn invoices_map_from_their_transactions() {
        assert_eq!(
            map_invoice(&invoice(&["Authorize"]), 0).1,
            Some(State::Authorized)
        );
        assert_eq!(
            map_invoice(&invoice(&["Authorize", "Succss"]), 0).1,
            Some(State::Succeeded)
        );
        assert_eq!(
            map_invoice(&invoice(&["Authorize", "Canceled"]), 0).1,
            Some(State::Reversed)
        );
        assert_eq!(
            map_invoice(&invoice(&["InProgress"]), 0).1,
            Some(State::Pending)
        );
        assert_eq!(
            map_invoice(&invoice(&["Failed"]), 0).1,
            Some(State::Pending)
        );
        let mut canceled = invoice(&[]);
        canceled.invoice_status = "Canceled".into();
        assert_eq!(map_invoice(&canceled, 0).1, Some(State::Failed));
    }

    #[test]
    fn an_expiry_at_the_edge_of_the_calendar_is_recorded_not_a_panic() {
        let mut inv = Invoice {
            invoice_status: "Pending".into(),
            expiry_date: Some("January 1, -262143".into()),
            expiry_time: Some("00:00:00.000".into()),
            ..Default::default()
        };
        let r = report_from(&inv, Source::Poll, 0);
        assert_eq!(
            r.state,
            Some(State::Pending),
            "the rest of the answer is used"
        );
        assert!(r.fields[crate::model::UNREADABLE].contains("-262143"));
        inv.expiry_time = Some("25:61".into());
        assert!(expiry_ms(&inv).is_err());
        assert!(!expired(&inv, u64::MAX));
    }

    #[test]
    fn expiry_is_read_in_kuwait_time() {
        let mut inv = invoice(&[]);
        inv.expiry_date = Some("February 5, 2024".into());
        inv.expiry_time = Some("14:17:44.027".into());
        // 2024-02-05 14:17:44.027 +03:00 = 11:17:44.027 UTC.
        let at = chrono::DateTime::parse_from_rfc3339("2024-02-05T11:17:44.027Z")
            .unwrap()
            .timestamp_millis() as u64;
        assert!(!expired(&inv, at - 1));
        assert!(expired(&inv, at + 1));
        assert_eq!(map_invoice(&inv, at + 1).1, Some(State::Failed));
        assert_eq!(map_invoice(&inv, at + 1).0, "Pending/Expired");
    }

    #[test]
    fn requests_use_the_seed_field_names() {
        let body = serde_json::to_value(UpdateRequest {
            operation: "capture".into(),
            amount: 100.0,
            key: "2834690".into(),
            key_type: "InvoiceId".into(),
        })
        .unwrap();
        let mut names: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["Amount", "Key", "KeyType", "Operation"]);
    }
}

//! ConnPay (a Paynet-based gateway), from seed 002 and providers.md: the
//! transfer status inquiry, the signed GET callback, and how both map to
//! normalized states.
//!
//! Assumptions the documents leave open (also in docs/providers.md):
//! - the callback's `client_orderid` is the merchant's `invoiceId`; callbacks
//!   are matched by it first, and by the gateway `orderid` learned from polls;
//! - an inquiry's fail answer never decides a payment: `ORDER_NOT_FOUND` and
//!   `INVALID_REQUEST` raise an alert, `INTERNAL_ERROR` is retried like a
//!   5xx, `FILTERED` and `PROCESSING_FAILED` are recorded and the callback
//!   decides;
//! - callback `type` values other than `reversal` and `chargeback` are the
//!   transfer's own type and all read the same way.

pub mod config;
pub mod demo;
mod mapping;
pub mod sim;
mod wire;
pub use mapping::*;
pub use wire::*;

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::{lookup_key, BoxFuture, CallbackError, InquiryError, Provider, RawCallback, TrackKeys};
use crate::model::{Keys, Payment, ProviderId, Report, Source};
use crate::settings::{PollingConfig, Secret};
use crate::state::State;
use crate::store::CallbackRecord;

const ID: ProviderId = ProviderId::Connpay;

/// Key names a tracked ConnPay payment carries.
pub const ENDPOINT_ID: &str = "endpoint_id";
pub const INVOICE_ID: &str = "invoice_id";
pub const SESSION_TOKEN: &str = "session_token";
pub const ACCESS_TOKEN: &str = "access_token";

/// Retries inside one poll tick for transport errors and 5xx. The next
/// tick is 3-5 s away, so two quick retries are all that fit.
const RETRIES_PER_TICK: usize = 2;

/// The ConnPay adapter.
pub struct Connpay {
    /// `base_url`, parsed once: a poll adds its path segments to a copy
    /// instead of parsing a URL (host, IDNA) 12 500 times a second.
    /// `None` only for a base the config loader would have refused.
    base: Option<reqwest::Url>,
    control_key: Secret,
    polling: PollingConfig,
    client: reqwest::Client,
}

impl Connpay {
    pub fn new(base_url: String, control_key: Secret, polling: PollingConfig) -> Connpay {
        let client = super::http_client(polling.request_timeout);
        Connpay {
            base: reqwest::Url::parse(&base_url).ok(),
            control_key,
            polling,
            client,
        }
    }

    /// `{base_url}/paynet/dapi/v1/transfer/{endpoint_id}/{invoice_id}/status`,
    /// the ids percent-encoded as path segments.
    fn status_url(&self, endpoint_id: &str, invoice_id: &str) -> Result<reqwest::Url, InquiryError> {
        let not_a_base = || InquiryError::Invalid("base_url cannot take a path".into());
        let mut url = self.base.clone().ok_or_else(not_a_base)?;
        url.path_segments_mut()
            .map_err(|_| not_a_base())?
            .pop_if_empty()
            .extend(["paynet", "dapi", "v1", "transfer"])
            .extend([endpoint_id, invoice_id, "status"]);
        Ok(url)
    }

    async fn inquire_once(
        &self,
        url: reqwest::Url,
        body: &StatusRequest,
    ) -> Result<Report, InquiryError> {
        let resp = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| InquiryError::Transient(without_url(e)))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(InquiryError::Transient(format!("HTTP {status}")));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| InquiryError::Transient(without_url(e)))?;
        let parsed: StatusResponse = serde_json::from_slice(&bytes)
            .map_err(|e| InquiryError::Invalid(format!("HTTP {status}: {e}")))?;
        report_from(&parsed)
    }
}

/// reqwest errors print the URL, and ConnPay's holds no secret, but keep
/// logs to the cause alone.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "transport error"
    };
    format!("{kind}: {}", e.without_url())
}

fn check_id(keys: &Keys, name: &str, len: std::ops::RangeInclusive<usize>) -> Result<(), String> {
    let v = keys
        .get(name)
        .ok_or_else(|| format!("missing key `{name}`"))?;
    if !len.contains(&v.len()) {
        return Err(format!(
            "key `{name}` must be {} to {} characters long",
            len.start(),
            len.end()
        ));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("key `{name}` may hold only letters, digits, - _ ."));
    }
    Ok(())
}

impl Provider for Connpay {
    fn id(&self) -> ProviderId {
        ID
    }

    fn polling(&self) -> &PollingConfig {
        &self.polling
    }

    fn track_keys(&self, keys: &Keys) -> Result<TrackKeys, String> {
        for k in keys.keys() {
            if ![ENDPOINT_ID, INVOICE_ID, SESSION_TOKEN, ACCESS_TOKEN].contains(&k.as_str()) {
                return Err(format!("unknown key `{k}` for connpay"));
            }
        }
        check_id(keys, ENDPOINT_ID, 1..=64)?;
        check_id(keys, INVOICE_ID, 1..=128)?;
        check_id(keys, SESSION_TOKEN, 16..=36)?;
        if keys.contains_key(ACCESS_TOKEN) {
            check_id(keys, ACCESS_TOKEN, 32..=128)?;
        }
        let invoice = &keys[INVOICE_ID];
        Ok(TrackKeys {
            idempotency_key: lookup_key(ID, "idem", &format!("{}/{invoice}", keys[ENDPOINT_ID])),
            lookup_keys: vec![lookup_key(ID, "inv", invoice)],
        })
    }

    fn lookup_by(&self, name: &str, value: &str) -> Option<String> {
        match name {
            INVOICE_ID => Some(lookup_key(ID, "inv", value)),
            "order_id" => Some(lookup_key(ID, "ord", value)),
            _ => None,
        }
    }

    fn inquire<'a>(&'a self, payment: &'a Payment) -> BoxFuture<'a, Result<Report, InquiryError>> {
        Box::pin(async move {
            let k = |name: &str| payment.keys.get(name).cloned().unwrap_or_default();
            let url = self.status_url(&k(ENDPOINT_ID), &k(INVOICE_ID))?;
            let body = StatusRequest {
                session: RequestSession {
                    access_token: payment.keys.get(ACCESS_TOKEN).cloned(),
                    token: k(SESSION_TOKEN),
                },
            };
            let attempt = || self.inquire_once(url.clone(), &body);
            let retried = attempt
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(50))
                        .with_max_delay(Duration::from_millis(500))
                        .with_max_times(RETRIES_PER_TICK)
                        .with_jitter(),
                )
                .when(|e| matches!(e, InquiryError::Transient(_)));
            match tokio::time::timeout(self.polling.request_timeout, retried).await {
                Ok(r) => r,
                Err(_) => Err(InquiryError::Transient("inquiry timed out".into())),
            }
        })
    }

    fn parse_callback(
        &self,
        raw: &RawCallback<'_>,
        received_ms: u64,
    ) -> Result<CallbackRecord, CallbackError> {
        // The gateway sends a GET with a query string; a form POST is read
        // the same way.
        let text = if raw.method == "POST" && !raw.body.is_empty() {
            std::str::from_utf8(raw.body)
                .map_err(|_| CallbackError::Malformed("body is not UTF-8".into()))?
        } else {
            raw.query
        };
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(text.as_bytes()) {
            if params.insert(k.to_string(), v.to_string()).is_some() {
                return Err(CallbackError::Malformed(format!(
                    "parameter `{k}` repeated"
                )));
            }
        }
        let get = |k: &str| -> Result<&str, CallbackError> {
            params
                .get(k)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CallbackError::Malformed(format!("missing parameter `{k}`")))
        };
        let status = get("status")?;
        let kind = get("type")?;
        let orderid = get("orderid")?;
        let client_orderid = get("client_orderid")?;
        let given = get("control")?;
        let want = control(status, orderid, client_orderid, self.control_key.expose());
        if !bool::from(want.as_bytes().ct_eq(given.to_ascii_lowercase().as_bytes())) {
            return Err(CallbackError::Forged);
        }
        let mut fields = BTreeMap::new();
        for k in [
            "type",
            "orderid",
            "merchant_order",
            "amount",
            "currency",
            "descriptor",
            "error_code",
            "error_message",
        ] {
            if let Some(v) = params.get(k).filter(|v| !v.is_empty()) {
                fields.insert(k.to_string(), v.clone());
            }
        }
        let raw_status = match kind {
            "reversal" | "chargeback" => format!("{kind}:{status}"),
            _ => status.to_string(),
        };
        Ok(CallbackRecord {
            dedupe_key: format!("connpay|cb|{status}|{kind}|{orderid}|{client_orderid}"),
            match_key: lookup_key(ID, "inv", client_orderid),
            report: Report {
                source: Source::Callback,
                raw_status,
                state: map_callback(kind, status),
                fields,
                learned_keys: vec![],
            },
            received_ms,
            // `control` signs status, orderid and client_orderid, not
            // `type`: a reversal claimed by `type` alone waits for an
            // inquiry (docs/providers.md, "What each provider signs").
            unsigned_claim: matches!(kind, "reversal" | "chargeback"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter() -> Connpay {
        Connpay::new(
            "http://127.0.0.1:1".into(),
            Secret::new("merchant-key"),
            PollingConfig::default(),
        )
    }

    #[test]
    fn the_status_url_keeps_the_base_path_and_encodes_the_ids() {
        let url = |base: &str, inv: &str| {
            Connpay::new(base.into(), Secret::new("k"), PollingConfig::default())
                .status_url("4211", inv)
                .map(String::from)
        };
        assert_eq!(
            url("http://127.0.0.1:1", "inv-1").unwrap(),
            "http://127.0.0.1:1/paynet/dapi/v1/transfer/4211/inv-1/status"
        );
        assert_eq!(
            url("https://gw.example/api", "a/b?c").unwrap(),
            "https://gw.example/api/paynet/dapi/v1/transfer/4211/a%2Fb%3Fc/status"
        );
        assert!(matches!(
            url("mailto:ops@example.com", "x"),
            Err(InquiryError::Invalid(_))
        ));
    }

    #[test]
    fn every_documented_field_of_a_success_answer_is_read() {
        let body = r#"{
            "invoiceId": "inv-1", "session": {"token": "s"}, "state": "APPROVED",
            "bankOrderId": "b-9", "orderId": "o-5", "redirectUrl": "https://x/y",
            "transaction": {"amountCentis": 1250, "commissionCentis": 30,
                "orderCreatedDate": "2026-01-01 10:00:00", "transactionCreatedDate": "2026-01-01 10:00:01"},
            "errorCode": 0, "errorMessage": "", "secure3DAuthStatus": "AUTHENTICATED",
            "randomSumAuthStatus": "NOT_AUTHENTICATED"
        }"#;
        let r: StatusResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.secure3d_auth_status.as_deref(), Some("AUTHENTICATED"));
        let rep = report_from(&r).unwrap();
        assert_eq!(rep.state, Some(State::Succeeded));
        assert_eq!(rep.fields["bank_order_id"], "b-9");
        assert_eq!(rep.fields["amount_minor"], "1250");
        assert_eq!(rep.fields["commission_minor"], "30");
        assert_eq!(rep.fields["random_sum_auth_status"], "NOT_AUTHENTICATED");
        assert_eq!(rep.learned_keys, vec!["connpay|ord|o-5".to_string()]);
    }

    #[test]
    fn transfer_fee_list_is_read_in_both_number_forms() {
        let body = r#"{"invoiceId":"i","state":"TRANSFER_FEE_REQUEST","session":{"token":"s"},
            "transferFeeList":[{"assignedId":"gate-a","commissionCentis":"120","currency":"EUR"},
                               {"assignedId":"gate-b","commissionCentis":95,"currency":"USD"}]}"#;
        let r: StatusResponse = serde_json::from_str(body).unwrap();
        let fees = r.transfer_fee_list.as_ref().unwrap();
        assert_eq!(fees[0].commission_centis, 120);
        assert_eq!(fees[1].assigned_id, "gate-b");
        let rep = report_from(&r).unwrap();
        assert_eq!(rep.state, Some(State::ActionRequired));
        assert!(rep.fields["transfer_fee_list"].contains("gate-a"));
    }

    #[test]
    fn fail_answers_never_decide_a_payment() {
        for cause in [
            "ORDER_NOT_FOUND",
            "INVALID_REQUEST",
            "FILTERED",
            "PROCESSING_FAILED",
        ] {
            let body = format!(
                r#"{{"error":{{"cause":"{cause}","code":"E1","message":"m"}},"invoiceId":"i"}}"#
            );
            let r: StatusResponse = serde_json::from_str(&body).unwrap();
            let rep = report_from(&r).unwrap();
            assert_eq!(rep.state, None, "{cause}");
            assert_eq!(rep.raw_status, format!("error:{cause}"));
            assert_eq!(rep.fields["code"], "E1");
        }
        let r: StatusResponse =
            serde_json::from_str(r#"{"error":{"cause":"INTERNAL_ERROR"}}"#).unwrap();
        assert!(matches!(report_from(&r), Err(InquiryError::Transient(_))));
        assert!(matches!(
            report_from(&StatusResponse::default()),
            Err(InquiryError::Invalid(_))
        ));
    }

    #[test]
    fn every_state_maps() {
        assert_eq!(map_state("PROCESSING"), Some(State::Pending));
        assert_eq!(map_state("REDIRECT_REQUEST"), Some(State::ActionRequired));
        assert_eq!(
            map_state("TRANSFER_FEE_REQUEST"),
            Some(State::ActionRequired)
        );
        assert_eq!(map_state("APPROVED"), Some(State::Succeeded));
        assert_eq!(map_state("DECLINED"), Some(State::Failed));
        assert_eq!(map_state("SOMETHING"), None);
        assert_eq!(map_callback("sale", "approved"), Some(State::Succeeded));
        assert_eq!(map_callback("transfer", "filtered"), Some(State::Failed));
        assert_eq!(map_callback("sale", "error"), Some(State::Failed));
        assert_eq!(map_callback("sale", "processing"), Some(State::Pending));
        assert_eq!(map_callback("reversal", "approved"), Some(State::Reversed));
        assert_eq!(
            map_callback("chargeback", "approved"),
            Some(State::Reversed)
        );
        assert_eq!(map_callback("reversal", "declined"), None);
    }

    fn query(status: &str, kind: &str, control: &str) -> String {
        format!("status={status}&type={kind}&orderid=o-1&client_orderid=inv-1&merchant_order=inv-1&amount=12.50&currency=EUR&control={control}")
    }

    #[test]
    fn a_signed_callback_is_read_and_a_forged_one_refused() {
        let a = adapter();
        let good = control("approved", "o-1", "inv-1", "merchant-key");
        let q = query("approved", "sale", &good);
        let cb = a
            .parse_callback(
                &RawCallback {
                    method: "GET",
                    query: &q,
                    body: b"",
                    header: &crate::providers::no_headers,
                },
                7,
            )
            .unwrap();
        assert_eq!(cb.report.state, Some(State::Succeeded));
        assert_eq!(cb.match_key, "connpay|inv|inv-1");
        assert_eq!(cb.dedupe_key, "connpay|cb|approved|sale|o-1|inv-1");
        assert_eq!(cb.report.fields["amount"], "12.50");

        let forged = query(
            "approved",
            "sale",
            &control("approved", "o-1", "inv-1", "guess"),
        );
        let err = a.parse_callback(
            &RawCallback {
                method: "GET",
                query: &forged,
                body: b"",
                header: &crate::providers::no_headers,
            },
            7,
        );
        assert!(matches!(err, Err(CallbackError::Forged)));
        // A control for another status does not carry over.
        let swapped = query("declined", "sale", &good);
        let err = a.parse_callback(
            &RawCallback {
                method: "GET",
                query: &swapped,
                body: b"",
                header: &crate::providers::no_headers,
            },
            7,
        );
        assert!(matches!(err, Err(CallbackError::Forged)));
        let err = a.parse_callback(
            &RawCallback {
                method: "GET",
                query: "status=approved",
                body: b"",
                header: &crate::providers::no_headers,
            },
            7,
        );
        assert!(matches!(err, Err(CallbackError::Malformed(_))));
    }

    #[test]
    fn control_is_lowercase_sha1_hex() {
        // sha1("abc") is the FIPS 180 test vector.
        assert_eq!(
            control("a", "b", "c", ""),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn keys_are_checked() {
        let a = adapter();
        let mut keys = Keys::from([
            (ENDPOINT_ID.to_string(), "1234".to_string()),
            (INVOICE_ID.to_string(), "inv-1".to_string()),
            (SESSION_TOKEN.to_string(), "s".repeat(20)),
            (ACCESS_TOKEN.to_string(), "a".repeat(40)),
        ]);
        let tk = a.track_keys(&keys).unwrap();
        assert_eq!(tk.idempotency_key, "connpay|idem|1234/inv-1");
        keys.remove(ACCESS_TOKEN);
        assert!(a.track_keys(&keys).is_ok(), "access_token is optional");
        let body = serde_json::to_value(StatusRequest {
            session: RequestSession {
                access_token: None,
                token: "s".repeat(20),
            },
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"session": {"token": "s".repeat(20)}})
        );
        keys.insert(ACCESS_TOKEN.into(), "a".repeat(31));
        assert!(a.track_keys(&keys).unwrap_err().contains("access_token"));
        keys.insert(ACCESS_TOKEN.into(), "a".repeat(40));
        keys.insert(SESSION_TOKEN.into(), "short".into());
        assert!(a.track_keys(&keys).unwrap_err().contains("session_token"));
        keys.insert("extra".into(), "x".into());
        assert!(a.track_keys(&keys).unwrap_err().contains("extra"));
    }
}

//! The REST "Update Payment Status" API, from seed 001 and providers.md:
//! `POST {base}/status/{payment-id}` with the `api-key` header and a body
//! with the key, the payment id, the new status and the trust values.
//!
//! This API has no status inquiry: `{"success": true}` is the only
//! confirmation there is. So payments here are never polled, and an update
//! whose answer was lost is parked as `unknown` for an operator instead of
//! being sent again (docs/actions.md).

pub mod actions;
pub mod config;
mod demo;
pub mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{lookup_key, BoxFuture, Provider, Report, Sent, TrackKeys};
pub use actions::{Request, Trust};
use crate::action::{ActionCheck, ActionRequest, SendError};
use crate::model::{Keys, Payment, ProviderId, Source};
use crate::settings::{PollingConfig, Secret, TrustSpelling};
use crate::state::State;

const ID: ProviderId = ProviderId::RestStatus;

/// The request body. Field names follow the seed's schema
/// (`trust_Seed`, `trust_Value`, `alt_Trust_Value`) or, when configured,
/// its example (`trust_seed`, `trust_value`).
pub fn body(
    api_key: &str,
    id: &str,
    status: &str,
    trust: &Trust,
    spelling: TrustSpelling,
) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("apiKey".into(), api_key.into());
    m.insert("id".into(), id.into());
    m.insert("status".into(), status.into());
    match spelling {
        TrustSpelling::Schema => {
            m.insert("trust_Seed".into(), trust.seed.clone().into());
            m.insert("trust_Value".into(), trust.value.clone().into());
            m.insert("alt_Trust_Value".into(), trust.alt_value.clone().into());
        }
        TrustSpelling::Example => {
            m.insert("trust_seed".into(), trust.seed.clone().into());
            m.insert("trust_value".into(), trust.value.clone().into());
            m.insert("alt_trust_value".into(), trust.alt_value.clone().into());
        }
    }
    serde_json::Value::Object(m)
}

/// An RFC 7807 problem document, as the API answers errors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub title: Option<String>,
    pub status: Option<u16>,
    pub trace_id: Option<String>,
    pub errors: Option<BTreeMap<String, Vec<String>>>,
}

/// Maps a status the platform sets to a normalized state, where it is one
/// payrecon knows; other statuses are recorded and move nothing.
pub fn map_status(status: &str) -> Option<State> {
    match status.to_ascii_lowercase().as_str() {
        "completed" | "succeeded" | "paid" => Some(State::Succeeded),
        "cancelled" | "canceled" | "failed" | "declined" => Some(State::Failed),
        "refunded" | "reversed" => Some(State::Reversed),
        "pending" | "processing" => Some(State::Pending),
        _ => None,
    }
}

pub struct RestStatus {
    base_url: String,
    api_key: Secret,
    spelling: TrustSpelling,
    polling: PollingConfig,
    client: reqwest::Client,
}

impl RestStatus {
    pub fn new(
        base_url: String,
        api_key: Secret,
        spelling: TrustSpelling,
        request_timeout: Duration,
    ) -> RestStatus {
        let client = super::http_client(request_timeout);
        RestStatus {
            base_url,
            api_key,
            spelling,
            polling: PollingConfig {
                request_timeout,
                ..PollingConfig::default()
            },
            client,
        }
    }
}

fn check_payment_id(v: &str) -> Result<(), String> {
    // The seed calls it "the UUID of the payment".
    let ok = v.len() == 36
        && v.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(format!("key `payment_id` must be a UUID, not `{v}`"))
    }
}

/// Reads an update's answer (not 5xx): `{"success": true}` confirms it,
/// anything else is a refusal with its RFC 7807 problem. Pure, so it can
/// be fuzzed.
pub fn read_answer(code: reqwest::StatusCode, bytes: &[u8], status: &str) -> Sent {
    if code.is_success() {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        if v["success"] == true {
            let report = Report {
                source: Source::Action,
                raw_status: format!("status:{status}"),
                state: map_status(status),
                fields: BTreeMap::from([("confirmation".to_string(), "success: true".to_string())]),
                learned_keys: vec![],
            };
            return Ok((v, vec![report]));
        }
        return Err(SendError::Final {
            message: format!("HTTP {code}: the API did not confirm the update"),
            details: Some(v),
        });
    }
    let problem: Problem = serde_json::from_slice(bytes).unwrap_or_default();
    Err(SendError::Final {
        message: format!(
            "HTTP {code}: {}",
            problem.title.clone().unwrap_or_else(|| "refused".into())
        ),
        details: problem
            .errors
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok()),
    })
}

impl Provider for RestStatus {
    fn id(&self) -> ProviderId {
        ID
    }

    fn polling(&self) -> &PollingConfig {
        &self.polling
    }

    fn polls(&self) -> bool {
        false
    }

    fn track_keys(&self, keys: &Keys) -> Result<TrackKeys, String> {
        let (track, id) = TrackKeys::by_one(ID, keys, "payment_id")?;
        check_payment_id(id)?;
        Ok(track)
    }

    fn lookup_by(&self, name: &str, value: &str) -> Option<String> {
        (name == "payment_id").then(|| lookup_key(ID, name, value))
    }

    fn check_action(&self, payment: &Payment, req: &ActionRequest) -> Result<ActionCheck, String> {
        let Request::UpdateStatus { status, trust } = req.read()?;
        if status.is_empty()
            || status.len() > 64
            || !status
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("status must be 1-64 letters, digits, _ or -".into());
        }
        for (name, v) in [
            ("trust.seed", &trust.seed),
            ("trust.value", &trust.value),
            ("trust.alt_value", &trust.alt_value),
        ] {
            if v.is_empty() {
                return Err(format!("{name} is required by the API"));
            }
        }
        check_payment_id(
            payment
                .keys
                .get("payment_id")
                .map(String::as_str)
                .unwrap_or(""),
        )?;
        Ok(ActionCheck {
            exclusive_key: None,
        })
    }

    fn send_action<'a>(
        &'a self,
        payment: &'a Payment,
        req: &'a ActionRequest,
    ) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let Request::UpdateStatus { status, trust } = req.read().map_err(|message| SendError::Final {
                message,
                details: None,
            })?;
            let id = payment.keys.get("payment_id").cloned().unwrap_or_default();
            let resp = self
                .client
                .post(format!("{}/status/{id}", self.base_url))
                .header("api-key", self.api_key.expose())
                .json(&body(
                    self.api_key.expose(),
                    &id,
                    &status,
                    &trust,
                    self.spelling,
                ))
                .send()
                .await
                .map_err(super::send_error)?;
            let code = resp.status();
            if code.is_server_error() {
                return Err(SendError::Retryable(format!("HTTP {code}")));
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| SendError::Ambiguous(e.without_url().to_string()))?;
            read_answer(code, &bytes, &status)
        })
    }
    // No confirm_action: there is nothing to ask.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> Trust {
        Trust {
            seed: "s".into(),
            value: "v".into(),
            alt_value: "a".into(),
        }
    }

    #[test]
    fn the_body_follows_the_schema_or_the_example() {
        let b = body("k", "id", "completed", &trust(), TrustSpelling::Schema);
        let mut names: Vec<_> = b.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "alt_Trust_Value",
                "apiKey",
                "id",
                "status",
                "trust_Seed",
                "trust_Value"
            ]
        );
        let b = body("k", "id", "completed", &trust(), TrustSpelling::Example);
        assert!(b.get("trust_seed").is_some() && b.get("trust_Seed").is_none());
    }

    #[test]
    fn the_seed_problem_document_is_read() {
        let p: Problem = serde_json::from_str(r#"{"type":"https://tools.ietf.org/html/rfc7231#section-6.5.1","title":"One or more validation errors occurred.","status":400,"traceId":"698b5f0f","errors":{"apiKey":["The apiKey field is required."],"id":["The id field is required."]}}"#).unwrap();
        assert_eq!(p.status, Some(400));
        assert_eq!(
            p.errors.unwrap()["id"],
            vec!["The id field is required.".to_string()]
        );
    }

    #[test]
    fn payment_ids_are_uuids() {
        assert!(check_payment_id("b8f2d832-72e2-4e47-8b8a-7f6a3a3e7abe").is_ok());
        assert!(check_payment_id("b8f2d832").is_err());
        assert!(check_payment_id("b8f2d832-72e2-4e47-8b8a-7f6a3a3e7abX").is_err());
    }
}

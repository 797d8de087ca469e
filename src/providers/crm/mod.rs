//! CRM.COM, from seed 003 and providers.md: `POST payments/reject` with a
//! token from the log-in method, exactly one payment identifier (id,
//! number, reference_number or back_office_code) and one rejection reason
//! (id, name or alternative_code), checked before anything is sent. Only a
//! DRAFT payment can be rejected: any other life_cycle_state is a clear,
//! final error.
//!
//! Assumptions (docs/providers.md): the log-in path and its body's field
//! names are configurable (providers.md marks them unconfirmed); its answer
//! carries the token in `data.token`; an expired token is answered with a
//! status code from `expired_token_codes`. CRM.COM documents no status
//! inquiry here, so payments are not polled and a reject whose answer is
//! lost is parked as unknown.

pub mod actions;
pub mod config;
mod demo;
pub mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{lookup_key, post_login, BoxFuture, Provider, Report, Sent, TokenCache, TrackKeys};
pub use actions::Request;
use crate::action::{ActionCheck, ActionRequest, SendError};
use crate::model::{Keys, Payment, ProviderId, Source};
use crate::settings::{PollingConfig, Secret};
use crate::state::State;

const ID: ProviderId = ProviderId::Crm;

/// The payment identifier fields; exactly one is given.
pub const PAYMENT_IDS: [&str; 4] = ["id", "number", "reference_number", "back_office_code"];
/// The rejection reason identifier fields; exactly one is given.
pub const REASON_IDS: [&str; 3] = ["id", "name", "alternative_code"];

/// `{"status": {"code", "message", "description"}, "data"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub status: EnvelopeStatus,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeStatus {
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Maps a payment's life_cycle_state.
pub fn map_state(s: &str) -> Option<State> {
    match s {
        "DRAFT" | "PENDING_VERIFICATION" => Some(State::Pending),
        "POSTED" => Some(State::Succeeded),
        "REJECTED" | "CANCELLED" => Some(State::Failed),
        _ => None,
    }
}

/// Exactly one of `allowed` in `given`, non-empty: its name and value.
pub fn exactly_one<'a>(
    what: &str,
    given: &'a BTreeMap<String, String>,
    allowed: &[&str],
) -> Result<(&'a str, &'a str), String> {
    for k in given.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "{what}: unknown field `{k}` (use one of {})",
                allowed.join(", ")
            ));
        }
    }
    let set: Vec<_> = given.iter().filter(|(_, v)| !v.is_empty()).collect();
    match set.as_slice() {
        [(k, v)] => Ok((k.as_str(), v.as_str())),
        [] => Err(format!("{what}: give one of {}", allowed.join(", "))),
        _ => Err(format!(
            "{what}: give only one of {}, not {}",
            allowed.join(", "),
            set.len()
        )),
    }
}

/// The log-in call.
#[derive(Debug, Clone)]
pub struct Login {
    pub path: String,
    pub username_field: String,
    pub password_field: String,
    pub username: Secret,
    pub password: Secret,
    pub ttl: Duration,
    /// Status codes that mean "log in again".
    pub expired_token_codes: Vec<String>,
}

pub struct Crm {
    base_url: String,
    login: Login,
    polling: PollingConfig,
    client: reqwest::Client,
    token: TokenCache,
}

impl Crm {
    pub fn new(base_url: String, login: Login, request_timeout: Duration) -> Crm {
        let client = super::http_client(request_timeout);
        Crm {
            base_url,
            login,
            polling: PollingConfig {
                request_timeout,
                ..PollingConfig::default()
            },
            client,
            token: TokenCache::default(),
        }
    }

    async fn token(&self, renew: bool) -> Result<Secret, SendError> {
        let log_in = async {
            let url = format!("{}{}", self.base_url, self.login.path);
            let fields = [
                (self.login.username_field.as_str(), &self.login.username),
                (self.login.password_field.as_str(), &self.login.password),
            ];
            let answer = post_login(&self.client, &url, fields).await?;
            let env: Envelope = serde_json::from_value(answer)
                .map_err(|e| SendError::NotSent(format!("log-in: unreadable answer: {e}")))?;
            let data = env.data.unwrap_or_default();
            let Some(token) = data["token"].as_str().filter(|_| env.status.code == "OK") else {
                tracing::error!(alert = "provider_login_failed", provider = %ID, code = %env.status.code, "CRM.COM log-in refused; check the credentials");
                return Err(SendError::Final {
                    message: format!("CRM.COM log-in refused: {}", env.status.code),
                    details: None,
                });
            };
            Ok((Secret::new(token), self.login.ttl))
        };
        self.token.get(renew, log_in).await
    }

    async fn reject(
        &self,
        body: &serde_json::Value,
    ) -> Result<(reqwest::StatusCode, Envelope), SendError> {
        let resp = self
            .client
            .post(format!("{}/payments/reject", self.base_url))
            .json(body)
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
        Ok((code, read_envelope(code, &bytes)?))
    }
}

/// Reads the answer envelope of a CRM.COM call.
pub fn read_envelope(code: reqwest::StatusCode, bytes: &[u8]) -> Result<Envelope, SendError> {
    serde_json::from_slice(bytes).map_err(|e| SendError::Final {
        message: format!("HTTP {code}: unreadable answer: {e}"),
        details: None,
    })
}

/// Reads a reject's answer: a refusal, or the payment's life-cycle state
/// now. Pure, so it can be fuzzed.
pub fn read_reject(code: reqwest::StatusCode, env: &Envelope) -> Sent {
    if env.status.code != "OK" {
        let m = env
            .status
            .message
            .clone()
            .or(env.status.description.clone())
            .unwrap_or_default();
        return Err(SendError::Final {
            message: format!("HTTP {code}: CRM.COM {}: {m}", env.status.code),
            details: env.data.clone(),
        });
    }
    let data = env.data.clone().unwrap_or_default();
    let state = data["life_cycle_state"]
        .as_str()
        .unwrap_or("REJECTED")
        .to_string();
    let mut fields = BTreeMap::new();
    for k in [
        "id",
        "number",
        "reference_number",
        "payment_amount",
        "issued_on",
        "posted_on",
    ] {
        if let Some(v) = data.get(k).filter(|v| !v.is_null()) {
            fields.insert(
                k.to_string(),
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    let report = Report {
        source: Source::Action,
        raw_status: state.clone(),
        state: map_state(&state),
        fields,
        learned_keys: vec![],
    };
    Ok((
        serde_json::json!({"life_cycle_state": state, "id": data["id"]}),
        vec![report],
    ))
}

impl Provider for Crm {
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
        let (name, value) = exactly_one("payment identifier", keys, &PAYMENT_IDS)?;
        // Characters, as the API's schema (JSON Schema `maxLength`) counts
        // them, not bytes.
        if value.chars().count() > 64 {
            return Err(format!("key `{name}` is longer than 64 characters"));
        }
        Ok(TrackKeys {
            idempotency_key: lookup_key(ID, "idem", &format!("{name}/{value}")),
            lookup_keys: vec![lookup_key(ID, name, value)],
        })
    }

    fn lookup_by(&self, name: &str, value: &str) -> Option<String> {
        PAYMENT_IDS
            .contains(&name)
            .then(|| lookup_key(ID, name, value))
    }

    fn check_action(&self, payment: &Payment, req: &ActionRequest) -> Result<ActionCheck, String> {
        let Request::Reject {
            rejection_reason,
            fields_set,
        } = req.read()?;
        exactly_one("payment identifier", &payment.keys, &PAYMENT_IDS)?;
        exactly_one("rejection reason", &rejection_reason, &REASON_IDS)?;
        if let Some(f) = fields_set {
            if f.iter().any(|x| x.is_empty() || x.contains(',')) {
                return Err("fields_set: field names must be non-empty and hold no comma".into());
            }
        }
        if let Some(raw) = payment.raw_status.as_deref() {
            if map_state(raw).is_some() && raw != "DRAFT" {
                return Err(format!(
                    "only DRAFT payments can be rejected; this one is {raw}"
                ));
            }
        }
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
            let Request::Reject {
                rejection_reason,
                fields_set,
            } = req.read().map_err(|message| SendError::Final {
                message,
                details: None,
            })?;
            let ids: serde_json::Map<_, _> = payment
                .keys
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            let reason: serde_json::Map<_, _> = rejection_reason
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            let body_with = |token: &Secret| {
                let mut b = serde_json::json!({
                    "token": token.expose(),
                    "payment_identifier": ids,
                    "rejection_reason_identifier": reason,
                });
                if let Some(f) = &fields_set {
                    b["fields_set"] = f.join(",").into();
                }
                b
            };
            let token = self.token(false).await?;
            let (mut code, mut env) = self.reject(&body_with(&token)).await?;
            if self.login.expired_token_codes.contains(&env.status.code) {
                // The token expired: nothing was applied. Log in, send once more.
                tracing::info!(provider = %ID, "CRM.COM token expired; logging in again");
                let token = self.token(true).await?;
                (code, env) = self.reject(&body_with(&token)).await?;
            }
            read_reject(code, &env)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exactly_one_identifier() {
        assert_eq!(
            exactly_one("p", &m(&[("reference_number", "118")]), &PAYMENT_IDS),
            Ok(("reference_number", "118"))
        );
        assert!(exactly_one("p", &m(&[]), &PAYMENT_IDS)
            .unwrap_err()
            .contains("give one of"));
        assert!(
            exactly_one("p", &m(&[("id", "1"), ("number", "2")]), &PAYMENT_IDS)
                .unwrap_err()
                .contains("only one")
        );
        assert!(exactly_one("p", &m(&[("code", "1")]), &PAYMENT_IDS)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn an_identifier_is_measured_in_characters_not_bytes() {
        let crm = Crm::new(
            "http://127.0.0.1:9".into(),
            Login {
                path: "/users/login".into(),
                username_field: "username".into(),
                password_field: "password".into(),
                username: Secret::new("u"),
                password: Secret::new("p"),
                ttl: Duration::from_secs(600),
                expired_token_codes: vec![],
            },
            Duration::from_secs(1),
        );
        // 64 two-byte characters: 128 bytes, within the schema's maxLength.
        let ok = "é".repeat(64);
        assert!(crm.track_keys(&m(&[("back_office_code", &ok)])).is_ok());
        let long = "é".repeat(65);
        assert!(crm
            .track_keys(&m(&[("back_office_code", &long)]))
            .unwrap_err()
            .contains("longer than 64 characters"));
    }

    #[test]
    fn the_seed_sample_answer_is_read() {
        let env: Envelope = serde_json::from_str(r#"{"status":{"message":null,"description":null,"code":"OK"},"data":{"payment_amount":50,"issued_on":"2014-07-14T17:06:28","life_cycle_state":"REJECTED","number":null,"id":"0ACCC72477BA606EE3B409400069F1BB","reference_number":"118","posted_on":null}}"#).unwrap();
        assert_eq!(env.status.code, "OK");
        assert_eq!(
            map_state(env.data.unwrap()["life_cycle_state"].as_str().unwrap()),
            Some(State::Failed)
        );
    }
}

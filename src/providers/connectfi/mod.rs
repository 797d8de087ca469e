//! connectFi payment links, from seed 000 and providers.md: `set-status`
//! with the seed's schema checked before anything is sent, `manualStatus`
//! (true unless the caller says otherwise), and a token from
//! `/auth/get-token` that is renewed when it expires. An expired token is
//! never a failed payment: payrecon logs in again and retries once.
//!
//! Assumptions (docs/providers.md): the log-in body carries the client id
//! and secret under configurable field names, and its answer carries the
//! token in `data.token` with an optional `data.expiresIn` (seconds); an
//! expired or unknown token is answered 401. connectFi documents no status
//! inquiry, so its payments are not polled and an update whose answer is
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

const ID: ProviderId = ProviderId::Connectfi;

/// Statuses a payment link may be set to, and be in when it is set.
pub const SETTABLE: [&str; 6] = [
    "Error",
    "SentToPay",
    "Completed",
    "Settled",
    "Returned",
    "Declined",
];

/// Every status of the seed's enum.
pub const STATUSES: [&str; 12] = [
    "Initiated",
    "Sent",
    "Cancelled",
    "Rejected",
    "Error",
    "Expired",
    "Processing",
    "SentToPay",
    "Completed",
    "Settled",
    "Returned",
    "Declined",
];

/// The set-status request, field names as in the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetStatus {
    #[serde(rename = "cFiTransactionId")]
    pub cfi_transaction_id: String,
    pub status: String,
    pub description: Option<String>,
    pub manual_status: bool,
}

/// `{"code": "0", "data": ..., "requestId"}`; any other code is an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// One entry of `statusChangeHistory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatusChange {
    pub initiator_id: Option<String>,
    /// merchant, public, process or user.
    pub initiator_type: Option<String>,
    pub login: Option<String>,
    pub description: Option<String>,
    pub status: String,
    pub dts_created_at: Option<String>,
}

/// Maps a payment link status to a normalized state.
pub fn map_status(s: &str) -> Option<State> {
    match s {
        "Initiated" | "Sent" | "Processing" | "SentToPay" => Some(State::Pending),
        "Completed" => Some(State::Succeeded),
        "Settled" => Some(State::Settled),
        "Returned" => Some(State::Reversed),
        "Cancelled" | "Rejected" | "Error" | "Expired" | "Declined" => Some(State::Failed),
        _ => None,
    }
}

/// The seed's schema for `cFiTransactionId`: `^[0-9a-zA-Z_]+$`, 1-36.
pub fn check_id(id: &str) -> Result<(), String> {
    if (1..=36).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "cFiTransactionId `{id}` must be 1-36 letters, digits or _"
        ))
    }
}

/// The seed's schema for `description`: at most 100 characters, no < or >.
pub fn check_description(d: &str) -> Result<(), String> {
    if d.chars().count() > 100 {
        return Err("description must be at most 100 characters".into());
    }
    if d.contains(['<', '>']) {
        return Err("description must not contain < or >".into());
    }
    Ok(())
}

/// Where to log in, and how the body names the credentials.
#[derive(Debug, Clone)]
pub struct Login {
    pub path: String,
    pub client_id_field: String,
    pub client_secret_field: String,
    pub client_id: Secret,
    pub client_secret: Secret,
    /// Used when the answer gives no `expiresIn`.
    pub default_ttl: Duration,
}

pub struct Connectfi {
    base_url: String,
    login: Login,
    polling: PollingConfig,
    client: reqwest::Client,
    token: TokenCache,
}

impl Connectfi {
    pub fn new(base_url: String, login: Login, request_timeout: Duration) -> Connectfi {
        let client = super::http_client(request_timeout);
        Connectfi {
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

    /// A valid token: the cached one, or a new one from `/auth/get-token`.
    async fn token(&self, renew: bool) -> Result<Secret, SendError> {
        let log_in = async {
            let url = format!("{}{}", self.base_url, self.login.path);
            let fields = [
                (self.login.client_id_field.as_str(), &self.login.client_id),
                (
                    self.login.client_secret_field.as_str(),
                    &self.login.client_secret,
                ),
            ];
            let answer = post_login(&self.client, &url, fields).await?;
            let env: Envelope = serde_json::from_value(answer)
                .map_err(|e| SendError::NotSent(format!("log-in: unreadable answer: {e}")))?;
            let data = env.data.unwrap_or_default();
            let Some(token) = data["token"].as_str().filter(|_| env.code == "0") else {
                tracing::error!(alert = "provider_login_failed", provider = %ID, code = %env.code, "connectFi log-in refused; check the client id and secret");
                return Err(SendError::Final {
                    message: format!(
                        "connectFi log-in refused: code {} {}",
                        env.code,
                        env.message.unwrap_or_default()
                    ),
                    details: None,
                });
            };
            let ttl = data["expiresIn"]
                .as_u64()
                .map(Duration::from_secs)
                .unwrap_or(self.login.default_ttl);
            Ok((Secret::new(token), ttl))
        };
        self.token.get(renew, log_in).await
    }

    async fn set_status(
        &self,
        body: &SetStatus,
        token: &Secret,
    ) -> Result<reqwest::Response, SendError> {
        self.client
            .post(format!("{}/payment-link/payment/set-status", self.base_url))
            .header("x-connectfi-token", token.expose())
            .json(body)
            .send()
            .await
            .map_err(super::send_error)
    }
}

/// Reads a set-status answer: the envelope, every `statusChangeHistory`
/// entry as an observation, and the status now. Pure, so it can be fuzzed.
pub fn read_answer(
    code: reqwest::StatusCode,
    bytes: &[u8],
    status: &str,
    manual_status: bool,
) -> Sent {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| SendError::Final {
        message: format!("HTTP {code}: unreadable answer: {e}"),
        details: None,
    })?;
    if env.code != "0" {
        return Err(SendError::Final {
            message: format!(
                "HTTP {code}: connectFi code {}: {}",
                env.code,
                env.message.clone().unwrap_or_default()
            ),
            details: env.data.clone(),
        });
    }
    let data = env.data.clone().unwrap_or_default();
    // Every entry of statusChangeHistory is an observation; the
    // ones payrecon already holds are the same news and change
    // nothing.
    let history: Vec<StatusChange> =
        serde_json::from_value(data["statusChangeHistory"].clone()).unwrap_or_default();
    let mut reports: Vec<Report> = history
        .iter()
        .map(|h| {
            let mut fields = BTreeMap::new();
            for (k, v) in [
                ("initiator_type", &h.initiator_type),
                ("login", &h.login),
                ("description", &h.description),
                ("at", &h.dts_created_at),
            ] {
                if let Some(v) = v {
                    fields.insert(k.to_string(), v.clone());
                }
            }
            Report {
                source: Source::Action,
                raw_status: h.status.clone(),
                state: map_status(&h.status),
                fields,
                learned_keys: vec![],
            }
        })
        .collect();
    let now = data["status"].as_str().unwrap_or(status).to_string();
    let mut fields = BTreeMap::new();
    fields.insert(
        "manual_status".to_string(),
        data["manualStatus"]
            .as_bool()
            .unwrap_or(manual_status)
            .to_string(),
    );
    if let Some(r) = &env.request_id {
        fields.insert("request_id".into(), r.clone());
    }
    reports.push(Report {
        source: Source::Action,
        raw_status: now.clone(),
        state: map_status(&now),
        fields,
        learned_keys: vec![],
    });
    let answer = serde_json::json!({"status": now, "manualStatus": data["manualStatus"], "requestId": env.request_id});
    Ok((answer, reports))
}

impl Provider for Connectfi {
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
        // `transaction_id` is connectFi's cFiTransactionId.
        let (track, id) = TrackKeys::by_one(ID, keys, "transaction_id")?;
        check_id(id)?;
        Ok(track)
    }

    fn lookup_by(&self, name: &str, value: &str) -> Option<String> {
        (name == "transaction_id").then(|| lookup_key(ID, name, value))
    }

    fn check_action(&self, payment: &Payment, req: &ActionRequest) -> Result<ActionCheck, String> {
        let Request::SetStatus {
            status,
            description,
            ..
        } = req.read()?;
        if !SETTABLE.contains(&status.as_str()) {
            return Err(format!(
                "status `{status}` cannot be set; use one of {}",
                SETTABLE.join(", ")
            ));
        }
        if let Some(d) = &description {
            check_description(d)?;
        }
        check_id(
            payment
                .keys
                .get("transaction_id")
                .map(String::as_str)
                .unwrap_or(""),
        )?;
        if let Some(current) = payment.raw_status.as_deref() {
            if STATUSES.contains(&current) && !SETTABLE.contains(&current) {
                return Err(format!(
                    "the payment link is `{current}`; only a link in {} can be set",
                    SETTABLE.join(", ")
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
            let Request::SetStatus {
                status,
                description,
                manual_status,
            } = req.read().map_err(|message| SendError::Final {
                    message,
                    details: None,
                })?;
            let body = SetStatus {
                cfi_transaction_id: payment
                    .keys
                    .get("transaction_id")
                    .cloned()
                    .unwrap_or_default(),
                status,
                description,
                manual_status: manual_status.unwrap_or(true),
            };
            let mut token = self.token(false).await?;
            let mut resp = self.set_status(&body, &token).await?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                // An expired token is renewed, never a failed payment. A 401
                // means the update was not applied, so sending it again is safe.
                tracing::info!(provider = %ID, "connectFi token expired; logging in again");
                token = self.token(true).await?;
                resp = self.set_status(&body, &token).await?;
            }
            let code = resp.status();
            if code.is_server_error() {
                return Err(SendError::Retryable(format!("HTTP {code}")));
            }
            if code == reqwest::StatusCode::UNAUTHORIZED {
                return Err(SendError::Retryable(
                    "token refused right after a log-in".into(),
                ));
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| SendError::Ambiguous(e.without_url().to_string()))?;
            read_answer(code, &bytes, &body.status, body.manual_status)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_checked() {
        assert!(check_id("29ljhq5Apu1YfdtU3wN7yx").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id(&"a".repeat(37)).is_err());
        assert!(check_id("has-dash").is_err());
        assert!(check_description("Set to SentToPay").is_ok());
        assert!(check_description("<b>").is_err());
        assert!(check_description(&"x".repeat(101)).is_err());
        assert!(check_description(&"é".repeat(100)).is_ok());
    }

    #[test]
    fn the_request_uses_the_seed_field_names() {
        let b = serde_json::to_value(SetStatus {
            cfi_transaction_id: "x".into(),
            status: "SentToPay".into(),
            description: Some("d".into()),
            manual_status: true,
        })
        .unwrap();
        assert_eq!(
            b,
            serde_json::json!({"cFiTransactionId": "x", "status": "SentToPay", "description": "d", "manualStatus": true})
        );
    }

    #[test]
    fn every_status_maps() {
        for s in STATUSES {
            assert!(map_status(s).is_some(), "{s}");
        }
        assert_eq!(map_status("Settled"), Some(State::Settled));
        assert_eq!(map_status("Returned"), Some(State::Reversed));
    }
}

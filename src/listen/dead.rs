//! The dead letters on the admin API: notifications given up after
//! `notify.horizon`, listed and put back in the queue (docs/openapi.yaml).
//!
//! - `GET /v1/notifications/dead?after=ID&limit=N`: oldest first.
//! - `POST /v1/notifications/{id}/replay`: one, by its `webhook-id`.
//! - `POST /v1/notifications/replay` `{"since": DATE}`: every dead letter
//!   of a change at or after DATE.
//!
//! A replayed notification keeps its `webhook-id` (receivers that saw it
//! de-duplicate) and its place in its payment's order: it goes before any
//! of the payment's notifications still queued.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::admin::{Admin, DEFAULT_PAGE, MAX_PAGE};
use crate::http::{self, Answer};
use crate::model::ProviderId;
use crate::state::State;
use crate::store::Notice;

/// A dead letter as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    pub webhook_id: String,
    pub payment_id: String,
    pub provider: ProviderId,
    pub from: State,
    pub to: State,
    /// When the change happened (RFC 3339).
    pub at: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<Notice> for DeadLetter {
    fn from(n: Notice) -> DeadLetter {
        DeadLetter {
            webhook_id: n.webhook_id(),
            at: chrono::DateTime::from_timestamp_millis(n.at_ms as i64)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            payment_id: n.payment_id,
            provider: n.provider,
            from: n.from,
            to: n.to,
            attempts: n.attempts,
            last_error: n.last_error,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeadPage {
    pub notifications: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// The body of `POST /v1/notifications/replay`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySince {
    /// RFC 3339 time or a date (`2026-11-01`, midnight UTC).
    pub since: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Replayed {
    pub replayed: usize,
}

fn bad(message: &str) -> Answer {
    http::error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn store_failed(e: crate::store::StoreError) -> Answer {
    http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_error",
        &e.to_string(),
    )
}

impl Admin {
    pub(super) async fn dead_letters(&self, query: Option<&str>) -> Answer {
        let limit = match http::query_param(query, "limit").map(|l| l.parse::<usize>()) {
            None => DEFAULT_PAGE,
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
            Some(_) => return bad(&format!("limit must be 1 to {MAX_PAGE}")),
        };
        let after = match http::query_param(query, "after") {
            None => None,
            Some(id) => match Notice::seq_of(&id) {
                Some(seq) => Some(seq),
                None => return bad("after must be a webhook id (msg_ and 16 hex digits)"),
            },
        };
        match self.engine.store().dead_letters(after, limit).await {
            Ok(ns) => {
                let next_after = (ns.len() == limit)
                    .then(|| ns.last().map(Notice::webhook_id))
                    .flatten();
                let notifications = ns.into_iter().map(DeadLetter::from).collect();
                http::json(
                    StatusCode::OK,
                    &DeadPage {
                        notifications,
                        next_after,
                    },
                )
            }
            Err(e) => store_failed(e),
        }
    }

    pub(super) async fn replay_one(&self, id: &str) -> Answer {
        let Some(seq) = Notice::seq_of(id) else {
            return http::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no notification `{id}`"),
            );
        };
        match self.engine.store().replay_dead(vec![seq]).await {
            Ok(mut back) => match back.pop() {
                Some(n) => {
                    self.engine.notice_outbox().wake.notify_one();
                    tracing::info!(webhook_id = %id, payment_id = %n.payment_id, "dead letter replayed");
                    http::json(StatusCode::OK, &DeadLetter::from(n))
                }
                None => http::error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no dead notification `{id}` (delivered, queued, or never sent)"),
                ),
            },
            Err(e) => store_failed(e),
        }
    }

    pub(super) async fn replay_since(&self, body: &[u8]) -> Answer {
        let r: ReplaySince = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return http::error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()),
        };
        let since = match crate::export::parse_since(&r.since) {
            Ok(s) => s,
            Err(m) => return bad(&m),
        };
        match self.engine.store().replay_dead_since(since).await {
            Ok(replayed) => {
                self.engine.notice_outbox().wake.notify_one();
                tracing::info!(replayed, since = %r.since, "dead letters replayed");
                http::json(StatusCode::OK, &Replayed { replayed })
            }
            Err(e) => store_failed(e),
        }
    }
}

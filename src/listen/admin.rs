//! The admin API: loopback by default, optional bearer token. Providers
//! never reach it; it is a different listener from the callbacks'.
//!
//! - `POST /v1/payments`: track a payment (201 new, 200 already tracked).
//! - `GET /v1/payments/{id}`: the payment, its window and its history.
//! - `GET /v1/payments?state=&provider=&mismatch=&limit=&after=`: a page of payments.
//! - `GET /v1/providers/{provider}/payments/{key}/{value}`: a payment found
//!   by the provider's own identifier (ConnPay: `invoice_id`, `order_id`).
//! - `POST /v1/reconcile/{provider}`: one reconciliation sweep now.
//! - `POST /v1/payments/{id}/actions`: queue a status change (202), with an
//!   optional `Idempotency-Key` header.
//! - `GET /v1/actions/{id}`; `POST /v1/actions/{id}/resolve` settles an
//!   action parked as unknown.
//! - `GET /healthz`: the process answers. `GET /readyz`: the store works.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::action::{Action, ActionRequest, ActionState};
use crate::engine::{Engine, EngineError, TrackRequest};
use crate::http::{self, Answer, CloseConnection};
use crate::model::{Observation, Payment, ProviderId};
use crate::settings::Secret;
use crate::state::State;
use crate::store::StoreError;

/// A track request is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
pub(super) const DEFAULT_PAGE: usize = 100;
pub(super) const MAX_PAGE: usize = 1000;

pub struct Admin {
    pub engine: Arc<Engine>,
    /// Swapped by a reload.
    pub token: std::sync::RwLock<Option<Secret>>,
}

/// A payment as the API shows it: secret keys redacted.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PaymentView {
    #[serde(flatten)]
    pub payment: Payment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Observation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<Action>>,
}

/// The body of `POST /v1/actions/{id}/resolve`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    pub state: ActionState,
    #[serde(default)]
    pub note: Option<String>,
}

/// Every route the admin listener serves, as docs/openapi.yaml lists
/// them; tests/openapi.rs checks the document, this list and the live
/// server against each other.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/payments"),
    ("GET", "/v1/payments"),
    ("GET", "/v1/payments/{id}"),
    ("POST", "/v1/payments/{id}/actions"),
    ("GET", "/v1/actions/{id}"),
    ("POST", "/v1/actions/{id}/resolve"),
    ("GET", "/v1/providers/{provider}/payments/{name}/{value}"),
    ("POST", "/v1/reconcile/{provider}"),
    ("GET", "/v1/export"),
    ("GET", "/v1/notifications/dead"),
    ("POST", "/v1/notifications/{id}/replay"),
    ("POST", "/v1/notifications/replay"),
];

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Page {
    pub payments: Vec<PaymentView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

impl Admin {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Answer, CloseConnection> {
        Ok(self.route(req).await)
    }

    async fn route(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segs = http::segments(&path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["healthz"]) => {
                return http::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            // Open like the health checks: scrapers rarely carry tokens,
            // and nothing in it is secret.
            ("GET", ["metrics"]) => {
                return http::text_owned(
                    StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    crate::metrics::render(&self.engine).await,
                )
            }
            ("GET", ["readyz"]) => {
                return match self.engine.store().probe().await {
                    Ok(p) if p.ok => http::json(
                        StatusCode::OK,
                        &serde_json::json!({"ready": true, "store": p}),
                    ),
                    Ok(p) => http::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_ready",
                        &format!(
                            "store ({}) is not usable: {}",
                            p.engine,
                            p.error.unwrap_or_default()
                        ),
                    ),
                    Err(e) => http::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_ready",
                        &format!("store is not usable: {e}"),
                    ),
                };
            }
            _ => {}
        }
        let token = crate::sync::read(&self.token).clone();
        if let Some(token) = &token {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
                return http::error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong bearer token",
                );
            }
        }
        match (method.as_str(), segs.as_slice()) {
            ("POST", ["v1", "payments"]) => {
                let body = match http::read_body(req, MAX_BODY).await {
                    Ok(b) => b,
                    Err(a) => return a,
                };
                let tr: TrackRequest = match serde_json::from_slice(&body) {
                    Ok(t) => t,
                    Err(e) => {
                        return http::error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string())
                    }
                };
                match self.engine.track(tr).await {
                    Ok(t) => {
                        let status = if t.created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        http::json(status, &self.view(t.payment, None))
                    }
                    Err(e) => engine_error(e),
                }
            }
            ("POST", ["v1", "payments", id, "actions"]) => {
                let id = id.to_string();
                let idem = req
                    .headers()
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let body = match http::read_body(req, MAX_BODY).await {
                    Ok(b) => b,
                    Err(a) => return a,
                };
                let ar: ActionRequest = match serde_json::from_slice(&body) {
                    Ok(a) => a,
                    Err(e) => {
                        return http::error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string())
                    }
                };
                match self.engine.request_action(&id, ar, idem).await {
                    Ok((a, _)) => http::json(StatusCode::ACCEPTED, &a),
                    Err(e) => engine_error(e),
                }
            }
            ("GET", ["v1", "actions", id]) => match self.engine.store().get_action(id).await {
                Ok(Some(a)) => http::json(StatusCode::OK, &a),
                Ok(None) => http::error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no action `{id}`"),
                ),
                Err(e) => engine_error(e.into()),
            },
            ("POST", ["v1", "actions", id, "resolve"]) => {
                let id = id.to_string();
                let body = match http::read_body(req, MAX_BODY).await {
                    Ok(b) => b,
                    Err(a) => return a,
                };
                let r: Resolve = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return http::error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string())
                    }
                };
                match self.engine.resolve_action(&id, r.state, r.note).await {
                    Ok(a) => http::json(StatusCode::OK, &a),
                    Err(e) => engine_error(e),
                }
            }
            ("GET", ["v1", "payments", id]) => {
                let store = self.engine.store();
                match (store.get(id).await, store.history(id).await) {
                    (Ok(Some(p)), Ok(h)) => {
                        let mut v = self.view(p, Some(h));
                        v.actions = store.actions_of(id).await.ok();
                        http::json(StatusCode::OK, &v)
                    }
                    (Ok(None), _) => http::error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        &format!("no payment `{id}`"),
                    ),
                    (Err(e), _) | (_, Err(e)) => engine_error(e.into()),
                }
            }
            ("GET", ["v1", "payments"]) => self.list(req.uri().query()).await,
            ("GET", ["v1", "export"]) => self.export(req.uri().query()).await,
            ("GET", ["v1", "notifications", "dead"]) => self.dead_letters(req.uri().query()).await,
            ("POST", ["v1", "notifications", id, "replay"]) => self.replay_one(id).await,
            ("POST", ["v1", "notifications", "replay"]) => {
                match http::read_body(req, MAX_BODY).await {
                    Ok(body) => self.replay_since(&body).await,
                    Err(a) => a,
                }
            }
            ("GET", ["v1", "providers", provider, "payments", name, value]) => {
                self.by_key(provider, name, value).await
            }
            ("POST", ["v1", "reconcile", provider]) => {
                let Ok(pid) = provider.parse::<ProviderId>() else {
                    return http::error(
                        StatusCode::NOT_FOUND,
                        "unknown_provider",
                        &format!("unknown provider `{provider}`"),
                    );
                };
                match self.engine.reconcile(pid).await {
                    Ok(report) => http::json(StatusCode::OK, &report),
                    Err(e) => engine_error(e),
                }
            }
            _ => http::method_not_allowed(ROUTES, &segs, method.as_str(), &path),
        }
    }

    /// `GET /v1/export?since=DATE&format=csv|jsonl`.
    async fn export(&self, query: Option<&str>) -> Answer {
        let Some(since) = http::query_param(query, "since") else {
            return http::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`since` is required, e.g. since=2026-11-01",
            );
        };
        let since = match crate::export::parse_since(&since) {
            Ok(s) => s,
            Err(m) => return http::error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        };
        let format = match http::query_param(query, "format")
            .unwrap_or_else(|| "csv".into())
            .parse::<crate::export::Format>()
        {
            Ok(f) => f,
            Err(m) => return http::error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        };
        let mut out = vec![];
        let written = crate::export::write(self.engine.store(), since, format, &mut out)
            .await
            .map(|_| out);
        match written {
            Ok(body) => http::text_owned(
                StatusCode::OK,
                format.content_type(),
                String::from_utf8_lossy(&body).into_owned(),
            ),
            Err(e) => http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "export_failed",
                &e.to_string(),
            ),
        }
    }

    async fn by_key(&self, provider: &str, name: &str, value: &str) -> Answer {
        let Some(p) = provider
            .parse::<ProviderId>()
            .ok()
            .and_then(|p| self.engine.provider(p))
        else {
            return http::error(
                StatusCode::NOT_FOUND,
                "unknown_provider",
                &format!("provider `{provider}` is not configured"),
            );
        };
        // A name the provider is not indexed by names no payment: 404,
        // like a value no payment has.
        let Some(key) = p.lookup_by(name, value) else {
            return http::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("{provider} payments are not found by `{name}`"),
            );
        };
        let store = self.engine.store();
        let found = match store.find(&key).await {
            Ok(Some(id)) => match store.get(&id).await {
                Ok(Some(p)) => Ok(Some((p, store.history(&id).await))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match found {
            Ok(Some((p, Ok(h)))) => http::json(StatusCode::OK, &self.view(p, Some(h))),
            Ok(None) => http::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no {provider} payment with {name} `{value}`"),
            ),
            Ok(Some((_, Err(e)))) | Err(e) => engine_error(e.into()),
        }
    }

    async fn list(&self, query: Option<&str>) -> Answer {
        // An empty value is not a filter left out: it is refused like any
        // other value that is not a state or a provider.
        let state = match http::query_param(query, "state") {
            Some(s) => match s.parse::<State>() {
                Ok(s) => Some(s),
                Err(e) => return http::error(StatusCode::BAD_REQUEST, "invalid_query", &e),
            },
            None => None,
        };
        let provider = match http::query_param(query, "provider") {
            Some(p) => match p.parse::<ProviderId>() {
                Ok(p) => Some(p),
                Err(e) => return http::error(StatusCode::BAD_REQUEST, "invalid_query", &e),
            },
            None => None,
        };
        let limit = match http::query_param(query, "limit") {
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &format!("limit must be 1 to {MAX_PAGE}"),
                    )
                }
            },
            None => DEFAULT_PAGE,
        };
        let after = http::query_param(query, "after").filter(|s| !s.is_empty());
        let mismatch = match http::query_param(query, "mismatch").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "mismatch must be true or false",
                )
            }
        };
        let filter = crate::store::Filter {
            state,
            provider,
            mismatch,
        };
        match self
            .engine
            .store()
            .list_filtered(&filter, after.as_deref(), limit)
            .await
        {
            Ok(ps) => {
                let next_after = if ps.len() == limit {
                    ps.last().map(|p| p.id.clone())
                } else {
                    None
                };
                let payments = ps.into_iter().map(|p| self.view(p, None)).collect();
                http::json(
                    StatusCode::OK,
                    &Page {
                        payments,
                        next_after,
                    },
                )
            }
            Err(e) => engine_error(e.into()),
        }
    }

    fn view(&self, mut payment: Payment, history: Option<Vec<Observation>>) -> PaymentView {
        for k in crate::providers::plugin(payment.provider).secret_keys {
            if let Some(v) = payment.keys.get_mut(*k) {
                *v = "[redacted]".into();
            }
        }
        PaymentView {
            payment,
            history,
            actions: None,
        }
    }
}

/// The one place engine errors become HTTP answers. Store failures are
/// opaque 503s with the detail in the log.
fn engine_error(e: EngineError) -> Answer {
    match e {
        EngineError::UnknownProvider(p) => http::error(
            StatusCode::BAD_REQUEST,
            "unknown_provider",
            &format!("provider `{p}` is not configured"),
        ),
        EngineError::BadRequest(m) => http::error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        // The request is well formed; the payment's provider or state
        // refuses it (another provider's action, not authorized, an
        // amount the invoice does not allow): a conflict with the payment.
        EngineError::ActionRefused(m) => http::error(StatusCode::CONFLICT, "action_refused", &m),
        EngineError::ActionConflict(m) => http::error(StatusCode::CONFLICT, "action_conflict", &m),
        EngineError::Busy(m) => http::error(StatusCode::CONFLICT, "sweep_running", &m),
        EngineError::Callback(c) => {
            http::error(StatusCode::BAD_REQUEST, "invalid_request", &c.to_string())
        }
        EngineError::Store(e @ StoreError::AlreadyTracked { .. }) => {
            http::error(StatusCode::CONFLICT, "conflict", &e.to_string())
        }
        EngineError::Store(StoreError::NotFound(id)) => http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no payment `{id}`"),
        ),
        EngineError::Store(e) => {
            tracing::error!(alert = "store_error", error = %e, "admin request failed in the store");
            http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store could not serve this request",
            )
        }
    }
}

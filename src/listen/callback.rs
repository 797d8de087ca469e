//! The callback listener: the only port providers reach. It verifies each
//! callback, commits it durably, and only then answers 200.
//!
//! Routes: `/callback/<name>` for each registered provider that reads
//! callbacks (ConnPay: GET or POST, query string or form; MyFatoorah:
//! POST webhooks). Answers: 200 `OK` once durable (also
//! for duplicates and orphans, so the gateway stops re-sending), 400
//! malformed, 403 signature invalid (nothing stored), 404 unknown route or
//! provider not configured, 405 with `Allow`, 503 orphan limit or store
//! unavailable (the gateway will re-send).

use std::sync::{Arc, LazyLock};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use crate::engine::{Engine, EngineError};
use crate::http::{self, Answer, CloseConnection};
use crate::model::ProviderId;
use crate::providers::{CallbackError, RawCallback};

/// The routes this listener serves: `/callback/<name>` with the methods
/// each registered provider reads callbacks by (docs/openapi.yaml lists
/// them too).
pub static ROUTES: LazyLock<Vec<(&'static str, &'static str)>> = LazyLock::new(|| {
    crate::providers::REGISTRY
        .iter()
        .flat_map(|p| {
            // Built once per process: a handful of short paths.
            let path: &'static str = Box::leak(format!("/callback/{}", p.id).into_boxed_str());
            p.callback_methods.iter().map(move |m| (*m, path))
        })
        .collect()
});

pub async fn handle(
    engine: Arc<Engine>,
    max_body: usize,
    req: Request<Incoming>,
) -> Result<Answer, CloseConnection> {
    Ok(route(engine, max_body, req).await)
}

async fn route(engine: Arc<Engine>, max_body: usize, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let segs = http::segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().as_str().to_string();
    if !http::allowed_methods(&ROUTES, &segs).contains(&method.as_str()) {
        return http::method_not_allowed(&ROUTES, &segs, &method, &path);
    }
    let Some(pid) = segs.get(1).and_then(|name| name.parse::<ProviderId>().ok()) else {
        return not_found();
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let header = move |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let body = match http::read_body(req, max_body).await {
        Ok(b) => b,
        Err(a) => return a,
    };
    let raw = RawCallback {
        method: &method,
        query: &query,
        body: &body,
        header: &header,
    };
    match engine.ingest(pid, &raw).await {
        Ok(_) => http::text(StatusCode::OK, "OK"),
        Err(EngineError::Callback(CallbackError::Forged)) => http::error(
            StatusCode::FORBIDDEN,
            "signature_invalid",
            "callback signature does not verify",
        ),
        Err(EngineError::Callback(CallbackError::Malformed(m))) => {
            http::error(StatusCode::BAD_REQUEST, "malformed_callback", &m)
        }
        Err(EngineError::UnknownProvider(p)) => http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("provider `{p}` is not configured here"),
        ),
        Err(EngineError::Store(crate::store::StoreError::OrphanLimit(m))) => {
            http::error(StatusCode::SERVICE_UNAVAILABLE, "orphan_limit", &m)
        }
        Err(e) => {
            tracing::error!(alert = "store_error", error = %e, "callback not committed");
            http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "callback not stored; send it again",
            )
        }
    }
}

fn not_found() -> Answer {
    http::error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

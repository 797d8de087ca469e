//! A sandbox of the REST "Update Payment Status" API (seed 001):
//! `POST /api/v1/status/{payment-id}` with the `api-key` header, every body
//! field required, `{"success": true}` on success and RFC 7807 problem
//! documents on error. It records each status change it applies.
//!
//! Fault knobs: latency, a 5xx rate, dropped connections, the next N
//! updates answered 500 or refused with a 400 problem, and "apply the
//! change, then drop the connection before answering".

use crate::providers::sandbox::Server;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Answer, CloseConnection};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Latency, a 5xx rate and dropped connections.
    pub common: crate::providers::sandbox::CommonFaults,
    pub fail_next: u32,
    pub apply_then_drop: bool,
    /// The next update is refused with a 400 problem about its status.
    pub reject_next: bool,
}

struct Inner {
    api_key: String,
    faults: Mutex<Faults>,
    /// Statuses applied, per payment, in order.
    changes: Mutex<HashMap<String, Vec<String>>>,
    requests: AtomicU64,
    last: Mutex<Option<(serde_json::Value, Option<String>)>>,
}

#[derive(Clone)]
pub struct RestStatusSim {
    inner: Arc<Inner>,
    server: Server,
}

impl RestStatusSim {
    pub fn start(listener: TcpListener, api_key: &str, cancel: CancellationToken) -> RestStatusSim {
        let inner = Arc::new(Inner {
            api_key: api_key.into(),
            faults: Mutex::new(Faults::default()),
            changes: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let i = inner.clone();
        let server = Server::start(listener, cancel, move |req| handle(i.clone(), req));
        RestStatusSim { inner, server }
    }

    /// The base URL to configure (`…/api/v1`).
    pub fn base_url(&self) -> String {
        format!("{}/api/v1", self.server.base_url())
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    /// Statuses applied to a payment, in order.
    pub fn changes(&self, id: &str) -> Vec<String> {
        lock(&self.inner.changes)
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// The last request's body and `api-key` header.
    pub fn last(&self) -> Option<(serde_json::Value, Option<String>)> {
        lock(&self.inner.last).clone()
    }

    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

fn problem(status: StatusCode, title: &str, errors: Option<serde_json::Value>) -> Answer {
    let mut body = serde_json::json!({
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": title,
        "status": status.as_u16(),
        "traceId": format!("{:032x}", fastrand::u128(..)),
    });
    if let Some(e) = errors {
        body["errors"] = e;
    }
    let mut a = http::json(status, &body);
    a.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/problem+json"),
    );
    a
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Answer, CloseConnection> {
    let path = req.uri().path().to_string();
    let segs = http::segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let id = match (req.method().as_str(), segs.as_slice()) {
        ("POST", ["api", "v1", "status", id]) => id.to_string(),
        _ => {
            return Ok(http::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ))
        }
    };
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let header = req
        .headers()
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let faults = lock(&inner.faults).clone();
    match faults.common.apply().await {
        crate::providers::sandbox::Fault::Drop => return Err(CloseConnection),
        crate::providers::sandbox::Fault::Error => {
            return Ok(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An error occurred.",
                None,
            ))
        }
        crate::providers::sandbox::Fault::None => {}
    }
    let body = match http::read_body(req, 16 * 1024).await {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    *lock(&inner.last) = Some((v.clone(), header.clone()));
    if faults.fail_next > 0 {
        lock(&inner.faults).fail_next -= 1;
        return Ok(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "An error occurred.",
            None,
        ));
    }
    let mut errors = serde_json::Map::new();
    for field in [
        "apiKey",
        "id",
        "status",
        "trust_Seed",
        "trust_Value",
        "alt_Trust_Value",
    ] {
        if v.get(field)
            .and_then(|f| f.as_str())
            .is_none_or(str::is_empty)
        {
            errors.insert(
                field.into(),
                serde_json::json!([format!("The {field} field is required.")]),
            );
        }
    }
    if header.as_deref() != Some(inner.api_key.as_str())
        || v["apiKey"].as_str().is_some_and(|k| k != inner.api_key)
    {
        errors.insert(
            "apiKey".into(),
            serde_json::json!(["The apiKey is not valid."]),
        );
    }
    if faults.reject_next {
        lock(&inner.faults).reject_next = false;
        errors.insert(
            "status".into(),
            serde_json::json!(["The status is not allowed for this payment."]),
        );
    }
    if v["id"].as_str().is_some_and(|b| b != id) {
        errors.insert(
            "id".into(),
            serde_json::json!(["The id does not match the path."]),
        );
    }
    if !errors.is_empty() {
        return Ok(problem(
            StatusCode::BAD_REQUEST,
            "One or more validation errors occurred.",
            Some(errors.into()),
        ));
    }
    let status = v["status"].as_str().unwrap_or_default().to_string();
    lock(&inner.changes).entry(id).or_default().push(status);
    if faults.apply_then_drop {
        lock(&inner.faults).apply_then_drop = false;
        return Err(CloseConnection);
    }
    Ok(http::json(
        StatusCode::OK,
        &serde_json::json!({"success": true}),
    ))
}

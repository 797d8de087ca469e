//! A connectFi payment-link sandbox: `/auth/get-token` issuing tokens that
//! expire, and `/payment-link/payment/set-status` as seed 000 describes it:
//! the schema checked, both the current and the requested status limited to
//! Error, SentToPay, Completed, Settled, Returned and Declined, the
//! `manualStatus` lock that keeps non-manual updates out, and the whole
//! payment with its `statusChangeHistory` in the answer.
//!
//! Fault knobs: latency, a 5xx rate, dropped connections, the next N
//! updates answered 500, "apply the change, then drop the connection", and
//! expiring every token now.

use crate::providers::sandbox::Server;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Answer, CloseConnection};
use crate::providers::connectfi::{check_description, check_id, StatusChange, SETTABLE, STATUSES};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Latency, a 5xx rate and dropped connections.
    pub common: crate::providers::sandbox::CommonFaults,
    pub fail_next: u32,
    pub apply_then_drop: bool,
}

#[derive(Debug, Clone)]
struct Link {
    status: String,
    manual: bool,
    history: Vec<StatusChange>,
}

struct Inner {
    client_id: String,
    client_secret: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
    links: Mutex<HashMap<String, Link>>,
    faults: Mutex<Faults>,
    logins: AtomicU64,
    updates: AtomicU64,
    last: Mutex<Option<(serde_json::Value, Option<String>)>>,
}

#[derive(Clone)]
pub struct ConnectfiSim {
    inner: Arc<Inner>,
    server: Server,
}

fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl ConnectfiSim {
    /// Tokens live `ttl`; log-in takes `clientId` and `clientSecret`.
    pub fn start(
        listener: TcpListener,
        client_id: &str,
        client_secret: &str,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> ConnectfiSim {
        let inner = Arc::new(Inner {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            ttl,
            tokens: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            logins: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let i = inner.clone();
        let server = Server::start(listener, cancel, move |req| handle(i.clone(), req));
        ConnectfiSim { inner, server }
    }

    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    /// A payment link the customer has started paying.
    pub fn add_link(&self, id: &str, status: &str) {
        let entry = |s: &str, t: &str| StatusChange {
            status: s.into(),
            initiator_type: Some(t.into()),
            dts_created_at: Some(now_iso()),
            ..Default::default()
        };
        let history = vec![
            entry("Initiated", "merchant"),
            entry("Sent", "merchant"),
            entry("Processing", "public"),
            entry(status, "process"),
        ];
        lock(&self.inner.links).insert(
            id.into(),
            Link {
                status: status.into(),
                manual: false,
                history,
            },
        );
    }

    /// A non-manual update, as connectFi's own processing would make;
    /// refused while the link's status is locked by a manual update.
    pub fn process_update(&self, id: &str, status: &str) -> bool {
        let mut links = lock(&self.inner.links);
        let Some(l) = links.get_mut(id) else {
            return false;
        };
        if l.manual {
            return false;
        }
        l.status = status.into();
        l.history.push(StatusChange {
            status: status.into(),
            initiator_type: Some("process".into()),
            dts_created_at: Some(now_iso()),
            ..Default::default()
        });
        true
    }

    /// Manual status changes applied to a link.
    pub fn manual_changes(&self, id: &str) -> usize {
        lock(&self.inner.links)
            .get(id)
            .map(|l| {
                l.history
                    .iter()
                    .filter(|h| h.initiator_type.as_deref() == Some("user"))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn status(&self, id: &str) -> Option<(String, bool)> {
        lock(&self.inner.links)
            .get(id)
            .map(|l| (l.status.clone(), l.manual))
    }

    /// Expires every token issued so far.
    pub fn expire_tokens(&self) {
        for until in lock(&self.inner.tokens).values_mut() {
            *until = Instant::now();
        }
    }

    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::SeqCst)
    }

    pub fn updates(&self) -> u64 {
        self.inner.updates.load(Ordering::SeqCst)
    }

    /// The last set-status body and `x-connectfi-token` header.
    pub fn last(&self) -> Option<(serde_json::Value, Option<String>)> {
        lock(&self.inner.last).clone()
    }

    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

fn envelope(
    status: StatusCode,
    code: &str,
    message: &str,
    data: Option<serde_json::Value>,
) -> Answer {
    let mut body =
        serde_json::json!({"code": code, "requestId": format!("{:032x}", fastrand::u128(..))});
    if !message.is_empty() {
        body["message"] = message.into();
    }
    if let Some(d) = data {
        body["data"] = d;
    }
    http::json(status, &body)
}

fn invalid(message: String) -> Answer {
    envelope(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &message, None)
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Answer, CloseConnection> {
    let path = req.uri().path().to_string();
    let token = req
        .headers()
        .get("x-connectfi-token")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let common = lock(&inner.faults).common.clone();
    match common.apply().await {
        crate::providers::sandbox::Fault::Drop => return Err(CloseConnection),
        crate::providers::sandbox::Fault::Error => {
            return Ok(envelope(
                StatusCode::SERVICE_UNAVAILABLE,
                "503",
                "unavailable",
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
    match path.as_str() {
        "/auth/get-token" => {
            inner.logins.fetch_add(1, Ordering::SeqCst);
            if v["clientId"] != inner.client_id.as_str()
                || v["clientSecret"] != inner.client_secret.as_str()
            {
                return Ok(envelope(
                    StatusCode::UNAUTHORIZED,
                    "401",
                    "invalid client credentials",
                    None,
                ));
            }
            let t = format!("cfi{:032x}", fastrand::u128(..));
            lock(&inner.tokens).insert(t.clone(), Instant::now() + inner.ttl);
            Ok(envelope(
                StatusCode::OK,
                "0",
                "",
                Some(serde_json::json!({"token": t, "expiresIn": inner.ttl.as_secs()})),
            ))
        }
        "/payment-link/payment/set-status" => set_status(&inner, v, token),
        _ => Ok(http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

fn set_status(
    inner: &Arc<Inner>,
    v: serde_json::Value,
    token: Option<String>,
) -> Result<Answer, CloseConnection> {
    inner.updates.fetch_add(1, Ordering::SeqCst);
    *lock(&inner.last) = Some((v.clone(), token.clone()));
    let valid = token
        .as_ref()
        .and_then(|t| lock(&inner.tokens).get(t).copied())
        .is_some_and(|until| Instant::now() < until);
    if !valid {
        return Ok(envelope(
            StatusCode::UNAUTHORIZED,
            "401",
            "token expired or unknown",
            None,
        ));
    }
    {
        let mut f = lock(&inner.faults);
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return Ok(envelope(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500",
                "internal error",
                None,
            ));
        }
    }
    let id = v["cFiTransactionId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Err(e) = check_id(&id) {
        return Ok(invalid(e));
    }
    let status = v["status"].as_str().unwrap_or_default().to_string();
    if !STATUSES.contains(&status.as_str()) {
        return Ok(invalid(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let description = v["description"].as_str().map(String::from);
    if let Some(d) = &description {
        if let Err(e) = check_description(d) {
            return Ok(invalid(e));
        }
    }
    let manual = v["manualStatus"].as_bool().unwrap_or(true);
    let data = {
        let mut links = lock(&inner.links);
        let Some(link) = links.get_mut(&id) else {
            return Ok(envelope(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "payment link not found",
                None,
            ));
        };
        if !SETTABLE.contains(&link.status.as_str()) || !SETTABLE.contains(&status.as_str()) {
            return Ok(invalid(format!(
                "the current status ({}) and the requested one ({status}) must be one of {}",
                link.status,
                SETTABLE.join(", ")
            )));
        }
        link.status = status.clone();
        link.manual = manual;
        link.history.push(StatusChange {
            login: Some("CLIENTID".into()),
            description: description.clone(),
            initiator_id: Some("1HTczC2VSZcJ3BB5pKr09Y".into()),
            initiator_type: Some("user".into()),
            status: status.clone(),
            dts_created_at: Some(now_iso()),
        });
        serde_json::json!({
            "cFiTransactionId": id,
            "cFiAggregatorId": "CLIENTID",
            "status": link.status,
            "description": description,
            "statusChangeHistory": link.history,
            "manualStatus": link.manual,
        })
    };
    let drop_it = {
        let mut f = lock(&inner.faults);
        std::mem::take(&mut f.apply_then_drop)
    };
    if drop_it {
        return Err(CloseConnection);
    }
    Ok(envelope(StatusCode::OK, "0", "", Some(data)))
}

//! A CRM.COM sandbox: a log-in method issuing tokens that expire, and
//! `POST /payments/reject` as seed 003 describes it: the token in the body,
//! exactly one payment identifier and one rejection reason identifier, only
//! DRAFT payments rejected, and the `{"status": {...}, "data"}` envelope.
//!
//! Fault knobs: latency, a 5xx rate, dropped connections, the next N
//! rejects answered 500, "apply the change, then drop the connection", and
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
use crate::providers::crm::{PAYMENT_IDS, REASON_IDS};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Latency, a 5xx rate and dropped connections.
    pub common: crate::providers::sandbox::CommonFaults,
    pub fail_next: u32,
    pub apply_then_drop: bool,
}

#[derive(Debug, Clone)]
struct CrmPayment {
    id: String,
    number: String,
    reference_number: String,
    state: String,
    amount: f64,
    rejects: u32,
}

struct Inner {
    username: String,
    password: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
    payments: Mutex<Vec<CrmPayment>>,
    faults: Mutex<Faults>,
    logins: AtomicU64,
    requests: AtomicU64,
    last: Mutex<Option<serde_json::Value>>,
}

#[derive(Clone)]
pub struct CrmSim {
    inner: Arc<Inner>,
    server: Server,
}

impl CrmSim {
    /// Log-in at `/users/login` with `username` and `password`.
    pub fn start(
        listener: TcpListener,
        username: &str,
        password: &str,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> CrmSim {
        let inner = Arc::new(Inner {
            username: username.into(),
            password: password.into(),
            ttl,
            tokens: Mutex::new(HashMap::new()),
            payments: Mutex::new(vec![]),
            faults: Mutex::new(Faults::default()),
            logins: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let i = inner.clone();
        let server = Server::start(listener, cancel, move |req| handle(i.clone(), req));
        CrmSim { inner, server }
    }

    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    /// A payment in `state` (DRAFT, POSTED, ...).
    pub fn add_payment(&self, reference_number: &str, state: &str) {
        let n = lock(&self.inner.payments).len();
        lock(&self.inner.payments).push(CrmPayment {
            id: format!("{:032X}", 0xACCC7247u128 + n as u128),
            number: format!("PAY{n:05}"),
            reference_number: reference_number.into(),
            state: state.into(),
            amount: 50.0,
            rejects: 0,
        });
    }

    pub fn state(&self, reference_number: &str) -> Option<(String, u32)> {
        lock(&self.inner.payments)
            .iter()
            .find(|p| p.reference_number == reference_number)
            .map(|p| (p.state.clone(), p.rejects))
    }

    pub fn expire_tokens(&self) {
        for until in lock(&self.inner.tokens).values_mut() {
            *until = Instant::now();
        }
    }

    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Option<serde_json::Value> {
        lock(&self.inner.last).clone()
    }

    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

fn envelope(code: &str, message: &str, data: Option<serde_json::Value>) -> Answer {
    let status = serde_json::json!({"code": code, "message": if message.is_empty() { serde_json::Value::Null } else { message.into() }, "description": null});
    let mut body = serde_json::json!({"status": status});
    if let Some(d) = data {
        body["data"] = d;
    }
    http::json(StatusCode::OK, &body)
}

/// The one field set among `allowed` in an identifier object.
fn one(v: &serde_json::Value, allowed: &[&str]) -> Result<(String, String), String> {
    let obj = v.as_object().ok_or("identifier must be an object")?;
    if obj.keys().any(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("allowed identifier fields: {}", allowed.join(", ")));
    }
    let set: Vec<_> = obj
        .iter()
        .filter(|(_, v)| v.as_str().is_some_and(|s| !s.is_empty()))
        .collect();
    match set.as_slice() {
        [(k, v)] => Ok((k.to_string(), v.as_str().unwrap_or_default().to_string())),
        _ => Err("exactly one identifier field must be specified".into()),
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Answer, CloseConnection> {
    let path = req.uri().path().to_string();
    let common = lock(&inner.faults).common.clone();
    match common.apply().await {
        crate::providers::sandbox::Fault::Drop => return Err(CloseConnection),
        crate::providers::sandbox::Fault::Error => {
            return Ok(http::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": {"code": "UNAVAILABLE"}}),
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
        "/users/login" => {
            inner.logins.fetch_add(1, Ordering::SeqCst);
            if v["username"] != inner.username.as_str() || v["password"] != inner.password.as_str()
            {
                return Ok(envelope(
                    "INVALID_CREDENTIALS",
                    "wrong username or password",
                    None,
                ));
            }
            let t = format!("{:032X}", fastrand::u128(..));
            lock(&inner.tokens).insert(t.clone(), Instant::now() + inner.ttl);
            Ok(envelope("OK", "", Some(serde_json::json!({"token": t}))))
        }
        "/payments/reject" => reject(&inner, v),
        _ => Ok(http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

fn reject(inner: &Arc<Inner>, v: serde_json::Value) -> Result<Answer, CloseConnection> {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    *lock(&inner.last) = Some(v.clone());
    {
        let mut f = lock(&inner.faults);
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return Ok(http::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"status": {"code": "INTERNAL_ERROR"}}),
            ));
        }
    }
    let valid = v["token"]
        .as_str()
        .and_then(|t| lock(&inner.tokens).get(t).copied())
        .is_some_and(|until| Instant::now() < until);
    if !valid {
        return Ok(envelope(
            "INVALID_TOKEN",
            "the token is invalid or expired",
            None,
        ));
    }
    let (field, value) = match one(&v["payment_identifier"], &PAYMENT_IDS) {
        Ok(x) => x,
        Err(e) => return Ok(envelope("INVALID_PAYMENT_IDENTIFIER", &e, None)),
    };
    if let Err(e) = one(&v["rejection_reason_identifier"], &REASON_IDS) {
        return Ok(envelope("INVALID_REJECTION_REASON", &e, None));
    }
    let data = {
        let mut payments = lock(&inner.payments);
        let Some(p) = payments.iter_mut().find(|p| match field.as_str() {
            "id" => p.id == value,
            "number" => p.number == value,
            "reference_number" => p.reference_number == value,
            _ => false,
        }) else {
            return Ok(envelope("PAYMENT_NOT_FOUND", "no such payment", None));
        };
        if p.state != "DRAFT" {
            return Ok(envelope(
                "INVALID_LIFE_CYCLE_STATE",
                &format!(
                    "only DRAFT payments can be rejected; this one is {}",
                    p.state
                ),
                None,
            ));
        }
        p.state = "REJECTED".into();
        p.rejects += 1;
        serde_json::json!({
            "payment_amount": p.amount, "issued_on": "2026-11-22T03:00:00", "life_cycle_state": p.state,
            "number": p.number, "id": p.id, "reference_number": p.reference_number, "posted_on": null,
        })
    };
    let drop_it = std::mem::take(&mut lock(&inner.faults).apply_then_drop);
    if drop_it {
        return Err(CloseConnection);
    }
    Ok(envelope("OK", "", Some(data)))
}

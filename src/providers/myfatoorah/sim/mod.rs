//! A MyFatoorah sandbox: `UpdatePaymentStatus` and `GetPaymentStatus` as
//! seed 004 describes them, with the envelope, bearer-token auth, and the
//! provider's own rules: a capture at most the invoice value, a release of
//! exactly the invoice value, and only one capture or release per invoice.
//!
//! Fault knobs: latency, a 5xx rate, dropped connections, the next N
//! updates answered 500, and "apply the change, then drop the connection"
//! (or hang, so a test can kill the caller mid-request).
//!
//! Webhooks: when a URL and secret are set, every applied capture or release
//! is announced with a signed v1 or v2 webhook, re-sent until it gets 200
//! (up to 5 times, as MyFatoorah does).

use crate::sync::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Answer, CloseConnection};
use crate::providers::myfatoorah::{
    Envelope, Invoice, InvoiceTransaction, StatusRequest, UpdateRequest, ValidationError,
};

mod webhooks;
use webhooks::{deliver, send_webhook, webhook_event};

/// Fault knobs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub latency_ms: u64,
    /// Share of requests answered 500 before anything is applied.
    pub error_rate: f64,
    /// Share of requests whose connection is closed before anything is applied.
    pub drop_rate: f64,
    /// The next N UpdatePaymentStatus requests are answered 500, unapplied.
    pub fail_next_updates: u32,
    /// The next update is applied, then its connection is closed unanswered.
    pub apply_then_drop: bool,
    /// The next update is applied, then its answer never comes.
    pub apply_then_hang: bool,
    /// How webhooks for applied changes are delivered.
    pub webhooks: WebhookMode,
}

/// Webhook faults, as the ConnPay sandbox has for its callbacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebhookMode {
    #[default]
    Normal,
    /// Each webhook is sent twice.
    Duplicate,
    /// The change's webhook, then a stale AUTHORIZE one.
    OutOfOrder,
    /// No webhook is sent.
    Never,
}

#[derive(Debug, Clone)]
struct SimInvoice {
    inv: Invoice,
    /// Value in thousandths (KWD).
    value: i64,
    /// Captures and releases applied: MyFatoorah allows one.
    operations: u32,
}

struct Inner {
    token: String,
    faults: Mutex<Faults>,
    invoices: Mutex<HashMap<i64, SimInvoice>>,
    updates: AtomicU64,
    inquiries: AtomicU64,
    /// Every request, answered or not.
    requests: AtomicU64,
    last_update: Mutex<Option<(serde_json::Value, Option<String>)>>,
    cancel: CancellationToken,
    /// Where webhooks go: URL, secret, version (1 or 2).
    webhook: Mutex<Option<(String, String, u8)>>,
    webhooks_acked: AtomicU64,
    webhook_events: AtomicU64,
    client: reqwest::Client,
    tasks: TaskTracker,
}

#[derive(Clone)]
pub struct MyfatoorahSim {
    inner: Arc<Inner>,
    addr: SocketAddr,
    tasks: TaskTracker,
}

impl MyfatoorahSim {
    pub fn start(listener: TcpListener, token: &str, cancel: CancellationToken) -> MyfatoorahSim {
        let addr = listener.local_addr().expect("bound listener");
        let inner = Arc::new(Inner {
            token: token.into(),
            faults: Mutex::new(Faults::default()),
            invoices: Mutex::new(HashMap::new()),
            updates: AtomicU64::new(0),
            inquiries: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_update: Mutex::new(None),
            cancel: cancel.clone(),
            webhook: Mutex::new(None),
            webhooks_acked: AtomicU64::new(0),
            webhook_events: AtomicU64::new(0),
            client: reqwest::Client::new(),
            tasks: TaskTracker::new(),
        });
        let tasks = inner.tasks.clone();
        let i = inner.clone();
        tasks.spawn(http::serve(
            listener,
            http::Limits::sandbox(),
            cancel,
            tasks.clone(),
            move |req| handle(i.clone(), req),
        ));
        MyfatoorahSim { inner, addr, tasks }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    /// An authorized invoice of `value` KWD (thousandths), as after the
    /// customer paid with capture deferred.
    pub fn add_invoice(&self, id: i64, value: i64) {
        let amount = format!("{}.{:03}", value / 1000, value % 1000);
        let inv = Invoice {
            invoice_id: id,
            invoice_status: "Pending".into(),
            invoice_reference: Some(format!("2026{id:06}")),
            created_date: Some("2026-11-22T03:00:00.000".into()),
            expiry_date: Some("December 31, 2099".into()),
            expiry_time: Some("23:59:59.000".into()),
            invoice_value: value as f64 / 1000.0,
            customer_name: Some("Anonymous".into()),
            invoice_display_value: Some(format!("{amount} KD")),
            deposit_status: Some("Not Deposited".into()),
            invoice_transactions: vec![transaction(id, 1, "Authorize", &amount)],
            ..Default::default()
        };
        lock(&self.inner.invoices).insert(
            id,
            SimInvoice {
                inv,
                value,
                operations: 0,
            },
        );
    }

    /// Sets an invoice's `ExpiryDate` and `ExpiryTime` as served, however
    /// odd (a provider's answer payrecon must read without panicking).
    pub fn set_expiry(&self, id: i64, date: &str, time: &str) {
        if let Some(sim) = lock(&self.inner.invoices).get_mut(&id) {
            sim.inv.expiry_date = Some(date.into());
            sim.inv.expiry_time = Some(time.into());
        }
    }

    /// Sends webhooks to `url`, signed with `secret`, in `version` 1 or 2.
    pub fn set_webhook(&self, url: &str, secret: &str, version: u8) {
        *lock(&self.inner.webhook) = Some((url.into(), secret.into(), version));
    }

    /// Webhooks the receiver acknowledged with 200.
    pub fn webhooks_acked(&self) -> u64 {
        self.inner.webhooks_acked.load(Ordering::SeqCst)
    }

    /// Announces an invoice's current state with a webhook now, as when
    /// the customer authorizes a payment. Returns the receiver's status.
    pub async fn send_webhook(&self, id: i64) -> Option<u16> {
        let inv = lock(&self.inner.invoices).get(&id).map(|i| i.inv.clone())?;
        send_webhook(&self.inner, &inv).await
    }

    /// Captures and releases applied to an invoice.
    pub fn operations(&self, id: i64) -> u32 {
        lock(&self.inner.invoices)
            .get(&id)
            .map(|i| i.operations)
            .unwrap_or(0)
    }

    /// Every request received, whatever its fate.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// UpdatePaymentStatus requests received, applied or not.
    pub fn update_requests(&self) -> u64 {
        self.inner.updates.load(Ordering::SeqCst)
    }

    /// The last update's JSON body and Authorization header.
    pub fn last_update(&self) -> Option<(serde_json::Value, Option<String>)> {
        lock(&self.inner.last_update).clone()
    }

    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn transaction(invoice: i64, n: u32, status: &str, amount: &str) -> InvoiceTransaction {
    InvoiceTransaction {
        transaction_date: Some("2026-11-22T03:00:05.000".into()),
        payment_gateway: Some("VISA/MASTER".into()),
        transaction_id: Some(format!("{invoice}{n}")),
        payment_id: Some(format!("0707{invoice:08}{n:04}")),
        transaction_status: status.into(),
        transation_value: Some(amount.into()),
        currency: Some("KD".into()),
        card_number: Some("450875xxxxxx1019".into()),
        error: (status == "Canceled").then(|| "Transaction Released".to_string()),
        error_code: Some(String::new()),
        ..Default::default()
    }
}

fn envelope<T: Serialize>(
    status: StatusCode,
    ok: bool,
    message: &str,
    errors: Vec<(&str, String)>,
    data: Option<T>,
) -> Answer {
    let env = Envelope {
        is_success: ok,
        message: Some(message.into()),
        validation_errors: (!errors.is_empty()).then(|| {
            errors
                .into_iter()
                .map(|(n, e)| ValidationError {
                    name: n.into(),
                    error: e,
                })
                .collect()
        }),
        data,
    };
    http::json(status, &env)
}

/// The 500 a fault injects.
fn internal_error() -> Answer {
    envelope::<Invoice>(
        StatusCode::INTERNAL_SERVER_ERROR,
        false,
        "Internal error",
        vec![],
        None,
    )
}

fn invalid(name: &str, error: String) -> Answer {
    envelope::<Invoice>(
        StatusCode::BAD_REQUEST,
        false,
        "Invalid data",
        vec![(name, error)],
        None,
    )
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Answer, CloseConnection> {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let faults = lock(&inner.faults).clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if fastrand::f64() < faults.drop_rate {
        return Err(CloseConnection);
    }
    if fastrand::f64() < faults.error_rate {
        return Ok(internal_error());
    }
    if auth.as_deref() != Some(&format!("Bearer {}", inner.token)) {
        return Ok(envelope::<Invoice>(
            StatusCode::UNAUTHORIZED,
            false,
            "Unauthorized: invalid token",
            vec![],
            None,
        ));
    }
    let body = match http::read_body(req, 16 * 1024).await {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    match path.as_str() {
        "/v2/UpdatePaymentStatus" => update(&inner, &body, auth, faults).await,
        "/v2/GetPaymentStatus" => {
            inner.inquiries.fetch_add(1, Ordering::SeqCst);
            let Ok(r) = serde_json::from_slice::<StatusRequest>(&body) else {
                return Ok(invalid("Key", "Key and KeyType are required".into()));
            };
            Ok(match find(&inner, &r.key, &r.key_type) {
                Some(inv) => envelope(StatusCode::OK, true, "", vec![], Some(inv)),
                None => invalid("Key", format!("Invoice {} not found", r.key)),
            })
        }
        _ => Ok(http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

fn find(inner: &Inner, key: &str, key_type: &str) -> Option<Invoice> {
    let invoices = lock(&inner.invoices);
    match key_type.to_ascii_lowercase().as_str() {
        "invoiceid" => key
            .parse()
            .ok()
            .and_then(|id: i64| invoices.get(&id))
            .map(|i| i.inv.clone()),
        "paymentid" => invoices
            .values()
            .find(|i| {
                i.inv
                    .invoice_transactions
                    .iter()
                    .any(|t| t.payment_id.as_deref() == Some(key))
            })
            .map(|i| i.inv.clone()),
        "customerreference" => invoices
            .values()
            .find(|i| i.inv.customer_reference.as_deref() == Some(key))
            .map(|i| i.inv.clone()),
        _ => None,
    }
}

async fn update(
    inner: &Arc<Inner>,
    body: &[u8],
    auth: Option<String>,
    faults: Faults,
) -> Result<Answer, CloseConnection> {
    inner.updates.fetch_add(1, Ordering::SeqCst);
    *lock(&inner.last_update) = Some((serde_json::from_slice(body).unwrap_or_default(), auth));
    if faults.fail_next_updates > 0 {
        lock(&inner.faults).fail_next_updates -= 1;
        return Ok(internal_error());
    }
    let Ok(r) = serde_json::from_slice::<UpdateRequest>(body) else {
        return Ok(invalid(
            "Operation",
            "Operation, Amount, Key and KeyType are required".into(),
        ));
    };
    let op = r.operation.to_ascii_lowercase();
    if op != "capture" && op != "release" {
        return Ok(invalid(
            "Operation",
            format!("Operation must be capture or release, not {}", r.operation),
        ));
    }
    let Some(found) = find(inner, &r.key, &r.key_type) else {
        return Ok(invalid("Key", format!("Invoice {} not found", r.key)));
    };
    let amount = (r.amount * 1000.0).round() as i64;
    let answer = {
        let mut invoices = lock(&inner.invoices);
        let Some(sim) = invoices.get_mut(&found.invoice_id) else {
            return Ok(invalid("Key", "Invoice not found".into()));
        };
        if sim.operations > 0 {
            return Ok(invalid(
                "Key",
                "Only one capture or release operation is allowed per invoice".into(),
            ));
        }
        if op == "capture" && (amount <= 0 || amount > sim.value) {
            return Ok(invalid(
                "Amount",
                "The capture amount must be less than or equal to the invoice value".into(),
            ));
        }
        if op == "release" && amount != sim.value {
            return Ok(invalid(
                "Amount",
                "The release amount must be equal to the invoice value".into(),
            ));
        }
        sim.operations += 1;
        let text = format!("{}.{:03}", amount / 1000, amount % 1000);
        let n = sim.inv.invoice_transactions.len() as u32 + 1;
        if op == "capture" {
            sim.inv.invoice_status = "Paid".into();
            sim.inv.invoice_value = amount as f64 / 1000.0;
            sim.inv
                .invoice_transactions
                .push(transaction(sim.inv.invoice_id, n, "Succss", &text));
        } else {
            sim.inv.invoice_status = "Pending".into();
            sim.inv.invoice_transactions.push(transaction(
                sim.inv.invoice_id,
                n,
                "Canceled",
                &text,
            ));
        }
        sim.inv.clone()
    };
    if lock(&inner.webhook).is_some() && faults.webhooks != WebhookMode::Never {
        let (i, inv) = (inner.clone(), answer.clone());
        let mut sends = vec![inv.clone()];
        match faults.webhooks {
            WebhookMode::Duplicate => sends.push(inv.clone()),
            WebhookMode::OutOfOrder => {
                let mut stale = inv.clone();
                stale.invoice_transactions.truncate(1);
                sends.push(stale);
            }
            _ => {}
        }
        inner.tasks.spawn(async move {
            for inv in sends {
                let Some(event) = webhook_event(&i, &inv) else {
                    return;
                };
                // Re-sent, same event, until acknowledged (MyFatoorah: up to 5 times).
                for _ in 0..5 {
                    if deliver(&i, &event).await == Some(200) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    if faults.apply_then_drop {
        lock(&inner.faults).apply_then_drop = false;
        return Err(CloseConnection);
    }
    if faults.apply_then_hang {
        lock(&inner.faults).apply_then_hang = false;
        inner.cancel.cancelled().await;
        return Err(CloseConnection);
    }
    Ok(envelope(StatusCode::OK, true, "", vec![], Some(answer)))
}

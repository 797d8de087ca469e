//! A ConnPay sandbox: the transfer status endpoint of seed 002, transfers
//! that move through PROCESSING (sometimes REDIRECT_REQUEST) to APPROVED or
//! DECLINED on a per-transfer script, and the signed GET callback of
//! providers.md, with the gateway's re-sending until it gets 200.
//!
//! Fault knobs: latency, a 5xx rate and dropped connections (globally or
//! per transfer), duplicate callbacks, out-of-order callbacks, callbacks
//! that never come, and reversals after approval.

use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Answer, CloseConnection};
use crate::providers::connpay::{
    control, FailError, RequestSession, ResponseSession, StatusRequest, StatusResponse, Transaction,
};
use crate::state::State;

mod settle;
use settle::{finalize, settle, spawn_callbacks, timer_loop};

/// Times the gateway re-sends an unacknowledged callback (providers.md:
/// up to 30 times; over 14 days there, compressed to seconds here).
const CALLBACK_ATTEMPTS: u32 = 30;

/// Global fault knobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Added to every status answer, drawn uniformly from the range.
    pub latency_ms: (u64, u64),
    /// Share of status requests answered 503.
    pub error_rate: f64,
    /// Share of status requests whose connection is closed unanswered.
    pub drop_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Declined,
}

/// When a transfer reaches its final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settle {
    /// On the n-th status inquiry.
    AfterPolls(u32),
    /// This long after it was created, polled or not.
    AfterMs(u64),
    /// Only when [`ConnpaySim::settle`] is called.
    Manual,
}

/// How the final callback is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackMode {
    Normal,
    /// Sent three times.
    Duplicate,
    /// The final callback, then a stale `processing` one.
    OutOfOrder,
    Never,
}

/// A transfer's script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Script {
    pub outcome: Outcome,
    pub settle: Settle,
    /// Ask the payer for a redirect on the second inquiry.
    pub redirect: bool,
    pub callback: CallbackMode,
    /// Wait before the first callback is sent.
    pub callback_delay_ms: u64,
    /// Send an approved reversal after the approval was acknowledged.
    pub reversal: bool,
    /// This transfer's own inquiry latency, on top of the global one.
    pub latency_ms: u64,
    /// Answer this transfer's inquiries with 500.
    pub always_5xx: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            outcome: Outcome::Approved,
            settle: Settle::AfterPolls(2),
            redirect: false,
            callback: CallbackMode::Normal,
            callback_delay_ms: 0,
            reversal: false,
            latency_ms: 0,
            always_5xx: false,
        }
    }
}

/// A transfer to create in the sandbox.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub endpoint_id: String,
    pub invoice_id: String,
    pub session_token: String,
    /// `None`: the transfer was made without consumer authentication.
    pub access_token: Option<String>,
    pub amount_centis: i64,
    pub currency: String,
    pub script: Script,
}

impl NewTransfer {
    /// A transfer with generated tokens.
    pub fn new(invoice_id: &str, script: Script) -> NewTransfer {
        NewTransfer {
            endpoint_id: "4211".into(),
            invoice_id: invoice_id.into(),
            session_token: format!("sess{:016x}", fastrand::u64(..)),
            access_token: Some(format!("acc{:032x}", fastrand::u128(..))),
            amount_centis: fastrand::i64(100..100_000),
            currency: "EUR".into(),
            script,
        }
    }

    /// The keys payrecon tracks it by.
    pub fn keys(&self) -> crate::model::Keys {
        use crate::providers::connpay::*;
        let mut keys = crate::model::Keys::from([
            (ENDPOINT_ID.to_string(), self.endpoint_id.clone()),
            (INVOICE_ID.to_string(), self.invoice_id.clone()),
            (SESSION_TOKEN.to_string(), self.session_token.clone()),
        ]);
        if let Some(a) = &self.access_token {
            keys.insert(ACCESS_TOKEN.to_string(), a.clone());
        }
        keys
    }
}

/// What the sandbox knows to be true about a transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    /// The inquiry `state`.
    pub state: &'static str,
    /// The normalized state payrecon should end in, once final.
    pub expected: Option<State>,
    pub polls: u32,
    /// Who polled it, in order, as `User-Agent`s, a run of polls by one
    /// poller written once: `[a, b]` is a hand-over; `[a, b, a]` means two
    /// pollers took turns.
    pub pollers: Vec<String>,
    pub callbacks_sent: u32,
    pub callbacks_acked: u32,
    pub reversed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Processing,
    Redirect,
    Final(Outcome),
}

struct Transfer {
    new: NewTransfer,
    order_id: String,
    created: Instant,
    polls: u32,
    pollers: Vec<String>,
    phase: Phase,
    reversed: bool,
    callbacks_sent: u32,
    callbacks_acked: u32,
}

struct Inner {
    key: String,
    callback_url: Mutex<Option<String>>,
    faults: Mutex<Faults>,
    transfers: Mutex<HashMap<String, Transfer>>,
    /// AfterMs settle deadlines.
    timers: Mutex<BTreeMap<(Instant, String), ()>>,
    client: reqwest::Client,
    tasks: TaskTracker,
    cancel: CancellationToken,
    seq: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
    /// Settled transfers whose callbacks may still go out; `None`: any
    /// number ([`ConnpaySim::limit_callbacks`]).
    callback_budget: tokio::sync::watch::Sender<Option<u64>>,
}

/// A running ConnPay sandbox.
#[derive(Clone)]
pub struct ConnpaySim {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl ConnpaySim {
    /// Starts the sandbox on `listener`. Callbacks go to `callback_url`
    /// (settable later), signed with `control_key`.
    pub fn start(
        listener: TcpListener,
        control_key: &str,
        cancel: CancellationToken,
    ) -> ConnpaySim {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let inner = Arc::new(Inner {
            key: control_key.to_string(),
            callback_url: Mutex::new(None),
            faults: Mutex::new(Faults::default()),
            transfers: Mutex::new(HashMap::new()),
            timers: Mutex::new(BTreeMap::new()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            tasks: TaskTracker::new(),
            cancel: cancel.clone(),
            seq: Default::default(),
            requests: Default::default(),
            callback_budget: tokio::sync::watch::Sender::new(None),
        });
        let i = inner.clone();
        inner.tasks.spawn(http::serve(
            listener,
            http::Limits::sandbox(),
            cancel,
            inner.tasks.clone(),
            move |req| handle(i.clone(), req),
        ));
        inner.tasks.spawn(timer_loop(inner.clone()));
        ConnpaySim { inner, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure payrecon with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_callback_url(&self, url: &str) {
        *lock(&self.inner.callback_url) = Some(url.to_string());
    }

    /// Lets the callbacks of `transfers` more settled transfers go out;
    /// those of later ones wait until the limit is lifted (`None`). A test
    /// then knows which callbacks cannot have arrived, whatever the
    /// machine's speed.
    pub fn limit_callbacks(&self, transfers: Option<u64>) {
        self.inner.callback_budget.send_replace(transfers);
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    /// Status requests served so far.
    pub fn requests(&self) -> u64 {
        self.inner
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn add(&self, t: NewTransfer) {
        let n = self
            .inner
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        if let Settle::AfterMs(ms) = t.script.settle {
            lock(&self.inner.timers)
                .insert((now + Duration::from_millis(ms), t.invoice_id.clone()), ());
        }
        let transfer = Transfer {
            order_id: format!("cp{:08}", n + 1),
            created: now,
            polls: 0,
            pollers: vec![],
            phase: Phase::Processing,
            reversed: false,
            callbacks_sent: 0,
            callbacks_acked: 0,
            new: t,
        };
        lock(&self.inner.transfers).insert(transfer.new.invoice_id.clone(), transfer);
    }

    /// Settles a transfer now (for `Settle::Manual`, or early).
    pub fn settle(&self, invoice_id: &str) {
        settle(&self.inner, invoice_id);
    }

    pub fn truth(&self, invoice_id: &str) -> Option<Truth> {
        let map = lock(&self.inner.transfers);
        let t = map.get(invoice_id)?;
        // A reversal reaches payrecon only as a callback whose `type` is
        // unsigned, and the status inquiry still says APPROVED: payrecon
        // records it, alerts, and rightly stays at succeeded.
        let expected = match t.phase {
            Phase::Final(Outcome::Approved) => Some(State::Succeeded),
            Phase::Final(Outcome::Declined) => Some(State::Failed),
            _ => None,
        };
        Some(Truth {
            state: phase_name(t.phase),
            expected,
            polls: t.polls,
            pollers: t.pollers.clone(),
            callbacks_sent: t.callbacks_sent,
            callbacks_acked: t.callbacks_acked,
            reversed: t.reversed,
        })
    }

    /// Waits for the sandbox's own tasks (callback senders) to end.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Processing => "PROCESSING",
        Phase::Redirect => "REDIRECT_REQUEST",
        Phase::Final(Outcome::Approved) => "APPROVED",
        Phase::Final(Outcome::Declined) => "DECLINED",
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Answer, CloseConnection> {
    let path = req.uri().path().to_string();
    let agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let segs = http::segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (endpoint, invoice) = match (req.method().as_str(), segs.as_slice()) {
        ("POST", ["paynet", "dapi", "v1", "transfer", e, i, "status"]) => {
            (e.to_string(), i.to_string())
        }
        _ => {
            return Ok(http::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ))
        }
    };
    inner
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let faults = lock(&inner.faults).clone();
    let extra = lock(&inner.transfers)
        .get(&invoice)
        .map(|t| (t.new.script.latency_ms, t.new.script.always_5xx))
        .unwrap_or((0, false));
    let (lo, hi) = faults.latency_ms;
    let latency = if hi > lo { fastrand::u64(lo..=hi) } else { lo } + extra.0;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if fastrand::f64() < faults.drop_rate {
        return Err(CloseConnection);
    }
    if extra.1 || fastrand::f64() < faults.error_rate {
        return Ok(http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "sandbox fault",
        ));
    }
    let body = match http::read_body(req, 4096).await {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    Ok(status_answer(&inner, &endpoint, &invoice, &body, agent))
}

fn fail(status: StatusCode, cause: &str, message: &str, invoice: &str) -> Answer {
    let resp = StatusResponse {
        invoice_id: Some(invoice.to_string()),
        error: Some(FailError {
            cause: cause.into(),
            code: Some(format!("E{}", status.as_u16())),
            message: Some(message.into()),
        }),
        ..Default::default()
    };
    http::json(status, &resp)
}

fn status_answer(
    inner: &Arc<Inner>,
    endpoint: &str,
    invoice: &str,
    body: &Bytes,
    agent: String,
) -> Answer {
    let Ok(StatusRequest {
        session: RequestSession {
            access_token,
            token,
        },
    }) = serde_json::from_slice::<StatusRequest>(body)
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "body must be {\"session\":{\"accessToken\",\"token\"}}",
            invoice,
        );
    };
    if !(16..=36).contains(&token.len())
        || access_token
            .as_ref()
            .is_some_and(|a| !(32..=128).contains(&a.len()))
    {
        return fail(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "session token or access token has the wrong length",
            invoice,
        );
    }
    let mut plan = None;
    let resp = {
        let mut map = lock(&inner.transfers);
        let Some(t) = map
            .get_mut(invoice)
            .filter(|t| t.new.endpoint_id == endpoint)
        else {
            return fail(
                StatusCode::NOT_FOUND,
                "ORDER_NOT_FOUND",
                "no such transfer",
                invoice,
            );
        };
        if t.new.session_token != token || t.new.access_token != access_token {
            return fail(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "session does not match the transfer",
                invoice,
            );
        }
        t.polls += 1;
        if t.pollers.last() != Some(&agent) {
            t.pollers.push(agent);
        }
        if !matches!(t.phase, Phase::Final(_)) {
            match t.new.script.settle {
                Settle::AfterPolls(n) if t.polls >= n => plan = finalize(t),
                _ if t.new.script.redirect && t.polls == 2 => t.phase = Phase::Redirect,
                _ => t.phase = Phase::Processing,
            }
        }
        build_response(t)
    };
    if let Some(plan) = plan {
        spawn_callbacks(inner, plan);
    }
    http::json(StatusCode::OK, &resp)
}

fn build_response(t: &Transfer) -> StatusResponse {
    let created =
        chrono::Utc::now() - chrono::Duration::milliseconds(t.created.elapsed().as_millis() as i64);
    let date = created.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut r = StatusResponse {
        invoice_id: Some(t.new.invoice_id.clone()),
        session: Some(ResponseSession {
            token: Some(t.new.session_token.clone()),
        }),
        state: Some(phase_name(t.phase).to_string()),
        order_id: Some(t.order_id.clone()),
        transaction: Some(Transaction {
            amount_centis: Some(t.new.amount_centis),
            commission_centis: None,
            order_created_date: Some(date.clone()),
            transaction_created_date: None,
        }),
        ..Default::default()
    };
    match t.phase {
        Phase::Redirect => {
            r.redirect_url = Some(format!(
                "https://sandbox.connpay.example/3ds/{}",
                t.order_id
            ))
        }
        Phase::Final(outcome) => {
            r.bank_order_id = Some(format!("b{}", t.order_id));
            if let Some(tx) = r.transaction.as_mut() {
                tx.commission_centis = Some(t.new.amount_centis / 100);
                tx.transaction_created_date = Some(date);
            }
            r.secure3d_auth_status = Some("AUTHENTICATED".into());
            if outcome == Outcome::Declined {
                r.error_code = Some(9001);
                r.error_message = Some("Insufficient funds".into());
            }
        }
        Phase::Processing => {}
    }
    r
}

//! The platform's side of notifications: a receiver on loopback that
//! verifies each Standard Webhooks request the way the specification's
//! verifiers do, records it, and can fail on purpose (5xx, 410 Gone, 429
//! with Retry-After, a redirect to a page that answers anything 200).

use crate::sync::lock;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Answer, CloseConnection};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub timestamp: u64,
    pub signature: String,
    pub body: serde_json::Value,
    /// Whether a signature verified with the receiver's key, within the
    /// five-minute timestamp tolerance.
    pub verified: bool,
    /// What it was answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    fail_next: u32,
    gone: bool,
    redirect_next: u32,
    /// Requests answered 429 with this Retry-After (seconds).
    throttle_next: Option<(u32, u64)>,
    /// Requests that reached the redirect's target.
    moved: u32,
}

/// Where a redirect points: a page that answers any request 200, as a
/// login page or a moved site's home page would.
const MOVED: &str = "/moved";

#[derive(Clone)]
pub struct PlatformSim {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl PlatformSim {
    /// Serves on `listener`, verifying with `key` (the secret's bytes).
    pub fn start(listener: TcpListener, key: Vec<u8>, cancel: CancellationToken) -> PlatformSim {
        let addr = listener.local_addr().expect("bound listener");
        let state = Arc::new(Mutex::new(State::default()));
        let tasks = TaskTracker::new();
        let (s, key) = (state.clone(), Arc::new(key));
        tasks.spawn(http::serve(
            listener,
            http::Limits::sandbox(),
            cancel.clone(),
            tasks.clone(),
            move |req| handle(s.clone(), key.clone(), req),
        ));
        PlatformSim {
            state,
            addr,
            cancel,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/payrecon/events", self.addr)
    }

    /// Answers the next `n` requests 503.
    pub fn fail_next(&self, n: u32) {
        lock(&self.state).fail_next = n;
    }

    /// Answers the next `n` requests 302 to a page that answers 200.
    pub fn redirect_next(&self, n: u32) {
        lock(&self.state).redirect_next = n;
    }

    /// Answers the next `n` requests 429 with `Retry-After: secs`.
    pub fn throttle_next(&self, n: u32, secs: u64) {
        lock(&self.state).throttle_next = Some((n, secs));
    }

    /// Requests that followed a redirect to the page that answers 200.
    pub fn moved(&self) -> u32 {
        lock(&self.state).moved
    }

    /// Answers every request 410 Gone from now on.
    pub fn set_gone(&self, gone: bool) {
        lock(&self.state).gone = gone;
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    key: Arc<Vec<u8>>,
    req: Request<Incoming>,
) -> Result<Answer, CloseConnection> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    if req.uri().path() == MOVED {
        lock(&state).moved += 1;
        return Ok(http::text(StatusCode::OK, "welcome"));
    }
    let (webhook_id, signature) = (header("webhook-id"), header("webhook-signature"));
    let timestamp: u64 = header("webhook-timestamp").parse().unwrap_or(0);
    let body = match http::read_body(req, 64 * 1024).await {
        Ok(b) => b,
        Err(a) => return Ok(a),
    };
    let now_s = crate::model::now_ms() / 1000;
    let verified =
        crate::engine::notify::verify(&key, &webhook_id, timestamp, &body, &signature, now_s);
    let mut st = lock(&state);
    let mut extra: Option<(hyper::header::HeaderName, String)> = None;
    let status = if st.gone {
        StatusCode::GONE
    } else if st.redirect_next > 0 {
        st.redirect_next -= 1;
        extra = Some((hyper::header::LOCATION, MOVED.to_string()));
        StatusCode::FOUND
    } else if let Some((n, secs)) = st.throttle_next.filter(|(n, _)| *n > 0) {
        st.throttle_next = Some((n - 1, secs));
        extra = Some((hyper::header::RETRY_AFTER, secs.to_string()));
        StatusCode::TOO_MANY_REQUESTS
    } else if st.fail_next > 0 {
        st.fail_next -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else if !verified {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    st.received.push(Received {
        webhook_id,
        timestamp,
        signature,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        verified,
        status: status.as_u16(),
    });
    let mut answer = http::json(status, &serde_json::json!({}));
    if let Some((name, value)) = extra {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            answer.headers_mut().insert(name, v);
        }
    }
    Ok(answer)
}

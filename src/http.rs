//! The hyper 1 serve loop shared by both listeners and the simulators, the
//! JSON error shape, and small helpers for answers.
//!
//! Every error answer has one shape:
//! `{"error": {"code": "not_found", "message": "no payment `pay_…`"}}`.
//! `code` is stable and machine-readable; `message` is for people.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type Answer = Response<Full<Bytes>>;

/// Returned by a handler to close the connection without answering (the
/// simulators' "dropped connection" fault).
#[derive(Debug)]
pub struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on purpose")
    }
}
impl std::error::Error for CloseConnection {}

/// What one listener allows a client: time to send headers, time to
/// send the whole body, and connections open at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// From the handler's first read of the body to its last byte
    /// ([`read_body`]); a slower body is answered 408.
    pub body_read_timeout: Duration,
    /// Connections beyond this are answered 503 at once and closed, so a
    /// flood of idle or slow clients cannot take every file descriptor.
    pub max_connections: usize,
}

impl Limits {
    /// The provider sandboxes' limits: no connection cap (a sandbox that
    /// holds slow answers open must not start refusing healthy ones).
    pub fn sandbox() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(30),
            max_connections: Semaphore::MAX_PERMITS,
        }
    }
}

/// The body-read limit of a request, put in its extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
struct BodyReadTimeout(Duration);

/// What a connection over the limit is told before it is closed: the one
/// error shape, with its length counted. Written with one non-blocking
/// write: a client that does not read it loses it.
static OVER_CAPACITY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: "too_many_connections",
            message: "too many open connections; retry",
        },
    })
    .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body].concat()
});

/// Serves HTTP/1 on `listener` until `cancel` fires, then lets each open
/// connection finish its request. Connection tasks are tracked in `tasks`.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    cancel: CancellationToken,
    tasks: TaskTracker,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Answer, CloseConnection>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = stream.try_write(&OVER_CAPACITY);
            drop(stream);
            // One line a second at most: a flood must not flood the log.
            if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    alert = "connection_limit",
                    max_connections = limits.max_connections,
                    "connection refused: too many open connections"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let cancel = cancel.clone();
        let body_timeout = BodyReadTimeout(limits.body_read_timeout);
        tasks.spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(body_timeout);
                h(req)
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// The body of a request, at most `limit` bytes, read within the
/// listener's body-read timeout (413 and 408 otherwise).
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Answer> {
    let timeout = req
        .extensions()
        .get::<BodyReadTimeout>()
        .map_or(Limits::sandbox().body_read_timeout, |t| t.0);
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            &format!("request body not received within {timeout:?}"),
        ));
    };
    match read {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("request body is over {limit} bytes"),
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            "request body could not be read",
        )),
    }
}

pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Answer {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// The one error shape.
pub fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    json(
        status,
        &ErrorBody {
            error: ErrorDetail { code, message },
        },
    )
}

pub fn text(status: StatusCode, body: &'static str) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

pub fn text_owned(status: StatusCode, content_type: &str, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Splits a path into its segments, each percent-decoded:
/// `/v1/payments/inv%207%2F%C3%A4` → `["v1", "payments", "inv 7/ä"]`.
/// Bytes that do not decode to UTF-8 become U+FFFD (and then match nothing).
pub fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// The methods `routes` serve on a path (`{name}` in a route matches any
/// one segment).
pub fn allowed_methods<'r>(routes: &[(&'r str, &str)], segs: &[&str]) -> Vec<&'r str> {
    let mut out: Vec<&str> = routes
        .iter()
        .filter(|(_, template)| {
            let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            t.len() == segs.len()
                && t.iter()
                    .zip(segs)
                    .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
        })
        .map(|(m, _)| *m)
        .collect();
    out.dedup();
    out
}

/// The answer to a method a path does not take: 405 with `Allow` (RFC
/// 9110 asks for it), or 404 when no route has this path at all.
pub fn method_not_allowed(
    routes: &[(&str, &str)],
    segs: &[&str],
    method: &str,
    path: &str,
) -> Answer {
    let allowed = allowed_methods(routes, segs);
    if allowed.is_empty() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    let mut a = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!(
            "{method} is not allowed on {path}; use {}",
            allowed.join(", ")
        ),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&allowed.join(", ")) {
        a.headers_mut().insert(hyper::header::ALLOW, v);
    }
    a
}

/// Reads one query parameter.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Handlers that cannot fail in the connection sense.
pub fn ok(a: Answer) -> Result<Answer, Infallible> {
    Ok(a)
}

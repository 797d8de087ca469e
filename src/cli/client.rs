//! A client for the admin API, used by the CLI and the demo.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::engine::TrackRequest;
use crate::listen::admin::{Page, PaymentView};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach payrecon at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("payrecon answered {status}: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("payrecon's answer could not be read: {0}")]
    Decode(String),
}

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The limit on a whole request that answers at once (a read, a track).
const QUICK: Duration = Duration::from_secs(30);

/// How long a request may take once connected.
enum Wait {
    Quick,
    /// A sweep or an export: no limit but the connection's.
    AsLongAsItTakes,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            // A connection per request: the daemon closes an idle
            // keep-alive connection after `header_read_timeout`, and a
            // request sent on one at that moment fails with "connection
            // closed before message completed", which cannot be retried
            // blindly (was it applied?). On loopback a connection costs
            // less than that ambiguity.
            // No limit on the whole request here: a sweep or an export
            // runs as long as it runs. Others get QUICK (send_raw).
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        }
    }

    pub async fn track(&self, req: &TrackRequest) -> Result<PaymentView, ClientError> {
        self.send(
            self.http
                .post(format!("{}/v1/payments", self.base))
                .json(req),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Result<PaymentView, ClientError> {
        self.send(self.http.get(format!("{}/v1/payments/{id}", self.base)))
            .await
    }

    /// Finds a payment by one of the provider's own identifiers.
    pub async fn find(
        &self,
        provider: &str,
        name: &str,
        value: &str,
    ) -> Result<PaymentView, ClientError> {
        let url = reqwest::Url::parse(&self.base)
            .and_then(|u| {
                u.join(&format!(
                    "/v1/providers/{provider}/payments/{}/{}",
                    enc(name),
                    enc(value)
                ))
            })
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send(self.http.get(url)).await
    }

    pub async fn list(
        &self,
        state: Option<&str>,
        provider: Option<&str>,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<Page, ClientError> {
        self.list_filtered(state, provider, false, limit, after)
            .await
    }

    /// [`AdminClient::list`], optionally only payments whose provider
    /// reported other money than tracked.
    pub async fn list_filtered(
        &self,
        state: Option<&str>,
        provider: Option<&str>,
        mismatch: bool,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<Page, ClientError> {
        let mut q: Vec<(&str, String)> = vec![];
        if mismatch {
            q.push(("mismatch", "true".into()));
        }
        if let Some(s) = state {
            q.push(("state", s.into()));
        }
        if let Some(p) = provider {
            q.push(("provider", p.into()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(a) = after {
            q.push(("after", a.into()));
        }
        self.send(
            self.http
                .get(format!("{}/v1/payments", self.base))
                .query(&q),
        )
        .await
    }

    /// Queues an action; `idempotency_key` makes a repeat return the same one.
    pub async fn action(
        &self,
        payment_id: &str,
        req: &crate::action::ActionRequest,
        idempotency_key: Option<&str>,
    ) -> Result<crate::action::Action, ClientError> {
        let mut rb = self
            .http
            .post(format!("{}/v1/payments/{payment_id}/actions", self.base))
            .json(req);
        if let Some(k) = idempotency_key {
            rb = rb.header("idempotency-key", k);
        }
        self.send(rb).await
    }

    pub async fn get_action(&self, id: &str) -> Result<crate::action::Action, ClientError> {
        self.send(self.http.get(format!("{}/v1/actions/{id}", self.base)))
            .await
    }

    pub async fn resolve_action(
        &self,
        id: &str,
        body: &crate::listen::admin::Resolve,
    ) -> Result<crate::action::Action, ClientError> {
        self.send(
            self.http
                .post(format!("{}/v1/actions/{id}/resolve", self.base))
                .json(body),
        )
        .await
    }

    /// A page of dead letters, oldest first, after the webhook id `after`.
    pub async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<crate::listen::dead::DeadPage, ClientError> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(a) = after {
            q.append_pair("after", a);
        }
        if let Some(l) = limit {
            q.append_pair("limit", &l.to_string());
        }
        let url = format!("{}/v1/notifications/dead?{}", self.base, q.finish());
        self.send(self.http.get(url)).await
    }

    /// Puts one dead letter back in the queue.
    pub async fn replay(&self, id: &str) -> Result<crate::listen::dead::DeadLetter, ClientError> {
        let url = format!("{}/v1/notifications/{id}/replay", self.base);
        self.send(self.http.post(url)).await
    }

    /// Puts back every dead letter of a change at or after `since`.
    pub async fn replay_since(
        &self,
        since: &str,
    ) -> Result<crate::listen::dead::Replayed, ClientError> {
        let body = crate::listen::dead::ReplaySince {
            since: since.to_string(),
        };
        let url = format!("{}/v1/notifications/replay", self.base);
        self.send(self.http.post(url).json(&body)).await
    }

    /// Runs a sweep and waits for its end, however long it takes.
    pub async fn reconcile(&self, provider: &str) -> Result<serde_json::Value, ClientError> {
        let rb = self
            .http
            .post(format!("{}/v1/reconcile/{provider}", self.base));
        let bytes = self.send_raw(rb, Wait::AsLongAsItTakes).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The export of a running daemon, as the bytes it serves.
    pub async fn export(&self, since: &str, format: &str) -> Result<Vec<u8>, ClientError> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("since", since)
            .append_pair("format", format)
            .finish();
        self.send_raw(
            self.http.get(format!("{}/v1/export?{q}", self.base)),
            Wait::AsLongAsItTakes,
        )
        .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let bytes = self.send_raw(rb, Wait::Quick).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn send_raw(
        &self,
        mut rb: reqwest::RequestBuilder,
        wait: Wait,
    ) -> Result<Vec<u8>, ClientError> {
        if let Wait::Quick = wait {
            rb = rb.timeout(QUICK);
        }
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: self.base.clone(),
            reason: causes(&e.without_url()),
        };
        let req = rb.build().map_err(transport)?;
        // A GET changes nothing, so one failed to send (a keep-alive
        // connection the daemon closed as the request went out) is sent
        // once more on a fresh connection.
        let again = (req.method() == reqwest::Method::GET)
            .then(|| req.try_clone())
            .flatten();
        let resp = match (self.http.execute(req).await, again) {
            (Ok(r), _) => r,
            (Err(e), Some(again)) if !e.is_timeout() => {
                self.http.execute(again).await.map_err(transport)?
            }
            (Err(e), _) => return Err(transport(e)),
        };
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.without_url().to_string()))?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let field = |k: &str| v["error"][k].as_str().unwrap_or("").to_string();
            let mut message = field("message");
            if status == reqwest::StatusCode::UNAUTHORIZED {
                message += &format!(
                    " (set {} to the token the daemon's admin.token_env names)",
                    super::ADMIN_TOKEN_ENV
                );
            }
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: field("code"),
                message,
            });
        }
        Ok(bytes.to_vec())
    }
}

/// An error with its causes, outermost first: reqwest's own message
/// ("error sending request") says little without the one that says why
/// ("Connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let c_text = c.to_string();
        if !out.contains(&c_text) {
            out += &format!(": {c_text}");
        }
        next = c.source();
    }
    out
}

/// Percent-encodes one path segment.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

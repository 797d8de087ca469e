//! Notifications to the platform: every state change is queued in the
//! store's outbox in the change's own transaction, then POSTed to the
//! platform's URL, signed the Standard Webhooks way.
//!
//! - At least once: a notice leaves the outbox only on a 2xx answer. The
//!   `webhook-id` is fixed when it is queued, so every retry (and every
//!   restart) sends the same id; receivers de-duplicate on it.
//! - In order per payment: only the oldest queued notice of a payment is
//!   ever in flight. Different payments do not wait for each other.
//! - Retries back off exponentially with jitter (backon) until the
//!   horizon; past it the notice moves to the dead letters and
//!   `notification_abandoned` is raised.
//! - A 410 Gone disables the URL (`notify_endpoint_disabled`): nothing
//!   more is sent to it and nothing is dropped; a reload (SIGHUP) resumes
//!   delivery, to the same URL or a new one.
//! - During a secret rotation both signatures are sent.

use crate::sync::lock;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::engine::Engine;
use crate::model::now_ms;
use crate::settings::Secret;
use crate::store::{Lease, Notice};

/// The store's meta key holding a URL that answered 410.
const DISABLED_URL: &str = "notify_disabled_url";

/// How many of the oldest notices one dispatch pass looks at, and the
/// least time between passes: with a large backlog (the platform down for
/// hours) a pass stays cheap however often state changes wake it.
const PASS_LIMIT: usize = 10_000;
const PASS_SPACING: Duration = Duration::from_millis(50);

/// A delivery's lease is this many times the request's time limit: one
/// POST, then one write of its outcome. An instance that dies
/// mid-delivery leaves the payment's notifications to another this long
/// at most.
const NOTICE_LEASE_TIMEOUTS: u32 = 2;

/// The `[notify]` settings, with secrets resolved.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub url: String,
    pub secret: Secret,
    /// The secret being rotated out, and until when (unix ms) it also signs.
    pub previous: Option<(Secret, u64)>,
    pub horizon: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
}

/// The key bytes of a `whsec_…` secret (the prefix is optional).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = B64
        .decode(b64)
        .map_err(|_| "is not `whsec_` followed by base64".to_string())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; use 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// One `v1,<base64>` signature over `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// A receiver's check: the timestamp is within 5 minutes of `now_s` and
/// one of the header's `v1` signatures matches (in constant time).
pub fn verify(key: &[u8], id: &str, timestamp: u64, body: &[u8], header: &str, now_s: u64) -> bool {
    use subtle::ConstantTimeEq;
    if now_s.abs_diff(timestamp) > 300 {
        return false;
    }
    let want = sign(key, id, timestamp, body);
    header
        .split(' ')
        .any(|sig| sig.as_bytes().ct_eq(want.as_bytes()).into())
}

impl NotifySettings {
    /// The `webhook-signature` value: one entry per active secret.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8], now_ms: u64) -> String {
        let mut sigs = vec![];
        for s in std::iter::once(&self.secret).chain(
            self.previous
                .iter()
                .filter(|(_, until)| now_ms < *until)
                .map(|(s, _)| s),
        ) {
            // Checked when the config loaded.
            if let Ok(key) = secret_key(s.expose()) {
                sigs.push(sign(&key, id, timestamp, body));
            }
        }
        sigs.join(" ")
    }
}

impl Engine {
    /// A reload re-enables a URL that answered 410: the operator has acted
    /// (fixed the endpoint, or configured a new one).
    pub async fn reenable_notifications(&self) {
        match self.store().meta(DISABLED_URL).await {
            Ok(Some(url)) => {
                if let Err(e) = self.store().set_meta(DISABLED_URL, None).await {
                    tracing::error!(alert = "store_error", error = %e, "notification URL not re-enabled");
                } else {
                    tracing::info!(resolves = "notify_endpoint_disabled", url = %url, "notifications re-enabled by the reload");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(alert = "store_error", error = %e, "notification state unreadable")
            }
        }
    }
}

/// The worker's in-memory state: payments with a delivery in flight.
#[derive(Default)]
pub struct Outbox {
    pub(crate) wake: tokio::sync::Notify,
    busy: Mutex<HashSet<String>>,
}

enum Delivery {
    Delivered,
    Gone,
    /// Not delivered: why, and how long the receiver asked to wait
    /// (`Retry-After` on a 429 or 503).
    Failed(String, Option<Duration>),
}

/// Who delivers: receivers see it in their logs and firewalls.
const USER_AGENT: &str = concat!("payrecon/", env!("CARGO_PKG_VERSION"));

/// The wait a 429 or 503 asks for: `Retry-After` in seconds or as an HTTP
/// date (RFC 9110), from `now_ms`. None when absent or unreadable.
fn retry_after(r: &reqwest::Response, now_ms: u64) -> Option<Duration> {
    let asks = [
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
    ];
    if !asks.contains(&r.status()) {
        return None;
    }
    let v = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(v, now_ms)
}

fn parse_retry_after(v: &str, now_ms: u64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at_ms = u64::try_from(at.timestamp_millis()).ok()?;
    Some(Duration::from_millis(at_ms.saturating_sub(now_ms)))
}

impl Engine {
    /// The delivery loop; ends when the engine is cancelled. Idle (but
    /// alive) while no URL is configured or the URL is disabled.
    pub(crate) async fn run_notifier(self: Arc<Self>) {
        // No redirects: a 3xx is a failed delivery (Standard Webhooks), not
        // a bodiless GET elsewhere that a 200 would count as delivered.
        let client = match crate::providers::tls::with_roots(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(alert = "notify_client_failed", error = %e, "notification client failed to start");
                return;
            }
        };
        let mut last_pass = tokio::time::Instant::now() - PASS_SPACING;
        loop {
            let since = last_pass.elapsed();
            if since < PASS_SPACING {
                tokio::select! {
                    _ = self.cancelled() => return,
                    _ = tokio::time::sleep(PASS_SPACING - since) => {}
                }
            }
            last_pass = tokio::time::Instant::now();
            let mut next_due: Option<u64> = None;
            if let Some(cfg) = self.notify_settings() {
                let disabled = self.store().meta(DISABLED_URL).await.ok().flatten();
                if disabled.as_deref() != Some(cfg.url.as_str()) {
                    next_due = self.dispatch_notices(&client, &cfg).await;
                }
            }
            let wait = next_due
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = self.cancelled() => return,
                _ = self.notice_outbox().wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Starts a delivery for each payment whose oldest notice is due;
    /// returns when the next one falls due.
    async fn dispatch_notices(
        self: &Arc<Self>,
        client: &reqwest::Client,
        cfg: &Arc<NotifySettings>,
    ) -> Option<u64> {
        let notices = match self.store().notices(PASS_LIMIT).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(alert = "store_error", error = %e, "notification outbox unreadable");
                return None;
            }
        };
        let now = now_ms();
        let mut heads = HashSet::new();
        let mut next_due = None;
        let mut busy = lock(&self.notice_outbox().busy);
        for n in notices {
            // Only the oldest notice of a payment: order per payment.
            if !heads.insert(n.payment_id.clone()) || busy.contains(&n.payment_id) {
                continue;
            }
            if n.next_ms > now {
                next_due = Some(next_due.map_or(n.next_ms, |d: u64| d.min(n.next_ms)));
                continue;
            }
            if busy.len() >= cfg.max_in_flight {
                break;
            }
            busy.insert(n.payment_id.clone());
            let (engine, client, cfg) = (self.clone(), client.clone(), cfg.clone());
            self.tasks().spawn(async move {
                let pid = n.payment_id.clone();
                let seq = n.seq;
                // One sender per payment across instances: the lease on
                // the payment's oldest notice (docs/postgres.md).
                let lease_ms = (cfg.request_timeout * NOTICE_LEASE_TIMEOUTS).as_millis() as u64;
                let lease = Lease::from_now(&engine.instance, lease_ms);
                let ours = match engine.store().claim_notice(seq, lease).await {
                    Ok(ours) => ours,
                    Err(e) => {
                        tracing::warn!(payment_id = %pid, seq, error = %e, "notification lease not taken; trying again at the next pass");
                        false
                    }
                };
                if ours {
                    // A panic leaves the notice queued; the next pass retries it.
                    if let Err(why) = crate::guard::catch(engine.deliver(&client, &cfg, n)).await {
                        tracing::error!(alert = "notify_panicked", payment_id = %pid, seq, error = %why, "a notification delivery panicked; it is retried");
                    }
                }
                lock(&engine.notice_outbox().busy).remove(&pid);
                // Another instance delivering it: the next timed pass looks
                // again, rather than a pass at once that would find it held.
                if ours {
                    engine.notice_outbox().wake.notify_one();
                }
            });
        }
        next_due
    }

    async fn deliver(&self, client: &reqwest::Client, cfg: &NotifySettings, mut n: Notice) {
        let body = self.notice_body(&n).await;
        let id = n.webhook_id();
        let now = now_ms();
        let ts = now / 1000;
        let send = client
            .post(&cfg.url)
            .timeout(cfg.request_timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", cfg.signature(&id, ts, &body, now))
            .body(body)
            .send();
        let asked = tokio::time::Instant::now();
        let outcome = tokio::select! {
            r = send => match r {
                Ok(r) if r.status().is_success() => Delivery::Delivered,
                Ok(r) if r.status() == reqwest::StatusCode::GONE => Delivery::Gone,
                Ok(r) if r.status().is_redirection() => Delivery::Failed(
                    format!("HTTP {}: redirects are not followed; configure the final URL", r.status()),
                    None,
                ),
                Ok(r) => Delivery::Failed(format!("HTTP {}", r.status()), retry_after(&r, now)),
                Err(e) => Delivery::Failed(e.without_url().to_string(), None),
            },
            // Stays queued with the same id; sent again after the restart.
            _ = self.cancelled() => return,
        };
        self.metrics.delivery(asked.elapsed());
        let c = &self.counters;
        let result = match outcome {
            Delivery::Delivered => {
                c.notices_delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(webhook_id = %id, payment_id = %n.payment_id, attempts = n.attempts + 1, "notification delivered");
                self.store().remove_notice(&n, false).await
            }
            Delivery::Gone => {
                tracing::error!(alert = "notify_endpoint_disabled", url = %cfg.url, "the platform answered 410 Gone: notifications stop. Queued ones are kept; fix the endpoint or configure a new URL, then reload to resume");
                self.store().set_meta(DISABLED_URL, Some(&cfg.url)).await
            }
            Delivery::Failed(why, asked) => {
                c.notices_failed.fetch_add(1, Ordering::Relaxed);
                n.attempts += 1;
                n.last_error = Some(why.clone());
                if now.saturating_sub(n.at_ms) > cfg.horizon.as_millis() as u64 {
                    tracing::error!(alert = "notification_abandoned", webhook_id = %id, payment_id = %n.payment_id, attempts = n.attempts, error = %why, "notification not delivered within the retry horizon; moved to the dead letters");
                    self.store().remove_notice(&n, true).await
                } else {
                    let delay = ExponentialBuilder::default()
                        .with_min_delay(cfg.min_delay)
                        .with_max_delay(cfg.max_delay)
                        .with_jitter()
                        .without_max_times()
                        .build()
                        .nth(n.attempts.saturating_sub(1) as usize)
                        .unwrap_or(cfg.max_delay);
                    // The receiver's Retry-After, when longer, up to max_delay.
                    let delay = asked.map_or(delay, |a| delay.max(a.min(cfg.max_delay)));
                    n.next_ms = now + delay.as_millis() as u64;
                    tracing::warn!(webhook_id = %id, payment_id = %n.payment_id, attempts = n.attempts, retry_in_ms = delay.as_millis() as u64, error = %why, "notification delivery failed; will retry");
                    self.store().update_notice(&n).await
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(alert = "store_error", error = %e, webhook_id = %id, "notification outbox not updated");
        }
    }

    /// The event body. Built from the queued notice and the payment's
    /// non-secret keys, so every retry sends the same bytes.
    async fn notice_body(&self, n: &Notice) -> Vec<u8> {
        let keys = self
            .store()
            .get(&n.payment_id)
            .await
            .ok()
            .flatten()
            .map(|p| {
                let secret = crate::providers::plugin(p.provider).secret_keys;
                p.keys
                    .into_iter()
                    .filter(|(k, _)| !secret.contains(&k.as_str()))
                    .collect::<crate::model::Keys>()
            })
            .unwrap_or_default();
        let at = chrono::DateTime::from_timestamp_millis(n.at_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = serde_json::json!({
            "type": if n.to.is_final() { "payment.final" } else { "payment.state_changed" },
            "timestamp": at,
            "data": {
                "payment_id": n.payment_id,
                "provider": n.provider,
                "from": n.from,
                "to": n.to,
                "final": n.to.is_final(),
                "source": n.source,
                "amount_minor": n.amount_minor,
                "currency": n.currency,
                "keys": keys,
            }
        });
        serde_json::to_vec(&body).expect("JSON values serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = 1_700_000_000_000; // 2023-11-14T22:13:20Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now),
            Some(Duration::from_secs(60))
        );
        // A date already past: no wait beyond the back-off.
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    /// The specification's test vector (standard-webhooks library tests).
    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"type": "example.created", "timestamp":"2023-09-28T19:20:22+00:00", "data":{"str":"string","bool":true,"int":42}}"#;
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1696200454, body);
        assert_eq!(sig, "v1,GgjvufBlIj71MBIVQotYGb+xEC3LNXCsIZp0HsDC8qs=");
        assert!(verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1696200454,
            body,
            &format!("v1,bogus {sig}"),
            1696200454 + 10
        ));
        // Too old, tampered body, wrong id: refused.
        assert!(!verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1696200454,
            body,
            &sig,
            1696200454 + 301
        ));
        assert!(!verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1696200454,
            b"{}",
            &sig,
            1696200454
        ));
        assert!(!verify(
            &key,
            "msg_other",
            1696200454,
            body,
            &sig,
            1696200454
        ));
    }

    #[test]
    fn secrets_must_be_base64_of_24_to_64_bytes() {
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(secret_key("whsec_c2hvcnQ=").unwrap_err().contains("bytes"));
        assert!(secret_key("whsec_not base64!").is_err());
    }

    #[test]
    fn a_rotation_sends_both_signatures_until_it_ends() {
        let s = NotifySettings {
            url: "http://x".into(),
            secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            previous: Some((
                Secret::new(format!("whsec_{}", B64.encode([7u8; 32]))),
                2_000,
            )),
            horizon: Duration::from_secs(60),
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_in_flight: 1,
        };
        let during = s.signature("msg_1", 1, b"{}", 1_999);
        assert_eq!(during.split(' ').count(), 2);
        assert!(verify(&[7u8; 32], "msg_1", 1, b"{}", &during, 1));
        let after = s.signature("msg_1", 1, b"{}", 2_000);
        assert_eq!(after.split(' ').count(), 1);
        assert!(!verify(&[7u8; 32], "msg_1", 1, b"{}", &after, 1));
    }
}

//! Tracking, polling and callback ingest: the daemon's behaviour on top of
//! the store, the providers and the scheduler. Every state change is
//! committed, made durable, and then logged as exactly one INFO event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::model::{now_ms, Keys, Payment, PollWindow, ProviderId, Source};
use crate::provider::{CallbackError, InquiryError, Provider, RawCallback};
use crate::scheduler::Scheduler;
use crate::store::{Change, Ingested, NewPayment, Store, StoreError, Tracked, WindowChange};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("provider `{0}` is not configured")]
    UnknownProvider(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Callback(#[from] CallbackError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider's rules refuse the action; nothing was sent.
    #[error("{0}")]
    ActionRefused(String),
    /// Another action holds what this one needs.
    #[error("{0}")]
    ActionConflict(String),
}

/// A request to track a payment (the body of `POST /v1/payments`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackRequest {
    pub provider: String,
    pub keys: Keys,
    #[serde(default)]
    pub amount_minor: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// Counters for logs, metrics and benchmarks.
#[derive(Default, Debug)]
pub struct Counters {
    pub callbacks_received: AtomicU64,
    pub callbacks_rejected: AtomicU64,
    pub callbacks_duplicate: AtomicU64,
    pub callbacks_orphaned: AtomicU64,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    pub transitions: AtomicU64,
    /// Poll schedule lag: start of the inquiry minus its due time.
    pub poll_lag: LagHistogram,
}

/// A lock-free histogram of durations in microseconds: four buckets per
/// power of two (±10%), enough for percentiles in logs and benchmarks.
#[derive(Debug)]
pub struct LagHistogram {
    buckets: [AtomicU64; LagHistogram::BUCKETS],
    max_us: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    /// Up to 2^40 µs (about 12 days) in quarter powers of two.
    const BUCKETS: usize = 160;

    /// Exact below 8 µs; above, four buckets per power of two.
    fn index(us: u64) -> usize {
        if us < 8 {
            return us as usize;
        }
        let log2 = 63 - us.leading_zeros() as usize; // >= 3
        let quarter = ((us >> (log2 - 2)) & 3) as usize;
        (8 + (log2 - 3) * 4 + quarter).min(Self::BUCKETS - 1)
    }

    /// The smallest value that falls in bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        let log2 = 3 + (i - 8) / 4;
        let quarter = ((i - 8) % 4) as u64;
        (1u64 << log2) + quarter * (1u64 << (log2 - 2))
    }

    pub fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1), to the bucket's lower bound.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::lower(i).min(self.max_us());
            }
        }
        self.max_us()
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }
}

pub struct Engine {
    store: Store,
    providers: HashMap<ProviderId, Arc<dyn Provider>>,
    /// Polls in flight per provider.
    limits: HashMap<ProviderId, Arc<Semaphore>>,
    scheduler: OnceLock<Scheduler<ProviderId>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    outbound: crate::outbound::Outbound,
    action_deadline: Duration,
    pub counters: Counters,
}

impl Engine {
    /// Builds the engine and starts its scheduler. Background work ends
    /// when `cancel` fires; [`Engine::tasks`] tracks it.
    pub fn start(
        store: Store,
        providers: Vec<Arc<dyn Provider>>,
        action_deadline: Duration,
        cancel: CancellationToken,
    ) -> Arc<Engine> {
        let limits = providers
            .iter()
            .map(|p| (p.id(), Arc::new(Semaphore::new(p.polling().max_in_flight))))
            .collect();
        let engine = Arc::new(Engine {
            store,
            providers: providers.into_iter().map(|p| (p.id(), p)).collect(),
            limits,
            scheduler: OnceLock::new(),
            tasks: TaskTracker::new(),
            cancel: cancel.clone(),
            outbound: Default::default(),
            action_deadline,
            counters: Counters::default(),
        });
        let weak: Weak<Engine> = Arc::downgrade(&engine);
        let (scheduler, task) = Scheduler::start(cancel, move |id, provider, due| {
            if let Some(e) = weak.upgrade() {
                e.tasks.spawn(e.clone().poll(id, provider, due));
            }
        });
        engine.tasks.spawn(async move {
            let _ = task.await;
        });
        let _ = engine.scheduler.set(scheduler);
        engine.tasks.spawn(engine.clone().run_outbound());
        engine
    }

    pub(crate) fn outbound(&self) -> &crate::outbound::Outbound {
        &self.outbound
    }

    pub(crate) fn action_deadline(&self) -> Duration {
        self.action_deadline
    }

    /// Resolves when the daemon is shutting down.
    pub(crate) async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn scheduler(&self) -> &Scheduler<ProviderId> {
        self.scheduler.get().expect("set in start")
    }

    pub fn provider(&self, id: ProviderId) -> Option<&Arc<dyn Provider>> {
        self.providers.get(&id)
    }

    /// Schedules every open window found in the store: a restart resumes
    /// each window where it stood. A window whose end passed while payrecon
    /// was down gets one catch-up poll, then closes.
    pub fn resume(&self) -> Result<usize, StoreError> {
        let windows = self.store.open_windows()?;
        for (id, provider, next_ms) in &windows {
            self.scheduler()
                .schedule(id.clone(), *provider, instant_at(*next_ms));
        }
        Ok(windows.len())
    }

    /// Starts tracking a payment; idempotent on provider and keys.
    pub async fn track(&self, req: TrackRequest) -> Result<Tracked, EngineError> {
        let pid: ProviderId = req
            .provider
            .parse()
            .map_err(|_| EngineError::UnknownProvider(req.provider.clone()))?;
        let provider = self
            .providers
            .get(&pid)
            .ok_or_else(|| EngineError::UnknownProvider(req.provider.clone()))?;
        let tk = provider
            .track_keys(&req.keys)
            .map_err(EngineError::BadRequest)?;
        if let Some(c) = &req.currency {
            if c.len() != 3 || !c.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(EngineError::BadRequest(format!(
                    "currency `{c}` is not an ISO 4217 code like EUR"
                )));
            }
        }
        let now = now_ms();
        let polling = provider.polling();
        let window = PollWindow {
            ends_ms: now + uniform_ms(polling.poll_window_min, polling.poll_window_max),
            next_ms: now + uniform_ms(polling.poll_interval_min, polling.poll_interval_max),
            polls: 0,
            open: true,
        };
        let tracked = self.store.track(NewPayment {
            provider: pid,
            keys: req.keys,
            idempotency_key: tk.idempotency_key,
            lookup_keys: tk.lookup_keys,
            amount_minor: req.amount_minor,
            currency: req.currency,
            window: provider.polls().then_some(window),
            now_ms: now,
        })?;
        self.store.sync().await?;
        for c in &tracked.changes {
            self.log_change(c);
        }
        if tracked.created {
            tracing::info!(payment_id = %tracked.payment.id, provider = %pid, "payment tracked");
            if let Some(w) = tracked.payment.window.filter(|w| w.open) {
                self.scheduler()
                    .schedule(tracked.payment.id.clone(), pid, instant_at(w.next_ms));
            }
        }
        Ok(tracked)
    }

    /// Verifies and commits a callback; returns once it is durable.
    pub async fn ingest(
        &self,
        pid: ProviderId,
        raw: &RawCallback<'_>,
    ) -> Result<Ingested, EngineError> {
        self.counters
            .callbacks_received
            .fetch_add(1, Ordering::Relaxed);
        let provider = self
            .providers
            .get(&pid)
            .ok_or_else(|| EngineError::UnknownProvider(pid.to_string()))?;
        let record = match provider.parse_callback(raw, now_ms()) {
            Ok(r) => r,
            Err(e) => {
                self.counters
                    .callbacks_rejected
                    .fetch_add(1, Ordering::Relaxed);
                if matches!(e, CallbackError::Forged) {
                    tracing::warn!(alert = "callback_signature_invalid", provider = %pid, "callback refused: signature does not verify");
                } else {
                    tracing::warn!(provider = %pid, error = %e, "callback refused");
                }
                return Err(e.into());
            }
        };
        let store = self.store.clone();
        let match_key = record.match_key.clone();
        let ingested = tokio::task::spawn_blocking(move || store.ingest_callback(&record))
            .await
            .map_err(|_| StoreError::Closed)??;
        match &ingested {
            Ingested::Duplicate => {
                self.counters
                    .callbacks_duplicate
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(ingested);
            }
            Ingested::Orphaned => {
                self.counters
                    .callbacks_orphaned
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ingested::Applied(_) => {}
        }
        self.store.sync().await?;
        match &ingested {
            Ingested::Applied(o) => {
                if let Some(c) = &o.change {
                    self.log_change(c);
                } else {
                    tracing::debug!(payment_id = %o.payment.id, raw_status = %o.observation.raw_status, decision = ?o.observation.decision, "callback recorded, state unchanged");
                }
            }
            Ingested::Orphaned => {
                tracing::info!(provider = %pid, match_key = %match_key, "callback for an unknown payment kept as orphan");
            }
            Ingested::Duplicate => {}
        }
        Ok(ingested)
    }

    /// One poll of one payment, run when its deadline falls due.
    async fn poll(self: Arc<Self>, id: String, pid: ProviderId, due: Instant) {
        let Some(provider) = self.providers.get(&pid).cloned() else {
            tracing::warn!(payment_id = %id, provider = %pid, "payment's provider is not configured; window left as it is");
            return;
        };
        let limit = self.limits[&pid].clone();
        let _permit = tokio::select! {
            p = limit.acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = self.cancel.cancelled() => return,
        };
        let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
        self.counters.poll_lag.record(lag);
        // A callback may have settled it while the poll waited its turn.
        let Ok(Some(payment)) = self.store.get(&id) else {
            return;
        };
        let Some(window) = payment
            .window
            .filter(|w| w.open && !payment.state.is_final())
        else {
            return;
        };
        let span = tracing::info_span!("poll", payment_id = %id, provider = %payment.provider);
        let result = tokio::select! {
            r = provider.inquire(&payment).instrument(span.clone()) => r,
            // The window stays as persisted; a restart polls it again.
            _ = self.cancel.cancelled() => return,
        };
        let _enter = span.enter();
        let now = now_ms();
        let polling = provider.polling();
        let next = now + uniform_ms(polling.poll_interval_min, polling.poll_interval_max);
        let change = if next > window.ends_ms {
            WindowChange::Close
        } else {
            WindowChange::Next(next)
        };
        let moved = match result {
            Ok(report) => {
                self.counters.polls_ok.fetch_add(1, Ordering::Relaxed);
                if report.state.is_none() {
                    alert_unmapped(&payment, &report.raw_status);
                }
                match self.store.observe(&id, report, change, now) {
                    Ok(o) => {
                        if let Some(c) = &o.change {
                            if self.store.sync().await.is_ok() {
                                self.log_change(c);
                            }
                        }
                        o.payment.window.filter(|_| !o.payment.state.is_final())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "poll result not recorded");
                        None
                    }
                }
            }
            Err(e) => {
                self.counters.polls_failed.fetch_add(1, Ordering::Relaxed);
                match &e {
                    InquiryError::Transient(m) => {
                        tracing::warn!(error = %m, "status inquiry failed; asking again next tick")
                    }
                    InquiryError::Invalid(m) => {
                        tracing::warn!(alert = "provider_answer_invalid", error = %m, "status inquiry answer unreadable")
                    }
                }
                self.store.advance_window(&id, change).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "poll window not moved");
                    None
                })
            }
        };
        match moved {
            Some(w) if w.open => self.scheduler().schedule(id, pid, instant_at(w.next_ms)),
            Some(w) => tracing::info!(
                polls = w.polls,
                "poll window ended; waiting for the callback"
            ),
            None => {}
        }
    }

    /// Asks the provider about every unfinished payment whose window has
    /// ended, and records the answers as reconcile observations.
    pub async fn reconcile(&self, pid: ProviderId) -> Result<usize, EngineError> {
        let provider = self
            .providers
            .get(&pid)
            .ok_or_else(|| EngineError::UnknownProvider(pid.to_string()))?
            .clone();
        let mut after: Option<String> = None;
        let mut swept = 0;
        loop {
            let page = self.store.list(None, Some(pid), after.as_deref(), 500)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for p in page {
                if p.state.is_final() || p.window.is_some_and(|w| w.open) {
                    continue;
                }
                if self.cancel.is_cancelled() {
                    return Ok(swept);
                }
                let _permit = self.limits[&pid].acquire().await;
                swept += 1;
                match provider.inquire(&p).await {
                    Ok(mut report) => {
                        report.source = Source::Reconcile;
                        let o = self
                            .store
                            .observe(&p.id, report, WindowChange::Keep, now_ms())?;
                        if let Some(c) = &o.change {
                            self.store.sync().await?;
                            tracing::warn!(alert = "drift", payment_id = %p.id, provider = %pid, from = %c.from, to = %c.to, "reconciliation found a change that polls and callbacks missed");
                            self.log_change(c);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(payment_id = %p.id, provider = %pid, error = %e, "reconcile inquiry failed")
                    }
                }
            }
        }
        Ok(swept)
    }

    pub(crate) fn log_change(&self, c: &Change) {
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            event = "transition",
            payment_id = %c.payment_id,
            provider = %c.provider,
            from = %c.from,
            to = %c.to,
            source = c.source.as_str(),
            latency_ms = c.latency_ms,
            "payment state changed"
        );
    }
}

fn alert_unmapped(payment: &Payment, raw: &str) {
    match raw {
        "error:ORDER_NOT_FOUND" | "error:INVALID_REQUEST" => tracing::warn!(
            alert = "provider_inquiry_rejected",
            raw_status = raw,
            "provider does not know this payment or refuses the inquiry; state left as it is"
        ),
        _ if raw.starts_with("error:") => tracing::warn!(
            alert = "provider_inquiry_failed",
            raw_status = raw,
            "status inquiry failed; waiting for the callback"
        ),
        _ => tracing::warn!(
            alert = "provider_status_unknown",
            raw_status = raw,
            payment_id = %payment.id,
            "provider sent a status payrecon does not know; recorded, state left as it is"
        ),
    }
}

/// Milliseconds drawn uniformly from `[min, max]`.
pub fn uniform_ms(min: Duration, max: Duration) -> u64 {
    let (lo, hi) = (min.as_millis() as u64, max.as_millis() as u64);
    if hi <= lo {
        lo
    } else {
        fastrand::u64(lo..=hi)
    }
}

/// The tokio instant of a unix-ms time (now, if it has passed).
pub fn instant_at(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms()))
}

#[cfg(test)]
mod tests {
    use super::LagHistogram;

    #[test]
    fn histogram_quantiles_are_within_a_quarter_power_of_two() {
        let h = LagHistogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max_us(), 10_000);
        for (q, want) in [(0.5, 5_000f64), (0.99, 9_900f64)] {
            let got = h.quantile_us(q) as f64;
            assert!(got <= want && got >= want * 0.75, "q{q}: {got} vs {want}");
        }
        for us in [0u64, 1, 2, 3, 5, 7, 100, 1 << 20, u64::MAX / 2] {
            let i = LagHistogram::index(us);
            assert!(LagHistogram::lower(i) <= us, "{us}");
        }
        h.reset();
        assert_eq!(h.quantile_us(0.5), 0);
    }
}

//! Tracking, polling and callback ingest: the daemon's behaviour on top of
//! the store, the providers and the scheduler. Every state change is
//! committed, made durable, and then logged as exactly one INFO event.

mod ingest;
pub mod notify;
pub mod outbound;
mod poll;
mod reconcile;
pub mod scheduler;
pub mod stats;

use ingest::{alert_observed, warn_mismatch};
pub use reconcile::SweepReport;
pub use stats::{Counters, LagHistogram, PollOutcome};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::circuit::Breaker;
use crate::engine::notify::NotifySettings;
use crate::engine::scheduler::Scheduler;
use crate::model::{now_ms, Keys, Payment, PollWindow, ProviderId, Source};
use crate::pacer::Pacer;
use crate::providers::{CallbackError, InquiryError, Provider, RawCallback};
use crate::settings::{CircuitConfig, ReconcileConfig};
use crate::state::{Decision, State};
use crate::store::{
    Change, Ingested, Lease, NewPayment, Store, StoreError, SweepMark, Tracked, WindowChange,
};
use crate::sync::{read, write};
use stats::Call;

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
    /// A sweep of this provider is already running.
    #[error("{0}")]
    Busy(String),
}

/// What the engine needs from the config besides the providers.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub action_deadline: Duration,
    pub circuit: CircuitConfig,
    /// Per provider; providers without an entry use the defaults.
    pub reconcile: HashMap<ProviderId, ReconcileConfig>,
    /// Where state changes are notified; `None`: not at all.
    pub notify: Option<NotifySettings>,
    /// Orphan callbacks older than this are forgotten; `None`: never.
    pub orphan_ttl: Option<Duration>,
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

pub struct Engine {
    store: Store,
    /// Swapped as a whole by a reload (new credentials, intervals).
    providers: RwLock<HashMap<ProviderId, Arc<dyn Provider>>>,
    breakers: HashMap<ProviderId, Arc<Breaker>>,
    reconcile: RwLock<HashMap<ProviderId, ReconcileConfig>>,
    /// Held by the running sweep of each provider: runs never overlap.
    sweeping: HashMap<ProviderId, tokio::sync::Mutex<()>>,
    notify: RwLock<Option<Arc<NotifySettings>>>,
    notices: crate::engine::notify::Outbox,
    /// Each provider's inquiry budget (`polling.rate_per_sec`), if any.
    pacers: RwLock<HashMap<ProviderId, Arc<Pacer>>>,
    /// Polls in flight per provider.
    limits: HashMap<ProviderId, Arc<Semaphore>>,
    scheduler: OnceLock<Scheduler<ProviderId>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    outbound: crate::engine::outbound::Outbound,
    /// Milliseconds; a reload changes it for actions queued afterwards.
    action_deadline_ms: AtomicU64,
    /// This process among the instances sharing a database: the owner
    /// named on the window leases it holds.
    instance: String,
    pub counters: Counters,
    /// Histograms and provider-labelled counters for `/metrics`.
    pub metrics: stats::Metrics,
}

/// The lease owner an engine writes: the process's [`crate::model::instance_id`],
/// with a suffix for each engine after the first in one process (tests
/// run several instances in one process; the daemon runs one).
fn engine_instance() -> String {
    static ENGINES: AtomicU64 = AtomicU64::new(0);
    match ENGINES.fetch_add(1, Ordering::Relaxed) {
        0 => crate::model::instance_id().to_string(),
        n => format!("{}.{n}", crate::model::instance_id()),
    }
}

impl Engine {
    /// Builds the engine and starts its scheduler. Background work ends
    /// when `cancel` fires; [`Engine::tasks`] tracks it.
    pub fn start(
        store: Store,
        providers: Vec<Arc<dyn Provider>>,
        settings: Settings,
        cancel: CancellationToken,
    ) -> Arc<Engine> {
        let limits = providers
            .iter()
            .map(|p| (p.id(), Arc::new(Semaphore::new(p.polling().max_in_flight))))
            .collect();
        let circuit = &settings.circuit;
        let breakers = providers
            .iter()
            .map(|p| {
                let b = Breaker::new(p.id(), circuit.failures, circuit.cool_down);
                (p.id(), Arc::new(b))
            })
            .collect();
        let sweeping = providers
            .iter()
            .map(|p| (p.id(), tokio::sync::Mutex::new(())))
            .collect();
        let action_deadline = settings.action_deadline;
        let orphan_ttl = settings.orphan_ttl;
        // Before any task can commit a change: each change from now on
        // queues its notice.
        store.enable_notices(settings.notify.is_some());
        let pacers = RwLock::new(pacers_of(&providers));
        let engine = Arc::new(Engine {
            pacers,
            store,
            providers: RwLock::new(providers.into_iter().map(|p| (p.id(), p)).collect()),
            breakers,
            reconcile: RwLock::new(settings.reconcile),
            sweeping,
            notify: RwLock::new(settings.notify.map(Arc::new)),
            notices: Default::default(),
            limits,
            scheduler: OnceLock::new(),
            tasks: TaskTracker::new(),
            cancel: cancel.clone(),
            outbound: Default::default(),
            action_deadline_ms: AtomicU64::new(action_deadline.as_millis() as u64),
            instance: engine_instance(),
            counters: Counters::default(),
            metrics: Default::default(),
        });
        let weak: Weak<Engine> = Arc::downgrade(&engine);
        let (scheduler, task) = Scheduler::start(cancel, move |id, provider, due| {
            if let Some(e) = weak.upgrade() {
                e.tasks.spawn(e.clone().poll_guarded(id, provider, due));
            }
        });
        engine.tasks.spawn(async move {
            let _ = task.await;
        });
        let _ = engine.scheduler.set(scheduler);
        engine.tasks.spawn(engine.clone().run_outbound());
        engine.tasks.spawn(engine.clone().run_notifier());
        engine.tasks.spawn(engine.clone().adopt_free_windows());
        if let Some(ttl) = orphan_ttl {
            engine.tasks.spawn(engine.clone().expire_orphans(ttl));
        }
        engine
    }

    /// Forgets orphan callbacks older than `ttl`, at start and then every
    /// [`ORPHAN_EXPIRY_EVERY`].
    async fn expire_orphans(self: Arc<Self>, ttl: Duration) {
        loop {
            let before = now_ms().saturating_sub(ttl.as_millis() as u64);
            match self.store.expire_orphans(before).await {
                Ok(0) => {}
                Ok(n) => {
                    self.counters
                        .orphans_expired
                        .fetch_add(n as u64, Ordering::Relaxed);
                    tracing::info!(expired = n, "orphan callbacks past their time forgotten");
                }
                Err(e) => {
                    tracing::error!(alert = "store_error", error = %e, "orphan expiry failed")
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(ORPHAN_EXPIRY_EVERY) => {}
            }
        }
    }

    pub(crate) fn outbound(&self) -> &crate::engine::outbound::Outbound {
        &self.outbound
    }

    pub(crate) fn notice_outbox(&self) -> &crate::engine::notify::Outbox {
        &self.notices
    }

    pub(crate) fn notify_settings(&self) -> Option<Arc<NotifySettings>> {
        read(&self.notify).clone()
    }

    pub(crate) fn action_deadline(&self) -> Duration {
        Duration::from_millis(self.action_deadline_ms.load(Ordering::Relaxed))
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

    pub fn provider(&self, id: ProviderId) -> Option<Arc<dyn Provider>> {
        read(&self.providers).get(&id).cloned()
    }

    /// The configured providers, in code order.
    pub fn provider_ids(&self) -> Vec<ProviderId> {
        let mut ids: Vec<_> = read(&self.providers).keys().copied().collect();
        ids.sort_by_key(|p| p.code());
        ids
    }

    /// The circuit breaker of a configured provider.
    pub fn breaker(&self, id: ProviderId) -> Option<&Arc<Breaker>> {
        self.breakers.get(&id)
    }

    /// A reload: new provider objects (credentials, intervals) and sweep
    /// settings. The set of providers is fixed at start; the caller checks.
    pub fn replace(
        &self,
        providers: Vec<Arc<dyn Provider>>,
        reconcile: HashMap<ProviderId, ReconcileConfig>,
        notify: Option<NotifySettings>,
        action_deadline: Duration,
    ) {
        self.action_deadline_ms
            .store(action_deadline.as_millis() as u64, Ordering::Relaxed);
        *write(&self.pacers) = pacers_of(&providers);
        let mut map = write(&self.providers);
        for p in providers {
            map.insert(p.id(), p);
        }
        *write(&self.reconcile) = reconcile;
        self.store.enable_notices(notify.is_some());
        *write(&self.notify) = notify.map(Arc::new);
        self.notices.wake.notify_one();
    }

    /// Waits for a slot in the provider's inquiry budget (at once if it
    /// has none). False if the daemon shut down meanwhile.
    pub(crate) async fn pace(&self, id: ProviderId) -> bool {
        let Some(p) = read(&self.pacers).get(&id).cloned() else {
            return true;
        };
        tokio::select! {
            _ = p.wait() => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    /// Schedules every open window found in the store. A window's next
    /// deadline lives in memory, so after a restart each is polled at a
    /// random point of its provider's longest interval: a million windows
    /// do not fire together, and none waits longer than it would have. A
    /// window whose end passed while payrecon was down gets one catch-up
    /// poll, then closes.
    pub async fn resume(&self) -> Result<usize, StoreError> {
        let windows = self.store.open_windows().await?;
        let now = now_ms();
        let spread: HashMap<ProviderId, Duration> = self
            .provider_ids()
            .into_iter()
            .filter_map(|id| Some((id, self.provider(id)?.polling().poll_interval_max)))
            .collect();
        for (id, provider, _) in &windows {
            let max = spread.get(provider).copied().unwrap_or_default();
            let at = now + uniform_ms(Duration::ZERO, max);
            self.scheduler()
                .schedule(id.clone(), *provider, instant_at(at));
        }
        Ok(windows.len())
    }

    /// Starts tracking a payment; idempotent on provider and keys.
    pub async fn track(self: &Arc<Self>, req: TrackRequest) -> Result<Tracked, EngineError> {
        let pid: ProviderId = req
            .provider
            .parse()
            .map_err(|_| EngineError::UnknownProvider(req.provider.clone()))?;
        let provider = self
            .provider(pid)
            .ok_or_else(|| EngineError::UnknownProvider(req.provider.clone()))?;
        let tk = provider
            .track_keys(&req.keys)
            .map_err(EngineError::BadRequest)?;
        if let Some(a) = req.amount_minor {
            crate::money::check_tracked(a).map_err(EngineError::BadRequest)?;
        }
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
        let tracked = self
            .store
            .track(NewPayment {
                provider: pid,
                keys: req.keys,
                idempotency_key: tk.idempotency_key,
                lookup_keys: tk.lookup_keys,
                amount_minor: req.amount_minor,
                currency: req.currency,
                window: provider.polls().then_some(window),
                now_ms: now,
            })
            .await?;
        for c in &tracked.changes {
            self.log_change(c);
        }
        for claim in &tracked.claims {
            self.confirm_claim(&tracked.payment, *claim);
        }
        if tracked.created {
            tracing::info!(payment_id = %tracked.payment.id, provider = %pid, "payment tracked");
            if let Some(m) = &tracked.payment.mismatch {
                warn_mismatch(&tracked.payment, m, None, false);
            }
            if let Some(w) = tracked.payment.window.filter(|w| w.open) {
                self.scheduler()
                    .schedule(tracked.payment.id.clone(), pid, instant_at(w.next_ms));
            }
        }
        Ok(tracked)
    }

    /// A provider call, timed into `payrecon_provider_request_seconds`
    /// (not when it is dropped unfinished at shutdown).
    pub(crate) async fn timed<T>(
        &self,
        pid: ProviderId,
        call: Call,
        request: impl std::future::Future<Output = T>,
    ) -> T {
        let asked = Instant::now();
        let answer = request.await;
        self.metrics.provider_call(pid, call, asked.elapsed());
        answer
    }

    pub(crate) fn log_change(&self, c: &Change) {
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
        self.metrics.transition(c.provider, c.to);
        // Its notice was queued with the change; the worker sends it.
        self.notices.wake.notify_one();
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

/// How often orphan callbacks are checked for expiry: their time is
/// counted in days, so an hour late is nothing.
const ORPHAN_EXPIRY_EVERY: Duration = Duration::from_secs(3600);

fn pacers_of(providers: &[Arc<dyn Provider>]) -> HashMap<ProviderId, Arc<Pacer>> {
    providers
        .iter()
        .filter_map(|p| Some((p.id(), Arc::new(Pacer::new(p.polling().rate_per_sec?)))))
        .collect()
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

//! Tracking, polling and callback ingest: the daemon's behaviour on top of
//! the store, the providers and the scheduler. Every state change is
//! committed, made durable, and then logged as exactly one INFO event.

pub mod notify;
pub mod outbound;
pub mod scheduler;

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
    Change, Ingested, NewPayment, Store, StoreError, SweepMark, Tracked, WindowChange,
};
use crate::sync::{read, write};

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

/// What one sweep did (the answer of `POST /v1/reconcile/{provider}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepReport {
    pub provider: String,
    /// Unfinished payments whose window has ended.
    pub candidates: usize,
    /// Of those, asked in this run.
    pub asked: usize,
    /// Answers that moved a state (each is also drift).
    pub changed: usize,
    /// Payments reported as drift: a missed change, or unknown at the provider.
    pub drift: usize,
    /// Payments that became stale in this run.
    pub stale: usize,
    /// Payments not asked because of the age back-off.
    pub backed_off: usize,
    pub failed: usize,
    /// The provider's circuit was open; the sweep stopped early.
    pub paused_by_circuit: bool,
}

enum Swept {
    Same,
    /// `changed`: the answer moved the state (else: unknown at the provider).
    Drift {
        changed: bool,
    },
    Failed,
}

impl SweepReport {
    fn add(&mut self, r: Result<Swept, tokio::task::JoinError>) {
        self.asked += 1;
        match r {
            Ok(Swept::Same) => {}
            Ok(Swept::Drift { changed }) => {
                self.drift += 1;
                self.changed += changed as usize;
            }
            Ok(Swept::Failed) | Err(_) => self.failed += 1,
        }
    }
}

/// Counters for logs, metrics and benchmarks.
#[derive(Default, Debug)]
pub struct Counters {
    pub callbacks_received: AtomicU64,
    pub callbacks_rejected: AtomicU64,
    pub callbacks_duplicate: AtomicU64,
    pub callbacks_orphaned: AtomicU64,
    /// Callbacks refused because too many orphans wait (503).
    pub orphans_refused: AtomicU64,
    pub orphans_expired: AtomicU64,
    /// Polls per provider (indexed by [`ProviderId::code`]) and outcome
    /// (indexed by [`PollOutcome`]); [`Counters::polls`] sums providers.
    pub polls_by_provider: [[AtomicU64; 3]; 8],
    pub sweeps: AtomicU64,
    pub drift: AtomicU64,
    pub stale: AtomicU64,
    pub notices_delivered: AtomicU64,
    pub notices_failed: AtomicU64,
    pub transitions: AtomicU64,
    /// Poll schedule lag: start of the inquiry minus its due time.
    pub poll_lag: LagHistogram,
}

/// How a poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    Ok = 0,
    Failed = 1,
    /// Not sent: the provider's circuit was open.
    Skipped = 2,
}

impl PollOutcome {
    pub const ALL: [PollOutcome; 3] = [PollOutcome::Ok, PollOutcome::Failed, PollOutcome::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Ok => "ok",
            PollOutcome::Failed => "failed",
            PollOutcome::Skipped => "skipped",
        }
    }
}

impl Counters {
    fn count_poll(&self, pid: ProviderId, outcome: PollOutcome) {
        self.polls_by_provider[pid.code() as usize][outcome as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Polls of one provider that ended so.
    pub fn polls_of(&self, pid: ProviderId, outcome: PollOutcome) -> u64 {
        self.polls_by_provider[pid.code() as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// Polls of every provider that ended so.
    pub fn polls(&self, outcome: PollOutcome) -> u64 {
        self.polls_by_provider
            .iter()
            .map(|p| p[outcome as usize].load(Ordering::Relaxed))
            .sum()
    }
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
    pub counters: Counters,
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
            counters: Counters::default(),
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
                Err(e) => tracing::error!(error = %e, "orphan expiry failed"),
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

    /// After a reload: open windows of `pid` whose next poll lies further
    /// out than the new longest interval are moved in, so a shorter
    /// interval takes effect at once rather than after the old one.
    pub async fn pull_in_polls(&self, pid: ProviderId) -> Result<usize, StoreError> {
        let Some(provider) = self.provider(pid) else {
            return Ok(0);
        };
        let polling = provider.polling();
        let now = now_ms();
        let latest = now + polling.poll_interval_max.as_millis() as u64;
        let mut moved = 0;
        for (id, p, _) in self.store.open_windows().await? {
            if p != pid {
                continue;
            }
            // The deadline as the store knows it now (it lives in memory).
            let Some(w) = self.store.get(&id).await?.and_then(|p| p.window) else {
                continue;
            };
            if w.next_ms > latest {
                let next = now + uniform_ms(polling.poll_interval_min, polling.poll_interval_max);
                self.scheduler().schedule(id, pid, instant_at(next));
                moved += 1;
            }
        }
        Ok(moved)
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

    fn sweep_settings(&self, id: ProviderId) -> ReconcileConfig {
        read(&self.reconcile).get(&id).cloned().unwrap_or_default()
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

    /// Verifies and commits a callback; returns once it is durable.
    pub async fn ingest(
        self: &Arc<Self>,
        pid: ProviderId,
        raw: &RawCallback<'_>,
    ) -> Result<Ingested, EngineError> {
        self.counters
            .callbacks_received
            .fetch_add(1, Ordering::Relaxed);
        let provider = self
            .provider(pid)
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
        let match_key = record.match_key.clone();
        let ingested = self.store.ingest_callback(&record).await;
        if let Err(StoreError::OrphanLimit(why)) = &ingested {
            self.counters
                .orphans_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(alert = "orphan_limit", provider = %pid, error = %why, "callback for an unknown payment refused (503): too many wait already");
        }
        // Durable when it returns, a repeat's answer too: the store's
        // writer answers a group only after the flush that covers it.
        let ingested = ingested?;
        match &ingested {
            Ingested::Applied(o) => {
                alert_observed(o);
                if let Some(c) = &o.change {
                    self.log_change(c);
                } else if let (Some(Decision::Unconfirmed), Some(claim)) =
                    (o.observation.decision, o.observation.state)
                {
                    self.confirm_claim(&o.payment, claim);
                } else {
                    tracing::debug!(payment_id = %o.payment.id, raw_status = %o.observation.raw_status, decision = ?o.observation.decision, "callback recorded, state unchanged");
                }
            }
            Ingested::Orphaned => {
                self.counters
                    .callbacks_orphaned
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(provider = %pid, match_key = %match_key, "callback for an unknown payment kept as orphan");
            }
            Ingested::Duplicate => {
                self.counters
                    .callbacks_duplicate
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(ingested)
    }

    /// [`Engine::poll`], with a panic in it taken as a failed poll: the
    /// alert is raised, the window moves on as after a failed inquiry and
    /// the payment is asked again at its next tick.
    async fn poll_guarded(self: Arc<Self>, id: String, pid: ProviderId, due: Instant) {
        let Err(why) = crate::guard::catch(self.clone().poll(id.clone(), pid, due)).await else {
            return;
        };
        self.counters.count_poll(pid, PollOutcome::Failed);
        tracing::error!(alert = "poll_panicked", payment_id = %id, provider = %pid, error = %why, "a poll panicked; the payment is asked again at its next tick");
        let Some(provider) = self.provider(pid) else {
            return;
        };
        let Ok(Some(payment)) = self.store.get(&id).await else {
            return;
        };
        let Some(window) = payment.window.filter(|w| w.open) else {
            return;
        };
        let change = next_window_change(&*provider, &window, now_ms());
        let moved = self.advance_window(&id, change).await;
        self.follow_window(id, pid, moved);
    }

    /// Moves a window without an observation; an error is logged.
    async fn advance_window(&self, id: &str, change: WindowChange) -> Option<PollWindow> {
        self.store
            .advance_window(id, change)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(payment_id = %id, error = %e, "poll window not moved");
                None
            })
    }

    /// Schedules a window's next poll, or says that it ended.
    fn follow_window(&self, id: String, pid: ProviderId, moved: Option<PollWindow>) {
        match moved {
            Some(w) if w.open => self.scheduler().schedule(id, pid, instant_at(w.next_ms)),
            Some(w) => tracing::info!(
                polls = w.polls,
                "poll window ended; waiting for the callback"
            ),
            None => {}
        }
    }

    /// A callback claimed `claim` on fields the provider did not sign: the
    /// claim is held (recorded, state unchanged) and one status inquiry
    /// decides, the way Hyperswitch syncs on an unverifiable webhook. The
    /// inquiry's answer is recorded like a poll's and moves the state on
    /// its own evidence; if it does not bear the claim out, or the provider
    /// cannot be asked, the claim stays held and a person is told.
    fn confirm_claim(self: &Arc<Self>, payment: &Payment, claim: State) {
        let (engine, id, pid) = (self.clone(), payment.id.clone(), payment.provider);
        self.tasks.spawn(async move {
            let outcome = crate::guard::catch(engine.inquire_claim(&id, pid, claim))
                .await
                .unwrap_or_else(Err);
            let alert = if claim == State::Reversed {
                "unconfirmed_reversal"
            } else {
                "unconfirmed_callback"
            };
            match outcome {
                Ok(Some(seen)) if seen == claim => tracing::info!(payment_id = %id, provider = %pid, claim = %claim, "a callback's unsigned claim was confirmed by a status inquiry"),
                Ok(seen) => tracing::warn!(alert, payment_id = %id, provider = %pid, claim = %claim, provider_says = ?seen.map(|s| s.as_str()), "a callback claims a state on unsigned fields that the provider's status inquiry does not confirm; recorded, state left as it is"),
                Err(why) => tracing::warn!(alert, payment_id = %id, provider = %pid, claim = %claim, error = %why, "a callback claims a state on unsigned fields and the provider could not be asked; recorded, state left as it is"),
            }
        });
    }

    /// The status inquiry behind [`Engine::confirm_claim`]: records the
    /// answer and returns the state it names. A transient failure is tried
    /// again a few times.
    async fn inquire_claim(
        &self,
        id: &str,
        pid: ProviderId,
        claim: State,
    ) -> Result<Option<State>, String> {
        let provider = self.provider(pid).ok_or("provider not configured")?;
        if !provider.polls() {
            return Err(format!("{pid} has no status inquiry"));
        }
        let payment = self
            .store
            .get(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("payment gone")?;
        let breaker = self.breakers[&pid].clone();
        // Err((transient, why)): only transient failures are tried again.
        let ask = || async {
            if !breaker.allow() {
                return Err((true, "the provider's circuit is open".to_string()));
            }
            if !self.pace(pid).await {
                return Err((false, "shutting down".to_string()));
            }
            match provider.inquire(&payment).await {
                Ok(r) => {
                    breaker.success();
                    Ok(r)
                }
                Err(e @ InquiryError::Transient(_)) => {
                    breaker.failure();
                    Err((true, e.to_string()))
                }
                Err(e) => {
                    breaker.success();
                    Err((false, e.to_string()))
                }
            }
        };
        let report = ask
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(CONFIRM_BACKOFF)
                    .with_max_times(CONFIRM_TRIES - 1),
            )
            .when(|(transient, _)| *transient)
            .await
            .map_err(|(_, why)| why)?;
        let seen = report.state;
        let observed = self
            .store
            .observe(id, report, WindowChange::Keep, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        alert_observed(&observed);
        if let Some(c) = &observed.change {
            self.log_change(c);
        }
        tracing::debug!(payment_id = %id, claim = %claim, seen = ?seen, "claim checked by inquiry");
        Ok(seen)
    }

    /// One poll of one payment, run when its deadline falls due.
    async fn poll(self: Arc<Self>, id: String, pid: ProviderId, due: Instant) {
        let Some(provider) = self.provider(pid) else {
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
        let Ok(Some(payment)) = self.store.get(&id).await else {
            return;
        };
        let Some(window) = payment
            .window
            .filter(|w| w.open && !payment.state.is_final())
        else {
            return;
        };
        let span = tracing::info_span!("poll", payment_id = %id, provider = %payment.provider);
        let breaker = self.breakers[&pid].clone();
        let result = if breaker.allow() {
            if !self.pace(pid).await {
                return;
            }
            let r = tokio::select! {
                r = provider.inquire(&payment).instrument(span.clone()) => r,
                // The window stays as persisted; a restart polls it again.
                _ = self.cancel.cancelled() => return,
            };
            match &r {
                Err(InquiryError::Transient(_)) => breaker.failure(),
                _ => breaker.success(),
            }
            Some(r)
        } else {
            self.counters.count_poll(pid, PollOutcome::Skipped);
            None
        };
        let _enter = span.enter();
        let now = now_ms();
        let change = next_window_change(&*provider, &window, now);
        let moved = match result {
            // Circuit open: the window moves on without asking.
            None => self.advance_window(&id, change).await,
            Some(Ok(report)) => {
                self.counters.count_poll(pid, PollOutcome::Ok);
                if report.state.is_none() {
                    alert_unmapped(&payment, &report.raw_status);
                }
                match self.store.observe(&id, report, change, now).await {
                    Ok(o) => {
                        alert_observed(&o);
                        if let Some(c) = &o.change {
                            self.log_change(c);
                        }
                        o.payment.window.filter(|_| !o.payment.state.is_final())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "poll result not recorded");
                        None
                    }
                }
            }
            Some(Err(e)) => {
                self.counters.count_poll(pid, PollOutcome::Failed);
                match &e {
                    InquiryError::Transient(m) => {
                        tracing::warn!(error = %m, "status inquiry failed; asking again next tick")
                    }
                    InquiryError::Invalid(m) => {
                        tracing::warn!(alert = "provider_answer_invalid", error = %m, "status inquiry answer unreadable")
                    }
                    InquiryError::NotFound(m) => {
                        tracing::warn!(alert = "provider_inquiry_rejected", error = %m, "provider does not know this payment; state left as it is")
                    }
                }
                self.advance_window(&id, change).await
            }
        };
        self.follow_window(id, pid, moved);
    }

    /// One reconciliation sweep of a provider: asks about every unfinished
    /// payment whose polling window has ended, with bounded concurrency
    /// and the provider's rate limit, and records the answers as reconcile
    /// observations. Reports drift and stale payments; backs off from old
    /// ones. Never runs twice at once for one provider.
    pub async fn reconcile(self: &Arc<Self>, pid: ProviderId) -> Result<SweepReport, EngineError> {
        let provider = self
            .provider(pid)
            .ok_or_else(|| EngineError::UnknownProvider(pid.to_string()))?;
        let Ok(_running) = self.sweeping[&pid].try_lock() else {
            return Err(EngineError::Busy(format!(
                "a reconciliation sweep of {pid} is already running"
            )));
        };
        self.counters.sweeps.fetch_add(1, Ordering::Relaxed);
        let settings = self.sweep_settings(pid);
        let breaker = self.breakers[&pid].clone();
        let mut report = SweepReport {
            provider: pid.to_string(),
            ..SweepReport::default()
        };
        if !provider.polls() {
            return Ok(report);
        }
        let limit = Arc::new(Semaphore::new(settings.concurrency));
        // The sweep's own share, under the provider's whole budget.
        let pace = Pacer::new(settings.rate_per_sec);
        let mut asks = tokio::task::JoinSet::new();
        let mut after: Option<String> = None;
        'pages: loop {
            let page = self
                .store
                .list(None, Some(pid), after.as_deref(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for p in page {
                if p.state.is_final() || p.window.is_some_and(|w| w.open) {
                    continue;
                }
                report.candidates += 1;
                let now = now_ms();
                let mut mark = self.store.sweep_mark(&p.id).await?;
                if !self.due_for_sweep(&p, &mut mark, &settings, now, &mut report) {
                    self.store.set_sweep_mark(&p.id, &mark).await?;
                    continue;
                }
                if self.cancel.is_cancelled() {
                    break 'pages;
                }
                if !breaker.allow() {
                    report.paused_by_circuit = true;
                    tracing::warn!(provider = %pid, "sweep stopped: the provider's circuit is open");
                    break 'pages;
                }
                pace.wait().await;
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                mark.last_ms = now;
                self.store.set_sweep_mark(&p.id, &mark).await?;
                let (engine, provider, breaker) = (self.clone(), provider.clone(), breaker.clone());
                asks.spawn(async move {
                    let _permit = permit;
                    let (id, pid) = (p.id.clone(), p.provider);
                    crate::guard::catch(engine.sweep_one(&*provider, &breaker, p))
                        .await
                        .unwrap_or_else(|why| {
                            tracing::error!(alert = "sweep_panicked", payment_id = %id, provider = %pid, error = %why, "a sweep inquiry panicked; the payment is asked again next sweep");
                            Swept::Failed
                        })
                });
                while let Some(done) = asks.try_join_next() {
                    report.add(done);
                }
            }
        }
        while let Some(done) = asks.join_next().await {
            report.add(done);
        }
        tracing::info!(
            provider = %pid,
            candidates = report.candidates,
            asked = report.asked,
            changed = report.changed,
            drift = report.drift,
            stale = report.stale,
            backed_off = report.backed_off,
            failed = report.failed,
            paused_by_circuit = report.paused_by_circuit,
            "reconciliation sweep done"
        );
        Ok(report)
    }

    /// Whether a payment is asked in this sweep (Kill Bill's janitor
    /// back-off): every run while young, then every `stale_every` once it
    /// is stale (raising `payment_stale` once), then every `late_every`,
    /// and not at all past `end_age`.
    fn due_for_sweep(
        &self,
        p: &Payment,
        mark: &mut SweepMark,
        s: &ReconcileConfig,
        now: u64,
        report: &mut SweepReport,
    ) -> bool {
        let age = Duration::from_millis(now.saturating_sub(p.created_ms));
        if age >= s.end_age {
            if !mark.abandoned {
                mark.abandoned = true;
                tracing::error!(alert = "reconcile_abandoned", payment_id = %p.id, provider = %p.provider, state = %p.state, age_s = age.as_secs(), "payment past the sweep's end age; no longer asked about. Settle it by hand");
            }
            report.backed_off += 1;
            return false;
        }
        if age >= s.stale_after && !mark.stale_alerted {
            mark.stale_alerted = true;
            report.stale += 1;
            self.counters.stale.fetch_add(1, Ordering::Relaxed);
            tracing::error!(alert = "payment_stale", payment_id = %p.id, provider = %p.provider, state = %p.state, age_s = age.as_secs(), "payment unfinished past the age limit; sweeps now back off");
        }
        let every = if age < s.stale_after {
            Duration::ZERO
        } else if age < s.late_after {
            s.stale_every
        } else {
            s.late_every
        };
        if mark.last_ms > 0 && mark.last_ms + every.as_millis() as u64 > now {
            report.backed_off += 1;
            return false;
        }
        true
    }

    /// Asks about one payment during a sweep and records the answer.
    async fn sweep_one(&self, provider: &dyn Provider, breaker: &Breaker, p: Payment) -> Swept {
        if !self.pace(p.provider).await {
            return Swept::Failed;
        }
        let result = tokio::select! {
            r = provider.inquire(&p) => r,
            _ = self.cancel.cancelled() => return Swept::Failed,
        };
        let not_found = |why: &str| {
            self.counters.drift.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(alert = "drift", kind = "unknown_at_provider", payment_id = %p.id, provider = %p.provider, state = %p.state, error = why, "drift: the provider does not know a payment payrecon tracks");
            Swept::Drift { changed: false }
        };
        let report = match result {
            Ok(mut report) => {
                breaker.success();
                report.source = Source::Reconcile;
                report
            }
            Err(InquiryError::NotFound(m)) => {
                breaker.success();
                return not_found(&m);
            }
            Err(e) => {
                if matches!(e, InquiryError::Transient(_)) {
                    breaker.failure();
                } else {
                    breaker.success();
                }
                tracing::warn!(payment_id = %p.id, provider = %p.provider, error = %e, "reconcile inquiry failed");
                return Swept::Failed;
            }
        };
        let unknown = report.raw_status == "error:ORDER_NOT_FOUND";
        let observed = self
            .store
            .observe(&p.id, report, WindowChange::Keep, now_ms())
            .await;
        if let Ok(o) = &observed {
            alert_observed(o);
        }
        match observed {
            Ok(o) => match &o.change {
                Some(c) => {
                    self.counters.drift.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(alert = "drift", kind = "missed_change", payment_id = %p.id, provider = %c.provider, from = %c.from, to = %c.to, "drift: the provider reports a state that no poll or callback brought");
                    self.log_change(c);
                    Swept::Drift { changed: true }
                }
                None if unknown => not_found("ORDER_NOT_FOUND"),
                None => Swept::Same,
            },
            Err(e) => {
                tracing::error!(payment_id = %p.id, error = %e, "reconcile answer not recorded");
                Swept::Failed
            }
        }
    }

    pub(crate) fn log_change(&self, c: &Change) {
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
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

/// What a person must hear about a recorded observation, whatever brought
/// it (poll, sweep, callback, confirmation): fields payrecon could not read
/// (the rest of the answer was used), and money other than tracked (once
/// per distinct mismatch, and always when it held a move back). A repeat
/// of the payment's last answer says nothing new.
fn alert_observed(o: &crate::store::Observed) {
    // A repeat of the last observation was alerted on when it first came.
    if o.repeat {
        return;
    }
    let (p, obs) = (&o.payment, &o.observation);
    if let Some(why) = obs.fields.get(crate::model::UNREADABLE) {
        tracing::warn!(alert = "provider_field_unreadable", payment_id = %p.id, provider = %p.provider, error = %why, "provider answer has a field payrecon cannot read; recorded, the rest of the answer used");
    }
    let held = obs.decision == Some(Decision::AmountMismatch);
    if let Some(m) = p.mismatch.as_ref().filter(|m| held || m.at_ms == obs.at_ms) {
        warn_mismatch(p, m, obs.state, held);
    }
}

fn warn_mismatch(p: &Payment, m: &crate::money::Mismatch, claim: Option<State>, held: bool) {
    tracing::warn!(
        alert = "amount_mismatch",
        payment_id = %p.id,
        provider = %p.provider,
        reported = %m.reported,
        tracked_minor = ?p.amount_minor,
        tracked_currency = ?p.currency,
        claim = ?claim.map(|s| s.as_str()),
        held,
        "the provider reports other money than tracked; recorded, and never taken as evidence that money was taken"
    );
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

/// How often orphan callbacks are checked for expiry: their time is
/// counted in days, so an hour late is nothing.
const ORPHAN_EXPIRY_EVERY: Duration = Duration::from_secs(3600);

/// Status inquiries made to confirm one unsigned claim, and the wait
/// before the first retry (doubling after): a provider hiccup does not leave a
/// claim unconfirmed, a provider down for longer raises the alert.
const CONFIRM_TRIES: usize = 3;
const CONFIRM_BACKOFF: Duration = Duration::from_millis(500);

/// Where a window goes after a poll at `now`: its next tick, or closed
/// when that tick would fall past its end.
fn next_window_change(provider: &dyn Provider, window: &PollWindow, now: u64) -> WindowChange {
    let polling = provider.polling();
    let next = now + uniform_ms(polling.poll_interval_min, polling.poll_interval_max);
    if next > window.ends_ms {
        WindowChange::Close
    } else {
        WindowChange::Next(next)
    }
}

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

//! The scheduled sweep: unfinished payments whose window has ended are
//! asked again, paced and bounded, with stale and abandoned alerts.

use super::*;

/// How long a provider's sweep lease lasts (renewed at every page of
/// payments): an instance that dies mid-sweep holds it at most this long.
const SWEEP_LEASE_MS: u64 = 10 * 60 * 1000;

impl Engine {
    pub(super) fn sweep_settings(&self, id: ProviderId) -> ReconcileConfig {
        read(&self.reconcile).get(&id).cloned().unwrap_or_default()
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
        // Several instances on one database: one sweeps, the others skip.
        let lease = format!("sweep:{pid}");
        if !self
            .store
            .take_lease(&lease, Lease::from_now(&self.instance, SWEEP_LEASE_MS))
            .await?
        {
            return Err(EngineError::Busy(format!(
                "a reconciliation sweep of {pid} is running on another instance"
            )));
        }
        let started = Instant::now();
        let swept = self.sweep(pid, provider, &lease).await;
        // Ran to its end: not stopped by the circuit (nor by an error).
        if matches!(&swept, Ok(r) if !r.paused_by_circuit) {
            self.metrics.sweep_done(pid, started.elapsed(), now_ms());
        }
        if let Err(e) = self.store.release_lease(&lease, &self.instance).await {
            tracing::warn!(provider = %pid, error = %e, "sweep lease not released; it runs out on its own");
        }
        swept
    }

    /// The sweep itself, once this instance holds the provider's lease.
    async fn sweep(
        self: &Arc<Self>,
        pid: ProviderId,
        provider: Arc<dyn Provider>,
        lease: &str,
    ) -> Result<SweepReport, EngineError> {
        self.counters.sweeps.fetch_add(1, Ordering::Relaxed);
        self.metrics.sweep_started(pid);
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
            if !self
                .store
                .take_lease(lease, Lease::from_now(&self.instance, SWEEP_LEASE_MS))
                .await?
            {
                tracing::warn!(provider = %pid, "sweep lease lost to another instance; this sweep stops");
                break 'pages;
            }
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
    pub(super) fn due_for_sweep(
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
    pub(super) async fn sweep_one(
        &self,
        provider: &dyn Provider,
        breaker: &Breaker,
        p: Payment,
    ) -> Swept {
        if !self.pace(p.provider).await {
            return Swept::Failed;
        }
        let result = tokio::select! {
            r = self.timed(p.provider, Call::Inquiry, provider.inquire(&p)) => r,
            _ = self.cancel.cancelled() => return Swept::Failed,
        };
        let not_found = |why: &str| {
            self.counters.drift.fetch_add(1, Ordering::Relaxed);
            self.metrics.drift(p.provider);
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
                    self.metrics.drift(p.provider);
                    tracing::warn!(alert = "drift", kind = "missed_change", payment_id = %p.id, provider = %c.provider, from = %c.from, to = %c.to, "drift: the provider reports a state that no poll or callback brought");
                    self.log_change(c);
                    Swept::Drift { changed: true }
                }
                None if unknown => not_found("ORDER_NOT_FOUND"),
                None => Swept::Same,
            },
            Err(e) => {
                tracing::error!(alert = "store_error", payment_id = %p.id, error = %e, "reconcile answer not recorded");
                Swept::Failed
            }
        }
    }
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

pub(super) enum Swept {
    Same,
    /// `changed`: the answer moved the state (else: unknown at the provider).
    Drift {
        changed: bool,
    },
    Failed,
}

impl SweepReport {
    pub(super) fn add(&mut self, r: Result<Swept, tokio::task::JoinError>) {
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

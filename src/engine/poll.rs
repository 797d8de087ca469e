//! Polling: a due deadline becomes one guarded poll; its answer is
//! recorded, the window moved on or closed, and an unsigned claim confirmed
//! by inquiry before it moves a state.

use super::*;
use crate::model::Report;

/// How often an instance looks for windows nobody holds.
const FREE_WINDOWS_EVERY: Duration = Duration::from_secs(5);

/// A window's lease: two of the provider's longest intervals and an
/// inquiry's time limit, renewed at every poll. An instance that dies
/// leaves its windows free within this, and they are adopted within
/// [`FREE_WINDOWS_EVERY`] after.
fn lease_ms(p: &crate::settings::PollingConfig) -> u64 {
    (p.poll_interval_max * 2 + p.request_timeout).as_millis() as u64
}

impl Engine {
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

    /// Every [`FREE_WINDOWS_EVERY`], claims the windows no instance holds
    /// (their instance died: its leases ran out) and schedules them. A
    /// store one instance owns (sled) has none.
    pub(super) async fn adopt_free_windows(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancelled() => return,
                _ = tokio::time::sleep(FREE_WINDOWS_EVERY) => {}
            }
            // One claim for every provider: the longest lease of them.
            let pollings: HashMap<ProviderId, crate::settings::PollingConfig> = self
                .provider_ids()
                .into_iter()
                .filter_map(|pid| Some((pid, self.provider(pid)?.polling().clone())))
                .collect();
            let Some(lease) = pollings.values().map(lease_ms).max() else {
                continue;
            };
            let now = now_ms();
            let claimed = self
                .store
                .claim_free_windows(Lease::at(&self.instance, now, now + lease), 1_000)
                .await;
            match claimed {
                Ok(ws) => {
                    for (id, pid) in ws {
                        // Another's window of a provider not configured
                        // here: its lease runs out again for another.
                        let Some(polling) = pollings.get(&pid) else {
                            continue;
                        };
                        self.counters
                            .windows_taken_over
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(payment_id = %id, provider = %pid, "window taken over: no instance held its lease");
                        let at = now + uniform_ms(Duration::ZERO, polling.poll_interval_max);
                        self.scheduler().schedule(id, pid, instant_at(at));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "free windows not claimed; trying again"),
            }
        }
    }

    /// [`Engine::poll`], with a panic in it taken as a failed poll: the
    /// alert is raised, the window moves on as after a failed inquiry and
    /// the payment is asked again at its next tick.
    pub(super) async fn poll_guarded(self: Arc<Self>, id: String, pid: ProviderId, due: Instant) {
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
    pub(super) async fn advance_window(
        &self,
        id: &str,
        change: WindowChange,
    ) -> Option<PollWindow> {
        self.store
            .advance_window(id, change)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(alert = "store_error", payment_id = %id, error = %e, "poll window not moved");
                None
            })
    }

    /// Schedules a window's next poll, or says that it ended.
    pub(super) fn follow_window(&self, id: String, pid: ProviderId, moved: Option<PollWindow>) {
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
    pub(super) fn confirm_claim(self: &Arc<Self>, payment: &Payment, claim: State) {
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
    pub(super) async fn inquire_claim(
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
            match self
                .timed(pid, Call::Inquiry, provider.inquire(&payment))
                .await
            {
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
    pub(super) async fn poll(self: Arc<Self>, id: String, pid: ProviderId, due: Instant) {
        let Some(provider) = self.provider(pid) else {
            tracing::warn!(payment_id = %id, provider = %pid, "payment's provider is not configured; window left as it is");
            return;
        };
        let limit = self.limits[&pid].clone();
        let _permit = tokio::select! {
            p = limit.acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = self.cancel.cancelled() => return,
        };
        let lag = Instant::now().saturating_duration_since(due);
        self.counters.poll_lag.record(lag.as_micros() as u64);
        self.metrics.poll_lag(lag);
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
        // With several instances on one database, the one holding the
        // window's lease polls it (docs/postgres.md); another leaves it.
        let polling = provider.polling();
        let now = now_ms();
        match self
            .store
            .claim_window(&id, Lease::from_now(&self.instance, lease_ms(polling)))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.counters
                    .windows_leased_elsewhere
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(payment_id = %id, "another instance holds this window's lease; left to it");
                return;
            }
            Err(e) => {
                tracing::warn!(payment_id = %id, error = %e, "window lease not taken; trying again at the next interval");
                let next = now + uniform_ms(polling.poll_interval_min, polling.poll_interval_max);
                self.scheduler().schedule(id, pid, instant_at(next));
                return;
            }
        }
        let span = tracing::info_span!("poll", payment_id = %id, provider = %payment.provider);
        let breaker = self.breakers[&pid].clone();
        let result = if breaker.allow() {
            if !self.pace(pid).await {
                return;
            }
            let ask = self.timed(pid, Call::Inquiry, provider.inquire(&payment));
            let r = tokio::select! {
                r = ask.instrument(span.clone()) => r,
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
        // `instrument`, never `enter` over an `.await` (clippy.toml says why).
        let moved = self
            .record_poll(&id, pid, &*provider, &payment, &window, result)
            .instrument(span)
            .await;
        self.follow_window(id, pid, moved);
    }

    /// Records what one poll found (or that it did not ask: `None`) and
    /// moves the window on. Returns the window as it now stands.
    async fn record_poll(
        &self,
        id: &str,
        pid: ProviderId,
        provider: &dyn Provider,
        payment: &Payment,
        window: &PollWindow,
        result: Option<Result<Report, InquiryError>>,
    ) -> Option<PollWindow> {
        let now = now_ms();
        let change = next_window_change(provider, window, now);
        match result {
            // Circuit open: the window moves on without asking.
            None => self.advance_window(id, change).await,
            Some(Ok(report)) => {
                self.counters.count_poll(pid, PollOutcome::Ok);
                if report.state.is_none() {
                    alert_unmapped(payment, &report.raw_status);
                }
                match self.store.observe(id, report, change, now).await {
                    Ok(o) => {
                        alert_observed(&o);
                        if let Some(c) = &o.change {
                            self.log_change(c);
                        }
                        o.payment.window.filter(|_| !o.payment.state.is_final())
                    }
                    Err(e) => {
                        tracing::error!(alert = "store_error", error = %e, "poll result not recorded");
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
                self.advance_window(id, change).await
            }
        }
    }
}

/// Status inquiries made to confirm one unsigned claim, and the wait
/// before the first retry (doubling after): a provider hiccup does not leave a
/// claim unconfirmed, a provider down for longer raises the alert.
pub(super) const CONFIRM_TRIES: usize = 3;

pub(super) const CONFIRM_BACKOFF: Duration = Duration::from_millis(500);

/// Where a window goes after a poll at `now`: its next tick, or closed
/// when that tick would fall past its end.
pub(super) fn next_window_change(
    provider: &dyn Provider,
    window: &PollWindow,
    now: u64,
) -> WindowChange {
    let polling = provider.polling();
    let next = now + uniform_ms(polling.poll_interval_min, polling.poll_interval_max);
    if next > window.ends_ms {
        WindowChange::Close
    } else {
        WindowChange::Next(next)
    }
}

pub(super) fn alert_unmapped(payment: &Payment, raw: &str) {
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

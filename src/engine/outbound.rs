//! The action worker: sends queued actions, exactly once.
//!
//! Each attempt is preceded by a durable `sending` mark. A clear failure
//! (nothing sent, or a 5xx) is retried with backon's exponential backoff
//! and jitter until the action's deadline. An uncertain one (timeout,
//! dropped connection, or a crash while `sending`) is never resent blindly:
//! the provider's status inquiry settles it, or, where there is none, it is
//! parked as `unknown` for an operator.

use crate::sync::lock;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;

use crate::action::{Action, ActionRequest, ActionState, Confirmation, SendError, Undescribed};
use crate::circuit::Breaker;
use crate::engine::stats::Call;
use crate::engine::{Engine, EngineError};
use crate::model::{now_ms, Payment, ProviderId, Report, Source};
use crate::providers::Provider;
use crate::store::{Enqueued, Lease, StoreError};

/// How often the worker looks at the outbox without being woken.
const OUTBOX_SWEEP: Duration = Duration::from_secs(1);

/// An action's lease (docs/postgres.md) is this many times its provider's
/// request time limit, renewed before every send and every inquiry: a
/// send is a login and a request at most, each within the limit, so the
/// lease outlasts it twice over. An instance that dies holding it leaves
/// the action to another this long at most.
const ACTION_LEASE_TIMEOUTS: u32 = 4;

/// The worker's in-memory state: which actions a task is working on.
#[derive(Default)]
pub struct Outbound {
    wake: Notify,
    busy: Mutex<HashSet<String>>,
}

enum Settled {
    Done,
    NotApplied,
}

impl Engine {
    /// Validates an action against the provider's rules and writes it to
    /// the outbox. Returns it and whether it is new.
    pub async fn request_action(
        &self,
        payment_id: &str,
        request: ActionRequest,
        idempotency_key: Option<String>,
    ) -> Result<(Action, bool), EngineError> {
        let payment = self
            .store()
            .get(payment_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(payment_id.to_string()))?;
        let provider = self
            .provider(payment.provider)
            .ok_or_else(|| EngineError::UnknownProvider(payment.provider.to_string()))?;
        crate::action::check_described(
            payment.provider,
            crate::providers::plugin(payment.provider).actions,
            &request,
        )
        .map_err(|e| match e {
            Undescribed::NotTaken(m) => EngineError::ActionRefused(m),
            Undescribed::Malformed(m) => EngineError::BadRequest(m),
        })?;
        let now = now_ms();
        let action = Action {
            id: String::new(),
            payment_id: payment.id.clone(),
            provider: payment.provider,
            request,
            state: ActionState::Queued,
            idempotency_key,
            created_ms: now,
            updated_ms: now,
            deadline_ms: now + self.action_deadline().as_millis() as u64,
            attempts: 0,
            answer: None,
            error: None,
            details: None,
        };
        // A repeat with the same key gets the first action, whatever it asks.
        if let Some(k) = &action.idempotency_key {
            let existing = self.store().actions_of(&payment.id).await?;
            if let Some(a) = existing
                .into_iter()
                .find(|a| a.idempotency_key.as_ref() == Some(k))
            {
                return Ok((a, false));
            }
        }
        // One rule for a second exclusive action: 409 while another one
        // that has not failed holds the key (queued, in flight, unknown or
        // succeeded), before the request is judged on its own.
        if let Some(k) = provider.exclusive_key(&payment, &action.request) {
            if let Some(holder) = self.store().live_holder(&k).await? {
                return Err(conflict(&holder));
            }
        }
        let check = provider
            .check_action(&payment, &action.request)
            .map_err(EngineError::ActionRefused)?;
        match self
            .store()
            .enqueue_action(action, check.exclusive_key.as_deref())
            .await?
        {
            Enqueued::Created(a) => {
                tracing::info!(action_id = %a.id, payment_id = %a.payment_id, provider = %a.provider, action = a.request.name(), "action queued");
                self.outbound().wake.notify_one();
                Ok((a, true))
            }
            Enqueued::Existing(a) => Ok((a, false)),
            Enqueued::Refused(holder) => Err(conflict(&holder)),
        }
    }

    /// An operator settles an action parked as `unknown`.
    pub async fn resolve_action(
        &self,
        id: &str,
        to: ActionState,
        note: Option<String>,
    ) -> Result<Action, EngineError> {
        let mut a = self
            .store()
            .get_action(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        if a.state != ActionState::Unknown {
            return Err(EngineError::ActionConflict(format!(
                "action {id} is {:?}, not unknown; only unknown actions are resolved by hand",
                a.state
            )));
        }
        if !to.is_final() {
            return Err(EngineError::BadRequest(
                "resolve to succeeded or failed".into(),
            ));
        }
        a.state = to;
        a.updated_ms = now_ms();
        a.error = Some(format!(
            "resolved by an operator{}",
            note.map(|n| format!(": {n}")).unwrap_or_default()
        ));
        self.store().update_action(&a, vec![]).await?;
        tracing::info!(action_id = %a.id, payment_id = %a.payment_id, state = ?a.state, "action resolved by an operator");
        Ok(a)
    }

    /// The worker loop: drives every action in the outbox that no task of
    /// this process is on and no other instance holds. A queued action is
    /// sent; one left `sending` (a crash, here or on another instance
    /// whose lease ran out) is settled by inquiry first. Ends when the
    /// engine is cancelled.
    pub(crate) async fn run_outbound(self: Arc<Self>) {
        let mut first = true;
        loop {
            match self.store().outbox().await {
                Ok(actions) => {
                    for a in actions {
                        match a.state {
                            ActionState::Queued | ActionState::Sending => {
                                self.clone().spawn_action(a.id, a.provider)
                            }
                            ActionState::Unknown if first => alert_unknown(&a),
                            _ => {}
                        }
                    }
                    first = false;
                }
                Err(e) => tracing::error!(alert = "store_error", error = %e, "outbox unreadable"),
            }
            tokio::select! {
                _ = self.cancelled() => return,
                _ = self.outbound().wake.notified() => {}
                _ = tokio::time::sleep(OUTBOX_SWEEP) => {}
            }
        }
    }

    fn spawn_action(self: Arc<Self>, id: String, pid: ProviderId) {
        if !lock(&self.outbound().busy).insert(id.clone()) {
            return;
        }
        let e = self.clone();
        self.tasks().spawn(async move {
            // The outbox was read before this task: the action is read
            // again under its lease, and left alone if it has moved on
            // (another task or instance finished it) or is held elsewhere.
            match e.store().claim_action(&id, e.action_lease(pid)).await {
                // Only what may be sent or settled: not one parked as
                // `unknown` (for an operator) since the outbox was read.
                Ok(Some(a)) if matches!(a.state, ActionState::Queued | ActionState::Sending) => {
                    let span = tracing::info_span!("action", action_id = %id, payment_id = %a.payment_id, provider = %a.provider);
                    let uncertain = a.state == ActionState::Sending;
                    let driven = tracing::Instrument::instrument(e.clone().drive(a, uncertain), span);
                    match crate::guard::catch(driven).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            tracing::warn!(action_id = %id, error = %err, "action not driven to an end; taken up again at the next outbox pass")
                        }
                        Err(why) => e.park_after_panic(&id, &why).await,
                    }
                    // At shutdown or after an error: another instance may
                    // take it over at once rather than when the lease ends.
                    if let Err(err) = e.store().release_action(&id, &e.instance).await {
                        tracing::debug!(action_id = %id, error = %err, "action lease not given up; it runs out on its own");
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(action_id = %id, error = %err, "action lease not taken; trying again at the next outbox pass")
                }
            }
            lock(&e.outbound().busy).remove(&id);
        });
    }

    /// The lease an action's sender takes or renews before each step.
    fn action_lease(&self, pid: ProviderId) -> Lease<'_> {
        let limit = self
            .provider(pid)
            .map_or(Duration::from_secs(30), |p| p.polling().request_timeout);
        let ms = (limit * ACTION_LEASE_TIMEOUTS).as_millis() as u64;
        Lease::from_now(&self.instance, ms.max(1_000))
    }

    /// Renews this instance's lease on `a` and checks that the stored
    /// action is still the one being driven: false when another instance
    /// took it over (this one was stalled past its lease) or it moved on.
    async fn still_ours(&self, a: &Action) -> Result<bool, EngineError> {
        let lease = self.action_lease(a.provider);
        let held = self.store().claim_action(&a.id, lease).await?;
        let ours = held.is_some_and(|s| s.state == a.state && s.attempts == a.attempts);
        if !ours {
            tracing::warn!("action taken over by another instance or finished elsewhere; this instance leaves it");
        }
        Ok(ours)
    }

    /// An action whose worker panicked is parked as `unknown` for an
    /// operator: it may have been sent, so it is never sent again blindly.
    async fn park_after_panic(&self, id: &str, why: &str) {
        let Ok(Some(mut a)) = self.store().get_action(id).await else {
            return;
        };
        tracing::error!(alert = "action_panicked", action_id = %id, payment_id = %a.payment_id, provider = %a.provider, error = %why, "an action's worker panicked; the action is parked as unknown");
        if a.state.is_final() {
            return;
        }
        a.state = ActionState::Unknown;
        a.updated_ms = now_ms();
        a.error = Some(format!(
            "parked after an internal error ({why}); it may have been sent. Check with the provider, then run `payrecon resolve-action {id} --as succeeded|failed`"
        ));
        if self.store().update_action(&a, vec![]).await.is_ok() {}
    }

    /// Takes one action to a final state, `unknown`, or back to the outbox
    /// at shutdown.
    async fn drive(self: Arc<Self>, mut a: Action, mut uncertain: bool) -> Result<(), EngineError> {
        let payment = self
            .store()
            .get(&a.payment_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(a.payment_id.clone()))?;
        let provider = self
            .provider(a.provider)
            .ok_or_else(|| EngineError::UnknownProvider(a.provider.to_string()))?;
        let breaker = self
            .breaker(a.provider)
            .cloned()
            .ok_or_else(|| EngineError::UnknownProvider(a.provider.to_string()))?;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            if uncertain {
                match self
                    .settle_uncertain(&*provider, &breaker, &payment, &mut a)
                    .await?
                {
                    Settled::Done => return Ok(()),
                    Settled::NotApplied => uncertain = false,
                }
            }
            if now_ms() > a.deadline_ms {
                return self
                    .finish(
                        &mut a,
                        ActionState::Failed,
                        "deadline passed; the provider never applied it".into(),
                        None,
                    )
                    .await;
            }
            if !breaker.allow() {
                // Nothing is sent while the provider's circuit is open.
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = self.cancelled() => return Ok(()),
                }
            }
            // Under this instance's lease, on the action as stored.
            if !self.still_ours(&a).await? {
                return Ok(());
            }
            // Durable before the request leaves: a crash from here on
            // leaves the action `sending`, and the next run asks first.
            a.state = ActionState::Sending;
            a.attempts += 1;
            a.updated_ms = now_ms();
            self.store().update_action(&a, vec![]).await?;
            let send = provider.send_action(&payment, &a.request);
            let sent = tokio::select! {
                r = self.timed(a.provider, Call::Action, send) => r,
                // Left `sending`: settled by inquiry after the restart.
                _ = self.cancelled() => return Ok(()),
            };
            match &sent {
                Ok(_) | Err(SendError::Final { .. }) => breaker.success(),
                Err(_) => breaker.failure(),
            }
            match sent {
                Ok((answer, report)) => {
                    a.answer = Some(answer);
                    a.error = None;
                    return self.succeed(&mut a, report).await;
                }
                Err(SendError::Final { message, details }) => {
                    tracing::warn!(error = %message, "action refused by the provider");
                    return self
                        .finish(&mut a, ActionState::Failed, message, details)
                        .await;
                }
                Err(SendError::NotSent(m) | SendError::Retryable(m)) => {
                    tracing::warn!(error = %m, attempt = a.attempts, "action attempt failed; retrying");
                    a.state = ActionState::Queued;
                    a.error = Some(m);
                    a.updated_ms = now_ms();
                    self.store().update_action(&a, vec![]).await?;
                }
                Err(SendError::Ambiguous(m)) => {
                    tracing::warn!(error = %m, "action outcome uncertain; asking the provider before anything else");
                    a.error = Some(m);
                    uncertain = true;
                    continue;
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancelled() => return Ok(()),
            }
        }
    }

    /// Asks the provider whether an uncertain attempt was applied.
    async fn settle_uncertain(
        &self,
        provider: &dyn Provider,
        breaker: &Breaker,
        payment: &Payment,
        a: &mut Action,
    ) -> Result<Settled, EngineError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let Some(ask) = provider.confirm_action(payment, &a.request) else {
                a.state = ActionState::Unknown;
                a.updated_ms = now_ms();
                a.error = Some(format!(
                    "outcome unknown ({}); {} has no status inquiry, so it is not sent again. Check with the provider, then run `payrecon resolve-action {} --as succeeded|failed`",
                    a.error.clone().unwrap_or_default(),
                    a.provider,
                    a.id
                ));
                self.store().update_action(a, vec![]).await?;
                alert_unknown(a);
                return Ok(Settled::Done);
            };
            let answer = if breaker.allow() {
                if !self.pace(a.provider).await {
                    // Stays `sending`: the next run asks again.
                    return Ok(Settled::Done);
                }
                if !self.still_ours(a).await? {
                    return Ok(Settled::Done);
                }
                let r = self.timed(a.provider, Call::Inquiry, ask).await;
                match &r {
                    Err(crate::providers::InquiryError::Transient(_)) => breaker.failure(),
                    _ => breaker.success(),
                }
                Some(r)
            } else {
                drop(ask);
                None
            };
            match answer {
                None => tracing::debug!("circuit open; asking later"),
                Some(Ok((Confirmation::Applied(answer), report))) => {
                    tracing::info!("the provider had applied the action; not sending it again");
                    a.answer = Some(answer);
                    a.error = None;
                    self.succeed(a, report).await?;
                    return Ok(Settled::Done);
                }
                Some(Ok((Confirmation::NotApplied, _))) => {
                    tracing::info!("the provider had not applied the action; it may be sent");
                    return Ok(Settled::NotApplied);
                }
                Some(Err(e)) => {
                    if now_ms() > a.deadline_ms {
                        a.state = ActionState::Unknown;
                        a.updated_ms = now_ms();
                        a.error = Some(format!("outcome unknown: the provider could not be asked before the deadline ({e})"));
                        self.store().update_action(a, vec![]).await?;
                        alert_unknown(a);
                        return Ok(Settled::Done);
                    }
                    tracing::warn!(error = %e, "cannot ask the provider yet; trying again");
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Stays `sending`: the next run asks again.
                _ = self.cancelled() => return Ok(Settled::Done),
            }
        }
    }

    async fn succeed(&self, a: &mut Action, reports: Vec<Report>) -> Result<(), EngineError> {
        a.state = ActionState::Succeeded;
        a.updated_ms = now_ms();
        let reports = reports
            .into_iter()
            .map(|mut r| {
                r.source = Source::Action;
                r
            })
            .collect();
        let changes = self.store().update_action(a, reports).await?;
        tracing::info!(
            action = a.request.name(),
            attempts = a.attempts,
            "action succeeded"
        );
        for c in &changes {
            self.log_change(c);
        }
        Ok(())
    }

    async fn finish(
        &self,
        a: &mut Action,
        state: ActionState,
        error: String,
        details: Option<serde_json::Value>,
    ) -> Result<(), EngineError> {
        a.state = state;
        a.updated_ms = now_ms();
        a.error = Some(error);
        a.details = details;
        self.store().update_action(a, vec![]).await?;
        Ok(())
    }
}

fn conflict(holder: &Action) -> EngineError {
    EngineError::ActionConflict(format!(
        "{} allows one capture or release per invoice; action {} ({}, {}) already holds it",
        holder.provider,
        holder.id,
        holder.request.name(),
        holder.state.as_str()
    ))
}

fn alert_unknown(a: &Action) {
    tracing::warn!(
        alert = "action_outcome_unknown",
        action_id = %a.id,
        payment_id = %a.payment_id,
        provider = %a.provider,
        "action outcome unknown; it will not be resent. Resolve it with `payrecon resolve-action`"
    );
}

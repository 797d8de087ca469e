//! Callback ingest: verify, record durably, then answer; and what a person
//! must hear about a recorded observation.

use super::*;

impl Engine {
    /// Verifies and commits a callback; returns once it is durable.
    pub async fn ingest(
        self: &Arc<Self>,
        pid: ProviderId,
        raw: &RawCallback<'_>,
    ) -> Result<Ingested, EngineError> {
        use stats::CallbackOutcome as Outcome;
        let started = Instant::now();
        let ingested = self.ingest_timed(pid, raw).await;
        let outcome = match &ingested {
            Ok(Ingested::Applied(_)) => Outcome::Applied,
            Ok(Ingested::Duplicate) => Outcome::Duplicate,
            Ok(Ingested::Orphaned) => Outcome::Orphaned,
            Err(EngineError::Callback(_)) => Outcome::Rejected,
            Err(_) => Outcome::Refused,
        };
        self.metrics.callback(pid, outcome, started.elapsed());
        ingested
    }

    async fn ingest_timed(
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
        let ingested = self.store.ingest_callback(record).await;
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
}

/// What a person must hear about a recorded observation, whatever brought
/// it (poll, sweep, callback, confirmation): fields payrecon could not read
/// (the rest of the answer was used), and money other than tracked (once
/// per distinct mismatch, and always when it held a move back). A repeat
/// of the payment's last answer says nothing new.
pub(super) fn alert_observed(o: &crate::store::Observed) {
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

pub(super) fn warn_mismatch(
    p: &Payment,
    m: &crate::money::Mismatch,
    claim: Option<State>,
    held: bool,
) {
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

//! Leases (docs/postgres.md): a window polled by one instance at a time,
//! work done by one instance at a time (a provider's sweep), and the
//! windows nobody holds, taken over after their instance died.

use super::cached;
use super::engine::PgStore;
use super::ops::{from_json, i};
use crate::action::Action;
use crate::model::ProviderId;
use crate::store::{Lease, StoreError};

/// A `windows` row's payment id and provider (its first two columns).
pub(super) fn window_of(r: &tokio_postgres::Row) -> Result<(String, ProviderId), StoreError> {
    let id: String = r.get(0);
    let provider: String = r.get(1);
    let p = provider
        .parse::<ProviderId>()
        .map_err(|_| StoreError::Corrupt {
            key: format!("windows/{id}"),
            reason: format!("unknown provider `{provider}`"),
        })?;
    Ok((id, p))
}

impl PgStore {
    /// Takes or renews a lease on a window: one conditional update, so of
    /// two instances at once one gets it.
    pub(super) async fn lease_window(&self, id: &str, l: Lease<'_>) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE windows SET lease_owner = $2, lease_until_ms = $3 \
                 WHERE payment_id = $1 \
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4)",
                &[&id, &l.owner, &i(l.until_ms), &i(l.now_ms)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Takes or renews the named lease, when free, run out or the owner's.
    pub(super) async fn lease_named(&self, name: &str, l: Lease<'_>) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, until_ms = EXCLUDED.until_ms \
                 WHERE leases.owner = EXCLUDED.owner OR leases.until_ms < $4",
                &[&name, &l.owner, &i(l.until_ms), &i(l.now_ms)],
            )
            .await?;
        Ok(n == 1)
    }

    pub(super) async fn unlease_named(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM leases WHERE name = $1 AND owner = $2",
            &[&name, &owner],
        )
        .await?;
        Ok(())
    }

    /// Claims up to `limit` windows nobody holds; instances asking
    /// together get disjoint sets (SKIP LOCKED).
    pub(super) async fn lease_free_windows(
        &self,
        l: Lease<'_>,
        limit: usize,
    ) -> Result<Vec<(String, ProviderId)>, StoreError> {
        let c = self.client().await?;
        let rows = cached::rows(
            &c,
            "UPDATE windows SET lease_owner = $1, lease_until_ms = $2 \
                 WHERE payment_id IN ( \
                     SELECT payment_id FROM windows \
                     WHERE lease_owner IS NULL OR lease_until_ms < $3 \
                     ORDER BY next_ms LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING payment_id, provider",
            &[&l.owner, &i(l.until_ms), &i(l.now_ms), &i(limit as u64)],
        )
        .await?;
        rows.iter().map(window_of).collect()
    }

    /// Takes or renews a lease on an action not final, and returns the
    /// action as the same statement left it.
    pub(super) async fn lease_action(
        &self,
        id: &str,
        l: Lease<'_>,
    ) -> Result<Option<Action>, StoreError> {
        let c = self.client().await?;
        let row = cached::row_opt(
            &c,
            "UPDATE actions SET lease_owner = $2, lease_until_ms = $3 \
                 WHERE id = $1 AND NOT final \
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4) \
                 RETURNING record::text",
            &[&id, &l.owner, &i(l.until_ms), &i(l.now_ms)],
        )
        .await?;
        row.map(|r| from_json(id, r.get(0))).transpose()
    }

    pub(super) async fn unlease_action(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE actions SET lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner],
        )
        .await?;
        Ok(())
    }

    /// Takes the lease on a queued notice that is its payment's oldest.
    /// Notices of one payment are queued under the payment's row lock, so
    /// their order is their commit order and "oldest" cannot change
    /// under a reader but by a removal.
    pub(super) async fn lease_notice(&self, seq: u64, l: Lease<'_>) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE notices SET lease_owner = $2, lease_until_ms = $3 \
                 WHERE seq = $1 AND NOT dead \
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4) \
                   AND NOT EXISTS (SELECT 1 FROM notices o \
                       WHERE o.payment_id = notices.payment_id AND NOT o.dead AND o.seq < notices.seq)",
                &[&i(seq), &l.owner, &i(l.until_ms), &i(l.now_ms)],
            )
            .await?;
        Ok(n == 1)
    }
}

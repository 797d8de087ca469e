//! Leases (docs/postgres.md): a window polled by one instance at a time,
//! work done by one instance at a time (a provider's sweep), and the
//! windows nobody holds, taken over after their instance died.

use super::engine::PgStore;
use super::ops::i;
use crate::model::ProviderId;
use crate::store::StoreError;

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
    /// Takes or renews `owner`'s lease on a window: one conditional
    /// update, so of two instances at once one gets it.
    pub(super) async fn lease_window(
        &self,
        id: &str,
        owner: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE windows SET lease_owner = $2, lease_until_ms = $3 \
                 WHERE payment_id = $1 \
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4)",
                &[&id, &owner, &i(until_ms), &i(now_ms)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Takes or renews the named lease, when free, run out or `owner`'s.
    pub(super) async fn lease_named(
        &self,
        name: &str,
        owner: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, until_ms = EXCLUDED.until_ms \
                 WHERE leases.owner = EXCLUDED.owner OR leases.until_ms < $4",
                &[&name, &owner, &i(until_ms), &i(now_ms)],
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
        owner: &str,
        now_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, ProviderId)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "UPDATE windows SET lease_owner = $1, lease_until_ms = $2 \
                 WHERE payment_id IN ( \
                     SELECT payment_id FROM windows \
                     WHERE lease_owner IS NULL OR lease_until_ms < $3 \
                     ORDER BY next_ms LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING payment_id, provider",
                &[&owner, &i(until_ms), &i(now_ms), &i(limit as u64)],
            )
            .await?;
        rows.iter().map(window_of).collect()
    }
}

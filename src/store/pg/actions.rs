//! Actions on PostgreSQL: queued under their idempotency and exclusive
//! keys (each taken once, by a unique constraint), and their answers
//! applied to the payment in the same transaction as the action's update.

use deadpool_postgres::Transaction;

use super::cached;
use super::ops::{find, from_json, json, load, move_window_row, put_key, put_payment, record, R};
use crate::action::{Action, ActionState};
use crate::model::Report;
use crate::store::{Change, Enqueued, Policy, StoreError, WindowChange};

async fn load_action(t: &impl deadpool_postgres::GenericClient, id: &str) -> R<Option<Action>> {
    let row = cached::row_opt(t, "SELECT record::text FROM actions WHERE id = $1", &[&id]).await?;
    Ok(row.map(|r| from_json(id, r.get(0))).transpose()?)
}

pub async fn enqueue(
    t: &Transaction<'_>,
    mut action: Action,
    exclusive_key: Option<String>,
    id: String,
) -> R<Enqueued> {
    cached::row(
        t,
        "SELECT 1 FROM payments WHERE id = $1 FOR UPDATE",
        &[&action.payment_id],
    )
    .await
    .map_err(|_| StoreError::NotFound(action.payment_id.clone()))?;
    let idem = action
        .idempotency_key
        .as_ref()
        .map(|k| format!("action|idem|{}|{k}", action.payment_id));
    if let Some(k) = &idem {
        if let Some(existing) = find(t, k).await? {
            let a = load_action(t, &existing).await?;
            return Ok(Enqueued::Existing(a.ok_or(StoreError::NotFound(existing))?));
        }
    }
    if let Some(k) = &exclusive_key {
        if let Some(holder) = find(t, k).await? {
            let a = load_action(t, &holder)
                .await?
                .ok_or(StoreError::NotFound(holder))?;
            if a.state != ActionState::Failed {
                return Ok(Enqueued::Refused(a));
            }
            cached::exec(t, "DELETE FROM lookup_keys WHERE key = $1", &[k]).await?;
        }
    }
    action.id = id;
    for k in exclusive_key.iter().chain(idem.iter()) {
        put_key(t, k, &action.id).await?;
    }
    cached::exec(t,
        "INSERT INTO actions (id, payment_id, state, final, record) VALUES ($1, $2, $3, $4, $5::text::jsonb)",
        &[
            &action.id,
            &action.payment_id,
            &action.state.as_str(),
            &action.state.is_final(),
            &json(&action),
        ],
    )
    .await?;
    Ok(Enqueued::Created(action))
}

pub async fn update_action(
    t: &Transaction<'_>,
    policy: &Policy,
    action: &Action,
    reports: Vec<Report>,
) -> R<Vec<Change>> {
    cached::exec(
        t,
        "UPDATE actions SET state = $2, final = $3, record = $4::text::jsonb WHERE id = $1",
        &[
            &action.id,
            &action.state.as_str(),
            &action.state.is_final(),
            &json(action),
        ],
    )
    .await?;
    let mut changes = vec![];
    if !reports.is_empty() {
        let mut p = load(t, &action.payment_id).await?;
        for r in reports {
            let (_, c) = record(t, policy, &mut p, r, action.updated_ms, false).await?;
            changes.extend(c);
        }
        move_window_row(t, &mut p, WindowChange::Keep).await?;
        put_payment(t, &p).await?;
    }
    Ok(changes)
}

//! `GET /metrics` in the Prometheus text format (version 0.0.4). Counters
//! are since the process started; gauges are read at scrape time.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::engine::{Engine, PollOutcome};

/// Renders every metric. Names are stable; docs/operations.md lists them.
pub async fn render(engine: &Engine) -> String {
    let orphans = engine.store().orphan_count().await.unwrap_or(0) as u64;
    let counts = engine.store().action_counts().await.unwrap_or_default();
    let c = &engine.counters;
    let store = engine.store();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        write_metric(&mut out, name, kind, help, samples)
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    metric(
        "payrecon_callbacks_received_total",
        "counter",
        "Callbacks received, valid or not.",
        &one(load(&c.callbacks_received)),
    );
    metric(
        "payrecon_callbacks_rejected_total",
        "counter",
        "Callbacks refused: forged or malformed; nothing of them stored.",
        &one(load(&c.callbacks_rejected)),
    );
    metric(
        "payrecon_callbacks_deduplicated_total",
        "counter",
        "Callbacks seen before; acknowledged, nothing written.",
        &one(load(&c.callbacks_duplicate)),
    );
    metric(
        "payrecon_callbacks_orphaned_total",
        "counter",
        "Callbacks kept until their payment is tracked.",
        &one(load(&c.callbacks_orphaned)),
    );
    metric(
        "payrecon_orphans",
        "gauge",
        "Orphan callbacks waiting for their payment.",
        &one(orphans),
    );
    metric(
        "payrecon_orphans_refused_total",
        "counter",
        "Callbacks refused (503) because too many orphans wait.",
        &one(load(&c.orphans_refused)),
    );
    metric(
        "payrecon_orphans_expired_total",
        "counter",
        "Orphan callbacks forgotten after callback.orphan_ttl.",
        &one(load(&c.orphans_expired)),
    );
    metric(
        "payrecon_windows_leased_elsewhere_total",
        "counter",
        "Polls left to another instance holding the window's lease (PostgreSQL).",
        &one(load(&c.windows_leased_elsewhere)),
    );
    metric(
        "payrecon_windows_taken_over_total",
        "counter",
        "Windows no instance held, claimed by this one (PostgreSQL).",
        &one(load(&c.windows_taken_over)),
    );

    let ids = engine.provider_ids();
    let mut polls = vec![];
    for pid in &ids {
        for outcome in PollOutcome::ALL {
            polls.push((
                format!("{{provider=\"{pid}\",outcome=\"{}\"}}", outcome.as_str()),
                c.polls_of(*pid, outcome) as f64,
            ));
        }
    }
    metric(
        "payrecon_polls_total",
        "counter",
        "Status polls by provider and outcome (skipped: circuit open).",
        &polls,
    );

    let lag = &c.poll_lag;
    let mut lags: Vec<(String, f64)> = [0.5, 0.9, 0.99]
        .iter()
        .map(|q| {
            (
                format!("{{quantile=\"{q}\"}}"),
                lag.quantile_us(*q) as f64 / 1e6,
            )
        })
        .collect();
    // A summary's count is its own series: `_count` without labels.
    lags.push(("@count".into(), lag.count() as f64));
    metric(
        "payrecon_poll_lag_seconds",
        "summary",
        "How late polls start after they fall due.",
        &lags,
    );

    metric(
        "payrecon_transitions_total",
        "counter",
        "Payment state changes.",
        &one(load(&c.transitions)),
    );
    metric(
        "payrecon_sweeps_total",
        "counter",
        "Reconciliation sweeps run.",
        &one(load(&c.sweeps)),
    );
    metric(
        "payrecon_drift_total",
        "counter",
        "Payments reported as drift by sweeps.",
        &one(load(&c.drift)),
    );
    metric(
        "payrecon_stale_total",
        "counter",
        "Payments that became stale.",
        &one(load(&c.stale)),
    );

    // Every state, zeros included, so alerts on a series never see it vanish.
    let actions: Vec<_> = ["queued", "sending", "succeeded", "failed", "unknown"]
        .iter()
        .map(|state| {
            let n = counts.get(*state).copied().unwrap_or(0);
            (format!("{{state=\"{state}\"}}"), n as f64)
        })
        .collect();
    metric(
        "payrecon_actions",
        "gauge",
        "Outbound actions by state.",
        &actions,
    );

    metric(
        "payrecon_notifications_backlog",
        "gauge",
        "Notifications waiting for delivery.",
        &one(store.notice_backlog() as u64),
    );
    metric(
        "payrecon_notifications_delivered_total",
        "counter",
        "Notifications the platform acknowledged.",
        &one(load(&c.notices_delivered)),
    );
    metric(
        "payrecon_notifications_failed_total",
        "counter",
        "Failed delivery attempts (each is retried).",
        &one(load(&c.notices_failed)),
    );
    metric(
        "payrecon_notifications_dead",
        "gauge",
        "Notifications given up after the retry horizon.",
        &one(store.dead_notices() as u64),
    );

    let mut state = vec![];
    let mut opened = vec![];
    for pid in &ids {
        if let Some(b) = engine.breaker(*pid) {
            let l = format!("{{provider=\"{pid}\"}}");
            state.push((l.clone(), b.state().as_gauge() as f64));
            opened.push((l, load(&b.opened) as f64));
        }
    }
    metric(
        "payrecon_circuit_state",
        "gauge",
        "Circuit breaker: 0 closed, 1 open, 2 half-open.",
        &state,
    );
    metric(
        "payrecon_circuit_opened_total",
        "counter",
        "Times each provider's circuit opened.",
        &opened,
    );

    metric(
        "payrecon_poll_queue",
        "gauge",
        "Poll deadlines waiting in the scheduler.",
        &one(engine.scheduler().stats().queued.load(Ordering::Relaxed)),
    );
    metric(
        "payrecon_payments",
        "gauge",
        "Payments in the store.",
        &one(store.payment_count() as u64),
    );
    metric(
        "payrecon_store_size_bytes",
        "gauge",
        "The sled store's size on disk.",
        &one(store.size_on_disk()),
    );
    out
}

fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        match labels.strip_prefix('@') {
            Some(suffix) => {
                let _ = writeln!(out, "{name}_{suffix} {v}");
            }
            None => {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
    }
}

//! `GET /metrics` in the OpenMetrics text format, encoded by
//! prometheus-client. Histograms and the labelled counters live in the
//! engine's [`Metrics`](crate::engine::stats::Metrics) for the process's life; the rest is read at scrape time
//! (the engine's counters, the store's gauges). Names are stable;
//! docs/operations.md lists them and deploy/prometheus-alerts.yml uses them.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::engine::stats::ByProvider;
use crate::engine::{Engine, PollOutcome};

/// Every alert payrecon raises: the `alert` field of its log events, as
/// docs/operations.md lists them. `payrecon_alerts_total{alert}` counts
/// each, from 0, so a rule sees the first one (tests/alerts.rs checks
/// this list against the source, the docs and the Prometheus rules).
pub const ALERTS: [&str; 32] = [
    "action_outcome_unknown",
    "action_panicked",
    "amount_mismatch",
    "callback_signature_invalid",
    "circuit_open",
    "connection_limit",
    "drift",
    "notification_abandoned",
    "notify_client_failed",
    "notify_endpoint_disabled",
    "notify_panicked",
    "orphan_limit",
    "panic",
    "payment_stale",
    "poll_panicked",
    "provider_answer_invalid",
    "provider_field_unreadable",
    "provider_inquiry_failed",
    "provider_inquiry_rejected",
    "provider_login_failed",
    "provider_status_unknown",
    "reconcile_abandoned",
    "reload_failed",
    "scheduler_stalled",
    "signals_unavailable",
    "start_failed",
    "store_error",
    "store_flush_failed",
    "sweep_failed",
    "sweep_panicked",
    "unconfirmed_callback",
    "unconfirmed_reversal",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByAlert {
    alert: String,
}

/// Alerts raised in this process, by name; fed by the log layer
/// (src/logging.rs) whatever `log.level` lets through.
fn alerts() -> &'static Family<ByAlert, Counter> {
    static ALERTS_RAISED: std::sync::OnceLock<Family<ByAlert, Counter>> =
        std::sync::OnceLock::new();
    ALERTS_RAISED.get_or_init(|| {
        let f = Family::default();
        for a in ALERTS {
            let _ = f.get_or_create(&ByAlert { alert: a.into() });
        }
        f
    })
}

/// Counts one alert raised (a log event with an `alert` field).
pub fn alert_raised(alert: &str) {
    alerts()
        .get_or_create(&ByAlert {
            alert: alert.into(),
        })
        .inc();
}

/// How many times `alert` was raised in this process.
pub fn alert_count(alert: &str) -> u64 {
    alerts()
        .get_or_create(&ByAlert {
            alert: alert.into(),
        })
        .get()
}

/// The content type of [`render`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric. Names are stable; docs/operations.md lists them.
pub async fn render(engine: &Engine) -> String {
    let orphans = engine.store().orphan_count().await.unwrap_or(0) as i64;
    let counts = engine.store().action_counts().await.unwrap_or_default();
    let c = &engine.counters;
    let m = &engine.metrics;
    let store = engine.store();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut r = Registry::default();
    let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    r.register(
        "payrecon_build_info",
        "The running payrecon's version; always 1",
        build,
    );

    let ids = engine.provider_ids();
    // Every provider's counters from the start, at 0: a series that
    // appears only with its first event hides the first increase from
    // rate() and from alerts.
    for pid in &ids {
        let p = ByProvider {
            provider: pid.as_str(),
        };
        for family in [
            &m.callbacks_received,
            &m.callbacks_rejected,
            &m.callbacks_duplicate,
            &m.callbacks_orphaned,
            &m.sweeps,
            &m.drift,
        ] {
            let _ = family.get_or_create(&p);
        }
    }
    r.register(
        "payrecon_alerts",
        "Alerts raised (log events with an alert field), by name; docs/operations.md says what each means",
        alerts().clone(),
    );
    r.register(
        "payrecon_callbacks_received",
        "Callbacks received, valid or not",
        m.callbacks_received.clone(),
    );
    r.register(
        "payrecon_callbacks_rejected",
        "Callbacks refused: forged or malformed; nothing of them stored",
        m.callbacks_rejected.clone(),
    );
    r.register(
        "payrecon_callbacks_deduplicated",
        "Callbacks seen before; acknowledged, nothing written",
        m.callbacks_duplicate.clone(),
    );
    r.register(
        "payrecon_callbacks_orphaned",
        "Callbacks kept until their payment is tracked",
        m.callbacks_orphaned.clone(),
    );
    r.register(
        "payrecon_callback_seconds",
        "From a callback's arrival to its durable commit (or refusal)",
        m.callback.clone(),
    );

    let polls = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    for pid in &ids {
        for outcome in PollOutcome::ALL {
            polls
                .get_or_create(&vec![
                    ("provider", pid.as_str()),
                    ("outcome", outcome.as_str()),
                ])
                .inc_by(c.polls_of(*pid, outcome));
        }
    }
    r.register(
        "payrecon_polls",
        "Status polls by provider and outcome (skipped: circuit open)",
        polls,
    );
    r.register(
        "payrecon_poll_lag_seconds",
        "How late polls start after they fall due",
        m.poll_lag.clone(),
    );
    r.register(
        "payrecon_provider_request_seconds",
        "Provider calls by provider and kind (inquiry, action), answered or not",
        m.provider_request.clone(),
    );
    r.register(
        "payrecon_transitions",
        "Payment state changes by provider and new state",
        m.transitions.clone(),
    );
    r.register(
        "payrecon_sweeps",
        "Reconciliation sweeps started, by provider",
        m.sweeps.clone(),
    );
    r.register(
        "payrecon_sweep_seconds",
        "Reconciliation sweeps that ran to their end: how long they took",
        m.sweep.clone(),
    );
    r.register(
        "payrecon_last_successful_sweep_timestamp_seconds",
        "When each provider's last sweep that ran to its end ended (Unix time)",
        m.last_sweep.clone(),
    );
    r.register(
        "payrecon_drift",
        "Payments reported as drift by sweeps, by provider",
        m.drift.clone(),
    );

    // Every state, zeros included, so alerts on a series never see it vanish.
    let actions = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for state in ["queued", "sending", "succeeded", "failed", "unknown"] {
        let n = counts.get(state).copied().unwrap_or(0);
        actions.get_or_create(&vec![("state", state)]).set(n as i64);
    }
    r.register("payrecon_actions", "Outbound actions by state", actions);

    r.register(
        "payrecon_notification_delivery_seconds",
        "Notification deliveries, answered or not",
        m.delivery.clone(),
    );

    let state = Family::<ByProvider, Gauge>::default();
    let opened = Family::<ByProvider, Counter>::default();
    for pid in &ids {
        if let Some(b) = engine.breaker(*pid) {
            let l = ByProvider {
                provider: pid.as_str(),
            };
            state.get_or_create(&l).set(b.state().as_gauge() as i64);
            opened.get_or_create(&l).inc_by(load(&b.opened));
        }
    }
    r.register(
        "payrecon_circuit_state",
        "Circuit breaker: 0 closed, 1 open, 2 half-open",
        state,
    );
    r.register(
        "payrecon_circuit_opened",
        "Times each provider's circuit opened",
        opened,
    );

    // Read at scrape time. Counter names are given without `_total`: the
    // encoder adds it.
    let counters: [(&str, &str, u64); 7] = [
        (
            "payrecon_orphans_refused",
            "Callbacks refused (503) because too many orphans wait",
            load(&c.orphans_refused),
        ),
        (
            "payrecon_orphans_expired",
            "Orphan callbacks forgotten after callback.orphan_ttl",
            load(&c.orphans_expired),
        ),
        (
            "payrecon_windows_leased_elsewhere",
            "Polls left to another instance holding the window's lease (PostgreSQL)",
            load(&c.windows_leased_elsewhere),
        ),
        (
            "payrecon_windows_taken_over",
            "Windows no instance held, claimed by this one (PostgreSQL)",
            load(&c.windows_taken_over),
        ),
        (
            "payrecon_stale",
            "Payments that became stale",
            load(&c.stale),
        ),
        (
            "payrecon_notifications_delivered",
            "Notifications the platform acknowledged",
            load(&c.notices_delivered),
        ),
        (
            "payrecon_notifications_failed",
            "Failed delivery attempts (each is retried)",
            load(&c.notices_failed),
        ),
    ];
    for (name, help, v) in counters {
        r.register(name, help, ConstCounter::new(v));
    }
    let gauges: [(&str, &str, i64); 6] = [
        (
            "payrecon_orphans",
            "Orphan callbacks waiting for their payment",
            orphans,
        ),
        (
            "payrecon_notifications_backlog",
            "Notifications waiting for delivery",
            store.notice_backlog() as i64,
        ),
        (
            "payrecon_notifications_dead",
            "Notifications given up after the retry horizon",
            store.dead_notices() as i64,
        ),
        (
            "payrecon_poll_queue",
            "Poll deadlines waiting in the scheduler",
            engine.scheduler().stats().queued.load(Ordering::Relaxed) as i64,
        ),
        (
            "payrecon_payments",
            "Payments in the store",
            store.payment_count() as i64,
        ),
        (
            "payrecon_store_size_bytes",
            "The sled store's size on disk",
            store.size_on_disk() as i64,
        ),
    ];
    for (name, help, v) in gauges {
        r.register(name, help, ConstGauge::new(v));
    }
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

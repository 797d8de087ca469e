//! The daemon: opens the store, builds the providers and the engine,
//! serves both listeners, runs the reconciliation schedule, and shuts down
//! in order when its cancellation token fires: stop accepting, let
//! in-flight work finish within the grace period, flush the store last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::listen::admin::Admin;
use crate::model::ProviderId;
use crate::providers::Provider;
use crate::sdnotify::Notifier;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reconciliation schedule: {0}")]
    Cron(String),
}

/// The two bound listeners. Tests bind `127.0.0.1:0` themselves.
pub struct Listeners {
    pub callback: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Bind { what, addr, source })
        };
        Ok(Listeners {
            callback: bind("callback", config.file.callback.listen).await?,
            admin: bind("admin", config.file.admin.listen).await?,
        })
    }
}

/// A running daemon.
pub struct Daemon {
    pub engine: Arc<Engine>,
    pub callback_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    cancel: CancellationToken,
    http_tasks: TaskTracker,
    cron: Option<JobScheduler>,
    store: Store,
    notifier: Notifier,
    grace: Duration,
    /// The running configuration (what a reload compares against).
    config: Config,
    admin: Arc<Admin>,
}

/// Builds the configured providers.
pub fn providers(config: &Config) -> Vec<Arc<dyn Provider>> {
    config
        .providers
        .iter()
        .map(|c| c.provider.clone())
        .collect()
}

/// Starts everything and returns once the store is open, the windows are
/// resumed and both listeners serve.
pub async fn start(
    config: &Config,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<Daemon, DaemonError> {
    let st = &config.file.store;
    let (store, path) = match st.backend {
        crate::config::StoreBackend::Sled => {
            let path = st.path.display().to_string();
            let store = Store::open_with(&st.path, st.cache_mb, st.compression);
            (store, path)
        }
        crate::config::StoreBackend::Postgres => {
            let password = config.store_password.as_ref();
            match st.pg_settings(password.map(|p| p.expose().to_string())) {
                Some(settings) => (Store::open_postgres(&settings).await, settings.url),
                // The config loader refuses this; kept an error, not a panic.
                None => (
                    Err(StoreError::Database("store.url is not set".into())),
                    String::new(),
                ),
            }
        }
    };
    let store = store.map_err(|source| DaemonError::Store {
        path: path.clone(),
        source,
    })?;
    store.set_orphan_limits(
        config.file.callback.orphan_max_per_key,
        config.file.callback.orphan_max_total,
    );
    let engine = Engine::start(
        store.clone(),
        providers(config),
        config.engine_settings(),
        cancel.clone(),
    );
    let resumed = engine.resume().await.map_err(|source| DaemonError::Store {
        path: path.clone(),
        source,
    })?;

    let http_tasks = TaskTracker::new();
    let callback_addr = listeners
        .callback
        .local_addr()
        .map_err(|source| DaemonError::Bind {
            what: "callback",
            addr: config.file.callback.listen,
            source,
        })?;
    let admin_addr = listeners
        .admin
        .local_addr()
        .map_err(|source| DaemonError::Bind {
            what: "admin",
            addr: config.file.admin.listen,
            source,
        })?;
    let cb = &config.file.callback;
    let (e, max_body) = (engine.clone(), cb.max_body_bytes);
    let limits = |max_connections| crate::http::Limits {
        header_read_timeout: cb.header_read_timeout,
        body_read_timeout: cb.body_read_timeout,
        max_connections,
    };
    http_tasks.spawn(crate::http::serve(
        listeners.callback,
        limits(cb.max_connections),
        cancel.clone(),
        http_tasks.clone(),
        move |req| crate::listen::callback::handle(e.clone(), max_body, req),
    ));
    let admin = Arc::new(Admin {
        engine: engine.clone(),
        token: std::sync::RwLock::new(config.admin_token.clone()),
    });
    let admin_handle = admin.clone();
    http_tasks.spawn(crate::http::serve(
        listeners.admin,
        limits(config.file.admin.max_connections),
        cancel.clone(),
        http_tasks.clone(),
        move |req| admin.clone().handle(req),
    ));
    let cron = start_cron(config, &engine).await?;
    let notifier = Notifier::from_env();
    tracing::info!(%callback_addr, %admin_addr, resumed_windows = resumed, store = %path, "payrecon ready");
    notifier.send("READY=1\nSTATUS=serving");
    // Pings start after READY=1, the first one half a period later.
    if let Some(period) = notifier.watchdog() {
        tokio::spawn(watchdog(
            notifier.clone(),
            engine.clone(),
            period,
            cancel.clone(),
        ));
    }
    Ok(Daemon {
        engine,
        callback_addr,
        admin_addr,
        cancel,
        http_tasks,
        cron,
        store,
        notifier,
        grace: config.file.service.shutdown_grace,
        config: config.clone(),
        admin: admin_handle,
    })
}

/// Pings systemd's watchdog at half of `WatchdogSec`, but only after the
/// scheduler loop has answered a ping of its own: a stuck or dead loop
/// stops the pings and systemd restarts the service.
async fn watchdog(
    notifier: Notifier,
    engine: Arc<Engine>,
    period: Duration,
    cancel: CancellationToken,
) {
    let half = period / 2;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match tokio::time::timeout(half, engine.scheduler().ping()).await {
            Ok(true) => notifier.send("WATCHDOG=1"),
            _ => tracing::error!(
                alert = "scheduler_stalled",
                "the poll scheduler did not answer; withholding the systemd watchdog ping"
            ),
        }
    }
}

/// One cron job per provider that has a reconcile schedule. A run that is
/// still going when the next one is due makes the next one skip.
async fn start_cron(
    config: &Config,
    engine: &Arc<Engine>,
) -> Result<Option<JobScheduler>, DaemonError> {
    let mut jobs: Vec<(ProviderId, String)> = config
        .engine_settings()
        .reconcile
        .into_iter()
        .filter_map(|(pid, r)| Some((pid, r.schedule?)))
        .collect();
    jobs.sort_by_key(|(p, _)| p.code());
    if jobs.is_empty() {
        return Ok(None);
    }
    let cron_err = |e: tokio_cron_scheduler::JobSchedulerError| DaemonError::Cron(e.to_string());
    let sched = JobScheduler::new().await.map_err(cron_err)?;
    for (pid, expr) in jobs {
        let engine = Arc::downgrade(engine);
        let job = Job::new_async(expr.as_str(), move |_id, _l| {
            let engine = engine.clone();
            Box::pin(async move {
                if let Some(engine) = engine.upgrade() {
                    // The sweep itself refuses to overlap a running one.
                    match engine.reconcile(pid).await {
                        Ok(_) => {}
                        Err(EngineError::Busy(m)) => tracing::warn!(provider = %pid, "{m}; this run is skipped"),
                        Err(e) => tracing::error!(alert = "sweep_failed", provider = %pid, error = %e, "reconciliation sweep failed"),
                    }
                }
            })
        })
        .map_err(|e| DaemonError::Cron(format!("{pid}: `{expr}`: {e}")))?;
        sched.add(job).await.map_err(cron_err)?;
    }
    sched.start().await.map_err(cron_err)?;
    Ok(Some(sched))
}

impl Daemon {
    /// SIGHUP: applies a new, already validated config. Schedules,
    /// intervals, sweep settings, notifications, the log level and
    /// credentials change in place. Anything that needs a restart is
    /// refused as a whole, naming the key, and the running config stays.
    pub async fn reload(&mut self, new: Config) -> Result<(), String> {
        let old = &self.config;
        let (o, n) = (&old.file, &new.file);
        let restart_only = [
            ("callback.listen", o.callback.listen != n.callback.listen),
            ("admin.listen", o.admin.listen != n.admin.listen),
            ("store.backend", o.store.backend != n.store.backend),
            ("store.url", o.store.url != n.store.url),
            ("store.pool_size", o.store.pool_size != n.store.pool_size),
            ("store.path", o.store.path != n.store.path),
            ("store.cache_mb", o.store.cache_mb != n.store.cache_mb),
            (
                "store.compression",
                o.store.compression != n.store.compression,
            ),
            ("log.format", o.log.format != n.log.format),
            (
                "circuit",
                o.circuit.failures != n.circuit.failures
                    || o.circuit.cool_down != n.circuit.cool_down,
            ),
        ];
        let mut refused: Vec<&str> = restart_only
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| *key)
            .collect();
        let ids = |c: &Config| {
            let mut v: Vec<_> = providers(c).iter().map(|p| p.id()).collect();
            v.sort_by_key(|p| p.code());
            v
        };
        if ids(old) != ids(&new) {
            refused.push("providers (adding or removing one)");
        }
        let in_flight = |c: &Config| {
            providers(c)
                .iter()
                .map(|p| (p.id(), p.polling().max_in_flight))
                .collect::<Vec<_>>()
        };
        if in_flight(old) != in_flight(&new) {
            refused.push("providers.*.polling.max_in_flight");
        }
        if !refused.is_empty() {
            return Err(format!(
                "these settings need a restart: {}; nothing was changed",
                refused.join(", ")
            ));
        }
        self.notifier.send("RELOADING=1");
        if let Err(e) = crate::logging::set_level(&new.file.log.level) {
            tracing::warn!(error = %e, "log level not changed");
        }
        let settings = new.engine_settings();
        self.engine.replace(
            providers(&new),
            settings.reconcile,
            settings.notify,
            settings.action_deadline,
        );
        for pid in self.engine.provider_ids() {
            match self.engine.pull_in_polls(pid).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(provider = %pid, windows = n, "polls moved in to the new interval")
                }
                Err(e) => {
                    tracing::error!(alert = "store_error", provider = %pid, error = %e, "polls not rescheduled")
                }
            }
        }
        self.engine.reenable_notifications().await;
        *crate::sync::write(&self.admin.token) = new.admin_token.clone();
        if let Some(mut c) = self.cron.take() {
            let _ = c.shutdown().await;
        }
        self.cron = match start_cron(&new, &self.engine).await {
            Ok(c) => c,
            Err(e) => {
                // Validated already; a failure here leaves no schedule.
                tracing::error!(alert = "reload_failed", error = %e, "reconciliation schedule not restarted");
                None
            }
        };
        self.grace = new.file.service.shutdown_grace;
        self.config = new;
        self.notifier.send("READY=1\nSTATUS=serving");
        Ok(())
    }

    /// Waits for the cancellation token, then shuts down in order.
    pub async fn wait(mut self) {
        self.cancel.cancelled().await;
        self.notifier.send("STOPPING=1\nSTATUS=shutting down");
        tracing::info!("shutting down");
        if let Some(mut c) = self.cron.take() {
            let _ = c.shutdown().await;
        }
        self.http_tasks.close();
        self.engine.tasks().close();
        let drained = tokio::time::timeout(self.grace, async {
            self.http_tasks.wait().await;
            self.engine.tasks().wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; unfinished polls resume after restart");
        }
        match self.store.close().await {
            Ok(()) => tracing::info!("store flushed; bye"),
            Err(e) => {
                tracing::error!(alert = "store_flush_failed", error = %e, "final store flush failed")
            }
        }
    }
}

/// Starts the daemon and runs it until `cancel` fires.
pub async fn run(
    config: &Config,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    start(config, listeners, cancel).await?.wait().await;
    Ok(())
}

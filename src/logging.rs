//! Log output: JSON lines or journald-friendly text, chosen in the config.
//! Field names are stable: `payment_id`, `provider`, `from`, `to`,
//! `source`, `latency_ms`, and `alert` on every event that needs a person.
//! The level filter can be changed at run time (SIGHUP reload).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Swaps the installed subscriber's filter; set by [`init`].
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Installs the global subscriber. A second call is a no-op (tests).
pub fn init(format: LogFormat, level: &str) {
    let initial = filter(level).unwrap_or_else(|_| filter("info").expect("info is a filter"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(initial)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => {
            let b = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = SET_LEVEL.set(Box::new(move |l| {
                    handle.reload(filter(l)?).map_err(|e| e.to_string())
                }));
            }
        }
        LogFormat::Text => {
            let b = builder.with_ansi(false).with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = SET_LEVEL.set(Box::new(move |l| {
                    handle.reload(filter(l)?).map_err(|e| e.to_string())
                }));
            }
        }
    }
}

/// Libraries whose INFO events are their own bookkeeping, not payrecon's
/// (tokio-cron-scheduler logs each job it adds and runs): WARN and above
/// unless `log.level` names them.
const QUIET: [&str; 1] = ["tokio_cron_scheduler"];

/// `log.level` as a filter, with the libraries in [`QUIET`] held to WARN.
fn filter(level: &str) -> Result<EnvFilter, String> {
    let mut f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    for target in QUIET.iter().filter(|t| !level.contains(*t)) {
        let d = format!("{target}=warn")
            .parse()
            .map_err(|e| format!("{e}"))?;
        f = f.add_directive(d);
    }
    Ok(f)
}

/// The levels a filter directive may end in.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a level filter without installing it. Stricter than
/// `EnvFilter`: a directive that is not a level (`warning`, `payrecon`)
/// would be taken as a target name, enabling that target alone and
/// silencing everything else, alerts included; here it is an error. Every
/// directive is a level or `target=level`.
pub fn check_level(level: &str) -> Result<(), String> {
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(lvl.trim())) {
            return Err(format!(
                "`{lvl}` is not a level: use one of {}, or `target=level` directives",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("`{level}` is not a log filter: {e}"))
}

/// Changes the level filter of the subscriber [`init`] installed.
pub fn set_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Err("no subscriber of ours is installed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_level, filter};
    use std::sync::{Arc, Mutex};

    /// The messages a subscriber with `level`'s filter lets through.
    fn passed(level: &str) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(level).unwrap())
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "tokio_cron_scheduler::job_scheduler", "cron chatter");
            tracing::warn!(target: "tokio_cron_scheduler::job_scheduler", "cron trouble");
            tracing::info!(target: "payrecon::engine", "payrecon event");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_cron_scheduler_s_own_info_is_held_back_unless_asked_for() {
        let info = passed("info");
        assert!(info.contains("payrecon event") && info.contains("cron trouble"));
        assert!(!info.contains("cron chatter"), "{info}");
        let asked = passed("info,tokio_cron_scheduler=info");
        assert!(asked.contains("cron chatter"), "{asked}");
    }

    #[test]
    fn a_filter_that_would_silence_everything_is_refused() {
        for ok in [
            "info",
            "WARN",
            "info,payrecon=debug",
            "payrecon::engine=trace,hyper=off",
            "error",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
        for bad in [
            "warning",
            "payrecon",
            "info,verbose",
            "payrecon=loud",
            "info,=x",
        ] {
            let e = check_level(bad).unwrap_err();
            assert!(e.contains("is not a level"), "{bad}: {e}");
        }
    }
}

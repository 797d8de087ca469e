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
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
                    let f = EnvFilter::try_new(l).map_err(|e| e.to_string())?;
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
        LogFormat::Text => {
            let b = builder.with_ansi(false).with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = SET_LEVEL.set(Box::new(move |l| {
                    let f = EnvFilter::try_new(l).map_err(|e| e.to_string())?;
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
    }
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
    use super::check_level;

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

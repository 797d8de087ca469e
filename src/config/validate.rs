//! Checks of values the file's types cannot express: cron expressions,
//! URLs, polling bounds, sweep settings.

use super::*;

pub(super) fn validate_reconcile(
    r: &ReconcileConfig,
    section: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(cron) = &r.schedule {
        if let Err(e) = cron_ok(cron) {
            return Err(err(&format!("{section}.schedule"), e));
        }
    }
    if r.concurrency == 0 {
        return Err(err(
            &format!("{section}.concurrency"),
            "must be at least 1".into(),
        ));
    }
    if !(r.rate_per_sec > 0.0 && r.rate_per_sec.is_finite()) {
        return Err(err(
            &format!("{section}.rate_per_sec"),
            "must be more than zero".into(),
        ));
    }
    if !(r.stale_after <= r.late_after && r.late_after <= r.end_age) {
        return Err(err(
            &format!("{section}.late_after"),
            "ages must grow: stale_after <= late_after <= end_age".into(),
        ));
    }
    Ok(())
}

/// A provider's `base_url` must be an http(s) URL.
pub(super) fn check_url(
    url: &str,
    section: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(err(
            &format!("{section}.base_url"),
            format!("`{url}` is not an http(s) URL"),
        ))
    }
}

pub(super) fn validate_polling(
    p: &PollingConfig,
    section: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if p.poll_interval_min.is_zero() {
        return Err(err(
            &format!("{section}.poll_interval_min"),
            "must be more than zero".into(),
        ));
    }
    if p.poll_interval_max < p.poll_interval_min {
        return Err(err(
            &format!("{section}.poll_interval_max"),
            "must not be less than poll_interval_min".into(),
        ));
    }
    if p.poll_window_max < p.poll_window_min {
        return Err(err(
            &format!("{section}.poll_window_max"),
            "must not be less than poll_window_min".into(),
        ));
    }
    if p.max_in_flight == 0 {
        return Err(err(
            &format!("{section}.max_in_flight"),
            "must be at least 1".into(),
        ));
    }
    if let Some(r) = p.rate_per_sec {
        if !(r > 0.0 && r.is_finite()) {
            return Err(err(
                &format!("{section}.rate_per_sec"),
                "must be more than zero".into(),
            ));
        }
    }
    Ok(())
}

/// Checks a cron expression the way tokio-cron-scheduler will read it:
/// six or seven fields, seconds first.
pub(super) fn cron_ok(expr: &str) -> Result<(), String> {
    let n = expr.split_whitespace().count();
    if !(6..=7).contains(&n) {
        return Err(format!(
            "`{expr}` has {n} fields; use sec min hour day month weekday [year]"
        ));
    }
    Ok(())
}

//! Checks of values the file's types cannot express (cron expressions,
//! URLs, polling bounds, sweep settings) and where an error is: the
//! file's line and dotted key. `config` and the providers' config
//! sections both use them.

use std::fmt;

use super::{PollingConfig, ReconcileConfig};

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted key, e.g. `providers.connpay.poll_interval_min`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

pub fn validate_reconcile(
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
pub fn check_url(
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

pub fn validate_polling(
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
pub fn cron_ok(expr: &str) -> Result<(), String> {
    let n = expr.split_whitespace().count();
    if !(6..=7).contains(&n) {
        return Err(format!(
            "`{expr}` has {n} fields; use sec min hour day month weekday [year]"
        ));
    }
    Ok(())
}

/// The 1-based line of byte `offset`, and the dotted key written on it.
pub fn locate_offset(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = section_header(t) {
            section = name;
            if i + 1 == line_no {
                key = Some(section.clone());
            }
        } else if i + 1 == line_no {
            if let Some((k, _)) = t.split_once('=') {
                let k = k.trim().trim_matches('"');
                key = Some(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
        if i + 1 >= line_no {
            break;
        }
    }
    (line_no, key)
}

/// The line on which `leaf` is set inside `[section]`.
pub fn locate_key(text: &str, section: &str, leaf: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = section_header(t) {
            current = name;
        } else if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == leaf {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

pub fn section_header(t: &str) -> Option<String> {
    let inner = t.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim_matches('[').trim().to_string())
}

//! The configuration file: its typed shape, defaults, validation, and
//! errors that name the file, the line and the key at fault.
//!
//! Secrets are never in the file. The file names environment variables
//! (`*_env` keys) and the loader reads them from an environment map that
//! the caller passes in, so tests never touch the real environment.

mod file;
mod locate;

use crate::providers::Configured;
pub use crate::settings::check::ConfigError;
use crate::settings::check::{locate_key, section_header};
use crate::settings::section::Section;
pub use file::*;
use locate::parse_file;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{d10s, d1h, d30d, duration};
pub use crate::settings::{
    parse_duration, CircuitConfig, LogFormat, PollingConfig, ReconcileConfig, Secret,
    TrustSpelling, MAX_DURATION,
};

/// The validated configuration with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: FileConfig,
    pub admin_token: Option<Secret>,
    /// PostgreSQL's password (`store.password_env`), when it has one.
    pub store_password: Option<Secret>,
    pub notify: Option<crate::engine::notify::NotifySettings>,
    /// The providers that have a section, built, in registry order.
    pub providers: Vec<Configured>,
}

/// Whether secrets are looked up (`--no-secrets` skips them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Look,
    Skip,
}

/// What stands in for a secret not looked up: a well-formed one of every
/// kind the config checks (a `whsec_` signing secret of 32 bytes).
const STAND_IN: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A config file's name (for errors) and text.
fn read(path: &Path) -> Result<(String, String), ConfigError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(ConfigError {
            file: name,
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        }),
    }
}

impl Config {
    /// Reads and validates `path`, taking secrets from `env`.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let (name, text) = read(path)?;
        Config::parse(&name, &text, env)
    }

    /// Parses and validates a config text; `name` is used in errors.
    pub fn parse(
        name: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = parse_file(name, text)?;
        Config::resolve(name, text, file, env, Secrets::Look)
    }

    /// Reads and validates `path` with every secret it names left out (a
    /// stand-in in its place): `check-config --no-secrets`, for a file
    /// checked where the secrets are not (a build machine).
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        let (name, text) = read(path)?;
        let file = parse_file(&name, &text)?;
        Config::resolve(&name, &text, file, &HashMap::new(), Secrets::Skip)
    }

    /// Reads `path` for its settings alone, without the secrets (offline
    /// commands that only need the store path).
    pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let (name, text) = read(path)?;
        parse_file(&name, &text)
    }

    fn resolve(
        name: &str,
        text: &str,
        file: FileConfig,
        env: &HashMap<String, String>,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            ConfigError {
                file: name.to_string(),
                line: locate_key(text, section, leaf),
                key: Some(key.to_string()),
                message,
            }
        };
        // A secret is a systemd credential named like the variable
        // (`$CREDENTIALS_DIRECTORY/NAME`, from LoadCredential=) or, failing
        // that, the environment variable itself.
        let secret = |key: &str, var: &str| -> Result<Secret, ConfigError> {
            if secrets == Secrets::Skip {
                return Ok(Secret::new(STAND_IN));
            }
            if let Some(dir) = env.get("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
                let path = Path::new(dir).join(var);
                match std::fs::read_to_string(&path) {
                    Ok(v) if !v.trim_end_matches(['\r', '\n']).is_empty() => {
                        return Ok(Secret::new(v.trim_end_matches(['\r', '\n'])));
                    }
                    Ok(_) => {
                        return Err(err(
                            key,
                            format!("credential `{}` is empty", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(err(
                            key,
                            format!("cannot read credential `{}`: {e}", path.display()),
                        ))
                    }
                }
            }
            match env.get(var) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v.clone())),
                _ => Err(err(
                    key,
                    format!(
                        "environment variable `{var}` is not set or empty (and no systemd credential `{var}`)"
                    ),
                )),
            }
        };
        crate::logging::check_level(&file.log.level).map_err(|e| err("log.level", e))?;
        // Before the providers below are built: their clients trust these.
        if let Some(path) = &file.tls.extra_ca_file {
            let roots =
                crate::providers::tls::read_roots(path).map_err(|e| err("tls.extra_ca_file", e))?;
            crate::providers::tls::trust_also(roots);
        } else {
            crate::providers::tls::trust_also(vec![]);
        }
        let admin_token = match &file.admin.token_env {
            Some(var) => Some(secret("admin.token_env", var)?),
            None => None,
        };
        let st = &file.store;
        let store_password = match st.backend {
            file::StoreBackend::Sled => {
                if st.path.as_os_str().is_empty() {
                    return Err(err("store.path", "the sled store needs a folder".into()));
                }
                None
            }
            file::StoreBackend::Postgres => {
                let Some(check) = st.pg_settings(None) else {
                    return Err(err(
                        "store.url",
                        "backend = \"postgres\" needs the database's URL".into(),
                    ));
                };
                if st.pool_size == 0 {
                    return Err(err("store.pool_size", "must be at least 1".into()));
                }
                let password = match &st.password_env {
                    Some(var) => Some(secret("store.password_env", var)?),
                    None => None,
                };
                crate::store::pg::pool(&check).map_err(|e| err("store.url", e.to_string()))?;
                password
            }
        };
        // Every registered provider has a ProviderId (a test holds the
        // registry to ProviderId::ALL), so a name that parses is known.
        let unknown = file.providers.0.keys().find_map(|n| {
            let e = n.parse::<crate::model::ProviderId>().err()?;
            Some((n, e))
        });
        if let Some((unknown, message)) = unknown {
            let header = format!("providers.{unknown}");
            let line = text.lines().position(|l| {
                section_header(l.trim()).is_some_and(|h| {
                    h == header || h.strip_prefix(&header).is_some_and(|r| r.starts_with('.'))
                })
            });
            return Err(ConfigError {
                file: name.to_string(),
                line: line.map(|l| l + 1),
                key: Some(header),
                message,
            });
        }
        let mut providers = vec![];
        for plugin in crate::providers::REGISTRY {
            let section = Section::new(name, text, plugin.id.as_str(), &secret);
            if let Some(c) = (plugin.configure)(&section)? {
                providers.push(c);
            }
        }
        let notify = match &file.notify {
            Some(n) => {
                let p = "notify";
                if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                    return Err(err(
                        "notify.url",
                        format!("`{}` is not an http(s) URL", n.url),
                    ));
                }
                let current = secret(&format!("{p}.secret_env"), &n.secret_env)?;
                crate::engine::notify::secret_key(current.expose())
                    .map_err(|e| err("notify.secret_env", format!("the secret {e}")))?;
                let previous = match (&n.previous_secret_env, &n.previous_secret_until) {
                    (None, None) => None,
                    (Some(var), Some(until)) => {
                        let s = secret("notify.previous_secret_env", var)?;
                        crate::engine::notify::secret_key(s.expose()).map_err(|e| {
                            err("notify.previous_secret_env", format!("the secret {e}"))
                        })?;
                        let until = chrono::DateTime::parse_from_rfc3339(until).map_err(|e| {
                            err(
                                "notify.previous_secret_until",
                                format!("`{until}` is not an RFC 3339 time like 2026-12-01T00:00:00Z: {e}"),
                            )
                        })?;
                        Some((s, until.timestamp_millis().max(0) as u64))
                    }
                    _ => {
                        return Err(err(
                            "notify.previous_secret_until",
                            "previous_secret_env and previous_secret_until go together".into(),
                        ))
                    }
                };
                if n.max_in_flight == 0 {
                    return Err(err("notify.max_in_flight", "must be at least 1".into()));
                }
                if n.min_delay.is_zero() || n.max_delay < n.min_delay {
                    return Err(err(
                        "notify.max_delay",
                        "need 0 < min_delay <= max_delay".into(),
                    ));
                }
                Some(crate::engine::notify::NotifySettings {
                    url: n.url.clone(),
                    secret: current,
                    previous,
                    horizon: n.horizon,
                    min_delay: n.min_delay,
                    max_delay: n.max_delay,
                    request_timeout: n.request_timeout,
                    max_in_flight: n.max_in_flight,
                })
            }
            None => None,
        };
        Ok(Config {
            file,
            admin_token,
            store_password,
            notify,
            providers,
        })
    }
}

impl Config {
    /// The engine's settings from this config.
    pub fn engine_settings(&self) -> crate::engine::Settings {
        let reconcile = self
            .providers
            .iter()
            .filter_map(|c| Some((c.provider.id(), c.reconcile.clone()?)))
            .collect();
        crate::engine::Settings {
            action_deadline: self.file.actions.deadline,
            circuit: self.file.circuit.clone(),
            reconcile,
            notify: self.notify.clone(),
            orphan_ttl: Some(self.file.callback.orphan_ttl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([("CP_KEY".to_string(), "k3y".to_string())])
    }

    const GOOD: &str = r#"
[store]
path = "/tmp/x"

[providers.connpay]
base_url = "http://127.0.0.1:9000"
control_key_env = "CP_KEY"

[providers.connpay.polling]
poll_interval_min = "3s"
"#;

    #[test]
    fn a_good_file_loads_with_defaults_and_secrets_from_env() {
        let c = Config::parse("c.toml", GOOD, &env()).unwrap();
        let [cp] = &c.providers[..] else {
            panic!("one provider: {:?}", c.providers)
        };
        assert_eq!(cp.provider.id(), crate::model::ProviderId::Connpay);
        assert_eq!(cp.base_url, "http://127.0.0.1:9000");
        let polling = cp.provider.polling();
        assert_eq!(polling.poll_interval_max, Duration::from_secs(5));
        assert_eq!(polling.poll_window_max, Duration::from_secs(180));
        assert!(cp.reconcile.is_some());
        assert!(c.file.admin.listen.ip().is_loopback());
        assert_eq!(c.admin_token, None);
    }

    #[test]
    fn an_unknown_key_names_the_key_and_line() {
        let bad = GOOD.replace("poll_interval_min", "pol_interval_min");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(e.line, Some(10));
        assert_eq!(
            e.key.as_deref(),
            Some("providers.connpay.polling.pol_interval_min")
        );
        assert!(e
            .to_string()
            .starts_with("c.toml:10: key `providers.connpay.polling.pol_interval_min`"));
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_log_level_that_would_silence_every_alert_names_the_key_and_line() {
        let bad = format!("{GOOD}\n[log]\nlevel = \"warning\"\n");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("log.level"), "{e}");
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("`warning` is not a level"), "{e}");
    }

    #[test]
    fn the_postgres_engine_needs_a_url_without_a_password() {
        let pg = |lines: &str| GOOD.replace("path = \"/tmp/x\"", lines);
        let e = Config::parse("c.toml", &pg("backend = \"postgres\""), &env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.url"), "{e}");
        let e = Config::parse(
            "c.toml",
            &pg("backend = \"postgres\"\nurl = \"postgres://u:hunter2@db/p\""),
            &env(),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Config::parse(
            "c.toml",
            &pg("backend = \"postgres\"\nurl = \"postgres://u@db/p\"\npassword_env = \"NO_SUCH_VAR\""),
            &env(),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.password_env"), "{e}");
        let c = Config::parse(
            "c.toml",
            &pg("backend = \"postgres\"\nurl = \"postgres://u@db/p\""),
            &env(),
        )
        .unwrap();
        assert_eq!(c.file.store.backend, StoreBackend::Postgres);
        // sled needs its folder.
        let e = Config::parse("c.toml", &pg("cache_mb = 8"), &env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.path"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let bad = GOOD.replace("\"3s\"", "\"three\"");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("providers.connpay.polling.poll_interval_min")
        );
        assert_eq!(e.line, Some(10));
        let bad = GOOD.replace("path = \"/tmp/x\"", "path = 7");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.path"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_key_and_line() {
        let bad = GOOD.replace("\"3s\"", "\"9s\"");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("providers.connpay.polling.poll_interval_max")
        );
        let e = Config::parse("c.toml", GOOD, &HashMap::new()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("providers.connpay.control_key_env"));
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("CP_KEY"));
    }

    #[test]
    fn secrets_come_from_systemd_credentials_before_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CP_KEY"), "from-credential\n").unwrap();
        let mut e = env();
        e.insert(
            "CREDENTIALS_DIRECTORY".into(),
            dir.path().display().to_string(),
        );
        // The admin token reads the same variable, so the test can see
        // which one it got; the provider's key is looked up the same way.
        let text = format!("[admin]\ntoken_env = \"CP_KEY\"\n{GOOD}");
        let c = Config::parse("c.toml", &text, &e).unwrap();
        let token = c.admin_token.unwrap();
        assert_eq!(token.expose(), "from-credential");
        assert_eq!(format!("{token:?}"), "[redacted]");
        // No credential file of that name: the environment variable.
        std::fs::remove_file(dir.path().join("CP_KEY")).unwrap();
        let c = Config::parse("c.toml", &text, &e).unwrap();
        assert_eq!(c.admin_token.unwrap().expose(), "k3y");
        // An empty credential is an error naming the key.
        std::fs::write(dir.path().join("CP_KEY"), "\n").unwrap();
        let err = Config::parse("c.toml", GOOD, &e).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("providers.connpay.control_key_env")
        );
    }

    #[test]
    fn a_section_no_provider_registered_is_refused_at_its_line() {
        let bad = GOOD.replace("[providers.connpay.polling]", "[providers.connpai]");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.message.contains("unknown provider `connpai`"), "{e}");
        assert!(e.message.contains("connpay, myfatoorah"), "{e}");
        assert_eq!(e.file, "c.toml");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("5x").is_err());
        // Once wrapped around to 44 s and passed check-config.
        let err = parse_duration("307445734561825861m").unwrap_err();
        assert!(err.contains("307445734561825861m"), "{err}");
        assert!(parse_duration("11000d")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_duration("18446744073709551615s").is_err());
    }
}

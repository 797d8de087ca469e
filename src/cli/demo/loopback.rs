//! The daemon's config for a run on loopback: the demo's, the benchmarks'
//! and the tests', rendered as the TOML a user would write.

/// A config for a daemon on loopback against a sandbox: the demo, the
/// tests and the benchmarks all start the daemon through the same loader
/// and checks as production.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    pub interval: (String, String),
    pub window: (String, String),
    pub max_in_flight: usize,
    pub request_timeout: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Extra lines for the `[admin]` table.
    pub admin_extra: String,
    /// Extra lines for the `[callback]` table.
    pub callback_extra: String,
    /// Extra tables appended at the end (`[circuit]`, ...).
    pub tail: String,
    /// Environment variable that holds the control key.
    pub key_env: String,
}

impl Default for LoopbackConfig {
    /// The demo's settings: a tenth of ConnPay's timescale.
    fn default() -> Self {
        LoopbackConfig {
            interval: ("300ms".into(), "500ms".into()),
            window: ("4s".into(), "5s".into()),
            max_in_flight: 16,
            request_timeout: "2s".into(),
            log_format: "text".into(),
            admin_extra: String::new(),
            callback_extra: String::new(),
            tail: String::new(),
            key_env: "PAYRECON_DEMO_CONTROL_KEY".into(),
        }
    }
}

impl LoopbackConfig {
    /// The whole config, against a ConnPay sandbox at `base_url`.
    pub fn render(&self, store: &std::path::Path, base_url: &str) -> String {
        let connpay = crate::providers::connpay::demo::section(
            base_url,
            &self.key_env,
            (&self.interval.0, &self.interval.1),
            (&self.window.0, &self.window.1),
            self.max_in_flight,
            &self.request_timeout,
        );
        format!("{}{connpay}\n{}\n", self.render_base(store), self.tail)
    }

    /// Everything but the providers and the tail: the store, the two
    /// listeners on loopback, the log.
    pub fn render_base(&self, store: &std::path::Path) -> String {
        format!(
            r#"
[store]
path = "{store}"

[callback]
listen = "127.0.0.1:0"
max_body_bytes = 4096
# Long enough that a client starved of CPU between connecting and
# writing its request is not cut off (the admin listener shares it).
header_read_timeout = "2s"
{callback_extra}

[admin]
listen = "127.0.0.1:0"
{admin_extra}

[log]
format = "{log_format}"
"#,
            store = store.display(),
            admin_extra = self.admin_extra,
            callback_extra = self.callback_extra,
            log_format = self.log_format,
        )
    }
}

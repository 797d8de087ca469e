//! The provider trait: how payrecon asks a provider for a payment's status,
//! how it reads and verifies that provider's callbacks, and how its
//! statuses map to normalized states. One folder per provider: its client,
//! callback verification and status mapping, and its sandbox (`sim`).

pub mod plugin;
pub mod sandbox;
pub mod scenes;

pub use plugin::{Configured, Plugin};

/// Declares each provider's folder and lists its [`Plugin`] in
/// [`REGISTRY`], from the crate's list of providers (`with_providers!` in
/// lib.rs).
macro_rules! plugins {
    ($($variant:ident $name:ident = $code:literal,)*) => {
        $(pub mod $name;)*
        /// Every provider this build has, in [`ProviderId::ALL`]'s order.
        pub static REGISTRY: &[&Plugin] = &[$(&$name::config::PLUGIN,)*];
    };
}

with_providers!(plugins);

/// The registration of `id`.
pub fn plugin(id: ProviderId) -> &'static Plugin {
    REGISTRY[id.index()]
}

use std::future::Future;
use std::pin::Pin;

use crate::action::{ActionCheck, ActionRequest, Confirmation, SendError};
use crate::model::{Keys, Payment, ProviderId, Report};
use crate::settings::PollingConfig;
use crate::store::CallbackRecord;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A provider's answer to "was this action applied?", with what it says
/// about the payment.
pub type Confirmed = Result<(Confirmation, Vec<Report>), InquiryError>;

/// A sent action's answer, and what it says about the payment.
pub type Sent = Result<(serde_json::Value, Vec<Report>), SendError>;

/// Why a status inquiry gave no answer to record.
#[derive(Debug, thiserror::Error)]
pub enum InquiryError {
    /// Transport error, timeout, 5xx: ask again at the next tick.
    #[error("provider unreachable or failing: {0}")]
    Transient(String),
    /// An answer that cannot be read. Logged; asked again at the next tick.
    #[error("unreadable provider answer: {0}")]
    Invalid(String),
    /// The provider answered that it does not know the payment.
    #[error("provider does not know the payment: {0}")]
    NotFound(String),
}

/// Why a callback was refused. Nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Missing or unreadable fields: answered 400.
    #[error("malformed callback: {0}")]
    Malformed(String),
    /// The signature does not verify: answered 403.
    #[error("callback signature does not verify")]
    Forged,
}

/// How a tracked payment is found again.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackKeys {
    /// The same for the same payment, whatever else the request carries.
    pub idempotency_key: String,
    /// Keys that this provider's callbacks are matched by.
    pub lookup_keys: Vec<String>,
}

impl TrackKeys {
    /// For a provider that knows a payment by one identifier, `name`, and
    /// no other key: tracked once per value and found again by it. Gives
    /// the value too, for the provider's own checks.
    pub fn by_one<'k>(
        provider: ProviderId,
        keys: &'k Keys,
        name: &str,
    ) -> Result<(TrackKeys, &'k str), String> {
        if let Some(k) = keys.keys().find(|k| *k != name) {
            return Err(format!("unknown key `{k}` for {provider}"));
        }
        let v = keys
            .get(name)
            .ok_or_else(|| format!("missing key `{name}`"))?;
        let track = TrackKeys {
            idempotency_key: lookup_key(provider, "idem", v),
            lookup_keys: vec![lookup_key(provider, name, v)],
        };
        Ok((track, v))
    }
}

/// A callback as it arrived: method, headers, raw query string, raw body.
pub struct RawCallback<'a> {
    pub method: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    /// A header's value by name (`MyFatoorah-Signature`), if present.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

/// Sorts a transport error of an action request: a request that never left
/// may be sent again; anything after it left may have been applied.
pub fn send_error(e: reqwest::Error) -> SendError {
    let connect = e.is_connect();
    let msg = e.without_url().to_string();
    if connect {
        SendError::NotSent(msg)
    } else {
        SendError::Ambiguous(msg)
    }
}

/// A provider's log-in token, shared by its requests and renewed a tenth
/// of its lifetime early, so a token never expires in flight.
#[derive(Default)]
pub struct TokenCache {
    slot: tokio::sync::Mutex<Option<(crate::settings::Secret, std::time::Instant)>>,
}

impl TokenCache {
    /// The cached token, or (when there is none, it expired, or `renew`)
    /// the one `log_in` returns with its lifetime. `log_in` runs only then.
    pub async fn get<F>(&self, renew: bool, log_in: F) -> Result<crate::settings::Secret, SendError>
    where
        F: Future<Output = Result<(crate::settings::Secret, std::time::Duration), SendError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if !renew && std::time::Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let (t, ttl) = log_in.await?;
        *slot = Some((
            t.clone(),
            std::time::Instant::now() + ttl.saturating_sub(ttl / 10),
        ));
        Ok(t)
    }
}

/// Posts a log-in body of credential fields and returns the JSON answer.
/// A transport error or a 5xx means nothing was sent for the action yet.
pub async fn post_login(
    client: &reqwest::Client,
    url: &str,
    fields: [(&str, &crate::settings::Secret); 2],
) -> Result<serde_json::Value, SendError> {
    let body: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.expose().into()))
        .collect();
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| SendError::NotSent(format!("log-in: {}", e.without_url())))?;
    if resp.status().is_server_error() {
        return Err(SendError::NotSent(format!(
            "log-in: HTTP {}",
            resp.status()
        )));
    }
    resp.json()
        .await
        .map_err(|e| SendError::NotSent(format!("log-in: unreadable answer: {}", e.without_url())))
}

/// For callbacks that carry no headers worth reading (tests, benchmarks).
pub fn no_headers(_: &str) -> Option<String> {
    None
}

pub mod tls {
    //! Whom outbound TLS trusts: the webpki roots, the system's trust
    //! store (`/etc/ssl/certs`, where a corporate CA is installed), and
    //! the CAs in `tls.extra_ca_file`. The config loader reads that file
    //! (check-config names it when it is unreadable or holds no
    //! certificate) and sets it here before it builds the providers;
    //! every client built afterwards trusts it.

    use std::path::Path;
    use std::sync::RwLock;

    static EXTRA: RwLock<Vec<reqwest::Certificate>> = RwLock::new(Vec::new());

    /// The CA certificates in a PEM file; at least one.
    pub fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("`{}` is not PEM certificates: {e}", path.display()))?;
        if roots.is_empty() {
            return Err(format!("`{}` holds no PEM certificate", path.display()));
        }
        Ok(roots)
    }

    /// The extra CAs every client built from now on trusts.
    pub fn trust_also(roots: Vec<reqwest::Certificate>) {
        *crate::sync::write(&EXTRA) = roots;
    }

    /// `builder` with the system's store and the extra CAs.
    pub fn with_roots(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        crate::sync::read(&EXTRA)
            .iter()
            .cloned()
            .fold(builder.tls_built_in_native_certs(true), |b, c| {
                b.add_root_certificate(c)
            })
    }
}

/// The HTTP client every provider uses: `timeout` for a whole request,
/// five seconds to connect (rustls), and a `User-Agent` that names the
/// version and the instance (the provider's logs then say which of
/// several instances asked).
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    let agent = format!(
        "payrecon/{} ({})",
        env!("CARGO_PKG_VERSION"),
        crate::model::instance_id()
    );
    tls::with_roots(reqwest::Client::builder())
        .user_agent(agent)
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        // Building fails only without a TLS backend, which is compiled in.
        .unwrap_or_default()
}

pub trait Provider: Send + Sync + 'static {
    fn id(&self) -> ProviderId;

    /// How this provider is polled.
    fn polling(&self) -> &PollingConfig;

    /// Whether the provider has a status inquiry to poll. Payments of one
    /// that has none get no poll window.
    fn polls(&self) -> bool {
        true
    }

    /// Checks the keys of a payment to track and says how to find it again.
    fn track_keys(&self, keys: &Keys) -> Result<TrackKeys, String>;

    /// The store lookup key for one of the provider's own identifiers
    /// (ConnPay: `invoice_id`, `order_id`); `None` for names it is not
    /// indexed by.
    fn lookup_by(&self, name: &str, value: &str) -> Option<String>;

    /// Asks the provider for the payment's status. The report's source is
    /// `Poll`; callers that reconcile set their own.
    fn inquire<'a>(&'a self, payment: &'a Payment) -> BoxFuture<'a, Result<Report, InquiryError>> {
        // Providers without a status inquiry also say `polls() == false`,
        // so this is never asked of them.
        let _ = payment;
        Box::pin(async move {
            Err(InquiryError::Invalid(format!(
                "{} has no status inquiry",
                self.id()
            )))
        })
    }

    /// Reads and verifies a callback.
    fn parse_callback(
        &self,
        raw: &RawCallback<'_>,
        received_ms: u64,
    ) -> Result<CallbackRecord, CallbackError> {
        let _ = (raw, received_ms);
        Err(CallbackError::Malformed(format!(
            "{} sends no callbacks that payrecon reads",
            self.id()
        )))
    }

    /// Checks an action against the provider's rules before it is queued;
    /// an error is a local refusal and nothing is sent.
    fn check_action(&self, payment: &Payment, req: &ActionRequest) -> Result<ActionCheck, String> {
        let _ = payment;
        Err(format!(
            "{} does not take `{}` actions",
            self.id(),
            req.name()
        ))
    }

    /// The key only one live action of this kind may hold on this payment
    /// (MyFatoorah: one capture or release per invoice), known before the
    /// request is checked, so a second one is a conflict whatever state
    /// the first left the payment in. `None` by default.
    fn exclusive_key(&self, payment: &Payment, req: &ActionRequest) -> Option<String> {
        let _ = (payment, req);
        None
    }

    /// Sends one attempt of an action. On success: the provider's answer
    /// and, when it says something about the payment, a report of it.
    fn send_action<'a>(
        &'a self,
        payment: &'a Payment,
        req: &'a ActionRequest,
    ) -> BoxFuture<'a, Sent> {
        let _ = payment;
        Box::pin(async move {
            Err(SendError::Final {
                message: format!("{} does not take `{}` actions", self.id(), req.name()),
                details: None,
            })
        })
    }

    /// Asks the provider whether an action was applied; `None` when the
    /// provider has no way to tell (the action is then parked as unknown).
    fn confirm_action<'a>(
        &'a self,
        payment: &'a Payment,
        req: &'a ActionRequest,
    ) -> Option<BoxFuture<'a, Confirmed>> {
        let _ = (payment, req);
        None
    }
}

/// A lookup key in the store's `keys` tree: `provider|kind|value`.
pub fn lookup_key(provider: ProviderId, kind: &str, value: &str) -> String {
    format!("{}|{kind}|{value}", provider.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_has_every_provider_in_order_under_its_own_name() {
        let ids: Vec<ProviderId> = REGISTRY.iter().map(|p| p.id).collect();
        assert_eq!(ids, ProviderId::ALL);
        for (i, id) in ProviderId::ALL.iter().enumerate() {
            assert_eq!(id.index(), i);
            assert_eq!(serde_json::to_value(id).unwrap(), id.as_str());
            assert_eq!(id.as_str().parse::<ProviderId>().unwrap(), *id);
            assert_eq!(ProviderId::from_code(id.code()), Some(*id));
        }
    }

    #[test]
    fn a_payment_known_by_one_key_is_tracked_by_it_alone() {
        let keys = |kv: &[(&str, &str)]| -> Keys {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let k = keys(&[("payment_id", "p-1")]);
        let (t, v) = TrackKeys::by_one(ProviderId::RestStatus, &k, "payment_id").unwrap();
        assert_eq!(v, "p-1");
        assert_eq!(t.idempotency_key, "rest_status|idem|p-1");
        assert_eq!(t.lookup_keys, ["rest_status|payment_id|p-1"]);
        let e = TrackKeys::by_one(ProviderId::RestStatus, &keys(&[]), "payment_id").unwrap_err();
        assert_eq!(e, "missing key `payment_id`");
        let k = keys(&[("payment_id", "p-1"), ("extra", "x")]);
        let e = TrackKeys::by_one(ProviderId::RestStatus, &k, "payment_id").unwrap_err();
        assert_eq!(e, "unknown key `extra` for rest_status");
    }

    #[test]
    fn every_described_action_passes_its_own_description() {
        for p in REGISTRY {
            for spec in p.actions {
                crate::action::check_described(p.id, p.actions, &spec.example())
                    .unwrap_or_else(|e| panic!("{} {}: {e}", p.id, spec.name));
                let mut missing = spec.example();
                missing.fields.clear();
                let required = spec.fields.iter().any(|f| f.required);
                let r = crate::action::check_described(p.id, p.actions, &missing);
                assert_eq!(r.is_err(), required, "{} {}", p.id, spec.name);
            }
        }
    }
}

//! What payrecon records about a payment: the payment itself, its poll
//! window and the append-only history of observations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{Decision, State};

/// Makes `ProviderId` from the crate's list of providers
/// (`with_providers!` in lib.rs).
macro_rules! provider_ids {
    ($($variant:ident $name:ident = $code:literal,)*) => {
        /// Which provider a payment belongs to.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ProviderId {
            $($variant,)*
        }

        impl ProviderId {
            /// Every provider, in the list's order.
            pub const ALL: &'static [ProviderId] = &[$(ProviderId::$variant,)*];
            pub const COUNT: usize = ProviderId::ALL.len();

            /// Its name in config, routes, the API and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderId::$variant => stringify!($name),)*
                }
            }

            /// A one-byte code for compact store records. Never reuse a code.
            pub fn code(self) -> u8 {
                match self {
                    $(ProviderId::$variant => $code,)*
                }
            }
        }
    };
}

with_providers!(provider_ids);

impl ProviderId {
    /// Its position in the list, from 0 (an index for per-provider arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_code(c: u8) -> Option<ProviderId> {
        ProviderId::ALL.iter().copied().find(|p| p.code() == c)
    }
}

impl std::fmt::Display for ProviderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderId::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = ProviderId::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown provider `{s}` (known: {})", known.join(", "))
            })
    }
}

/// Where an observation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Poll,
    Callback,
    Reconcile,
    Action,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Poll => "poll",
            Source::Callback => "callback",
            Source::Reconcile => "reconcile",
            Source::Action => "action",
        }
    }
}

/// The provider's own identifiers of a payment, by name (for ConnPay:
/// `endpoint_id`, `invoice_id`, `session_token`, `access_token`). Which
/// names are required, and which are secret, is the adapter's business.
pub type Keys = BTreeMap<String, String>;

/// The report field that lists provider fields payrecon could not read.
/// The rest of the answer is still used; the engine raises
/// `alert=provider_field_unreadable` when it is present.
pub const UNREADABLE: &str = "unreadable";

/// A tracked payment. Its history lives beside it in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    /// payrecon's id, `pay_` and 16 hex digits; never reused.
    pub id: String,
    pub provider: ProviderId,
    pub keys: Keys,
    /// Amount in minor units (cents, centis) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Only ever moved by `state::decide`.
    pub state: State,
    /// The provider's status as it came with the observation that set `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_status: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub updated_ms: u64,
    /// When and how the payment first became final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_source: Option<Source>,
    /// The polling window; `None` for providers that are not polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<PollWindow>,
    /// Number of observations in the history (the next one's `seq`).
    pub observations: u32,
    /// The last time a provider reported other money than tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
}

/// A payment's polling window. Persisted with the payment so a restart
/// resumes it where it stood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollWindow {
    /// Unix ms after which no new poll is scheduled.
    pub ends_ms: u64,
    /// Unix ms of the next poll; meaningful while `open`.
    pub next_ms: u64,
    /// Polls sent so far.
    pub polls: u32,
    /// False once the window ended or the payment became final.
    pub open: bool,
}

/// One thing payrecon learned about a payment. Append-only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub seq: u32,
    pub source: Source,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The provider's status as sent (`APPROVED`, `reversal:approved`, or
    /// `error:ORDER_NOT_FOUND` for a failed inquiry).
    pub raw_status: String,
    /// The normalized state it maps to, if it says anything about state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// What it did to the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The essential fields of the answer (bank order id, amounts, error
    /// codes). Never secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// How many later answers said exactly the same (same source, status
    /// and fields): they are counted here, not recorded again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u32,
    /// When the last of those repeats came (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An observation before the store has numbered and judged it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub source: Source,
    pub raw_status: String,
    pub state: Option<State>,
    pub fields: BTreeMap<String, String>,
    /// Identifiers learned from the provider that later callbacks may be
    /// matched by (ConnPay's gateway `orderId`); indexed by the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned_keys: Vec<String>,
}

/// This process among the instances sharing a database:
/// `<hostname>-<pid>-<8 hex>`, made once. It names the owner on every
/// lease the process holds and is in the `User-Agent` of its requests to
/// providers, so an operator can tell which instance did what.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
    })
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Masks all but the last four characters of an account or card number,
/// for logs.
pub fn mask(s: &str) -> String {
    let n = s.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    let tail: String = s.chars().skip(n - 4).collect();
    format!("{}{}", "*".repeat(n - 4), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_only_the_last_four() {
        assert_eq!(mask("4111111111111111"), "************1111");
        assert_eq!(mask("123"), "***");
    }

    #[test]
    fn provider_names_parse() {
        assert_eq!(
            "connpay".parse::<ProviderId>().unwrap(),
            ProviderId::Connpay
        );
        assert!("paypal".parse::<ProviderId>().is_err());
    }
}

/// A provider reported money other than the tracked amount or currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// What the provider said, as it said it (`0.01 EUR`, `abc`).
    pub reported: String,
    /// The reported amount in minor units, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_currency: Option<String>,
    /// Unix ms of the observation that reported it.
    pub at_ms: u64,
}

//! Outbound actions: the status changes the platform asks payrecon to send
//! to a provider (each provider describes its own), and their life cycle.
//! An action is written durably to the outbox before anything is sent, is
//! marked `sending` durably before each attempt, and is never sent again
//! blindly once its outcome is uncertain: see docs/actions.md.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::ProviderId;

/// What the platform asks for: one of the actions the payment's provider
/// describes ([`ActionSpec`]) and its fields, as JSON writes it:
/// `{"action": "capture", "amount": "100.000"}`. The provider reads it
/// into its own typed form ([`ActionRequest::read`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub action: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl ActionRequest {
    /// A request from a provider's typed form (an enum tagged `action`).
    pub fn of<T: Serialize>(typed: &T) -> ActionRequest {
        let mut fields = match serde_json::to_value(typed) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let action = match fields.remove("action") {
            Some(Value::String(a)) => a,
            _ => String::new(),
        };
        ActionRequest { action, fields }
    }

    /// The request in a provider's typed form; unknown fields are refused.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut m = self.fields.clone();
        m.insert("action".into(), self.action.clone().into());
        serde_json::from_value(Value::Object(m)).map_err(|e| format!("`{}`: {e}", self.action))
    }

    pub fn name(&self) -> &str {
        &self.action
    }
}

/// An action a provider takes, as it describes it: requests are checked
/// against it before the provider judges them, and the CLI makes a
/// subcommand of it.
#[derive(Debug)]
pub struct ActionSpec {
    pub name: &'static str,
    pub about: &'static str,
    pub fields: &'static [FieldSpec],
}

/// One field of an action.
#[derive(Debug)]
pub struct FieldSpec {
    /// Where it goes in the request: `amount`, `trust.seed`.
    pub path: &'static str,
    /// The CLI's flag for it, without `--`.
    pub flag: &'static str,
    pub kind: FieldKind,
    pub required: bool,
    pub about: &'static str,
}

impl ActionSpec {
    /// A request with every field set to a value of its kind (`x`,
    /// `["x"]`, `{"id": "x"}`): what tests read into the typed form.
    pub fn example(&self) -> ActionRequest {
        let mut fields = Map::new();
        for f in self.fields {
            let v = match f.kind {
                FieldKind::Text => Value::from("x"),
                FieldKind::List => Value::from(vec!["x"]),
                FieldKind::Pair => serde_json::json!({"id": "x"}),
                FieldKind::Switch(b) => Value::from(b),
            };
            insert_at(&mut fields, f.path, v);
        }
        ActionRequest {
            action: self.name.to_string(),
            fields,
        }
    }
}

/// Sets `path` (`trust.seed`) in `fields` to `v`, making the objects on
/// the way.
pub fn insert_at(fields: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            fields.insert(path.to_string(), v);
        }
        Some((head, rest)) => {
            let next = fields
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = next {
                insert_at(m, rest, v);
            }
        }
    }
}

/// Fails unless every action in `actions`, with every field set, reads
/// into the provider's typed form `T` and comes back the same.
#[cfg(test)]
pub fn assert_described_actions_read<T: DeserializeOwned + Serialize>(actions: &[ActionSpec]) {
    for spec in actions {
        let req = spec.example();
        let typed: T = req.read().unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        assert_eq!(ActionRequest::of(&typed), req, "{}", spec.name);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKind {
    /// A string.
    Text,
    /// A list of strings; the CLI takes them comma-separated.
    List,
    /// An object of strings; the CLI takes one `KEY=VALUE`.
    Pair,
    /// A boolean; the CLI flag takes no value and sets it to this.
    Switch(bool),
}

impl FieldKind {
    fn fits(self, v: &Value) -> bool {
        match (self, v) {
            (FieldKind::Text, Value::String(_)) | (FieldKind::Switch(_), Value::Bool(_)) => true,
            (FieldKind::List, Value::Array(a)) => a.iter().all(Value::is_string),
            (FieldKind::Pair, Value::Object(m)) => m.values().all(Value::is_string),
            _ => false,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FieldKind::Text => "a string",
            FieldKind::List => "a list of strings",
            FieldKind::Pair => "an object of strings",
            FieldKind::Switch(_) => "true or false",
        }
    }
}

/// Why a request does not fit what its provider describes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Undescribed {
    /// The provider takes no action of that name (another provider's, or
    /// none at all): the payment refuses it.
    #[error("{0}")]
    NotTaken(String),
    /// A field is missing, unknown or of the wrong kind: a bad request.
    #[error("{0}")]
    Malformed(String),
}

/// Checks a request against what `provider` describes: an action it
/// takes, with its required fields, every field known and of its kind.
pub fn check_described(
    provider: ProviderId,
    actions: &[ActionSpec],
    req: &ActionRequest,
) -> Result<(), Undescribed> {
    let Some(spec) = actions.iter().find(|a| a.name == req.action) else {
        let names: Vec<&str> = actions.iter().map(|a| a.name).collect();
        return Err(Undescribed::NotTaken(if names.is_empty() {
            format!("{provider} takes no actions")
        } else {
            format!(
                "{provider} takes {}, not `{}`",
                names.join(", "),
                req.action
            )
        }));
    };
    fn walk(spec: &ActionSpec, prefix: &str, m: &Map<String, Value>) -> Result<(), String> {
        for (k, v) in m {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if let Some(f) = spec.fields.iter().find(|f| f.path == path) {
                if !f.kind.fits(v) {
                    return Err(format!("`{path}` must be {}", f.kind.name()));
                }
            } else if spec.fields.iter().any(|f| {
                f.path
                    .strip_prefix(&path)
                    .is_some_and(|r| r.starts_with('.'))
            }) {
                match v {
                    Value::Object(inner) => walk(spec, &path, inner)?,
                    _ => return Err(format!("`{path}` must be an object")),
                }
            } else {
                return Err(format!("`{}` has no field `{path}`", spec.name));
            }
        }
        Ok(())
    }
    walk(spec, "", &req.fields).map_err(Undescribed::Malformed)?;
    for f in spec.fields.iter().filter(|f| f.required) {
        let mut at = Some(&req.fields);
        let mut found = None;
        for seg in f.path.split('.') {
            found = at.and_then(|m| m.get(seg));
            at = found.and_then(Value::as_object);
        }
        if found.is_none() {
            return Err(Undescribed::Malformed(format!(
                "`{}` needs `{}`",
                spec.name, f.path
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// In the outbox, not sent yet (or sent and proven not applied).
    Queued,
    /// An attempt is under way; after a crash its outcome is unknown until
    /// the provider is asked.
    Sending,
    Succeeded,
    /// The provider refused it for good (or the deadline passed with
    /// nothing applied).
    Failed,
    /// It may or may not have been applied and the provider cannot be
    /// asked. Never resent; an operator resolves it.
    Unknown,
}

impl ActionState {
    pub fn is_final(self) -> bool {
        matches!(self, ActionState::Succeeded | ActionState::Failed)
    }

    /// The name the API and metrics use (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Queued => "queued",
            ActionState::Sending => "sending",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            ActionState::Unknown => "unknown",
        }
    }
}

/// An action and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// `act_` and 16 hex digits.
    pub id: String,
    pub payment_id: String,
    pub provider: ProviderId,
    pub request: ActionRequest,
    pub state: ActionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// No new attempt starts after this (unix ms).
    pub deadline_ms: u64,
    /// Requests sent so far.
    pub attempts: u32,
    /// The provider's answer, for a succeeded action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<serde_json::Value>,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The provider's validation errors, as it sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// What a provider's adapter says about an action before it is queued.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionCheck {
    /// A key only one live action may hold (MyFatoorah: one capture or
    /// release per invoice). A failed action lets go of it.
    pub exclusive_key: Option<String>,
}

/// How an attempt ended, as the adapter reads it.
#[derive(Debug, Clone)]
pub enum SendError {
    /// The request never left (connection refused, DNS): safe to retry.
    NotSent(String),
    /// The provider answered that it failed (5xx): safe to retry.
    Retryable(String),
    /// Timeout or connection dropped after the request was sent: it may
    /// have been applied. Never resent without asking the provider.
    Ambiguous(String),
    /// The provider refused it (4xx, validation errors): final.
    Final {
        message: String,
        details: Option<serde_json::Value>,
    },
}

/// A provider's answer to "was this action applied?".
#[derive(Debug, Clone)]
pub enum Confirmation {
    Applied(serde_json::Value),
    NotApplied,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_state_names_are_their_serde_names() {
        use ActionState::*;
        for s in [Queued, Sending, Succeeded, Failed, Unknown] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
    enum Typed {
        Capture {
            amount: String,
        },
        Release {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            amount: Option<String>,
        },
    }

    const CAPTURE: ActionSpec = ActionSpec {
        name: "capture",
        about: "",
        fields: &[
            FieldSpec {
                path: "amount",
                flag: "amount",
                kind: FieldKind::Text,
                required: true,
                about: "",
            },
            FieldSpec {
                path: "trust.seed",
                flag: "trust-seed",
                kind: FieldKind::Text,
                required: false,
                about: "",
            },
        ],
    };

    #[test]
    fn requests_keep_their_json_shape_and_read_into_typed_forms() {
        let json = r#"{"action":"capture","amount":"10.000"}"#;
        let r: ActionRequest = serde_json::from_str(json).unwrap();
        assert_eq!(r.name(), "capture");
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
        let typed = Typed::Capture {
            amount: "10.000".into(),
        };
        assert_eq!(r.read::<Typed>().unwrap(), typed);
        assert_eq!(ActionRequest::of(&typed), r);
        let r: ActionRequest = serde_json::from_str(r#"{"action":"release"}"#).unwrap();
        assert_eq!(r.read::<Typed>().unwrap(), Typed::Release { amount: None });
        let r: ActionRequest =
            serde_json::from_str(r#"{"action":"capture","amount":"1","x":1}"#).unwrap();
        assert!(r.read::<Typed>().unwrap_err().contains("unknown field"));
        let r: ActionRequest = serde_json::from_str(r#"{"action":"refund"}"#).unwrap();
        assert!(r.read::<Typed>().is_err());
    }

    #[test]
    fn requests_are_checked_against_the_description() {
        let check = |json: &str| {
            let r: ActionRequest = serde_json::from_str(json).unwrap();
            check_described(ProviderId::Myfatoorah, &[CAPTURE], &r).map_err(|e| match e {
                Undescribed::Malformed(m) => m,
                Undescribed::NotTaken(m) => format!("not taken: {m}"),
            })
        };
        check(r#"{"action":"capture","amount":"1"}"#).unwrap();
        check(r#"{"action":"capture","amount":"1","trust":{"seed":"s"}}"#).unwrap();
        let e = check(r#"{"action":"refund"}"#).unwrap_err();
        assert_eq!(e, "not taken: myfatoorah takes capture, not `refund`");
        let e = check(r#"{"action":"capture"}"#).unwrap_err();
        assert_eq!(e, "`capture` needs `amount`");
        let e = check(r#"{"action":"capture","amount":1}"#).unwrap_err();
        assert_eq!(e, "`amount` must be a string");
        let e = check(r#"{"action":"capture","amount":"1","trust":{"x":"s"}}"#).unwrap_err();
        assert_eq!(e, "`capture` has no field `trust.x`");
        let e = check(r#"{"action":"capture","amount":"1","trust":"s"}"#).unwrap_err();
        assert_eq!(e, "`trust` must be an object");
        let r: ActionRequest = serde_json::from_str(r#"{"action":"capture"}"#).unwrap();
        let e = check_described(ProviderId::Connpay, &[], &r).unwrap_err();
        assert_eq!(e, Undescribed::NotTaken("connpay takes no actions".into()));
    }
}

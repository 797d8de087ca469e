//! Outbound actions: the status changes the platform asks payrecon to send
//! to a provider (MyFatoorah capture and release so far), and their life
//! cycle. An action is written durably to the outbox before anything is
//! sent, is marked `sending` durably before each attempt, and is never sent
//! again blindly once its outcome is uncertain: see docs/actions.md.

use serde::{Deserialize, Serialize};

use crate::model::ProviderId;

/// What the platform asks for. Validated by the provider's adapter before
/// it is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionRequest {
    /// MyFatoorah: capture all or part of an authorized invoice.
    Capture {
        /// Decimal string in the invoice currency, e.g. "100.000".
        amount: String,
    },
    /// MyFatoorah: release an authorized invoice back to the customer.
    Release {
        /// Must equal the invoice value when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<String>,
    },
    /// The REST "Update Payment Status" API: set a payment's status.
    UpdateStatus { status: String, trust: Trust },
    /// CRM.COM: reject a DRAFT payment.
    Reject {
        /// Exactly one of `id`, `name`, `alternative_code`.
        rejection_reason: std::collections::BTreeMap<String, String>,
        /// Fields to include in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields_set: Option<Vec<String>>,
    },
    /// connectFi: set a payment link's status by hand.
    SetStatus {
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// Locks the status against non-manual updates; true unless given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manual_status: Option<bool>,
    },
}

/// The trust values the platform computes for a REST status update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub seed: String,
    pub value: String,
    pub alt_value: String,
}

impl ActionRequest {
    pub fn name(&self) -> &'static str {
        match self {
            ActionRequest::Capture { .. } => "capture",
            ActionRequest::Release { .. } => "release",
            ActionRequest::UpdateStatus { .. } => "update_status",
            ActionRequest::SetStatus { .. } => "set_status",
            ActionRequest::Reject { .. } => "reject",
        }
    }
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

    #[test]
    fn requests_read_and_refuse_unknown_fields() {
        let r: ActionRequest =
            serde_json::from_str(r#"{"action":"capture","amount":"10.000"}"#).unwrap();
        assert_eq!(
            r,
            ActionRequest::Capture {
                amount: "10.000".into()
            }
        );
        let r: ActionRequest = serde_json::from_str(r#"{"action":"release"}"#).unwrap();
        assert_eq!(r, ActionRequest::Release { amount: None });
        assert!(serde_json::from_str::<ActionRequest>(
            r#"{"action":"capture","amount":"1","x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ActionRequest>(r#"{"action":"refund"}"#).is_err());
    }
}

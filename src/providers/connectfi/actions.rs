//! connectFi's one action: set a payment link's status by hand.

use serde::{Deserialize, Serialize};

use crate::action::{ActionSpec, FieldKind, FieldSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    SetStatus {
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// Locks the status against non-manual updates; true unless given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manual_status: Option<bool>,
    },
}

pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "set_status",
    about: "Set a payment link's status by hand",
    fields: &[
        FieldSpec {
            path: "status",
            flag: "status",
            kind: FieldKind::Text,
            required: true,
            about: "Error, SentToPay, Completed, Settled, Returned or Declined",
        },
        FieldSpec {
            path: "description",
            flag: "description",
            kind: FieldKind::Text,
            required: false,
            about: "Why, as connectFi shows it",
        },
        FieldSpec {
            path: "manual_status",
            flag: "unlocked",
            kind: FieldKind::Switch(false),
            required: false,
            about: "Leave the status open to non-manual updates (manualStatus false)",
        },
    ],
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_described_action_reads_into_the_typed_form() {
        crate::action::assert_described_actions_read::<Request>(ACTIONS);
    }
}

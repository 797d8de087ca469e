//! The REST "Update Payment Status" API's one action: set a payment's
//! status, with the trust values the platform computes.

use serde::{Deserialize, Serialize};

use crate::action::{ActionSpec, FieldKind, FieldSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    UpdateStatus { status: String, trust: Trust },
}

/// The trust values the platform computes for a status update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub seed: String,
    pub value: String,
    pub alt_value: String,
}

pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "update_status",
    about: "Set a payment's status through the REST \"Update Payment Status\" API",
    fields: &[
        FieldSpec {
            path: "status",
            flag: "status",
            kind: FieldKind::Text,
            required: true,
            about: "The new status",
        },
        FieldSpec {
            path: "trust.seed",
            flag: "trust-seed",
            kind: FieldKind::Text,
            required: true,
            about: "The trust seed the platform computed",
        },
        FieldSpec {
            path: "trust.value",
            flag: "trust-value",
            kind: FieldKind::Text,
            required: true,
            about: "The trust value the platform computed",
        },
        FieldSpec {
            path: "trust.alt_value",
            flag: "alt-trust-value",
            kind: FieldKind::Text,
            required: true,
            about: "The alternative trust value the platform computed",
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

//! MyFatoorah's actions: capture or release an authorized invoice
//! (`UpdatePaymentStatus`), as the platform asks for them.

use serde::{Deserialize, Serialize};

use crate::action::{ActionSpec, FieldKind, FieldSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Capture all or part of an authorized invoice.
    Capture {
        /// Decimal string in the invoice currency, e.g. "100.000".
        amount: String,
    },
    /// Release an authorized invoice back to the customer.
    Release {
        /// Must equal the invoice value when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<String>,
    },
}

pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "capture",
        about: "Capture all or part of an authorized invoice",
        fields: &[FieldSpec {
            path: "amount",
            flag: "amount",
            kind: FieldKind::Text,
            required: true,
            about: "Decimal amount in the invoice currency, e.g. 100.000",
        }],
    },
    ActionSpec {
        name: "release",
        about: "Release an authorized invoice back to the customer",
        fields: &[FieldSpec {
            path: "amount",
            flag: "amount",
            kind: FieldKind::Text,
            required: false,
            about: "Must equal the invoice value when given",
        }],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_described_action_reads_into_the_typed_form() {
        crate::action::assert_described_actions_read::<Request>(ACTIONS);
    }
}

//! CRM.COM's one action: reject a DRAFT payment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{ActionSpec, FieldKind, FieldSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Reject {
        /// Exactly one of `id`, `name`, `alternative_code`.
        rejection_reason: BTreeMap<String, String>,
        /// Fields to include in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields_set: Option<Vec<String>>,
    },
}

pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "reject",
    about: "Reject a DRAFT payment",
    fields: &[
        FieldSpec {
            path: "rejection_reason",
            flag: "reason",
            kind: FieldKind::Pair,
            required: true,
            about: "The rejection reason, NAME=VALUE with NAME id, name or alternative_code",
        },
        FieldSpec {
            path: "fields_set",
            flag: "fields-set",
            kind: FieldKind::List,
            required: false,
            about: "Fields to return, comma separated",
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

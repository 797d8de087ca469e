//! CRM.COM in `payrecon demo`: a DRAFT payment rejected, and a POSTED one
//! whose rejection CRM.COM refuses (a final failure, nothing applied).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sim::CrmSim;
use super::Request;
use crate::action::{ActionRequest, ActionState};
use crate::providers::scenes::{loopback, DemoSandbox, Scene};
use crate::providers::BoxFuture;

const USER: (&str, &str) = ("PAYRECON_DEMO_CRM_USER", "demo-ops");
const PASSWORD: (&str, &str) = ("PAYRECON_DEMO_CRM_PASS", "demo-crm-password");
const PAYMENTS: [(&str, &str); 2] = [("D-500", "DRAFT"), ("D-501", "POSTED")];

struct Demo(CrmSim);

pub fn start(cancel: CancellationToken) -> BoxFuture<'static, Result<Box<dyn DemoSandbox>, String>> {
    Box::pin(async move {
        let sim = CrmSim::start(
            loopback().await?,
            USER.1,
            PASSWORD.1,
            Duration::from_secs(3600),
            cancel,
        );
        for (reference, state) in PAYMENTS {
            sim.add_payment(reference, state);
        }
        Ok(Box::new(Demo(sim)) as Box<dyn DemoSandbox>)
    })
}

impl DemoSandbox for Demo {
    fn config(&self) -> String {
        format!(
            "\n[providers.crm]\nbase_url = \"{}\"\nusername_env = \"{}\"\npassword_env = \"{}\"\n",
            self.0.base_url(),
            USER.0,
            PASSWORD.0
        )
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![
            (USER.0, USER.1.into()),
            (PASSWORD.0, PASSWORD.1.into()),
        ]
    }

    fn scenes(&self) -> Vec<Scene> {
        let scene = |label, i: usize, reason: (&str, &str), expected| Scene {
            label,
            keys: vec![("reference_number", PAYMENTS[i].0.to_string())],
            amount: None,
            request: ActionRequest::of(&Request::Reject {
                rejection_reason: [(reason.0.to_string(), reason.1.to_string())].into(),
                fields_set: None,
            }),
            expected,
            note: None,
        };
        vec![
            scene(
                "reject a DRAFT payment",
                0,
                ("name", "Reject Due to Business Request"),
                ActionState::Succeeded,
            ),
            scene(
                "reject a POSTED payment (CRM.COM refuses)",
                1,
                ("id", "R1"),
                ActionState::Failed,
            ),
        ]
    }

    fn applied(&self, i: usize) -> bool {
        self.0.state(PAYMENTS[i].0).is_some_and(|s| s.1 > 0)
    }

    fn applied_once(&self) -> bool {
        self.0.state("D-500") == Some(("REJECTED".to_string(), 1))
            && self.0.state("D-501").map(|s| s.1) == Some(0)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.shutdown())
    }
}

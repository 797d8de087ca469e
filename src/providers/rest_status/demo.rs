//! The REST status API in `payrecon demo`: a status update, and one whose
//! answer is lost after it was applied. The API has no inquiry, so that
//! one is parked as unknown, an alert is raised and an operator settles it.

use tokio_util::sync::CancellationToken;

use super::sim::{Faults, RestStatusSim};
use super::{Request, Trust};
use crate::action::{ActionRequest, ActionState};
use crate::providers::scenes::{loopback, DemoSandbox, Scene};
use crate::providers::BoxFuture;

const API_KEY: (&str, &str) = ("PAYRECON_DEMO_REST_KEY", "demo-rest-key");

struct Demo(RestStatusSim);

pub fn start(cancel: CancellationToken) -> BoxFuture<'static, Result<Box<dyn DemoSandbox>, String>> {
    Box::pin(async move {
        let sim = RestStatusSim::start(loopback().await?, API_KEY.1, cancel);
        Ok(Box::new(Demo(sim)) as Box<dyn DemoSandbox>)
    })
}

fn uuid(n: u32) -> String {
    format!("b8f2d832-72e2-4e47-8b8a-{n:012x}")
}

impl DemoSandbox for Demo {
    fn config(&self) -> String {
        format!(
            "\n[providers.rest_status]\nbase_url = \"{}\"\napi_key_env = \"{}\"\n",
            self.0.base_url(),
            API_KEY.0
        )
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![(API_KEY.0, API_KEY.1.into())]
    }

    fn scenes(&self) -> Vec<Scene> {
        let trust = Trust {
            seed: "demo-seed".into(),
            value: "c10cd9445121e4ed".into(),
            alt_value: "demo-alt".into(),
        };
        let scene = |label, n: u32, status: &str, expected| Scene {
            label,
            keys: vec![("payment_id", uuid(n))],
            amount: None,
            request: ActionRequest::of(&Request::UpdateStatus {
                status: status.into(),
                trust: trust.clone(),
            }),
            expected,
            note: None,
        };
        vec![
            scene(
                "update to completed",
                1,
                "completed",
                ActionState::Succeeded,
            ),
            scene(
                "update; answer lost (no inquiry)",
                2,
                "cancelled",
                ActionState::Unknown,
            ),
        ]
    }

    fn before(&self, i: usize) {
        if i == 1 {
            self.0.set_faults(Faults {
                apply_then_drop: true,
                ..Default::default()
            });
        }
    }

    fn applied(&self, i: usize) -> bool {
        !self.0.changes(&uuid(i as u32 + 1)).is_empty()
    }

    fn applied_once(&self) -> bool {
        (1..=2).all(|n| self.0.changes(&uuid(n)).len() == 1)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.shutdown())
    }
}

//! connectFi in `payrecon demo`: two payment links set by hand, the second
//! after the log-in token expired (renewed, not a failed attempt).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sim::ConnectfiSim;
use super::Request;
use crate::action::{ActionRequest, ActionState};
use crate::providers::scenes::{loopback, DemoSandbox, Scene};
use crate::providers::BoxFuture;

const CLIENT_ID: (&str, &str) = ("PAYRECON_DEMO_CFI_ID", "DEMOCLIENT");
const CLIENT_SECRET: (&str, &str) = ("PAYRECON_DEMO_CFI_SECRET", "demo-cfi-secret");
const LINKS: [&str; 2] = ["DemoLink01", "DemoLink02"];

struct Demo(ConnectfiSim);

pub fn start(cancel: CancellationToken) -> BoxFuture<'static, Result<Box<dyn DemoSandbox>, String>> {
    Box::pin(async move {
        let sim = ConnectfiSim::start(
            loopback().await?,
            CLIENT_ID.1,
            CLIENT_SECRET.1,
            Duration::from_secs(3600),
            cancel,
        );
        for link in LINKS {
            sim.add_link(link, "SentToPay");
        }
        Ok(Box::new(Demo(sim)) as Box<dyn DemoSandbox>)
    })
}

impl DemoSandbox for Demo {
    fn config(&self) -> String {
        format!(
            "\n[providers.connectfi]\nbase_url = \"{}\"\nclient_id_env = \"{}\"\nclient_secret_env = \"{}\"\n",
            self.0.base_url(),
            CLIENT_ID.0,
            CLIENT_SECRET.0
        )
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![
            (CLIENT_ID.0, CLIENT_ID.1.into()),
            (CLIENT_SECRET.0, CLIENT_SECRET.1.into()),
        ]
    }

    fn scenes(&self) -> Vec<Scene> {
        let scene = |label, i: usize, status: &str, description: Option<&str>, note| Scene {
            label,
            keys: vec![("transaction_id", LINKS[i].to_string())],
            amount: None,
            request: ActionRequest::of(&Request::SetStatus {
                status: status.into(),
                description: description.map(String::from),
                manual_status: None,
            }),
            expected: ActionState::Succeeded,
            note,
        };
        vec![
            scene("set Completed", 0, "Completed", Some("paid by ACH"), None),
            scene(
                "set Declined after the token expired",
                1,
                "Declined",
                None,
                Some("token renewed; not a failed attempt"),
            ),
        ]
    }

    fn before(&self, i: usize) {
        if i == 1 {
            self.0.expire_tokens();
        }
    }

    fn applied(&self, i: usize) -> bool {
        self.0.manual_changes(LINKS[i]) > 0
    }

    fn applied_once(&self) -> bool {
        LINKS.iter().all(|l| self.0.manual_changes(l) == 1)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.shutdown())
    }
}

//! MyFatoorah in `payrecon demo`: three authorized invoices, a capture, a
//! release, and a capture whose answer is dropped after it was applied
//! (settled by asking GetPaymentStatus, never resent).

use tokio_util::sync::CancellationToken;

use super::sim::{Faults, MyfatoorahSim};
use super::Request;
use crate::action::{ActionRequest, ActionState};
use crate::providers::scenes::{loopback, DemoSandbox, Scene};
use crate::providers::BoxFuture;

const TOKEN: (&str, &str) = ("PAYRECON_DEMO_MF_TOKEN", "demo-mf-token");
const INVOICES: [(i64, i64); 3] = [(9001, 250_000), (9002, 80_000), (9003, 40_000)];

struct Demo(MyfatoorahSim);

pub fn start(cancel: CancellationToken) -> BoxFuture<'static, Result<Box<dyn DemoSandbox>, String>> {
    Box::pin(async move {
        let sim = MyfatoorahSim::start(loopback().await?, TOKEN.1, cancel);
        for (id, value) in INVOICES {
            sim.add_invoice(id, value);
        }
        Ok(Box::new(Demo(sim)) as Box<dyn DemoSandbox>)
    })
}

impl DemoSandbox for Demo {
    fn config(&self) -> String {
        format!(
            r#"
[providers.myfatoorah]
base_url = "{}"
token_env = "{}"

[providers.myfatoorah.polling]
poll_interval_min = "300ms"
poll_interval_max = "500ms"
poll_window_min = "4s"
poll_window_max = "5s"
"#,
            self.0.base_url(),
            TOKEN.0
        )
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![(TOKEN.0, TOKEN.1.into())]
    }

    fn scenes(&self) -> Vec<Scene> {
        let scene = |label, i: usize, request: Request, note| Scene {
            label,
            keys: vec![("invoice_id", INVOICES[i].0.to_string())],
            amount: Some((INVOICES[i].1, "KWD")),
            request: ActionRequest::of(&request),
            expected: ActionState::Succeeded,
            note,
        };
        vec![
            scene(
                "capture 100.000 of 250.000 KWD",
                0,
                Request::Capture {
                    amount: "100.000".into(),
                },
                None,
            ),
            scene(
                "release 80.000 KWD",
                1,
                Request::Release {
                    amount: Some("80.000".into()),
                },
                None,
            ),
            scene(
                "capture; answer dropped after applying",
                2,
                Request::Capture {
                    amount: "40".into(),
                },
                Some("settled by GetPaymentStatus, not resent"),
            ),
        ]
    }

    fn before(&self, i: usize) {
        if i == 2 {
            self.0.set_faults(Faults {
                apply_then_drop: true,
                ..Default::default()
            });
        }
    }

    fn applied(&self, i: usize) -> bool {
        self.0.operations(INVOICES[i].0) > 0
    }

    fn applied_once(&self) -> bool {
        INVOICES.iter().all(|(id, _)| self.0.operations(*id) == 1)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.shutdown())
    }
}

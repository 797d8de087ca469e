//! ConnPay in `payrecon demo`: transfers in its sandbox, each on a script
//! (settled on a poll or after its window, by callback or not, with
//! redirects, reversals and delayed callbacks), which the demo tracks
//! until payrecon knows what the sandbox knows. Time runs at a tenth of
//! ConnPay's advice: polls every 0.3-0.5 s for 4-5 s.

use tokio_util::sync::CancellationToken;

use super::sim::{CallbackMode, ConnpaySim, Faults, NewTransfer, Outcome, Script, Settle};
use crate::providers::scenes::{loopback, Settling, SettlingSandbox};
use crate::providers::BoxFuture;
use crate::state::State;

const KEY_ENV: &str = "PAYRECON_DEMO_CONTROL_KEY";

/// `[providers.connpay]` and its polling, as the demo, the tests and the
/// benchmarks write it for a sandbox on loopback.
pub fn section(
    base_url: &str,
    key_env: &str,
    interval: (&str, &str),
    window: (&str, &str),
    max_in_flight: usize,
    request_timeout: &str,
) -> String {
    format!(
        r#"
[providers.connpay]
base_url = "{base_url}"
control_key_env = "{key_env}"

[providers.connpay.polling]
poll_interval_min = "{}"
poll_interval_max = "{}"
poll_window_min = "{}"
poll_window_max = "{}"
max_in_flight = {max_in_flight}
request_timeout = "{request_timeout}"
"#,
        interval.0, interval.1, window.0, window.1
    )
}

struct Demo {
    sim: ConnpaySim,
    key: String,
}

pub fn start(
    cancel: CancellationToken,
) -> BoxFuture<'static, Result<Box<dyn SettlingSandbox>, String>> {
    Box::pin(async move {
        let key = format!("demo-{:016x}", fastrand::u64(..));
        let sim = ConnpaySim::start(loopback().await?, &key, cancel);
        sim.set_faults(Faults {
            latency_ms: (5, 40),
            error_rate: 0.05,
            drop_rate: 0.03,
        });
        Ok(Box::new(Demo { sim, key }) as Box<dyn SettlingSandbox>)
    })
}

impl SettlingSandbox for Demo {
    fn describe(&self) -> String {
        format!(
            "ConnPay sandbox on {}: 5-40 ms latency, 5% 503s, 3% dropped connections\n\
             polling every 0.3-0.5 s for 4-5 s (ConnPay's 3-5 s for 2-3 min, at 1/10 scale)",
            self.sim.addr()
        )
    }

    fn config(&self) -> String {
        section(
            &self.sim.base_url(),
            KEY_ENV,
            ("300ms", "500ms"),
            ("4s", "5s"),
            16,
            "2s",
        )
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![(KEY_ENV, self.key.clone())]
    }

    fn callbacks_to(&self, base: &str) {
        self.sim.set_callback_url(&format!("{base}/callback/connpay"));
    }

    fn payments(&self, count: usize) -> Vec<Settling> {
        let scripts = transfer_scripts();
        (0..count)
            .map(|i| {
                let (label, script) = scripts[i % scripts.len()].clone();
                let t = NewTransfer::new(&format!("inv-{:04}", i + 1), script);
                self.sim.add(t.clone());
                Settling {
                    name: t.invoice_id.clone(),
                    label,
                    keys: t.keys(),
                    amount: Some((t.amount_centis, t.currency.clone())),
                }
            })
            .collect()
    }

    fn truth(&self, name: &str) -> Option<State> {
        self.sim.truth(name).and_then(|t| t.expected)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.sim.shutdown())
    }
}

/// The scripts the demo's transfers cycle through, with a label for each.
pub fn transfer_scripts() -> Vec<(&'static str, Script)> {
    let s = Script::default;
    vec![
        (
            "approved on the 2nd poll",
            Script {
                settle: Settle::AfterPolls(2),
                ..s()
            },
        ),
        (
            "declined on the 3rd poll",
            Script {
                outcome: Outcome::Declined,
                settle: Settle::AfterPolls(3),
                ..s()
            },
        ),
        (
            "3-D Secure redirect, then approved",
            Script {
                redirect: true,
                settle: Settle::AfterPolls(4),
                ..s()
            },
        ),
        (
            "approved after its window",
            Script {
                settle: Settle::AfterMs(6500),
                ..s()
            },
        ),
        (
            "declined after its window",
            Script {
                outcome: Outcome::Declined,
                settle: Settle::AfterMs(7000),
                ..s()
            },
        ),
        (
            "after its window, callback sent 3 times",
            Script {
                settle: Settle::AfterMs(6000),
                callback: CallbackMode::Duplicate,
                ..s()
            },
        ),
        (
            "after its window, stale callback last",
            Script {
                settle: Settle::AfterMs(5800),
                callback: CallbackMode::OutOfOrder,
                ..s()
            },
        ),
        (
            "approved, then a reversal (unsigned: held)",
            Script {
                settle: Settle::AfterPolls(2),
                reversal: true,
                ..s()
            },
        ),
        (
            "approved, callback never comes",
            Script {
                settle: Settle::AfterPolls(3),
                callback: CallbackMode::Never,
                ..s()
            },
        ),
        (
            "approved, callback 1 s late",
            Script {
                settle: Settle::AfterPolls(2),
                callback_delay_ms: 1000,
                ..s()
            },
        ),
        (
            "after its window, then a reversal (held)",
            Script {
                settle: Settle::AfterMs(6200),
                reversal: true,
                ..s()
            },
        ),
        (
            "approved on the 1st poll",
            Script {
                settle: Settle::AfterPolls(1),
                ..s()
            },
        ),
    ]
}

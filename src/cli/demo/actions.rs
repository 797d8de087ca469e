//! The demo's outbound actions: the four action providers' sandboxes, with
//! faults, and status changes that must each end as expected and be
//! applied exactly once.

use super::*;

/// Secrets the demo's sandboxes and daemon share, by environment variable.
pub(super) const DEMO_SECRETS: [(&str, &str); 6] = [
    ("PAYRECON_DEMO_MF_TOKEN", "demo-mf-token"),
    ("PAYRECON_DEMO_REST_KEY", "demo-rest-key"),
    ("PAYRECON_DEMO_CFI_ID", "DEMOCLIENT"),
    ("PAYRECON_DEMO_CFI_SECRET", "demo-cfi-secret"),
    ("PAYRECON_DEMO_CRM_USER", "demo-ops"),
    ("PAYRECON_DEMO_CRM_PASS", "demo-crm-password"),
];

/// The four action providers' sandboxes.
pub(super) struct ActionSandboxes {
    mf: crate::providers::myfatoorah::sim::MyfatoorahSim,
    rest: crate::providers::rest_status::sim::RestStatusSim,
    cfi: crate::providers::connectfi::sim::ConnectfiSim,
    crm: crate::providers::crm::sim::CrmSim,
}

impl ActionSandboxes {
    pub(super) async fn start(cancel: &CancellationToken) -> Result<ActionSandboxes, String> {
        let l = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())
        };
        Ok(ActionSandboxes {
            mf: crate::providers::myfatoorah::sim::MyfatoorahSim::start(
                l().await?,
                DEMO_SECRETS[0].1,
                cancel.child_token(),
            ),
            rest: crate::providers::rest_status::sim::RestStatusSim::start(
                l().await?,
                DEMO_SECRETS[1].1,
                cancel.child_token(),
            ),
            cfi: crate::providers::connectfi::sim::ConnectfiSim::start(
                l().await?,
                DEMO_SECRETS[2].1,
                DEMO_SECRETS[3].1,
                Duration::from_secs(3600),
                cancel.child_token(),
            ),
            crm: crate::providers::crm::sim::CrmSim::start(
                l().await?,
                DEMO_SECRETS[4].1,
                DEMO_SECRETS[5].1,
                Duration::from_secs(3600),
                cancel.child_token(),
            ),
        })
    }

    /// Config sections for the four providers.
    pub(super) fn config(&self) -> String {
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

[providers.rest_status]
base_url = "{}"
api_key_env = "{}"

[providers.connectfi]
base_url = "{}"
client_id_env = "{}"
client_secret_env = "{}"

[providers.crm]
base_url = "{}"
username_env = "{}"
password_env = "{}"

[actions]
deadline = "30s"
"#,
            self.mf.base_url(),
            DEMO_SECRETS[0].0,
            self.rest.base_url(),
            DEMO_SECRETS[1].0,
            self.cfi.base_url(),
            DEMO_SECRETS[2].0,
            DEMO_SECRETS[3].0,
            self.crm.base_url(),
            DEMO_SECRETS[4].0,
            DEMO_SECRETS[5].0,
        )
    }

    pub(super) async fn shutdown(&self) {
        self.mf.shutdown().await;
        self.rest.shutdown().await;
        self.cfi.shutdown().await;
        self.crm.shutdown().await;
    }
}

/// One outbound action of the demo and what it should end as.
pub(super) struct DemoAction {
    label: &'static str,
    provider: &'static str,
    keys: Vec<(&'static str, String)>,
    amount: Option<(i64, &'static str)>,
    request: crate::action::ActionRequest,
    expected: crate::action::ActionState,
}

/// Sends status changes to the four action providers, with faults, and
/// checks each ends as expected and each provider applied it exactly once.
pub(super) async fn run_actions(admin: &AdminClient, sb: &ActionSandboxes) -> Result<bool, String> {
    use crate::action::ActionState;
    use crate::providers::{connectfi as cfi, crm as crm_, myfatoorah as mf, rest_status as rs};
    use crate::providers::{
        connectfi::sim as connectfi, crm::sim as crm, myfatoorah::sim as myfatoorah,
        rest_status::sim as rest_status,
    };
    sb.mf.add_invoice(9001, 250_000);
    sb.mf.add_invoice(9002, 80_000);
    sb.mf.add_invoice(9003, 40_000);
    sb.cfi.add_link("DemoLink01", "SentToPay");
    sb.cfi.add_link("DemoLink02", "SentToPay");
    sb.crm.add_payment("D-500", "DRAFT");
    sb.crm.add_payment("D-501", "POSTED");
    let trust = rs::Trust {
        seed: "demo-seed".into(),
        value: "c10cd9445121e4ed".into(),
        alt_value: "demo-alt".into(),
    };
    let uuid = |n: u32| format!("b8f2d832-72e2-4e47-8b8a-{n:012x}");
    let s = ActionState::Succeeded;
    let actions = vec![
        DemoAction {
            label: "capture 100.000 of 250.000 KWD",
            provider: "myfatoorah",
            keys: vec![("invoice_id", "9001".into())],
            amount: Some((250_000, "KWD")),
            request: crate::action::ActionRequest::of(&mf::Request::Capture {
                amount: "100.000".into(),
            }),
            expected: s,
        },
        DemoAction {
            label: "release 80.000 KWD",
            provider: "myfatoorah",
            keys: vec![("invoice_id", "9002".into())],
            amount: Some((80_000, "KWD")),
            request: crate::action::ActionRequest::of(&mf::Request::Release {
                amount: Some("80.000".into()),
            }),
            expected: s,
        },
        DemoAction {
            label: "capture; answer dropped after applying",
            provider: "myfatoorah",
            keys: vec![("invoice_id", "9003".into())],
            amount: Some((40_000, "KWD")),
            request: crate::action::ActionRequest::of(&mf::Request::Capture {
                amount: "40".into(),
            }),
            expected: s,
        },
        DemoAction {
            label: "update to completed",
            provider: "rest_status",
            keys: vec![("payment_id", uuid(1))],
            amount: None,
            request: crate::action::ActionRequest::of(&rs::Request::UpdateStatus {
                status: "completed".into(),
                trust: trust.clone(),
            }),
            expected: s,
        },
        DemoAction {
            label: "update; answer lost (no inquiry)",
            provider: "rest_status",
            keys: vec![("payment_id", uuid(2))],
            amount: None,
            request: crate::action::ActionRequest::of(&rs::Request::UpdateStatus {
                status: "cancelled".into(),
                trust,
            }),
            expected: ActionState::Unknown,
        },
        DemoAction {
            label: "set Completed",
            provider: "connectfi",
            keys: vec![("transaction_id", "DemoLink01".into())],
            amount: None,
            request: crate::action::ActionRequest::of(&cfi::Request::SetStatus {
                status: "Completed".into(),
                description: Some("paid by ACH".into()),
                manual_status: None,
            }),
            expected: s,
        },
        DemoAction {
            label: "set Declined after the token expired",
            provider: "connectfi",
            keys: vec![("transaction_id", "DemoLink02".into())],
            amount: None,
            request: crate::action::ActionRequest::of(&cfi::Request::SetStatus {
                status: "Declined".into(),
                description: None,
                manual_status: None,
            }),
            expected: s,
        },
        DemoAction {
            label: "reject a DRAFT payment",
            provider: "crm",
            keys: vec![("reference_number", "D-500".into())],
            amount: None,
            request: crate::action::ActionRequest::of(&crm_::Request::Reject {
                rejection_reason: [(
                    "name".to_string(),
                    "Reject Due to Business Request".to_string(),
                )]
                .into(),
                fields_set: None,
            }),
            expected: s,
        },
        DemoAction {
            label: "reject a POSTED payment (CRM.COM refuses)",
            provider: "crm",
            keys: vec![("reference_number", "D-501".into())],
            amount: None,
            request: crate::action::ActionRequest::of(&crm_::Request::Reject {
                rejection_reason: [("id".to_string(), "R1".to_string())].into(),
                fields_set: None,
            }),
            expected: ActionState::Failed,
        },
    ];
    println!("\noutbound actions: sent once, retried only where safe\n");
    println!(
        "  {:<12} {:<44} {:<10} {:>8}  note",
        "provider", "action", "state", "attempts"
    );
    let mut ok = true;
    for (i, a) in actions.iter().enumerate() {
        let req = TrackRequest {
            provider: a.provider.into(),
            keys: a
                .keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            amount_minor: a.amount.map(|x| x.0),
            currency: a.amount.map(|x| x.1.to_string()),
        };
        let pay = admin
            .track(&req)
            .await
            .map_err(|e| e.to_string())?
            .payment
            .id;
        match i {
            2 => sb.mf.set_faults(myfatoorah::Faults {
                apply_then_drop: true,
                ..Default::default()
            }),
            4 => sb.rest.set_faults(rest_status::Faults {
                apply_then_drop: true,
                ..Default::default()
            }),
            6 => sb.cfi.expire_tokens(),
            _ => {}
        }
        let queued = admin
            .action(&pay, &a.request, Some(&format!("demo-{i}")))
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let done = loop {
            let x = admin
                .get_action(&queued.id)
                .await
                .map_err(|e| e.to_string())?;
            if x.state.is_final()
                || x.state == ActionState::Unknown
                || started.elapsed() > Duration::from_secs(30)
            {
                break x;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut note = match (i, &done.error) {
            (2, _) => "settled by GetPaymentStatus, not resent".to_string(),
            (6, _) => "token renewed; not a failed attempt".to_string(),
            (_, Some(e)) if done.state == ActionState::Failed => e.chars().take(60).collect(),
            _ => String::new(),
        };
        if done.state == ActionState::Unknown {
            // An operator checks with the provider, then settles it.
            let applied = sb.rest.changes(&uuid(2)) == ["cancelled"];
            let r = crate::listen::admin::Resolve {
                state: if applied { s } else { ActionState::Failed },
                note: Some("checked with the provider".into()),
            };
            admin
                .resolve_action(&done.id, &r)
                .await
                .map_err(|e| e.to_string())?;
            note = format!(
                "alert raised; operator resolved it as {}",
                if applied { "succeeded" } else { "failed" }
            );
        }
        let good = done.state == a.expected;
        ok &= good;
        println!(
            "  {:<12} {:<44} {:<10} {:>8}  {note}{}",
            a.provider,
            a.label,
            format!("{:?}", done.state).to_lowercase(),
            done.attempts,
            if good { "" } else { "  UNEXPECTED" }
        );
    }
    // Each provider applied each change exactly once.
    let once = [9001, 9002, 9003].iter().all(|i| sb.mf.operations(*i) == 1)
        && sb.rest.changes(&uuid(1)).len() == 1
        && sb.rest.changes(&uuid(2)).len() == 1
        && sb.cfi.manual_changes("DemoLink01") == 1
        && sb.cfi.manual_changes("DemoLink02") == 1
        && sb.crm.state("D-500") == Some(("REJECTED".to_string(), 1))
        && sb.crm.state("D-501").map(|s| s.1) == Some(0);
    println!(
        "  every provider applied each change exactly once: {}",
        if once { "yes" } else { "NO" }
    );
    let _ = (connectfi::Faults::default(), crm::Faults::default());
    Ok(ok && once)
}

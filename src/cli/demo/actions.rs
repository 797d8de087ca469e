//! The demo's outbound actions: every registered provider's sandbox that
//! has scenes (`Plugin::demo`), with faults, and status changes that must
//! each end as expected and be applied exactly once.

use super::*;
use crate::action::ActionState;
use crate::model::ProviderId;
use crate::providers::scenes::DemoSandbox;

/// The sandboxes of the providers that have demo scenes.
pub(super) struct ActionSandboxes(Vec<(ProviderId, Box<dyn DemoSandbox>)>);

impl ActionSandboxes {
    pub(super) async fn start(cancel: &CancellationToken) -> Result<ActionSandboxes, String> {
        let mut out = vec![];
        for p in crate::providers::REGISTRY {
            if let Some(start) = p.demo {
                out.push((p.id, start(cancel.child_token()).await?));
            }
        }
        Ok(ActionSandboxes(out))
    }

    /// Config sections for the sandboxes' providers.
    pub(super) fn config(&self) -> String {
        let mut text: String = self.0.iter().map(|(_, sb)| sb.config()).collect();
        text.push_str("\n[actions]\ndeadline = \"30s\"\n");
        text
    }

    /// The secrets those sections name, by environment variable.
    pub(super) fn secrets(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0
            .iter()
            .flat_map(|(_, sb)| sb.secrets().into_iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub(super) async fn shutdown(&self) {
        for (_, sb) in &self.0 {
            sb.shutdown().await;
        }
    }
}

/// Runs every sandbox's scenes through the daemon, and checks each ends as
/// expected and each provider applied each change exactly once.
pub(super) async fn run_actions(
    admin: &AdminClient,
    sbs: &ActionSandboxes,
) -> Result<bool, String> {
    println!("\noutbound actions: sent once, retried only where safe\n");
    println!(
        "  {:<12} {:<44} {:<10} {:>8}  note",
        "provider", "action", "state", "attempts"
    );
    let mut ok = true;
    for (pid, sb) in &sbs.0 {
        for (i, scene) in sb.scenes().into_iter().enumerate() {
            let req = TrackRequest {
                provider: pid.to_string(),
                keys: scene
                    .keys
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                amount_minor: scene.amount.map(|x| x.0),
                currency: scene.amount.map(|x| x.1.to_string()),
            };
            let pay = admin
                .track(&req)
                .await
                .map_err(|e| e.to_string())?
                .payment
                .id;
            sb.before(i);
            let queued = admin
                .action(&pay, &scene.request, Some(&format!("demo-{pid}-{i}")))
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
            let mut note = match (scene.note, &done.error) {
                (Some(n), _) => n.to_string(),
                (None, Some(e)) if done.state == ActionState::Failed => {
                    e.chars().take(60).collect()
                }
                _ => String::new(),
            };
            if done.state == ActionState::Unknown {
                // An operator checks with the provider, then settles it.
                let applied = sb.applied(i);
                let r = crate::listen::admin::Resolve {
                    state: if applied {
                        ActionState::Succeeded
                    } else {
                        ActionState::Failed
                    },
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
            let good = done.state == scene.expected;
            ok &= good;
            println!(
                "  {:<12} {:<44} {:<10} {:>8}  {note}{}",
                pid.as_str(),
                scene.label,
                done.state.as_str(),
                done.attempts,
                if good { "" } else { "  UNEXPECTED" }
            );
        }
    }
    let once = sbs.0.iter().all(|(_, sb)| sb.applied_once());
    println!(
        "  every provider applied each change exactly once: {}",
        if once { "yes" } else { "NO" }
    );
    Ok(ok && once)
}

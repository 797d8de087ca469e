//! The action subcommands, made from what each registered provider
//! describes (`Plugin::actions`): `payrecon capture PAY --amount 100.000`
//! sends `{"action": "capture", "amount": "100.000"}` to the admin API.
//! A flag per described field; the payment's provider then checks it.

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};
use serde_json::{Map, Value};

use super::AdminArgs;
use crate::action::{insert_at, ActionRequest, ActionSpec, FieldKind};
use crate::model::ProviderId;
use crate::providers::REGISTRY;

/// An action subcommand as parsed.
#[derive(Debug)]
pub struct ActionCommand {
    pub admin: AdminArgs,
    pub payment: String,
    pub request: ActionRequest,
    pub idempotency_key: Option<String>,
}

/// Each described action once, with the providers that take it. Providers
/// that describe an action of the same name describe the same fields (a
/// test holds them to it), so the first description gives the flags.
fn described() -> Vec<(&'static ActionSpec, Vec<ProviderId>)> {
    let mut out: Vec<(&'static ActionSpec, Vec<ProviderId>)> = vec![];
    for p in REGISTRY {
        for spec in p.actions {
            match out.iter_mut().find(|(s, _)| s.name == spec.name) {
                Some((_, ids)) => ids.push(p.id),
                None => out.push((spec, vec![p.id])),
            }
        }
    }
    out
}

fn command_name(spec: &ActionSpec) -> String {
    spec.name.replace('_', "-")
}

/// The subcommands, one per described action.
pub fn subcommands() -> Vec<clap::Command> {
    described()
        .into_iter()
        .map(|(spec, ids)| {
            let ids: Vec<&str> = ids.iter().map(|p| p.as_str()).collect();
            let mut c = clap::Command::new(command_name(spec)).about(format!(
                "{} [{}]",
                spec.about,
                ids.join(", ")
            ));
            c = AdminArgs::augment_args(c).arg(
                Arg::new("payment")
                    .required(true)
                    .value_name("PAYMENT")
                    .help("The payrecon payment id (pay_...)"),
            );
            for f in spec.fields {
                let arg = Arg::new(f.flag).long(f.flag).help(f.about);
                c = c.arg(match f.kind {
                    FieldKind::Text => arg.required(f.required),
                    FieldKind::List => arg.required(f.required).value_name("A,B"),
                    FieldKind::Pair => arg
                        .required(f.required)
                        .value_name("NAME=VALUE")
                        .value_parser(super::parse_kv),
                    FieldKind::Switch(_) => arg.action(ArgAction::SetTrue),
                });
            }
            c.arg(
                Arg::new("idempotency_key")
                    .long("idempotency-key")
                    .help("The same key returns the same action instead of a second one"),
            )
        })
        .collect()
}

/// The action that subcommand `name` asks for, if it is an action
/// subcommand.
pub fn from_matches(name: &str, m: &ArgMatches) -> Option<Result<ActionCommand, clap::Error>> {
    let (spec, _) = described()
        .into_iter()
        .find(|(s, _)| command_name(s) == name)?;
    Some(read(spec, m))
}

fn read(spec: &ActionSpec, m: &ArgMatches) -> Result<ActionCommand, clap::Error> {
    let mut fields = Map::new();
    for f in spec.fields {
        let v = match f.kind {
            FieldKind::Text => m.get_one::<String>(f.flag).map(|s| Value::from(s.as_str())),
            FieldKind::List => m.get_one::<String>(f.flag).map(|s| {
                Value::from(
                    s.split(',')
                        .map(|x| x.trim().to_string())
                        .collect::<Vec<_>>(),
                )
            }),
            FieldKind::Pair => m
                .get_one::<(String, String)>(f.flag)
                .map(|(k, v)| Value::Object(Map::from_iter([(k.clone(), v.as_str().into())]))),
            FieldKind::Switch(set) => m.get_flag(f.flag).then_some(Value::from(set)),
        };
        if let Some(v) = v {
            insert_at(&mut fields, f.path, v);
        }
    }
    Ok(ActionCommand {
        admin: AdminArgs::from_arg_matches(m)?,
        payment: m.get_one::<String>("payment").cloned().unwrap_or_default(),
        request: ActionRequest {
            action: spec.name.to_string(),
            fields,
        },
        idempotency_key: m.get_one::<String>("idempotency_key").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ActionCommand {
        let cmd = clap::Command::new("payrecon").subcommands(subcommands());
        let m = cmd.try_get_matches_from(args).unwrap();
        let (name, sub) = m.subcommand().unwrap();
        from_matches(name, sub).unwrap().unwrap()
    }

    #[test]
    fn the_subcommands_send_what_the_old_ones_sent() {
        let a = parse(&["payrecon", "capture", "pay_1", "--amount", "100.000"]);
        assert_eq!(a.payment, "pay_1");
        assert_eq!(
            serde_json::to_value(&a.request).unwrap(),
            serde_json::json!({"action": "capture", "amount": "100.000"})
        );
        assert_eq!(a.admin.admin_url, "http://127.0.0.1:8081");
        let a = parse(&[
            "payrecon",
            "update-status",
            "pay_1",
            "--status",
            "completed",
            "--trust-seed",
            "s",
            "--trust-value",
            "v",
            "--alt-trust-value",
            "a",
            "--idempotency-key",
            "k1",
        ]);
        assert_eq!(
            serde_json::to_value(&a.request).unwrap(),
            serde_json::json!({"action": "update_status", "status": "completed",
                "trust": {"seed": "s", "value": "v", "alt_value": "a"}})
        );
        assert_eq!(a.idempotency_key.as_deref(), Some("k1"));
        let a = parse(&[
            "payrecon",
            "set-status",
            "pay_1",
            "--status",
            "Completed",
            "--unlocked",
        ]);
        assert_eq!(
            serde_json::to_value(&a.request).unwrap(),
            serde_json::json!({"action": "set_status", "status": "Completed", "manual_status": false})
        );
        let a = parse(&[
            "payrecon",
            "reject",
            "pay_1",
            "--reason",
            "name=Reject Due to Business Request",
            "--fields-set",
            "id, code",
        ]);
        assert_eq!(
            serde_json::to_value(&a.request).unwrap(),
            serde_json::json!({"action": "reject",
                "rejection_reason": {"name": "Reject Due to Business Request"},
                "fields_set": ["id", "code"]})
        );
        let a = parse(&["payrecon", "release", "pay_1"]);
        assert_eq!(
            serde_json::to_value(&a.request).unwrap(),
            serde_json::json!({"action": "release"})
        );
    }

    #[test]
    fn a_required_field_is_a_required_flag() {
        let cmd = clap::Command::new("payrecon").subcommands(subcommands());
        let e = cmd
            .try_get_matches_from(["payrecon", "capture", "pay_1"])
            .unwrap_err();
        assert!(e.to_string().contains("--amount"), "{e}");
    }

    #[test]
    fn actions_of_one_name_are_described_alike_by_every_provider() {
        for (spec, _) in described() {
            for p in REGISTRY {
                for other in p.actions.iter().filter(|o| o.name == spec.name) {
                    let flags = |s: &ActionSpec| {
                        s.fields
                            .iter()
                            .map(|f| (f.path, f.flag, f.kind, f.required))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(flags(spec), flags(other), "{} of {}", spec.name, p.id);
                }
            }
        }
    }
}

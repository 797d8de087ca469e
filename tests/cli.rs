//! The command line as a user meets it: check-config on the shipped example
//! and on broken files, and the client commands against a running daemon.

mod common;

use std::process::Command;

use common::*;
use payrecon::providers::connpay::sim::{NewTransfer, Script, Settle};

/// The example's secrets and the values the tests give them.
const SECRETS: [(&str, &str); 10] = [
    ("PAYRECON_CONNPAY_CONTROL_KEY", "example-key"),
    ("PAYRECON_MYFATOORAH_TOKEN", "example-mf-token"),
    ("PAYRECON_MYFATOORAH_WEBHOOK_SECRET", "example-mf-webhook"),
    ("PAYRECON_REST_API_KEY", "example-rest-key"),
    ("PAYRECON_CONNECTFI_CLIENT_ID", "example-cfi-id"),
    ("PAYRECON_CONNECTFI_CLIENT_SECRET", "example-cfi-secret"),
    ("PAYRECON_CRM_USERNAME", "example-crm-user"),
    ("PAYRECON_CRM_PASSWORD", "example-crm-password"),
    ("PAYRECON_ADMIN_TOKEN", "example-token"),
    (
        "PAYRECON_NOTIFY_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ),
];

/// The binary with the example's secrets in its environment.
fn payrecon(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(args)
        .envs(SECRETS)
        .output()
        .unwrap()
}

#[test]
fn the_example_config_passes_check_config() {
    let out = payrecon(&[
        "check-config",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

/// The binary with none of the example's secrets in its environment.
fn without_secrets(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_payrecon"));
    for (var, _) in SECRETS {
        c.env_remove(var);
    }
    c.args(args).output().unwrap()
}

#[test]
fn check_config_reads_a_credentials_folder_or_checks_without_secrets() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example");
    // No secrets anywhere: the first one missing is named, exit 2.
    let out = without_secrets(&["check-config", "--config", example]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not set"));
    // --no-secrets: everything else is checked, the secrets are not.
    let out = without_secrets(&["check-config", "--no-secrets", "--config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --credentials DIR: one file per secret, as LoadCredential= makes
    // them; an empty one is named with its path.
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in SECRETS {
        std::fs::write(dir.path().join(var), format!("{value}\n")).unwrap();
    }
    let creds = dir.path().to_str().unwrap();
    let out = without_secrets(&["check-config", "--credentials", creds, "--config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("PAYRECON_CRM_PASSWORD"), "").unwrap();
    let out = without_secrets(&["check-config", "--credentials", creds, "--config", example]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PAYRECON_CRM_PASSWORD") && err.contains("empty"),
        "{err}"
    );
    // A bad secret is still caught: a notification secret that is not one.
    std::fs::write(dir.path().join("PAYRECON_CRM_PASSWORD"), "pw").unwrap();
    std::fs::write(dir.path().join("PAYRECON_NOTIFY_SECRET"), "not-base64!").unwrap();
    let out = without_secrets(&["check-config", "--credentials", creds, "--config", example]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_broken_config_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"))
            .unwrap();
    let cases = [
        (
            "poll_interval_min",
            "poll_intervall_min",
            "providers.connpay.polling.poll_intervall_min",
            "unknown field",
        ),
        (
            "max_in_flight = 64",
            "max_in_flight = \"many\"",
            "providers.connpay.polling.max_in_flight",
            "invalid type",
        ),
        (
            "max_in_flight = 64",
            "max_in_flight = 0",
            "providers.connpay.polling.max_in_flight",
            "at least 1",
        ),
        (
            "poll_interval_min = \"3s\"",
            "poll_interval_min = \"307445734561825861m\"",
            "providers.connpay.polling.poll_interval_min",
            "307445734561825861m",
        ),
    ];
    for (from, to, key, what) in cases {
        assert!(example.contains(from), "example lost `{from}`");
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, example.replacen(from, to, 1)).unwrap();
        let out = payrecon(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let line = example.lines().position(|l| l.contains(from)).unwrap() + 1;
        assert!(
            err.contains(&format!("broken.toml:{line}: key `{key}`")),
            "{err}"
        );
        assert!(err.contains(what), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"),
        ])
        .env_remove("PAYRECON_CONNPAY_CONTROL_KEY")
        .env("PAYRECON_MYFATOORAH_TOKEN", "t")
        .env("PAYRECON_MYFATOORAH_WEBHOOK_SECRET", "t")
        .env("PAYRECON_REST_API_KEY", "t")
        .env("PAYRECON_CONNECTFI_CLIENT_ID", "t")
        .env("PAYRECON_CONNECTFI_CLIENT_SECRET", "t")
        .env("PAYRECON_CRM_USERNAME", "t")
        .env("PAYRECON_CRM_PASSWORD", "t")
        .env("PAYRECON_ADMIN_TOKEN", "t")
        .env(
            "PAYRECON_NOTIFY_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYRECON_CONNPAY_CONTROL_KEY"));
    let out = payrecon(&["check-config", "--config", "/nonexistent/payrecon.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/payrecon.toml"));
}

#[test]
fn help_shows_no_secret_values() {
    let out = payrecon(&["track", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--provider"));
    assert!(!help.contains("example-token"));
    assert!(!help.contains("example-key"));
}

#[tokio::test]
async fn track_show_and_list_talk_to_a_running_daemon() {
    let h = Harness::start(Polling::default()).await;
    let t = NewTransfer::new(
        "cli-1",
        Script {
            settle: Settle::Manual,
            ..Default::default()
        },
    );
    h.sim.add(t.clone());
    let admin = format!("http://{}", h.admin_addr);
    let mut args = vec![
        "track".to_string(),
        "--admin-url".into(),
        admin.clone(),
        "--provider".into(),
        "connpay".into(),
    ];
    for (k, v) in t.keys() {
        args.push("--key".into());
        args.push(format!("{k}={v}"));
    }
    let bin = env!("CARGO_BIN_EXE_payrecon");
    let out = tokio::process::Command::new(bin)
        .args(&args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["state"], "pending");

    let run = |args: &[&str]| {
        let mut all = vec![args[0], "--admin-url", &admin];
        all.extend(&args[1..]);
        let all: Vec<String> = all.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::process::Command::new(bin)
                .args(&all)
                .output()
                .await
                .unwrap()
        }
    };
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // For a person: aligned fields, local times, the history as a table.
    let out = run(&["show", &id]).await;
    assert!(out.status.success());
    let shown = text(&out);
    assert!(
        shown.starts_with(&format!(
            "payment   {id}\nprovider  connpay\nstate     pending"
        )),
        "{shown}"
    );
    assert!(shown.contains("\npolling   open until "), "{shown}");
    assert!(shown.contains("access_token=[redacted]"), "{shown}");
    // For scripts: the API's answer.
    let out = run(&["show", &id, "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert!(v["history"].is_array());

    let out = run(&["list", "--state", "pending"]).await;
    let listed = text(&out);
    assert!(listed.starts_with("payment "), "{listed}");
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{id}  connpay   pending")),
        "{listed}"
    );
    let out = run(&["list", "--state", "pending", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payments"].as_array().unwrap().len(), 1);

    // A value outside the allowed ones is a usage error (2) that lists them.
    let out = run(&["list", "--state", "done"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("succeeded") && err.contains("pending"),
        "{err}"
    );

    let out = tokio::process::Command::new(bin)
        .args(["show", "--admin-url", &admin, "pay_missing"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("not_found"), "{err}");

    // `payrecon list | head`: the reader goes before the output is
    // written. No panic, exit 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = tokio::process::Command::new(bin)
        .args(["list", "--admin-url", &admin])
        .stdout(std::process::Stdio::from(writer))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn a_401_names_the_token_variable_and_a_refused_connection_says_so() {
    let env = std::collections::HashMap::from([(
        "TEST_ADMIN_TOKEN".to_string(),
        "s3cret-token".to_string(),
    )]);
    let h = Harness::start_with(Polling::default(), "token_env = \"TEST_ADMIN_TOKEN\"", env).await;
    let bin = env!("CARGO_BIN_EXE_payrecon");
    let admin = format!("http://{}", h.admin_addr);
    let out = tokio::process::Command::new(bin)
        .args(["show", "--admin-url", &admin, "pay_any"])
        .env_remove("PAYRECON_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("PAYRECON_ADMIN_TOKEN"),
        "{err}"
    );
    h.stop().await;
    // Nothing listens there now: the cause, not only "error sending request".
    let out = tokio::process::Command::new(bin)
        .args(["show", "--admin-url", &admin, "pay_any"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("connection refused"), "{err}");
}

/// The unit checks the config before each start with the command and
/// file `run` uses, and does not restart on the status a broken config
/// gives (a restart cannot fix it).
#[test]
fn the_unit_checks_the_config_first_and_does_not_restart_on_a_config_error() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/payrecon.service"
    ))
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the unit"))
            .trim()
            .to_string()
    };
    let (pre, start) = (value("ExecStartPre="), value("ExecStart="));
    assert_eq!(pre.replacen(" check-config ", " run ", 1), start);
    let status: i32 = value("RestartPreventExitStatus=").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("payrecon.toml");
    std::fs::write(&broken, "[store]\npath = 3\n").unwrap();
    let path = broken.to_str().unwrap();
    for command in ["check-config", "run"] {
        let out = payrecon(&[command, "--config", path]);
        assert_eq!(out.status.code(), Some(status), "{command}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("store.path"));
    }
}

/// Every flag and argument of every command, the provider action commands
/// included, says in `--help` what it is for.
#[test]
fn every_argument_has_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = vec![];
    walk(&payrecon::cli::command(), "payrecon", &mut missing);
    assert!(missing.is_empty(), "arguments without help: {missing:#?}");
}

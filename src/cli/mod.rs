//! The command line: argument types (parsed in `main.rs`) and what each
//! subcommand does. Errors are printed once, whole, and give exit code 1
//! (2 for a bad config).

pub mod actions;
pub mod client;
pub mod demo;
pub mod human;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::action::ActionState;
use crate::cli::client::AdminClient;
use crate::config::Config;
use crate::engine::TrackRequest;
use crate::model::Keys;

/// The admin token is read from this variable, never from a flag, so it
/// stays out of `ps`, shell history and `--help`.
pub const ADMIN_TOKEN_ENV: &str = "PAYRECON_ADMIN_TOKEN";

#[derive(Debug, Parser)]
#[command(
    name = "payrecon",
    version,
    about = "Tracks in-flight payments: polls, verified callbacks, reconciliation, durable final states."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// The config file (/etc/payrecon/config.toml under systemd).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file (and that its secrets are in the environment).
    CheckConfig {
        /// The config file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Look secrets up in DIR (one file per secret, named like its
        /// *_env value, as systemd's LoadCredential= makes them) before
        /// the environment: the service's credentials, checked before it
        /// starts.
        #[arg(long, value_name = "DIR", conflicts_with = "no_secrets")]
        credentials: Option<PathBuf>,
        /// Check everything but the secrets (a file on a build machine).
        #[arg(long)]
        no_secrets: bool,
    },
    /// Track a payment on a running daemon.
    Track {
        #[command(flatten)]
        admin: AdminArgs,
        /// The payment's provider.
        #[arg(long, value_parser = providers())]
        provider: String,
        /// A provider key, NAME=VALUE; repeat. For ConnPay: endpoint_id,
        /// invoice_id, session_token, access_token.
        #[arg(long = "key", value_name = "NAME=VALUE", value_parser = parse_kv)]
        keys: Vec<(String, String)>,
        /// Read keys from a JSON object in FILE ('-' for standard input),
        /// which keeps tokens out of the process list.
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
        /// The amount tracked, in minor units (1250 for 12.50 EUR);
        /// a provider reporting other money raises amount_mismatch.
        #[arg(long)]
        amount_minor: Option<i64>,
        /// The currency of --amount-minor (ISO 4217: EUR, KWD).
        #[arg(long)]
        currency: Option<String>,
    },
    /// Show one payment with its history, by payrecon id or, with
    /// --provider and --by, by the provider's own identifier.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The payrecon id (pay_...).
        #[arg(required_unless_present = "by")]
        id: Option<String>,
        /// The provider whose identifier --by names.
        #[arg(long, requires = "by", value_parser = providers())]
        provider: Option<String>,
        /// The provider's identifier, NAME=VALUE (ConnPay: invoice_id or order_id).
        #[arg(long, value_name = "NAME=VALUE", value_parser = parse_kv, requires = "provider", conflicts_with = "id")]
        by: Option<(String, String)>,
        /// Print the API's JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// List payments, a page at a time.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only payments in this state.
        #[arg(long, value_parser = states())]
        state: Option<String>,
        /// Only this provider's payments.
        #[arg(long, value_parser = providers())]
        provider: Option<String>,
        /// Only payments whose provider reported other money than tracked.
        #[arg(long)]
        mismatch: bool,
        /// Payments per page (the API's default when left out).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this payment id (the last page's `--after`).
        #[arg(long, value_name = "PAYMENT_ID")]
        after: Option<String>,
        /// Print the API's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an action.
    ShowAction {
        #[command(flatten)]
        admin: AdminArgs,
        /// The action's id (act_...).
        id: String,
        /// Print the API's JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Settle an action whose outcome is unknown, after checking with the
    /// provider by hand.
    ResolveAction {
        #[command(flatten)]
        admin: AdminArgs,
        /// The action's id (act_...).
        id: String,
        /// What the provider says became of it.
        #[arg(long = "as", value_name = "STATE", value_parser = ["succeeded", "failed"])]
        state: String,
        /// Why, for the record (who checked, what the provider said).
        #[arg(long)]
        note: Option<String>,
    },
    /// List the notifications given up after notify.horizon (dead
    /// letters), oldest first.
    DeadLetters {
        #[command(flatten)]
        admin: AdminArgs,
        /// Start after this webhook id (the last page's `next_after`).
        #[arg(long, value_name = "WEBHOOK_ID")]
        after: Option<String>,
        /// Dead letters per page (the API's default when left out).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Put dead letters back in the delivery queue, under their own
    /// webhook ids: one by its id, or every one since a time.
    Replay {
        #[command(flatten)]
        admin: AdminArgs,
        /// A dead letter's webhook id (`msg_…`).
        #[arg(
            value_name = "WEBHOOK_ID",
            required_unless_present = "since",
            conflicts_with = "since"
        )]
        id: Option<String>,
        /// Every dead letter of a change at or after this time (RFC 3339,
        /// or a date: midnight UTC).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Run one reconciliation sweep for a provider now.
    Reconcile {
        #[command(flatten)]
        admin: AdminArgs,
        /// The provider to sweep; waits for the sweep's end.
        #[arg(long, value_parser = providers())]
        provider: String,
    },
    /// Write final states for accounting, from a stopped daemon's store
    /// (--config or --store) or from a running daemon (the admin API).
    Export {
        #[command(flatten)]
        admin: AdminArgs,
        /// Payments final at or after this: 2026-11-01 or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// csv (a header line, then one payment per line) or jsonl (one
        /// JSON object per line).
        #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
        format: String,
        /// Read the store named in this config file (offline).
        #[arg(long, value_name = "FILE", conflicts_with = "store")]
        config: Option<PathBuf>,
        /// Read this store folder (offline).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Start a ConnPay sandbox and the daemon on loopback and watch
    /// transfers settle. Needs no config and no network.
    Demo {
        /// How many transfers to track.
        #[arg(long, default_value_t = 36)]
        transfers: usize,
    },
    /// Print a shell completion script (the Debian package installs
    /// bash, zsh and fish ones).
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), for packaging.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The daemon's admin API. The bearer token, if any, is read from
    /// PAYRECON_ADMIN_TOKEN.
    #[arg(
        long,
        env = "PAYRECON_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub admin_url: String,
}

/// The provider names, as `--provider` takes them (listed in `--help`).
fn providers() -> clap::builder::PossibleValuesParser {
    crate::model::ProviderId::ALL
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .into()
}

/// The payment states, as `--state` takes them.
fn states() -> clap::builder::PossibleValuesParser {
    crate::state::State::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .into()
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

/// A parsed command line: one of the fixed commands, or an action
/// subcommand made from the providers' descriptions.
#[derive(Debug)]
pub enum Invocation {
    Fixed(Cli),
    Action(actions::ActionCommand),
}

/// The whole command line: the fixed commands and the action subcommands.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().subcommands(actions::subcommands())
}

/// Parses `args` (the program name first); prints usage and exits 2 on a
/// usage error, as clap does.
pub fn parse_from<I, T>(args: I) -> Invocation
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let m = command().get_matches_from(args);
    if let Some(action) = m
        .subcommand()
        .and_then(|(name, sub)| actions::from_matches(name, sub))
    {
        return Invocation::Action(action.unwrap_or_else(|e| e.exit()));
    }
    Invocation::Fixed(Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit()))
}

/// Parses the process's command line.
pub fn parse() -> Invocation {
    parse_from(std::env::args_os())
}

/// Runs a parsed command line.
pub fn main(inv: Invocation) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("payrecon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match inv {
            Invocation::Fixed(cli) => dispatch(cli).await,
            Invocation::Action(a) => print_json(
                client(&a.admin)
                    .action(&a.payment, &a.request, a.idempotency_key.as_deref())
                    .await,
            ),
        }
    })
}

fn env() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// The config as `run` would load it: secrets from `credentials` (or
/// `$CREDENTIALS_DIRECTORY`) and the environment, or none at all.
fn check_config(
    path: &std::path::Path,
    credentials: Option<PathBuf>,
    no_secrets: bool,
) -> Result<Config, crate::config::ConfigError> {
    if no_secrets {
        return Config::load_without_secrets(path);
    }
    let mut env = env();
    if let Some(dir) = credentials {
        env.insert(
            "CREDENTIALS_DIRECTORY".into(),
            dir.to_string_lossy().into_owned(),
        );
    }
    Config::load(path, &env)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("payrecon: {msg}");
    ExitCode::FAILURE
}

/// Writes a command's output. A reader that has gone (`payrecon list |
/// head`) is not an error: the rest is not wanted.
fn print_out(bytes: impl AsRef<[u8]>) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes.as_ref()).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => run(config).await,
        Command::CheckConfig {
            config,
            credentials,
            no_secrets,
        } => match check_config(&config, credentials, no_secrets) {
            Ok(c) => {
                let mut text = format!("{}: ok\n", config.display());
                for c in &c.providers {
                    text += &format!("  {}: {}", c.provider.id(), c.base_url);
                    if c.provider.polls() {
                        let p = c.provider.polling();
                        text += &format!(
                            " (poll every {:?}-{:?} for {:?}-{:?}, {} in flight)",
                            p.poll_interval_min,
                            p.poll_interval_max,
                            p.poll_window_min,
                            p.poll_window_max,
                            p.max_in_flight
                        );
                    }
                    text.push('\n');
                }
                text += &format!(
                    "  callbacks on {}, admin on {}\n",
                    c.file.callback.listen, c.file.admin.listen
                );
                print_out(text)
            }
            Err(e) => {
                eprintln!("payrecon: {e}");
                ExitCode::from(2)
            }
        },
        Command::Track {
            admin,
            provider,
            keys,
            keys_file,
            amount_minor,
            currency,
        } => {
            let mut all: Keys = Keys::new();
            if let Some(f) = keys_file {
                let text = if f.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&f)
                };
                let parsed = text
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str::<Keys>(&t).map_err(|e| e.to_string()));
                match parsed {
                    Ok(k) => all.extend(k),
                    Err(e) => return fail(format!("{}: {e}", f.display())),
                }
            }
            all.extend(keys);
            let req = TrackRequest {
                provider,
                keys: all,
                amount_minor,
                currency,
            };
            print_json(client(&admin).track(&req).await)
        }
        Command::Show {
            admin,
            id,
            provider,
            by,
            json,
        } => {
            let found = match (id, provider, by) {
                (_, Some(p), Some((name, value))) => client(&admin).find(&p, &name, &value).await,
                (Some(id), _, _) => client(&admin).get(&id).await,
                _ => return usage("give a payment id, or --provider and --by NAME=VALUE"),
            };
            print_as(found, json, human::payment)
        }
        Command::List {
            admin,
            state,
            provider,
            mismatch,
            limit,
            after,
            json,
        } => print_as(
            client(&admin)
                .list_filtered(
                    state.as_deref(),
                    provider.as_deref(),
                    mismatch,
                    limit,
                    after.as_deref(),
                )
                .await,
            json,
            human::page,
        ),
        Command::ShowAction { admin, id, json } => {
            print_as(client(&admin).get_action(&id).await, json, human::action)
        }
        Command::ResolveAction {
            admin,
            id,
            state,
            note,
        } => {
            let state = match state.as_str() {
                "succeeded" => ActionState::Succeeded,
                "failed" => ActionState::Failed,
                other => return usage(format!("--as takes succeeded or failed, not `{other}`")),
            };
            print_json(
                client(&admin)
                    .resolve_action(&id, &crate::listen::admin::Resolve { state, note })
                    .await,
            )
        }
        Command::DeadLetters {
            admin,
            after,
            limit,
        } => print_json(client(&admin).dead_letters(after.as_deref(), limit).await),
        Command::Replay { admin, id, since } => match (id, since) {
            (Some(id), _) => print_json(client(&admin).replay(&id).await),
            (None, Some(since)) => print_json(client(&admin).replay_since(&since).await),
            (None, None) => usage("give a webhook id or --since"),
        },
        Command::Reconcile { admin, provider } => {
            let spinner = progress(format!("sweeping {provider}"));
            let swept = client(&admin).reconcile(&provider).await;
            spinner.finish_and_clear();
            print_json(swept)
        }
        Command::Export {
            admin,
            since,
            format,
            config,
            store,
        } => export(admin, since, format, config, store).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command(), "payrecon", &mut out);
            print_out(out)
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(command()).render(&mut out) {
                Ok(()) => print_out(out),
                Err(e) => fail(e),
            }
        }
        Command::Demo { transfers } => match crate::cli::demo::run(transfers).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => fail(format!("demo: {e}")),
        },
    }
}

async fn export(
    admin: AdminArgs,
    since: String,
    format: String,
    config: Option<PathBuf>,
    store: Option<PathBuf>,
) -> ExitCode {
    use std::io::Write;
    let since_ms = match crate::export::parse_since(&since) {
        Ok(s) => s,
        Err(m) => return usage(format!("--since: {m}")),
    };
    let fmt: crate::export::Format = match format.parse() {
        Ok(f) => f,
        Err(m) => return usage(format!("--format: {m}")),
    };
    let path = match (config, store) {
        (Some(c), _) => match Config::load_file(&c) {
            Ok(f) => Some(f.store.path),
            Err(e) => {
                eprintln!("payrecon: {e}");
                return ExitCode::from(2);
            }
        },
        (None, s) => s,
    };
    let Some(path) = path else {
        let spinner = progress("exporting".to_string());
        let exported = client(&admin).export(&since, &format).await;
        spinner.finish_and_clear();
        return match exported {
            Ok(body) => print_out(&body),
            Err(e) => fail(e),
        };
    };
    if !path.exists() {
        return fail(format!("no store at {}", path.display()));
    }
    let store = match crate::store::Store::open(&path) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "cannot open the store at {}: {e}. If the daemon is running, export through its API (leave out --config and --store)",
                path.display()
            ))
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match crate::export::write(&store, since_ms, fmt, &mut out)
        .await
        .and_then(|n| {
            out.flush()?;
            Ok(n)
        }) {
        Ok(n) => {
            eprintln!("payrecon: exported {n} payments");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn client(a: &AdminArgs) -> AdminClient {
    AdminClient::new(
        &a.admin_url,
        std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty()),
    )
}

/// A spinner with the time taken, on standard error when it is a
/// terminal (nothing otherwise), for a request that waits on a long
/// operation.
pub fn progress(what: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_message(what);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A usage error found after parsing: exit status 2, like clap's own.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("payrecon: {msg}\n\nFor more information, try '--help'.");
    ExitCode::from(2)
}

/// The answer as JSON (`--json`) or as `human` writes it for a person.
fn print_as<T: serde::Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
    json: bool,
    human: fn(&T) -> String,
) -> ExitCode {
    match r {
        Ok(v) if !json => print_out(human(&v)),
        other => print_json(other),
    }
}

fn print_json<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> ExitCode {
    match r {
        Ok(v) => print_out(format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )),
        Err(e) => fail(e),
    }
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path, &env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("payrecon: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(config.file.log.format, &config.file.log.level);
    crate::guard::install_panic_hook();
    let listeners = match crate::daemon::Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let cancel = CancellationToken::new();
    tokio::spawn(on_signal(cancel.clone()));
    // Installed before the daemon starts: SIGHUP's default is to exit.
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let mut daemon = match crate::daemon::start(&config, listeners, cancel.clone()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(alert = "start_failed", error = %e, "payrecon stopped");
            return fail(e);
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", config = %path.display(), "reloading the config");
                match Config::load(&path, &env()) {
                    Ok(new) => match daemon.reload(new).await {
                        Ok(()) => tracing::info!("config reloaded"),
                        Err(e) => tracing::error!(alert = "reload_failed", error = %e, "reload refused; the running config stays"),
                    },
                    Err(e) => tracing::error!(alert = "reload_failed", error = %e, "reload refused: the new config does not validate; the running config stays"),
                }
            }
        }
    }
    daemon.wait().await;
    ExitCode::SUCCESS
}

/// SIGTERM or SIGINT cancels the root token.
async fn on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            alert = "signals_unavailable",
            "cannot install signal handlers; stop payrecon with SIGKILL"
        );
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
    }
    cancel.cancel();
}

//! Log output: JSON lines or journald-friendly text, chosen in the config.
//! Field names are stable: `payment_id`, `provider`, `from`, `to`,
//! `source`, `latency_ms`, and `alert` on every event that needs a person.
//! The level filter can be changed at run time (SIGHUP reload).

use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Swaps the installed subscriber's filter; set by [`init`].
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Installs the global subscriber. A second call is a no-op (tests).
///
/// Under systemd (`JOURNAL_STREAM` names our standard error), each line
/// starts with its syslog priority, `<3>` for ERROR to `<7>` for TRACE,
/// which journald strips and keeps as the entry's priority, and text lines
/// carry no time of their own (journald records it).
pub fn init(format: LogFormat, level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    let initial = filter(level).unwrap_or_else(|_| filter("info").expect("info is a filter"));
    let line = Line {
        json: matches!(format, LogFormat::Json),
        journal: stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    };
    let (level_filter, handle) = tracing_subscriber::reload::Layer::new(initial);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .fmt_fields(JsonFields::new())
        .event_format(line)
        .with_filter(level_filter);
    let installed = tracing_subscriber::registry()
        .with(output)
        .with(AlertCounter.with_filter(HasAlert))
        .try_init();
    if installed.is_ok() {
        let _ = SET_LEVEL.set(Box::new(move |l| {
            handle.reload(filter(l)?).map_err(|e| e.to_string())
        }));
    }
}

/// Counts every event with an `alert` field into `payrecon_alerts_total`,
/// whatever `log.level` lets through to the output.
struct AlertCounter;

impl<S: Subscriber> tracing_subscriber::Layer<S> for AlertCounter {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(serde_json::Value::String(alert)) = fields.take("alert") {
            crate::metrics::alert_raised(&alert);
        }
    }
}

/// Only events that carry an `alert` field reach [`AlertCounter`]; decided
/// once per call site, so every other event costs it nothing.
struct HasAlert;

impl HasAlert {
    fn has(meta: &Metadata<'_>) -> bool {
        meta.is_event() && meta.fields().field("alert").is_some()
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for HasAlert {
    fn enabled(&self, meta: &Metadata<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        Self::has(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::has(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// Whether standard error is the journal stream systemd gave us:
/// `JOURNAL_STREAM` is `device:inode` of that stream, and a child whose
/// output was redirected has another.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
    else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// One log line, JSON or text, with every field at one path: the event's
/// own fields and those of the spans it is in (a poll's `payment_id` and
/// `provider`) side by side at the top, never under `span`; an event's
/// field wins over a span's of the same name.
struct Line {
    json: bool,
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                // The spans' fields were recorded as JSON (`JsonFields`).
                if let Some(Ok(serde_json::Value::Object(map))) = ext
                    .get::<FormattedFields<N>>()
                    .map(|f| serde_json::from_str::<serde_json::Value>(f))
                {
                    for (k, v) in map {
                        fields.put(k, v);
                    }
                }
            }
        }
        event.record(&mut fields);
        let level = *event.metadata().level();
        if self.journal {
            write!(w, "<{}>", priority(level))?;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let message = fields.take("message");
        if self.json {
            let mut head = vec![
                ("timestamp", serde_json::Value::String(now)),
                ("level", serde_json::Value::String(level.to_string())),
            ];
            if let Some(m) = message {
                head.push(("message", m));
            }
            w.write_char('{')?;
            let all = head
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .chain(fields.0);
            for (i, (k, v)) in all.enumerate() {
                let sep = if i == 0 { "" } else { "," };
                write!(w, "{sep}{}:{v}", serde_json::Value::String(k))?;
            }
            writeln!(w, "}}")
        } else {
            if !self.journal {
                write!(w, "{now} ")?;
            }
            write!(w, "{level:>5}")?;
            if let Some(m) = message {
                match m {
                    serde_json::Value::String(m) => write!(w, " {m}")?,
                    other => write!(w, " {other}")?,
                }
            }
            for (k, v) in fields.0 {
                match v {
                    serde_json::Value::String(s) if is_bare(&s) => write!(w, " {k}={s}")?,
                    other => write!(w, " {k}={other}")?,
                }
            }
            writeln!(w)
        }
    }
}

/// syslog's priority for a level, as journald reads it from `<N>`.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A text value that needs no quotes: no spaces, quotes or `=`.
fn is_bare(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=' | '\\'))
}

/// Fields in the order first seen; a later value replaces an earlier one.
#[derive(Default)]
struct Fields(Vec<(String, serde_json::Value)>);

impl Fields {
    fn put(&mut self, k: String, v: serde_json::Value) {
        match self.0.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }

    fn take(&mut self, k: &str) -> Option<serde_json::Value> {
        let i = self.0.iter().position(|(name, _)| name == k)?;
        Some(self.0.remove(i).1)
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.put(f.name().into(), format!("{v:?}").into());
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.put(f.name().into(), v.to_string().into());
    }
}

/// Libraries whose INFO events are their own bookkeeping, not payrecon's
/// (tokio-cron-scheduler logs each job it adds and runs): WARN and above
/// unless `log.level` names them.
const QUIET: [&str; 1] = ["tokio_cron_scheduler"];

/// `log.level` as a filter, with the libraries in [`QUIET`] held to WARN.
fn filter(level: &str) -> Result<EnvFilter, String> {
    let mut f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    for target in QUIET.iter().filter(|t| !level.contains(*t)) {
        let d = format!("{target}=warn")
            .parse()
            .map_err(|e| format!("{e}"))?;
        f = f.add_directive(d);
    }
    Ok(f)
}

/// The levels a filter directive may end in.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a level filter without installing it. Stricter than
/// `EnvFilter`: a directive that is not a level (`warning`, `payrecon`)
/// would be taken as a target name, enabling that target alone and
/// silencing everything else, alerts included; here it is an error. Every
/// directive is a level or `target=level`.
pub fn check_level(level: &str) -> Result<(), String> {
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(lvl.trim())) {
            return Err(format!(
                "`{lvl}` is not a level: use one of {}, or `target=level` directives",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("`{level}` is not a log filter: {e}"))
}

/// Changes the level filter of the subscriber [`init`] installed.
pub fn set_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Err("no subscriber of ours is installed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_level, filter, stderr_is_journal, Line};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::JsonFields;

    /// What `Line` writes for a poll-like span with one event in it and
    /// one event outside any span.
    fn lines(json: bool, journal: bool) -> Vec<String> {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .fmt_fields(JsonFields::new())
            .event_format(Line { json, journal })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("poll", payment_id = "pay_1", provider = "connpay");
            let _in = span.enter();
            tracing::warn!(
                alert = "provider_answer_invalid",
                error = "no \"status\" = here",
                "status answer unreadable"
            );
            tracing::info!(
                event = "transition",
                payment_id = "pay_1",
                attempts = 2u64,
                "state changed"
            );
            drop(_in);
            tracing::error!(alert = "store_error", "outside");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn json_lines_have_one_path_per_field_with_span_fields_at_the_top() {
        let lines = lines(true, false);
        assert_eq!(lines.len(), 3, "{lines:?}");
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["payment_id"], "pay_1");
        assert_eq!(v[0]["provider"], "connpay");
        assert_eq!(v[0]["alert"], "provider_answer_invalid");
        assert_eq!(v[0]["level"], "WARN");
        assert_eq!(v[0]["message"], "status answer unreadable");
        assert!(v[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(v
            .iter()
            .all(|v| v.get("span").is_none() && v.get("fields").is_none()));
        // Named by the event and its span: one key, written once.
        assert_eq!(
            lines[1].matches("\"payment_id\"").count(),
            1,
            "{}",
            lines[1]
        );
        assert_eq!(v[1]["attempts"], 2);
        assert!(v[2].get("payment_id").is_none());
    }

    #[test]
    fn under_journald_lines_carry_their_priority_and_text_no_time() {
        let text = lines(false, true);
        assert!(text[0].starts_with("<4> WARN status answer unreadable payment_id=pay_1 provider=connpay alert=provider_answer_invalid error="), "{}", text[0]);
        assert!(
            text[0].ends_with(r#"error="no \"status\" = here""#),
            "{}",
            text[0]
        );
        assert!(text[1].starts_with("<6> INFO state changed"), "{}", text[1]);
        assert!(
            text[2].starts_with("<3>ERROR outside alert=store_error"),
            "{}",
            text[2]
        );
        let json = lines(true, true);
        assert!(json[2].starts_with("<3>{\"timestamp\":"), "{}", json[2]);
        // Outside systemd: a time first, no priority.
        let plain = lines(false, false);
        assert!(
            plain[0].contains("Z  WARN status answer unreadable"),
            "{}",
            plain[0]
        );
        assert!(!plain[0].starts_with('<'));
    }

    #[test]
    fn journal_stream_is_only_ours_when_it_names_our_stderr() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap();
        let ours = format!("{}:{}", meta.dev(), meta.ino());
        assert!(stderr_is_journal(Some(&ours)));
        assert!(!stderr_is_journal(Some(&format!(
            "{}:{}",
            meta.dev(),
            meta.ino() + 1
        ))));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(None));
    }

    /// The messages a subscriber with `level`'s filter lets through.
    fn passed(level: &str) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(level).unwrap())
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "tokio_cron_scheduler::job_scheduler", "cron chatter");
            tracing::warn!(target: "tokio_cron_scheduler::job_scheduler", "cron trouble");
            tracing::info!(target: "payrecon::engine", "payrecon event");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_cron_scheduler_s_own_info_is_held_back_unless_asked_for() {
        let info = passed("info");
        assert!(info.contains("payrecon event") && info.contains("cron trouble"));
        assert!(!info.contains("cron chatter"), "{info}");
        let asked = passed("info,tokio_cron_scheduler=info");
        assert!(asked.contains("cron chatter"), "{asked}");
    }

    #[test]
    fn a_filter_that_would_silence_everything_is_refused() {
        for ok in [
            "info",
            "WARN",
            "info,payrecon=debug",
            "payrecon::engine=trace,hyper=off",
            "error",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
        for bad in [
            "warning",
            "payrecon",
            "info,verbose",
            "payrecon=loud",
            "info,=x",
        ] {
            let e = check_level(bad).unwrap_err();
            assert!(e.contains("is not a level"), "{bad}: {e}");
        }
    }
}

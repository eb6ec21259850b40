//! The agent's log output: `tracing` events to stderr, as logfmt lines that
//! read like k0s's (logrus) logs, or as JSON objects.
//!
//! ```text
//! time="2026-11-29T17:54:49.123456Z" level=info msg="became master" component=vrrp vrid=51
//! ```
//!
//! The level comes from the `--log-level` argument, else `CPLB_LOG`, else
//! `RUST_LOG`, else `info`; any of them may be a full `EnvFilter` directive
//! such as `info,cplb_vrrp=debug`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The level used when neither the argument nor the environment sets one.
pub const DEFAULT_LEVEL: &str = "info";

/// Environment variables consulted for the level, in order.
pub const LEVEL_ENV: [&str; 2] = ["CPLB_LOG", "RUST_LOG"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `time=… level=info msg="…" component=vrrp …`, like k0s.
    #[default]
    Logfmt,
    /// One JSON object per line (tracing-subscriber's format, event fields
    /// at the top level).
    Json,
}

/// The logging flags every long-running subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "logfmt")]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `cplb=debug,warn`); default
    /// from CPLB_LOG, else info.
    #[arg(long)]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Sets up logging; a bad level falls back to info with a message.
    pub fn init(&self) {
        if let Err(e) = init(self.log_format, self.log_level.as_deref()) {
            eprintln!("cplb: {e}; logging at info");
            let _ = init(self.log_format, Some("info"));
        }
    }

    /// The same flags, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.log_format == LogFormat::Json {
            args.extend(["--log-format".to_owned(), "json".to_owned()]);
        }
        if let Some(level) = &self.log_level {
            args.extend(["--log-level".to_owned(), level.clone()]);
        }
        args
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level or filter directive does not parse.
    #[error("invalid log level {spec:?}: {source}")]
    Filter {
        /// The directive as given.
        spec: String,
        /// What the filter parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// Another global subscriber was installed first.
    #[error("cannot install the logger: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber, writing to stderr. `level` (e.g. from a
/// command-line flag) wins over the environment.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), LoggingError> {
    subscriber(format, level, std::io::stderr)?.try_init()?;
    Ok(())
}

/// The subscriber [`init`] installs, writing to `writer` instead of stderr
/// (tests use a buffer).
pub fn subscriber<W>(
    format: LogFormat,
    level: Option<&str>,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, LoggingError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let spec = filter_spec(level, |name| std::env::var(name).ok());
    let filter = EnvFilter::try_new(&spec).map_err(|source| LoggingError::Filter {
        spec: spec.clone(),
        source,
    })?;
    Ok(formatted(format, filter, writer))
}

/// Installs a subscriber like [`init`]'s that filters by level only: for
/// the supervisor, which is kept small (no directive parser: that is a
/// regular-expression engine). A directive that is not a plain level
/// (`cplb=debug,warn`) logs at [`DEFAULT_LEVEL`].
pub fn init_by_level(format: LogFormat, level: Option<&str>) -> Result<(), LoggingError> {
    use std::str::FromStr;
    use tracing_subscriber::filter::LevelFilter;
    let spec = filter_spec(level, |name| std::env::var(name).ok());
    let filter = LevelFilter::from_str(&spec).unwrap_or(LevelFilter::INFO);
    formatted(format, filter, std::io::stderr).try_init()?;
    Ok(())
}

/// Our line format on top of `filter`.
fn formatted<F, W>(format: LogFormat, filter: F, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    F: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .event_format(Logfmt)
                    .fmt_fields(LogfmtFields)
                    .with_ansi(false)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false)
                    .with_writer(writer),
            ),
        ),
    }
}

/// The filter directive: `level`, else the first non-empty variable of
/// [`LEVEL_ENV`] (looked up through `env`), else [`DEFAULT_LEVEL`].
fn filter_spec(level: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    let given = level.map(str::trim).filter(|l| !l.is_empty());
    if let Some(level) = given {
        return level.to_string();
    }
    LEVEL_ENV
        .iter()
        .filter_map(|name| env(name))
        .map(|value| value.trim().to_string())
        .find(|value| !value.is_empty())
        .unwrap_or_else(|| DEFAULT_LEVEL.to_string())
}

/// logrus's level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Writes `value` bare when logfmt allows it, else quoted and escaped (as
/// logrus does: bare only for letters, digits and `-._/@^+`).
fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c));
    if bare {
        out.write_str(value)
    } else {
        // Rust's debug escaping: `"`, `\`, newlines and control characters,
        // so one event stays one line.
        write!(out, "{value:?}")
    }
}

/// An event's or a span's fields, in the order they were recorded.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(&'static str, String)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            self.pairs.push((field.name(), value));
        }
    }

    fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(key, _)| *key == name)
    }

    /// ` key=value` for each field other than the message.
    fn write_pairs(&self, out: &mut impl fmt::Write) -> fmt::Result {
        for (key, value) in &self.pairs {
            write!(out, " {key}=")?;
            write_value(out, value)?;
        }
        Ok(())
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

/// The logfmt event format: `time`, `level`, `msg`, the event's fields, then
/// the fields of the spans it is in (outermost first). Events with no
/// `component` anywhere (e.g. from libraries) get `target=` so their origin
/// shows.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        writer.write_str("time=")?;
        write_value(&mut writer, &time)?;
        write!(writer, " level={}", level_name(event.metadata().level()))?;

        let mut fields = Fields::default();
        event.record(&mut fields);
        writer.write_str(" msg=")?;
        write_value(&mut writer, fields.message.as_deref().unwrap_or_default())?;
        fields.write_pairs(&mut writer)?;

        let mut component = fields.has("component");
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if formatted.is_empty() {
                    continue;
                }
                component |=
                    formatted.starts_with("component=") || formatted.contains(" component=");
                write!(writer, " {}", formatted.as_str())?;
            }
        }
        if !component {
            writer.write_str(" target=")?;
            write_value(&mut writer, event.metadata().target())?;
        }
        writeln!(writer)
    }
}

/// Span fields as logfmt pairs, for [`Logfmt`] to append to each event.
struct LogfmtFields;

impl<'writer> FormatFields<'writer> for LogfmtFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut recorded = Fields::default();
        fields.record(&mut recorded);
        let mut text = String::new();
        if let Some(message) = &recorded.message {
            text.push_str(" msg=");
            write_value(&mut text, message)?;
        }
        recorded.write_pairs(&mut text)?;
        writer.write_str(text.trim_start())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, level: &str, f: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, Some(level), buffer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, f);
        buffer.lines()
    }

    #[test]
    fn logfmt_reads_like_k0s() {
        let lines = capture(LogFormat::Logfmt, "info", || {
            tracing::info!(component = "vrrp", vrid = 51, "became master");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.starts_with("time=\""), "{line}");
        assert!(
            line.ends_with(" level=info msg=\"became master\" component=vrrp vrid=51"),
            "{line}"
        );
        // The timestamp is RFC 3339 in UTC.
        let time = line
            .strip_prefix("time=\"")
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    }

    #[test]
    fn logfmt_quotes_what_needs_it_and_keeps_one_line_per_event() {
        let error = io::Error::other("refused: \"no\"\nretry");
        let lines = capture(LogFormat::Logfmt, "info", || {
            tracing::warn!(
                component = "proxy",
                backend = "192.0.2.10:6443",
                error = &error as &(dyn std::error::Error + 'static),
                empty = "",
                "connect failed"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(
            line.contains(" level=warning msg=\"connect failed\" "),
            "{line}"
        );
        assert!(line.contains(" backend=\"192.0.2.10:6443\""), "{line}");
        assert!(
            line.contains(r#" error="refused: \"no\"\nretry""#),
            "{line}"
        );
        assert!(line.contains(" empty=\"\""), "{line}");
    }

    #[test]
    fn span_fields_follow_the_event_and_count_as_component() {
        let lines = capture(LogFormat::Logfmt, "info", || {
            let span = tracing::info_span!("instance", component = "vrrp", vrid = 7);
            let _entered = span.enter();
            tracing::info!(state = "backup", "transition");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(" msg=transition state=backup component=vrrp vrid=7"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn events_without_component_name_their_target() {
        let lines = capture(LogFormat::Logfmt, "info", || {
            tracing::info!(target: "kube_client::client", "connected");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(" msg=connected target=\"kube_client::client\""),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn the_level_filters() {
        let emit = || {
            tracing::debug!(component = "health", "probe");
            tracing::info!(component = "health", "up");
        };
        let info = capture(LogFormat::Logfmt, "info", emit);
        assert_eq!(info.len(), 1, "{info:?}");
        assert!(info[0].contains("msg=up"));
        let debug = capture(LogFormat::Logfmt, "debug", emit);
        assert_eq!(debug.len(), 2, "{debug:?}");
        assert!(debug[0].contains("level=debug msg=probe"));
        // A directive per target works too.
        let warn_only = capture(LogFormat::Logfmt, "warn,other=debug", emit);
        assert!(warn_only.is_empty(), "{warn_only:?}");
    }

    #[test]
    fn json_lines_parse_and_carry_the_fields() {
        let lines = capture(LogFormat::Json, "info", || {
            tracing::info!(component = "vrrp", vrid = 51, "became master");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(value["message"], "became master");
        assert_eq!(value["component"], "vrrp");
        assert_eq!(value["vrid"], 51);
        assert_eq!(value["level"], "INFO");
        assert!(value["timestamp"].is_string(), "{value}");
    }

    #[test]
    fn level_comes_from_the_argument_then_cplb_log_then_rust_log() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let both = env(&[("CPLB_LOG", "debug"), ("RUST_LOG", "trace")]);
        assert_eq!(filter_spec(Some("warn"), both), "warn");
        assert_eq!(filter_spec(None, both), "debug");
        assert_eq!(filter_spec(Some(" "), both), "debug");
        let rust_only = env(&[("CPLB_LOG", ""), ("RUST_LOG", "trace")]);
        assert_eq!(filter_spec(None, rust_only), "trace");
        assert_eq!(filter_spec(None, env(&[])), DEFAULT_LEVEL);
    }

    #[test]
    fn a_bad_level_is_an_error() {
        let err = subscriber(LogFormat::Logfmt, Some("cplb=loud"), Buffer::default())
            .err()
            .unwrap();
        assert!(matches!(err, LoggingError::Filter { ref spec, .. } if spec == "cplb=loud"));
    }
}

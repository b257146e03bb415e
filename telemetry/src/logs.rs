//! One JSON object per log line: `timestamp`, `level`, `target`, `message`, the fields of the
//! enclosing spans (so a request span's `trace_id`/`span_id` appear on every line logged inside
//! it) and the event's own fields, with personal data scrubbed from every string.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::scrub::scrub;

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
}

/// Keeps each span's fields in its extensions, for the formatter to put on every line inside it.
pub struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }
}

/// The line format.
pub struct JsonLines;

/// Fields that are identifiers made by systems, not people, and are what an operator searches
/// by: never scrubbed (a long numeric transaction id can look like a card number).
const IDENTIFIERS: &[&str] = &["timestamp", "trace_id", "span_id", "transaction_id"];

/// Lets a repeated log line through at most once per interval, and says how many were held back,
/// so that an error repeating thousands of times a second costs one line a second.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    state: std::sync::Mutex<Gate>,
}

/// One throttled kind of line: when it was last written, and how many were held back since.
#[derive(Debug, Default)]
struct Gate {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Gate {
    fn allow(&mut self, every: std::time::Duration) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Self {
        Self { every, state: std::sync::Mutex::new(Gate::default()) }
    }

    /// At most one line a second: what a warning about a per-record or per-poll trouble gets.
    pub fn per_second() -> Self {
        Self::new(std::time::Duration::from_secs(1))
    }

    /// `Some(suppressed since the last line)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).allow(self.every)
    }
}

/// A [`Throttle`] per kind of line (e.g. a client library's subsystem or error code), so that one
/// trouble repeating does not hide another that starts meanwhile. Kinds past the first
/// [`KeyedThrottle::MAX_KINDS`] share one throttle, which keeps the memory bounded whatever the
/// keys.
#[derive(Debug)]
pub struct KeyedThrottle {
    every: std::time::Duration,
    state: std::sync::Mutex<std::collections::HashMap<String, Gate>>,
}

impl KeyedThrottle {
    pub const MAX_KINDS: usize = 64;

    pub fn new(every: std::time::Duration) -> Self {
        Self { every, state: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    /// At most one line a second per kind.
    pub fn per_second() -> Self {
        Self::new(std::time::Duration::from_secs(1))
    }

    /// `Some(lines of this kind suppressed since its last line)` when one may be written now.
    pub fn allow(&self, kind: &str) -> Option<u64> {
        let mut gates = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.get_mut(kind) {
            return gate.allow(self.every);
        }
        let key = if gates.len() < Self::MAX_KINDS - 1 { kind } else { "" };
        gates.entry(key.to_string()).or_default().allow(self.every)
    }
}

fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => map.values_mut().for_each(scrub_value),
        _ => {}
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc();
        let ts = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        line.insert("timestamp".into(), ts.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<Fields>() {
                    line.extend(fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        line.extend(fields.0);
        for (k, v) in line.iter_mut() {
            if !IDENTIFIERS.contains(&k.as_str()) {
                scrub_value(v);
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The JSON lines written while `f` runs, at every level, as the services write them.
    pub(crate) fn capture(f: impl FnOnce()) -> Vec<String> {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(SpanFieldsLayer)
            .with(tracing_subscriber::fmt::layer().event_format(JsonLines).with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new(std::time::Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        let t2 = Throttle::new(std::time::Duration::ZERO);
        assert_eq!(t2.allow(), Some(0));
        assert_eq!(t2.allow(), Some(0));
        let t3 = Throttle::new(std::time::Duration::from_millis(30));
        assert_eq!(t3.allow(), Some(0));
        assert_eq!((t3.allow(), t3.allow()), (None, None));
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(t3.allow(), Some(2), "the next line says how many were held back");
        assert_eq!(t3.allow(), None);
    }

    #[test]
    fn keyed_throttle_holds_back_each_kind_on_its_own_and_bounds_the_kinds() {
        let t = KeyedThrottle::new(std::time::Duration::from_secs(3600));
        assert_eq!(t.allow("FAIL"), Some(0));
        assert_eq!(t.allow("FAIL"), None);
        assert_eq!(t.allow("REQTMOUT"), Some(0), "another kind is not hidden by the first");
        assert_eq!(t.allow("REQTMOUT"), None);
        // Past the bound, new kinds share one throttle: one line for all of them.
        for i in 2..KeyedThrottle::MAX_KINDS - 1 {
            assert_eq!(t.allow(&format!("kind{i}")), Some(0));
        }
        assert_eq!(t.allow("late1"), Some(0));
        assert_eq!(t.allow("late2"), None);
        assert_eq!(t.allow("FAIL"), None, "known kinds keep their own");
        assert!(t.state.lock().unwrap().len() <= KeyedThrottle::MAX_KINDS);
    }

    #[test]
    fn lines_are_json_with_span_ids_and_without_pii() {
        let lines = capture(|| {
            let span = tracing::info_span!("request", trace_id = "0af7651916cd43dd8448eb211c80319c", span_id = "b7ad6b7169203331");
            let _g = span.enter();
            tracing::info!(transaction_id = "txn-4111111111111111", amount = 149.99, note = "card 4111 1111 1111 1111 from jane@example.com", "decision made");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "decision made");
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["span_id"], "b7ad6b7169203331");
        assert_eq!(v["transaction_id"], "txn-4111111111111111", "identifiers are kept");
        assert_eq!(v["amount"], 149.99);
        assert_eq!(v["note"], "card [card] from [email]");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(v["target"].as_str().unwrap().starts_with("telemetry"));
    }
}

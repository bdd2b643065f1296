//! Protocol transition events for trace validation (issue 9, `kcheck conform`).
//!
//! The sans-IO cores and the broker state emit one `tracing` event with the target
//! [`TARGET`] at each transition the models know (a leader or follower append, a truncation,
//! an HW advance, a new leader epoch applied, a vote, a KRaft leader elected). When a node
//! runs with `--trace-file PATH`, [`JsonLinesLayer`] writes each of them as one JSON line:
//! the event's fields plus the node id, a per-node sequence number and a CLOCK_MONOTONIC
//! timestamp in nanoseconds. The monotonic clock is shared by every process of one host (and
//! the harness's clock nemesis leaves it alone: `FAKETIME_DONT_FAKE_MONOTONIC=1`), so the
//! checker can merge the nodes' files into one order that respects every message a node sent
//! to another. See `specs/conformance.md`.
//!
//! Each line is written with one `write` on a file opened for appending, without a user-space
//! buffer: a SIGKILLed node leaves every event it emitted in the file (the kernel holds it),
//! so a trace never misses the last appends before a crash.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The `tracing` target of protocol transition events (kept out of the human log).
pub const TARGET: &str = "kcheck::proto";

/// Nanoseconds of CLOCK_MONOTONIC: one time line for every process of the host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes [`TARGET`] events as JSON lines (`node`, `seq`, `mono_ns`, `event` and the fields).
pub struct JsonLinesLayer {
    node: i32,
    /// The next sequence number and the file, under one lock so file order is `seq` order.
    out: Mutex<(u64, File)>,
}

impl JsonLinesLayer {
    /// Opens (appending: a restarted node continues its file) the trace file of `node`.
    pub fn open(path: &Path, node: i32) -> std::io::Result<JsonLinesLayer> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // A restart continues the numbering after the last line of the previous incarnation.
        let seq = std::fs::read_to_string(path)
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0);
        Ok(JsonLinesLayer {
            node,
            out: Mutex::new((seq, file)),
        })
    }
}

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        let name = if field.name() == "message" {
            "event"
        } else {
            field.name()
        };
        // Lists recorded with `?` (ISR, batches) print as JSON arrays already.
        let v = if name == "event" {
            serde_json::Value::String(text)
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        self.0.insert(name.into(), v);
    }
}

impl<S: Subscriber> Layer<S> for JsonLinesLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let mut map = fields.0;
        map.insert("node".into(), self.node.into());
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        map.insert("seq".into(), out.0.into());
        map.insert("mono_ns".into(), monotonic_ns().into());
        out.0 += 1;
        let mut line = serde_json::Value::Object(map).to_string();
        line.push('\n');
        // A full disk must not stop the broker; the checker reports a truncated trace.
        let _ = out.1.write_all(line.as_bytes());
    }
}

/// Installs the process's subscriber: the human log on stderr (protocol events left out) and,
/// with `trace_file`, the JSON-lines protocol trace of `node`.
pub fn init(trace_file: Option<&Path>, node: i32) -> std::io::Result<()> {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let human = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_filter(filter_fn(|m| {
            m.target() != TARGET && *m.level() <= tracing::Level::INFO
        }));
    let json = match trace_file {
        Some(p) => {
            Some(JsonLinesLayer::open(p, node)?.with_filter(filter_fn(|m| m.target() == TARGET)))
        }
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(human)
        .with(json)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_become_numbered_json_lines_and_other_targets_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1").join("trace.jsonl");
        let layer = JsonLinesLayer::open(&path, 7).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let isr = vec![1, 2];
            tracing::info!(target: TARGET, topic = "t", partition = 0, isr = ?isr, "partition.leader");
            tracing::info!("not a protocol event");
            tracing::info!(target: TARGET, hw = 5i64, leader = true, "partition.hw");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "partition.leader");
        assert_eq!(lines[0]["isr"], serde_json::json!([1, 2]));
        assert_eq!(lines[0]["topic"], "t");
        assert_eq!(lines[0]["node"], 7);
        assert_eq!(
            (lines[0]["seq"].as_u64(), lines[1]["seq"].as_u64()),
            (Some(0), Some(1))
        );
        assert!(lines[1]["mono_ns"].as_u64() >= lines[0]["mono_ns"].as_u64());
        assert_eq!(lines[1]["hw"], 5);
        // A restarted node appends and continues the numbering.
        let again = JsonLinesLayer::open(&path, 7).unwrap();
        assert_eq!(again.out.lock().unwrap().0, 2);
    }
}

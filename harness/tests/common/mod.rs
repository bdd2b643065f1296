//! Helpers shared by the harness tests.
#![allow(dead_code)]

use kcheck_harness::history::History;

/// Builds a history from `(process, type, f, value)` rows written as JSON, numbering `index`
/// and `time` in order, and loads it through the real reader.
pub fn hist(rows: &[(&str, &str, &str, &str)]) -> History {
    let mut text = String::new();
    for (i, (p, t, f, v)) in rows.iter().enumerate() {
        text.push_str(&format!(
            "{{\"index\":{i},\"time\":{},\"type\":\"{t}\",\"process\":{p},\"f\":\"{f}\",\"value\":{v}}}\n",
            i * 1000
        ));
    }
    History::read(text.as_bytes()).unwrap_or_else(|e| panic!("test history is malformed: {e}"))
}

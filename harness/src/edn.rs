//! EDN export of a history (`history.edn`), one op map per line, so that Elle, Knossos or
//! `jepsen.tests.kafka` users can load a kcheck history with `clojure.edn/read` and cross-check
//! our verdicts. Names become keywords where Jepsen uses keywords (`:type`, `:f`, micro-op
//! names, `:nemesis`); integer keys of poll results stay integers.

use crate::history::{History, Mop, Op, OpValue, Process};
use serde_json::Value as Json;
use std::fmt::Write as _;
use std::io::Write;

/// A string is written as a keyword only if EDN's reader accepts it as one.
fn keyword_safe(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_?!*+.<>=".contains(c))
}

fn edn_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn keyword_or_string(s: &str, out: &mut String) {
    if keyword_safe(s) {
        out.push(':');
        out.push_str(s);
    } else {
        edn_string(s, out);
    }
}

/// Generic JSON to EDN: object keys become keywords (or integers when numeric).
fn json_edn(j: &Json, out: &mut String) {
    match j {
        Json::Null => out.push_str("nil"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => edn_string(s, out),
        Json::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                json_edn(x, out);
            }
            out.push(']');
        }
        Json::Object(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if k.parse::<i64>().is_ok() {
                    out.push_str(k);
                } else {
                    keyword_or_string(k, out);
                }
                out.push(' ');
                json_edn(v, out);
            }
            out.push('}');
        }
    }
}

fn opt(o: Option<u64>) -> String {
    o.map_or_else(|| "nil".to_string(), |x| x.to_string())
}

fn mop_edn(m: &Mop, out: &mut String) {
    match m {
        Mop::Send { key, value } => {
            let _ = write!(out, "[:send {key} {value}]");
        }
        Mop::Sent { key, offset, value } => {
            let _ = write!(out, "[:send {key} [{} {value}]]", opt(*offset));
        }
        Mop::Poll => out.push_str("[:poll]"),
        Mop::Polled(map) => {
            out.push_str("[:poll {");
            for (i, (k, recs)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{k} [");
                for (j, (o, v)) in recs.iter().enumerate() {
                    if j > 0 {
                        out.push(' ');
                    }
                    let _ = write!(out, "[{o} {v}]");
                }
                out.push(']');
            }
            out.push_str("}]");
        }
    }
}

fn value_edn(v: &OpValue, out: &mut String) {
    match v {
        OpValue::Txn(mops) => {
            out.push('[');
            for (i, m) in mops.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                mop_edn(m, out);
            }
            out.push(']');
        }
        OpValue::Keys(keys) => {
            let ks: Vec<String> = keys.iter().map(u64::to_string).collect();
            let _ = write!(out, "[{}]", ks.join(" "));
        }
        OpValue::Produce(p) => {
            let _ = write!(
                out,
                "{{:partition {}, :value {}, :offset {}}}",
                p.partition,
                p.value,
                opt(p.offset)
            );
        }
        OpValue::Read(r) => {
            let _ = write!(
                out,
                "{{:partition {}, :offset {}, :value {}}}",
                r.partition,
                r.offset,
                opt(r.value)
            );
        }
        OpValue::Other(j) => json_edn(j, out),
    }
}

/// One op as an EDN map.
pub fn op_edn(op: &Op) -> String {
    let mut out = String::with_capacity(128);
    let _ = write!(
        out,
        "{{:index {}, :time {}, :type :{}, :process ",
        op.index,
        op.time,
        op.kind.name()
    );
    match op.process {
        Process::Client(p) => {
            let _ = write!(out, "{p}");
        }
        Process::Nemesis => out.push_str(":nemesis"),
    }
    out.push_str(", :f ");
    keyword_or_string(&op.f, &mut out);
    out.push_str(", :value ");
    value_edn(&op.value, &mut out);
    if let Some(e) = &op.error {
        out.push_str(", :error ");
        edn_string(e, &mut out);
    }
    out.push('}');
    out
}

/// Writes the whole history, one op map per line.
pub fn write_edn(history: &History, mut out: impl Write) -> std::io::Result<()> {
    for op in &history.ops {
        out.write_all(op_edn(op).as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

//! `report.html`: the verdict, the anomalies with links to their operations, and an SVG
//! timeline with one lane per process and nemesis periods shaded, so a reader can see which
//! faults were active around an anomaly. Self-contained (no scripts, no external files).

use crate::analyze::Results;
use crate::history::{History, OpType, Process};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Ops drawn on the timeline and listed in the table; beyond this only the ops named by
/// anomalies are listed, to keep the page small.
const MAX_OPS: usize = 20_000;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Nemesis periods `(start ns, end ns, f)`: from a `start-*` op to the next `stop-*` op (or the
/// end of the history). Other nemesis ops (kill, pause, ...) are drawn as instants.
pub fn nemesis_periods(h: &History) -> Vec<(u64, u64, String)> {
    let end = h.ops.last().map_or(0, |o| o.time);
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for op in h.ops.iter().filter(|o| o.process == Process::Nemesis) {
        if op.kind != OpType::Invoke {
            continue;
        }
        if let Some(what) = op.f.strip_prefix("start-") {
            open.entry(what.to_string()).or_insert(op.time);
        } else if let Some(what) = op.f.strip_prefix("stop-") {
            if let Some(t) = open.remove(what) {
                out.push((t, op.time, what.to_string()));
            }
        } else {
            out.push((op.time, op.time, op.f.clone()));
        }
    }
    out.extend(open.into_iter().map(|(w, t)| (t, end, w)));
    out.sort();
    out
}

/// History indices named by the results' anomalies and illegal operations.
fn referenced(r: &Results) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    if let Some(q) = &r.queue {
        for a in q.anomalies.values() {
            for e in &a.examples {
                out.extend(e.ops.iter().copied());
            }
        }
    }
    if let Some(l) = &r.linearizability {
        for p in &l.partitions {
            if let Some(i) = &p.first_illegal {
                out.insert(i.invoke_index);
                out.extend(i.complete_index);
            }
        }
    }
    out
}

fn op_link(i: u64) -> String {
    format!("<a href=\"#op-{i}\">{i}</a>")
}

fn timeline(h: &History, out: &mut String) {
    let shown: Vec<usize> = (0..h.ops.len().min(MAX_OPS)).collect();
    let t_end = shown.last().map_or(1, |&i| h.ops[i].time.max(1));
    let procs: BTreeSet<u64> = shown
        .iter()
        .filter_map(|&i| match h.ops[i].process {
            Process::Client(p) => Some(p),
            Process::Nemesis => None,
        })
        .collect();
    let lane: BTreeMap<u64, usize> = procs.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let (w, lh) = (1200.0, 14.0);
    let height = lh * (lane.len() as f64 + 1.0) + 20.0;
    let x = |t: u64| 60.0 + (w - 70.0) * t as f64 / t_end as f64;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-size=\"9\">"
    );
    for (s, e, f) in nemesis_periods(h) {
        let _ = write!(
            out,
            "<rect class=\"nemesis\" x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{height}\" fill=\"#f4c0c0\" opacity=\"0.5\"><title>nemesis {}</title></rect>",
            x(s),
            (x(e) - x(s)).max(1.0),
            esc(&f)
        );
    }
    for (p, l) in &lane {
        let _ = write!(
            out,
            "<text x=\"2\" y=\"{:.1}\">p{p}</text>",
            lh * (*l as f64 + 1.0)
        );
    }
    for &i in &shown {
        let op = &h.ops[i];
        let (Process::Client(p), OpType::Invoke) = (op.process, op.kind) else {
            continue;
        };
        let comp = h.completion(i);
        let end = comp.map_or(t_end, |c| c.time);
        let color = match comp.map(|c| c.kind) {
            Some(OpType::Ok) => "#6c6",
            Some(OpType::Fail) => "#e66",
            _ => "#fb5",
        };
        let target = comp.map_or(op.index, |c| c.index);
        let _ = write!(
            out,
            "<a href=\"#op-{target}\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{} {} {}</title></rect></a>",
            x(op.time),
            lh * lane[&p] as f64 + 4.0,
            (x(end) - x(op.time)).max(1.0),
            lh - 3.0,
            op.index,
            esc(&op.f),
            comp.map_or("info", |c| c.kind.name())
        );
    }
    out.push_str("</svg>");
}

/// The whole page.
pub fn html(h: &History, r: &Results) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kcheck report</title>\
         <style>body{{font-family:sans-serif}}td,th{{padding:2px 6px;font-size:12px}}\
         tr:target{{background:#ff8}}</style></head><body><h1>kcheck report: {:?}</h1><p>{}</p>\
         <p>{} ops, {} nemesis ops, workloads: {}</p>",
        r.verdict,
        esc(&r.summary),
        r.ops,
        r.nemesis_ops,
        r.workloads.join(", ")
    );
    if let Some(l) = &r.linearizability {
        out.push_str("<h2>Linearizability</h2><table><tr><th>partition</th><th>verdict</th><th>ops</th><th>first illegal op</th></tr>");
        for p in &l.partitions {
            let bad = p.first_illegal.as_ref().map_or(String::new(), |i| {
                format!(
                    "{} {}: {}",
                    op_link(i.invoke_index),
                    esc(&i.op),
                    esc(&i.explanation)
                )
            });
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{bad}</td></tr>",
                p.partition, p.verdict, p.ops
            );
        }
        out.push_str("</table>");
    }
    if let Some(q) = &r.queue {
        out.push_str("<h2>Queue anomalies</h2><table><tr><th>anomaly</th><th>count</th><th>examples</th></tr>");
        for (name, a) in &q.anomalies {
            let ex: Vec<String> = a
                .examples
                .iter()
                .map(|e| {
                    let ops: Vec<String> = e.ops.iter().map(|&i| op_link(i)).collect();
                    format!("ops {}: {}", ops.join(", "), esc(&e.description))
                })
                .collect();
            let _ = write!(
                out,
                "<tr><td title=\"{}\">{name}</td><td>{}</td><td>{}</td></tr>",
                esc(a.meaning),
                a.count,
                ex.join("<br>")
            );
        }
        if q.anomalies.is_empty() {
            out.push_str("<tr><td colspan=\"3\">none</td></tr>");
        }
        out.push_str("</table>");
    }
    out.push_str("<h2>Latency and throughput</h2><p>Shaded: nemesis active. Latency: green ok, red fail, orange indeterminate; lines p50 (blue), p95, p99, max (black).</p><img src=\"latency.svg\"><img src=\"throughput.svg\">");
    out.push_str("<h2>Timeline</h2><p>One lane per process; green ok, red fail, orange indeterminate; shaded: nemesis active.</p>");
    timeline(h, &mut out);
    let refs = referenced(r);
    out.push_str("<h2>Operations</h2><table><tr><th>index</th><th>time (ns)</th><th>process</th><th>type</th><th>f</th><th>value</th></tr>");
    for (i, op) in h.ops.iter().enumerate() {
        if i >= MAX_OPS && !refs.contains(&op.index) {
            continue;
        }
        let _ = write!(
            out,
            "<tr id=\"op-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            op.index,
            op.index,
            op.time,
            op.process,
            op.kind.name(),
            esc(&op.f),
            esc(&op.to_json()["value"].to_string())
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

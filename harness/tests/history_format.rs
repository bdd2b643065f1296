//! The history format: JSON Lines round-trip, clear line-numbered errors on bad input, EDN.

use kcheck_harness::edn::{op_edn, write_edn};
use kcheck_harness::history::{History, HistoryError, Mop, OpType, OpValue, Process};
use kcheck_harness::sim::{log_history, queue_history, SimConfig};

fn err(text: &str) -> (usize, String) {
    match History::read(text.as_bytes()) {
        Err(HistoryError::Line { line, message }) => (line, message),
        other => panic!("expected a line error, got {other:?}"),
    }
}

#[test]
fn simulated_histories_round_trip_through_json_lines() {
    for h in [
        log_history(&SimConfig::default()),
        queue_history(&SimConfig::default()),
    ] {
        let mut buf = Vec::new();
        h.write(&mut buf).unwrap();
        let back = History::read(buf.as_slice()).unwrap();
        assert_eq!(back.ops, h.ops);
        assert_eq!(back.pair, h.pair);
        assert!(h.nemesis_ops() > 0, "nemesis ops are part of the history");
    }
}

#[test]
fn jepsen_fields_are_parsed_into_types() {
    let text = r#"{"index":0,"time":5,"type":"invoke","process":3,"f":"send","value":[["send",2,7]]}
{"index":1,"time":9,"type":"ok","process":3,"f":"send","value":[["send",2,[4,7]]]}

{"index":2,"time":10,"type":"info","process":"nemesis","f":"start-partition","value":{"n1":["n2"]}}
{"index":3,"time":11,"type":"invoke","process":4,"f":"poll","value":[["poll"]]}
{"index":4,"time":12,"type":"ok","process":4,"f":"poll","value":[["poll",{"2":[[4,7]]}]],"error":null}
{"index":5,"time":13,"type":"invoke","process":5,"f":"assign","value":[1,2]}
{"index":6,"time":14,"type":"fail","process":5,"f":"assign","value":[1,2],"error":"unknown topic"}
"#;
    let h = History::read(text.as_bytes()).unwrap();
    assert_eq!(h.ops.len(), 7);
    assert_eq!(
        h.ops[1].value,
        OpValue::Txn(vec![Mop::Sent {
            key: 2,
            offset: Some(4),
            value: 7
        }])
    );
    assert_eq!(h.ops[2].process, Process::Nemesis);
    assert_eq!(h.pair[0], Some(1));
    assert_eq!(h.pair[3], Some(4));
    assert_eq!(h.ops[6].kind, OpType::Fail);
    assert_eq!(h.ops[6].error.as_deref(), Some("unknown topic"));
}

#[test]
fn malformed_lines_are_reported_with_their_line_number() {
    let ok = r#"{"index":0,"time":0,"type":"invoke","process":0,"f":"read","value":{"partition":0,"offset":0}}"#;
    assert_eq!(err("{not json").0, 1);
    let (line, msg) = err(&format!("{ok}\n{{\"index\":1}}"));
    assert_eq!(line, 2);
    assert!(msg.contains("missing field"), "{msg}");
    let (line, msg) = err(&format!(
        "{ok}\n\n{}",
        ok.replace("\"index\":0", "\"index\":1")
            .replace("invoke", "maybe")
    ));
    assert_eq!(line, 3, "blank lines still count");
    assert!(msg.contains("unknown variant"), "{msg}");
    let (_, msg) = err(&ok.replace("\"process\":0", "\"process\":-1"));
    assert!(msg.contains("process"), "{msg}");
    let (_, msg) = err(&ok.replace("\"offset\":0", "\"offset\":\"x\""));
    assert!(msg.contains("f=read"), "{msg}");
    let (_, msg) =
        err(r#"{"index":0,"time":0,"type":"invoke","process":0,"f":"send","value":[["send",1]]}"#);
    assert!(msg.contains("micro-op"), "{msg}");
    let (_, msg) = err(
        r#"{"index":0,"time":0,"type":"invoke","process":0,"f":"poll","value":[["poll",{"k":[]}]]}"#,
    );
    assert!(msg.contains("poll key"), "{msg}");
}

#[test]
fn jepsen_well_formedness_is_enforced() {
    let inv = |i: u64, p: u64| {
        format!(
            r#"{{"index":{i},"time":{i},"type":"invoke","process":{p},"f":"read","value":{{"partition":0,"offset":0}}}}"#
        )
    };
    let (line, msg) = err(&format!("{}\n{}", inv(0, 1), inv(1, 1)));
    assert_eq!(line, 2);
    assert!(msg.contains("in flight"), "{msg}");
    let (line, msg) = err(&format!("{}\n{}", inv(1, 1), inv(1, 2)));
    assert_eq!(line, 2);
    assert!(msg.contains("does not increase"), "{msg}");
    let comp = r#"{"index":0,"time":0,"type":"ok","process":9,"f":"read","value":{"partition":0,"offset":0}}"#;
    assert!(err(comp).1.contains("without an invocation"));
}

#[test]
fn edn_export_uses_jepsen_keywords() {
    let h = queue_history(&SimConfig {
        ops: 400,
        ..SimConfig::default()
    });
    let mut buf = Vec::new();
    write_edn(&h, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text.lines().count(), h.ops.len());
    let sent = h
        .ops
        .iter()
        .find(|o| o.kind == OpType::Ok && o.f == "send")
        .unwrap();
    let line = op_edn(sent);
    assert!(
        line.starts_with(&format!("{{:index {}, :time ", sent.index)),
        "{line}"
    );
    assert!(line.contains(":type :ok, :process "), "{line}");
    assert!(line.contains(":f :send, :value [[:send "), "{line}");
    let nem = h
        .ops
        .iter()
        .find(|o| o.process == Process::Nemesis)
        .unwrap();
    assert!(op_edn(nem).contains(":process :nemesis"));
    let lh = log_history(&SimConfig {
        ops: 50,
        ..SimConfig::default()
    });
    let read = lh
        .ops
        .iter()
        .find(|o| o.f == "read" && o.kind == OpType::Ok)
        .unwrap();
    assert!(op_edn(read).contains("{:partition "), "{}", op_edn(read));
    let h2 = History::read(
        r#"{"index":0,"time":0,"type":"info","process":"nemesis","f":"start partition","value":{"n1":"a\"b","2":null},"error":"x"}"#.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        op_edn(&h2.ops[0]),
        r#"{:index 0, :time 0, :type :info, :process :nemesis, :f "start partition", :value {2 nil, :n1 "a\"b"}, :error "x"}"#
    );
}

#[test]
fn report_links_anomalies_to_operations_and_shades_nemesis_periods() {
    use kcheck_harness::analyze::{analyze, Options};
    use kcheck_harness::report::{html, nemesis_periods};
    let h = queue_history(&SimConfig {
        ops: 400,
        ..SimConfig::default()
    });
    assert!(!nemesis_periods(&h).is_empty());
    // Turn an acknowledged send that was read into a failed one: a G1a.
    let mut ops = h.ops.clone();
    let read: std::collections::HashSet<(u64, u64)> = ops
        .iter()
        .flat_map(|o| o.mops().to_vec())
        .filter_map(|m| match m {
            Mop::Polled(p) => Some(
                p.into_iter()
                    .flat_map(|(k, rs)| rs.into_iter().map(move |r| (k, r.1)))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    let i = ops
        .iter()
        .position(|o| {
            o.kind == OpType::Ok
                && o.mops()
                    .iter()
                    .filter_map(Mop::send)
                    .any(|kv| read.contains(&kv))
        })
        .unwrap();
    ops[i].kind = OpType::Fail;
    let bad = History::from_ops(ops).unwrap();
    let r = analyze(&bad, &Options::default());
    let page = html(&bad, &r);
    assert!(page.contains("G1a"));
    let idx = bad.ops[i].index;
    assert!(
        page.contains(&format!("<a href=\"#op-{idx}\">{idx}</a>")),
        "anomaly links to its op"
    );
    assert!(
        page.contains(&format!("<tr id=\"op-{idx}\">")),
        "the op is in the table"
    );
    assert!(
        page.contains("class=\"nemesis\""),
        "nemesis periods are shaded"
    );
    let ok = html(&h, &analyze(&h, &Options::default()));
    assert!(ok.contains("Valid") && ok.contains("none"));
}

#[test]
fn plots_are_svg_with_points_lines_and_shaded_faults() {
    use kcheck_harness::plots::{latencies, latency_svg, throughput_svg};
    let h = log_history(&SimConfig {
        ops: 400,
        ..SimConfig::default()
    });
    assert!(!latencies(&h).is_empty());
    let lat = latency_svg(&h).unwrap();
    assert!(
        lat.starts_with("<svg") && lat.contains("<circle") && lat.contains("<polyline"),
        "{}",
        &lat[..200.min(lat.len())]
    );
    let rate = throughput_svg(&h).unwrap();
    assert!(rate.starts_with("<svg") && rate.contains("<polyline"));
    // Nemesis periods are drawn as translucent rectangles.
    assert!(lat.contains("opacity=\"0.5\"") || lat.contains("fill-opacity=\"0.5\""));
}

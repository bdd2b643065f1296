//! `kcheck compare controller-failover` prints the measured table and rejects bad input.

use std::process::{Command, Output};

fn kcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(args)
        .output()
        .expect("kcheck runs")
}

#[test]
fn controller_failover_prints_measured_figures() {
    let o = kcheck(&["compare", "controller-failover", "--brokers", "3", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["failover"][0]["mode"], "zookeeper");
    assert_eq!(v["failover"][0]["steps"], 6);
    assert_eq!(v["failover"][0]["messages"], 14);
    assert_eq!(v["leader_change_messages"][3]["zookeeper"], 9);
    assert_eq!(v["failover"][1]["mode"], "kraft");
    assert!(
        v["failover"][1]["steps"].is_null(),
        "the kraft model holds 2 brokers"
    );
    let o = kcheck(&["compare", "controller-failover", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["brokers"], 2);
    assert_eq!(v["failover"][1]["messages"], 11);
    assert_eq!(v["leader_change_messages"][1]["kraft"], 3);
    let text =
        String::from_utf8_lossy(&kcheck(&["compare", "controller-failover"]).stdout).into_owned();
    assert!(
        text.contains("zookeeper") && text.contains("kraft"),
        "{text}"
    );
}

#[test]
fn bad_input_exits_2_naming_the_fix() {
    let o = kcheck(&["compare", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("known: controller-failover"));
    let o = kcheck(&["compare", "controller-failover", "--brokers", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("between 2 and 4"));
}

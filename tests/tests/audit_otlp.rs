//! The audit log exported as OpenTelemetry log records over OTLP/HTTP,
//! received by a collector stand-in that decodes each request with the
//! OpenTelemetry project's own protobuf definitions (Python
//! `opentelemetry-proto`): every entry arrives once, in order, with its
//! exact record as the body; a collector that refuses is retried.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use serde_json::Value;
use warden_shared::merkle;
use warden_tests::Mesh;

#[tokio::test]
async fn entries_reach_an_otlp_collector_once_in_order_with_retries() {
    let python = std::env::var("WARDEN_PYTHON").expect("WARDEN_PYTHON (run ./tests/run.sh)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/otlp_receiver.py");
    // Three entries wanted; the first two requests refused with 503.
    let mut child = Command::new(python)
        .args([script, "3", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let port = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        (port, out)
    });
    let (port, mut out) = port.await.unwrap();
    let mesh = Mesh::start_with(|c| {
        c.durable_sync = false;
        c.audit_otlp = Some(warden_control_plane::otlp::OtlpConfig {
            endpoint: format!("http://127.0.0.1:{port}/v1/logs"),
            ca_file: None,
        });
    })
    .await
    .unwrap();
    for id in ["o1", "o2", "o3"] {
        mesh.register(id, &["data:read"], 1).await.unwrap();
    }
    let (status, text) = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        (child.wait().unwrap(), text)
    })
    .await
    .unwrap();
    assert!(status.success(), "the collector saw too little: {text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["invalid"], serde_json::json!([]), "{got}");
    assert_eq!(got["refused"], 2);
    let records = got["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{got}");
    // What the log holds, for comparison.
    let store = &mesh.cp.state.store;
    let entries = store.audit_entries(0, 3, 10, true).await.unwrap();
    for (r, e) in records.iter().zip(&entries) {
        let attr = |k: &str| {
            r["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            attr("warden.audit.position")["intValue"],
            e.position.to_string()
        );
        assert_eq!(attr("warden.kind")["stringValue"], "agent.registered");
        assert_eq!(attr("warden.actor.kind")["stringValue"], "human");
        assert_eq!(r["severityText"], "INFO");
        assert_eq!(r["scope"], "warden.audit");
        // The body is the exact record: it hashes to the leaf.
        let body = r["body"]["stringValue"].as_str().unwrap();
        assert_eq!(merkle::leaf_hash(body.as_bytes()), e.leaf.unwrap());
        assert!(r["timeUnixNano"].as_str().unwrap().len() >= 19);
    }
    let names = records
        .iter()
        .map(|r| {
            let body: Value =
                serde_json::from_str(r["body"]["stringValue"].as_str().unwrap()).unwrap();
            body["event"]["agent"].as_str().unwrap().to_owned()
        })
        .collect::<Vec<_>>();
    assert_eq!(names, ["o1", "o2", "o3"]);
    // The collector's acknowledgement is remembered (a restart resumes);
    // the exporter writes it once the collector's answer is in.
    let name = format!("otlp http://127.0.0.1:{port}/v1/logs");
    let remembered = warden_tests::eventually(std::time::Duration::from_secs(10), || async {
        store.audit_export_position(&name).await.unwrap() == 3
    })
    .await;
    assert!(remembered);
}

#[test]
fn a_plain_http_collector_must_be_on_loopback() {
    let c = |endpoint: &str| warden_control_plane::otlp::OtlpConfig {
        endpoint: endpoint.into(),
        ca_file: None,
    };
    let load = |e: &str| warden_control_plane::otlp::Exporter::load(&c(e), "t.warden");
    assert!(load("http://127.0.0.1:4318/v1/logs").is_ok());
    assert!(load("https://collector.example:4318/v1/logs").is_ok());
    for bad in [
        "http://collector.example:4318/v1/logs",
        "ftp://127.0.0.1/x",
        "https://user:pw@collector.example/v1/logs",
        "not a url",
    ] {
        assert!(load(bad).is_err(), "{bad}");
    }
}

//! Tool calls recorded through the sidecar's audit spool into the control
//! plane's log: every decided call exactly once, nothing secret in any
//! event; events spooled while the control plane is down arrive in order
//! afterwards; a full spool refuses calls (the default); and a sidecar
//! killed with SIGKILL in a burst of calls loses none and doubles none.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use warden_shared::audit::Record;
use warden_shared::proto::v1 as pb;
/// One low-risk tool whose `card` argument is sensitive.
const POLICY: &str = r#"
version: 1
tools:
  - name: echo
    description: Returns its arguments.
    input_schema:
      type: object
      properties:
        n: { type: integer }
        card: { type: string, writeOnly: true }
    scopes: ["payments:refund"]
    risk: low
    upstream: { kind: builtin, address: echo }
  - name: echo_full
    description: Returns its arguments; they are kept whole.
    input_schema: { type: object, properties: { note: { type: string } } }
    scopes: ["payments:refund"]
    risk: low
    upstream: { kind: builtin, address: echo }
    audit_arguments: full
  - name: echo_hash
    description: Returns its arguments; only their hash is kept.
    input_schema: { type: object, properties: { note: { type: string } } }
    scopes: ["payments:refund"]
    risk: low
    upstream: { kind: builtin, address: echo }
    audit_arguments: hash
cedar: |
  permit (principal, action, resource);
"#;
use warden_tests::{
    AgentAuth, AgentClient, Mesh, agent_tcp, agent_unix, apply_policy, assert_refused, eventually,
    with_token,
};

/// Every record in the log.
async fn records(
    mesh_admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> Vec<(u64, Record, String)> {
    let mut feed = mesh_admin
        .export_audit(pb::ExportAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(page) = feed.next().await {
        for e in page.unwrap().entries {
            let text = String::from_utf8(e.record.clone()).unwrap();
            out.push((e.position, Record::from_bytes(&e.record).unwrap(), text));
        }
    }
    out
}

/// The `tool.call` records of agent `a1`, by call id.
async fn calls(mesh: &Mesh) -> BTreeMap<String, Vec<Record>> {
    let mut by_call: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (_, r, _) in records(&mut mesh.admin().await.unwrap()).await {
        if r.event.kind == "tool.call" && r.event.agent == "a1" {
            by_call.entry(r.event.call_id.clone()).or_default().push(r);
        }
    }
    by_call
}

async fn prepare(mesh: &Mesh) -> String {
    let mut admin = mesh.admin().await.unwrap();
    admin.apply_policy(apply_policy(POLICY)).await.unwrap();
    admin
        .register_agent(pb::RegisterAgentRequest {
            id: "a1".into(),
            agent_type: "payments-bot".into(),
            owner: "team".into(),
            max_concurrent_sessions: 64,
            allowed_scopes: vec!["payments:refund".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    mesh.join_token("a1").await.unwrap()
}

async fn session(c: &mut AgentClient) -> pb::StartSessionResponse {
    c.start_session(pb::StartSessionRequest {
        scopes: vec!["payments:refund".into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn echo(i: usize) -> pb::CallToolRequest {
    pb::CallToolRequest {
        tool: "echo".into(),
        arguments_json: format!(r#"{{"n": {i}, "card": "4111-SECRET-ARG-{i}"}}"#),
        reason: "audit test".into(),
        trace_id: format!("trace-{i}"),
        no_wait: false,
    }
}

#[tokio::test]
async fn every_call_is_in_the_log_once_and_no_event_holds_a_secret_or_token() {
    let mesh = Mesh::start().await.unwrap();
    let token = prepare(&mesh).await;
    let sc = warden_tests::start_sidecar(mesh.sidecar_config("a1", Some(token)))
        .await
        .unwrap();
    let s = session(&mut agent_tcp(&sc, AgentAuth::default()).await.unwrap()).await;
    let mut c = with_token(&sc, &s.token).await.unwrap();
    let mut answered = BTreeSet::new();
    for i in 0..20 {
        let r = c.call_tool(echo(i)).await.unwrap().into_inner();
        answered.insert(r.call_id);
    }
    // The tool's policy says how its arguments are kept.
    let kept_call = |tool: &str| pb::CallToolRequest {
        tool: tool.into(),
        arguments_json: r#"{"note": "kept-or-hashed"}"#.into(),
        ..Default::default()
    };
    let full = c
        .call_tool(kept_call("echo_full"))
        .await
        .unwrap()
        .into_inner()
        .call_id;
    let hashed = c
        .call_tool(kept_call("echo_hash"))
        .await
        .unwrap()
        .into_inner()
        .call_id;
    // Refused calls are recorded too.
    for _ in 0..3 {
        let r = c
            .call_tool(pb::CallToolRequest {
                tool: "no_such_tool".into(),
                arguments_json: "{}".into(),
                ..Default::default()
            })
            .await;
        assert_refused(r, Code::NotFound, "TOOL_UNKNOWN");
    }
    let arrived = eventually(Duration::from_secs(20), || async {
        calls(&mesh).await.values().map(Vec::len).sum::<usize>() >= 25
    })
    .await;
    assert!(arrived, "{:?}", calls(&mesh).await.keys());
    let by_call = calls(&mesh).await;
    assert_eq!(by_call.len(), 25);
    assert!(
        by_call.values().all(|v| v.len() == 1),
        "a call recorded twice"
    );
    let args = |id: &str| by_call[id][0].event.arguments.clone().unwrap();
    assert_eq!(
        args(&full).value,
        Some(serde_json::json!({"note": "kept-or-hashed"}))
    );
    assert_eq!(
        args(&hashed).mode,
        warden_shared::audit::ArgumentsMode::Hash
    );
    assert_eq!(args(&hashed).value, None);
    for id in &answered {
        let r = &by_call[id][0];
        assert_eq!(
            (
                r.event.outcome.as_str(),
                r.event.tool.as_str(),
                r.event.session.as_str()
            ),
            ("allowed", "echo", s.session_id.as_str())
        );
        let args = r.event.arguments.as_ref().unwrap();
        assert!(args.bytes > 0 && args.hmac.len() == 32);
        // `redacted`, the default: the value the schema marks writeOnly is out.
        assert_eq!(args.mode, warden_shared::audit::ArgumentsMode::Redacted);
        let v = args.value.as_ref().unwrap();
        assert_eq!(v["card"], "[redacted]");
        assert!(v["n"].is_u64());
        assert!(r.event.bytes_out > 0);
        assert!(r.event.peer.starts_with("127.0.0.1:"), "{}", r.event.peer);
        assert!(r.source.starts_with("a1/"), "{}", r.source);
    }
    let denied: Vec<_> = by_call
        .values()
        .filter(|v| v[0].event.outcome == "denied")
        .collect();
    assert_eq!(denied.len(), 3);
    assert_eq!(denied[0][0].event.reason, "TOOL_UNKNOWN");
    // Sequence numbers follow the calls, one per event.
    let mut seqs: Vec<u64> = by_call.values().map(|v| v[0].seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    // Nothing in the whole log holds the session token or an argument.
    for (_, _, text) in records(&mut mesh.admin().await.unwrap()).await {
        assert!(!text.contains(&s.token), "a token in {text}");
        assert!(!text.contains("SECRET-ARG"), "an argument in {text}");
    }
    // The log verifies with the shipped events in it.
    let mut admin = mesh.admin().await.unwrap();
    admin
        .sign_tree_head(pb::SignTreeHeadRequest {})
        .await
        .unwrap();
    let keys = warden_control_plane::ctl::audit::keys(&mut admin)
        .await
        .unwrap();
    let v = warden_control_plane::ctl::audit::verify(&mut admin, &keys, None)
        .await
        .unwrap();
    assert_eq!(v.finding, None);
}

#[tokio::test]
async fn events_wait_in_the_spool_while_the_control_plane_is_down_and_a_full_spool_refuses() {
    let mesh = Mesh::start().await.unwrap();
    let token = prepare(&mesh).await;
    let mut config = mesh.sidecar_config("a1", Some(token));
    config.audit.spool_max_bytes = 64 << 10;
    let sc = warden_tests::start_sidecar(config).await.unwrap();
    let s = session(&mut agent_tcp(&sc, AgentAuth::default()).await.unwrap()).await;
    let mut c = with_token(&sc, &s.token).await.unwrap();
    c.call_tool(echo(0)).await.unwrap();
    let mut served = 1usize;
    let mut refusal = None;
    let mesh = mesh
        .while_down(|| async {
            // The sidecar serves on what it holds; the events wait.
            for i in 1..1000 {
                match c.call_tool(echo(i)).await {
                    Ok(_) => served += 1,
                    Err(e) => {
                        refusal = Some(e);
                        break;
                    }
                }
            }
        })
        .await
        .unwrap();
    let e = refusal.expect("the spool filled up");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(warden_tests::reason(&e), "AUDIT_UNAVAILABLE");
    assert!(
        e.message().contains("audit spool is full"),
        "{}",
        e.message()
    );
    assert!(served > 20, "{served}");
    // Back up: the spool drains in order and calls are served again.
    let arrived = eventually(Duration::from_secs(30), || async {
        calls(&mesh).await.len() > served
    })
    .await;
    assert!(arrived, "{} of {served}", calls(&mesh).await.len());
    let all = records(&mut mesh.admin().await.unwrap()).await;
    let seqs: Vec<u64> = all
        .iter()
        .filter(|(_, r, _)| r.event.kind == "tool.call")
        .map(|(_, r, _)| r.seq)
        .collect();
    // The served calls, and last the refused one (its refusal fits in the
    // room kept for it), in order, once each.
    assert_eq!(
        seqs,
        (1..=served as u64 + 1).collect::<Vec<_>>(),
        "in order, once each"
    );
    let last = &all
        .iter()
        .rfind(|(_, r, _)| r.event.kind == "tool.call")
        .unwrap()
        .1
        .event;
    assert_eq!(
        (
            last.outcome.as_str(),
            last.stage.as_str(),
            last.reason.as_str()
        ),
        ("denied", "record", "AUDIT_UNAVAILABLE")
    );
    // The refused call never ran and is not in the log as allowed.
    let ok = eventually(Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { c.call_tool(echo(5000)).await.is_ok() }
    })
    .await;
    assert!(ok, "calls are served again once the spool drained");
}

/// The sidecar binary next to this test's.
fn sidecar_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("warden-sidecar")
}

fn spawn_sidecar(config_file: &Path) -> std::process::Child {
    std::process::Command::new(sidecar_binary())
        .arg("--config")
        .arg(config_file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the warden-sidecar binary (build the workspace: ./tests/run.sh)")
}

#[tokio::test]
async fn a_sidecar_killed_in_a_burst_loses_no_decided_call_and_records_none_twice() {
    let mesh = Mesh::start().await.unwrap();
    let token = prepare(&mesh).await;
    let config = mesh.sidecar_config("a1", None);
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::write(config.data_dir.join("join-token"), &token).unwrap();
    let file = mesh.dir.path().join("sidecar.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let socket = config.socket_path();

    // Polls until the child serves (its socket answers a StartSession).
    let connect = async || -> AgentClient {
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = agent_unix(&socket, AgentAuth::default()).await
                && c.start_session(pb::StartSessionRequest {
                    scopes: vec!["payments:refund".into()],
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "the sidecar did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut child = spawn_sidecar(&file);
    let mut c = connect().await;
    let s = session(&mut c).await;
    let auth = AgentAuth {
        token: Some(s.token.clone()),
        ..AgentAuth::default()
    };
    // Serving once it holds the policy.
    let mut first = agent_unix(&socket, auth.clone()).await.unwrap();
    let ready = eventually(Duration::from_secs(20), || {
        let mut first = first.clone();
        async move { first.call_tool(echo(999_999)).await.is_ok() }
    })
    .await;
    assert!(ready, "{:?}", first.call_tool(echo(999_998)).await);
    // A burst from eight callers; the sidecar is killed in the middle of it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (auth, socket, tx) = (auth.clone(), socket.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = agent_unix(&socket, auth).await.unwrap();
            for i in 0.. {
                match c.call_tool(echo(w * 100_000 + i)).await {
                    Ok(r) => {
                        let _ = tx.send(r.into_inner().call_id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);
    let mut answered = BTreeSet::new();
    while answered.len() < 200 {
        answered.insert(rx.recv().await.unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    while let Some(id) = rx.recv().await {
        answered.insert(id);
    }
    // Restarted on the same data directory, it ships what it spooled.
    let mut child = spawn_sidecar(&file);
    let _ = connect().await;
    let arrived = eventually(Duration::from_secs(30), || async {
        let got = calls(&mesh).await;
        answered.iter().all(|id| got.contains_key(id))
    })
    .await;
    let got = calls(&mesh).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        arrived,
        "{} answered calls missing from the log",
        answered.iter().filter(|id| !got.contains_key(*id)).count()
    );
    assert!(got.values().all(|v| v.len() == 1), "a call recorded twice");
    assert!(
        got.values().all(|v| v[0].event.peer == "unix"),
        "calls came over the socket"
    );
    let mut seqs: Vec<u64> = got.values().map(|v| v[0].seq).collect();
    seqs.sort_unstable();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap in the spool's numbers"
    );
    assert!(answered.len() >= 200, "{}", answered.len());
}

#[tokio::test]
async fn with_on_full_continue_calls_go_on_and_the_loss_is_recorded_as_a_gap() {
    let mesh = Mesh::start().await.unwrap();
    let token = prepare(&mesh).await;
    let mut config = mesh.sidecar_config("a1", Some(token));
    config.audit.spool_max_bytes = 64 << 10;
    config.audit.on_full = warden_sidecar::config::AuditOnFull::Continue;
    let sc = warden_tests::start_sidecar(config).await.unwrap();
    let s = session(&mut agent_tcp(&sc, AgentAuth::default()).await.unwrap()).await;
    let mut c = with_token(&sc, &s.token).await.unwrap();
    let mesh = mesh
        .while_down(|| async {
            for i in 0..300 {
                c.call_tool(echo(i)).await.unwrap();
            }
        })
        .await
        .unwrap();
    let lost = sc.api.gateway().recorder.lost();
    assert!(lost > 0, "the spool holds far fewer than 300 events");
    // The next call after the spool drains records the gap first.
    let gap = eventually(Duration::from_secs(30), || {
        let (mut c, mesh) = (c.clone(), &mesh);
        async move {
            let _ = c.call_tool(echo(9999)).await;
            // Every gap record so far, until they count the loss (a small
            // one may have been recorded while the spool was still full).
            let told: u64 = records(&mut mesh.admin().await.unwrap())
                .await
                .iter()
                .filter(|(_, r, _)| r.event.kind == "audit.gap")
                .map(|(_, r, _)| r.event.detail["lost_events"].parse::<u64>().unwrap_or(0))
                .sum();
            told >= lost
        }
    })
    .await;
    assert!(gap);
    let all = records(&mut mesh.admin().await.unwrap()).await;
    // A gap record is smaller than a call's: one may fit in a nearly full
    // spool where the call after it does not, so the loss can be told in
    // several gap records. Together they count every event lost.
    let recorded: u64 = all
        .iter()
        .filter(|(_, r, _)| r.event.kind == "audit.gap")
        .map(|(_, r, _)| r.event.detail["lost_events"].parse::<u64>().unwrap())
        .sum();
    // Calls made before the spool drained may have added to the loss.
    assert!(recorded >= lost, "{recorded} < {lost}");
    assert_eq!(sc.api.gateway().recorder.lost(), 0);
}

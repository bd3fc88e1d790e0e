//! The control plane's audit log over real gRPC: admin acts are recorded,
//! sidecars ship events acknowledged by sequence number (twice-shipped
//! events stored once, foreign or malformed ones recorded as rejected),
//! heads are signed, and proofs check offline — an inclusion proof also by
//! an independent Python verifier (hashlib only).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;
use warden_control_plane::ctl::audit as ctl_audit;
use warden_shared::audit::Record;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::audit_service_client::AuditServiceClient;
use warden_tests::{Mesh, assert_refused};

async fn query(mesh: &Mesh, q: pb::QueryAuditRequest) -> Vec<(u64, Record)> {
    let mut feed = mesh
        .admin()
        .await
        .unwrap()
        .query_audit(q)
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(page) = feed.next().await {
        for e in page.unwrap().entries {
            out.push((e.position, Record::from_bytes(&e.record).unwrap()));
        }
    }
    out
}

fn kind(k: &str) -> pb::QueryAuditRequest {
    pb::QueryAuditRequest {
        kind: k.into(),
        limit: 1000,
        ..Default::default()
    }
}

fn event(seq: u64, agent: &str, tool: &str) -> pb::SpooledEvent {
    pb::SpooledEvent {
        seq,
        event: json!({
            "time_ms": 1_700_000_000_000i64 + seq as i64,
            "kind": "tool.call",
            "actor": {"kind": "agent", "id": agent},
            "agent": agent,
            "tool": tool,
            "outcome": "allowed",
        })
        .to_string()
        .into_bytes(),
    }
}

async fn ship(
    client: &mut AuditServiceClient<tonic::transport::Channel>,
    spool: &str,
    batches: Vec<Vec<pb::SpooledEvent>>,
) -> Result<Vec<u64>, tonic::Status> {
    let mut reqs = vec![pb::ShipRequest {
        spool_id: spool.into(),
        events: vec![],
    }];
    reqs.extend(batches.into_iter().map(|events| pb::ShipRequest {
        spool_id: spool.into(),
        events,
    }));
    let n = reqs.len();
    let mut acks = client.ship(tokio_stream::iter(reqs)).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match acks.next().await {
            Some(a) => out.push(a?.acked),
            None => break,
        }
    }
    Ok(out)
}

#[tokio::test]
async fn admin_acts_and_shipped_events_are_logged_signed_and_provable() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "a1".into(),
            reason: "investigating".into(),
        })
        .await
        .unwrap();

    // Admin acts are in the log, with the human who acted.
    let suspended = query(&mesh, kind("agent.suspended")).await;
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    let e = &suspended[0].1.event;
    assert_eq!((e.actor.id.as_str(), e.agent.as_str()), ("root", "a1"));
    assert_eq!(e.detail["reason"], "investigating");
    assert_eq!(suspended[0].1.source, "control-plane");
    assert_eq!(query(&mesh, kind("agent.registered")).await.len(), 1);
    assert_eq!(query(&mesh, kind("agent.enrolled")).await.len(), 1);
    assert_eq!(query(&mesh, kind("join_token.created")).await.len(), 1);

    // A sidecar ships its spool: acknowledged by sequence number; the same
    // events shipped again are stored once; a stream resumes after the
    // last stored number.
    let id = sc.identity.snapshot().current.clone().unwrap();
    let ch = mesh.mtls_channel(&id.cert_pem, id.key_pem()).await.unwrap();
    let mut client = AuditServiceClient::new(ch);
    let spool = "spool-0123456789abcdef";
    let acks = ship(
        &mut client,
        spool,
        vec![
            vec![event(1, "a1", "t1"), event(2, "a1", "t2")],
            vec![event(2, "a1", "t2"), event(3, "a1", "t3")],
        ],
    )
    .await
    .unwrap();
    assert_eq!(acks, vec![0, 2, 3]);
    let acks = ship(
        &mut client,
        spool,
        vec![vec![event(3, "a1", "t3"), event(4, "a1", "t4")]],
    )
    .await
    .unwrap();
    assert_eq!(acks, vec![3, 4], "resumes after 3, stores 4 only");
    let calls = query(
        &mesh,
        pb::QueryAuditRequest {
            agent: "a1".into(),
            kind: "tool.call".into(),
            limit: 100,
            ..Default::default()
        },
    )
    .await;
    let tools: Vec<&str> = calls.iter().map(|(_, r)| r.event.tool.as_str()).collect();
    assert_eq!(tools, ["t1", "t2", "t3", "t4"]);
    assert!(calls.iter().all(|(_, r)| r.source == format!("a1/{spool}")));
    assert_eq!(
        calls.iter().map(|(_, r)| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );

    // An event about another agent, or one that is not an event, is
    // recorded as rejected in its place (the spool drains; the log shows it).
    let mut bad = event(6, "a1", "t6");
    bad.event = b"{not json".to_vec();
    let acks = ship(
        &mut client,
        spool,
        vec![vec![event(5, "someone-else", "t5"), bad]],
    )
    .await
    .unwrap();
    assert_eq!(acks, vec![4, 6]);
    let rejected = query(&mesh, kind("audit.rejected")).await;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[0].1.event.detail["error"].contains("not the shipping agent"));
    assert_eq!(rejected[1].1.seq, 6);

    // Bad requests are refused and change nothing.
    for (spool_id, events) in [
        ("short", vec![]),
        (spool, vec![event(9, "a1", "x"), event(8, "a1", "y")]),
        (spool, vec![event(0, "a1", "x")]),
    ] {
        let before = query(&mesh, kind("tool.call")).await.len();
        let r = ship(&mut client, spool_id, vec![events]).await;
        let err = r.err().unwrap_or_else(|| tonic::Status::ok(""));
        assert_eq!(err.code(), Code::InvalidArgument, "{spool_id}: {err:?}");
        assert_eq!(query(&mesh, kind("tool.call")).await.len(), before);
    }
    // Too many events in one request, or another spool mid-stream.
    let before = query(&mesh, kind("tool.call")).await.len();
    let many: Vec<_> = (7..1008).map(|i| event(i, "a1", "x")).collect();
    let err = ship(&mut client, spool, vec![many]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 1000"), "{err:?}");
    let reqs = vec![
        pb::ShipRequest {
            spool_id: spool.into(),
            events: vec![],
        },
        pb::ShipRequest {
            spool_id: "another-spool-0123456".into(),
            events: vec![event(7, "a1", "x")],
        },
    ];
    let mut acks = client
        .ship(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.next().await.unwrap().unwrap().acked, 6);
    let err = acks.next().await.unwrap().unwrap_err();
    assert!(err.message().contains("same spool"), "{err:?}");
    assert_eq!(query(&mesh, kind("tool.call")).await.len(), before);
    // A rejected event's reason says where it is wrong, not what it held.
    let mut leaky = event(7, "a1", "x");
    leaky.event =
        br#"{"time_ms":"sk-live-LEAKED","kind":"tool.call","actor":{"kind":"agent","id":"a1"}}"#
            .to_vec();
    assert_eq!(
        ship(&mut client, spool, vec![vec![leaky]]).await.unwrap(),
        vec![6, 7]
    );
    let rejected = query(&mesh, kind("audit.rejected")).await;
    assert_eq!(rejected.len(), 3);
    let text = serde_json::to_string(&rejected[2].1).unwrap();
    assert!(
        !text.contains("LEAKED") && text.contains("column"),
        "{text}"
    );

    // Reading with bad arguments is refused.
    let mut admin_reader = mesh.admin().await.unwrap();
    assert_refused(
        admin_reader
            .query_audit(pb::QueryAuditRequest {
                since_ms: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_refused(
        admin_reader
            .export_audit(pb::ExportAuditRequest { from: 9, to: 3 })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_refused(
        admin_reader
            .list_tree_heads(pb::ListTreeHeadsRequest {
                from_size: 0,
                limit: 10_001,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    for (old_size, new_size) in [(0, 3), (5, 3)] {
        assert_refused(
            admin_reader
                .prove_consistency(pb::ProveConsistencyRequest { old_size, new_size })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }

    // An admin certificate cannot ship, an agent cannot read the log.
    let admin_ch = warden_control_plane::ctl::endpoint(&mesh.ctl)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_refused(
        ship(&mut AuditServiceClient::new(admin_ch), spool, vec![]).await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
    let ch = mesh.mtls_channel(&id.cert_pem, id.key_pem()).await.unwrap();
    assert_refused(
        pb::admin_service_client::AdminServiceClient::new(ch)
            .export_audit(pb::ExportAuditRequest::default())
            .await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );

    // Signed heads, an inclusion proof checked offline with the key, and
    // by an independent verifier; a consistency proof between two heads.
    let first = admin
        .sign_tree_head(pb::SignTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap();
    let keys = ctl_audit::keys(&mut admin).await.unwrap();
    assert_eq!(keys.log_id, warden_tests::TD);
    let position = calls[2].0;
    let proof = ctl_audit::prove(&mut admin, position, 0).await.unwrap();
    let shown = ctl_audit::check(&proof, &keys).unwrap();
    assert!(
        shown.contains(&format!("entry {position} is in the log")),
        "{shown}"
    );
    let v = serde_json::to_value(&proof).unwrap();
    let verdict = warden_tests::python_stdin("audit_proof.py", &v.to_string());
    assert_eq!(
        verdict.trim(),
        "true",
        "the independent verifier: {verdict}"
    );
    let mut forged = v.clone();
    forged["record"] = Value::String(
        forged["record"]
            .as_str()
            .unwrap()
            .replace("\"t3\"", "\"t9\""),
    );
    forged["leaf_hash"] = Value::String(String::new());
    let verdict = warden_tests::python_stdin("audit_proof.py", &forged.to_string());
    assert_eq!(verdict.trim(), "false", "a changed record fails: {verdict}");
    let forged: ctl_audit::Proof = serde_json::from_value(forged).unwrap();
    assert!(ctl_audit::check(&forged, &keys).is_err());

    admin
        .resume_agent(pb::ResumeAgentRequest { id: "a1".into() })
        .await
        .unwrap();
    let second = admin
        .sign_tree_head(pb::SignTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap();
    assert!(second.size > first.size);
    let c = ctl_audit::consistency(&mut admin, first.size, second.size)
        .await
        .unwrap();
    assert!(ctl_audit::check(&c, &keys).unwrap().contains("extends"));
    assert_refused(
        admin
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: first.size,
                new_size: second.size + 1000,
            })
            .await,
        Code::NotFound,
        "AUDIT_NOT_FOUND",
    );
    assert_refused(
        admin
            .prove_inclusion(pb::ProveInclusionRequest {
                position: second.size + 100,
                tree_size: 0,
            })
            .await,
        Code::NotFound,
        "AUDIT_NOT_FOUND",
    );

    // The whole log verifies; after a restart too (the tree's right edge
    // is restored from the store and the log goes on).
    let v = ctl_audit::verify(&mut admin, &keys, None).await.unwrap();
    assert_eq!(v.finding, None);
    assert!(v.heads >= 2 && v.entries >= second.size, "{v:?}");
    drop(sc);
    let mesh = mesh.restart().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "a1".into(),
            reason: "again".into(),
        })
        .await
        .unwrap();
    admin
        .sign_tree_head(pb::SignTreeHeadRequest {})
        .await
        .unwrap();
    let v = ctl_audit::verify(&mut admin, &keys, None).await.unwrap();
    assert_eq!(v.finding, None, "{v:?}");
    assert_eq!(v.uncovered, 0);
    assert_eq!(query(&mesh, kind("agent.suspended")).await.len(), 2);
}

#[tokio::test]
async fn a_query_follows_the_log_as_it_grows() {
    let mesh = Mesh::start().await.unwrap();
    // Before the follow starts: not sent (following starts at the end).
    mesh.register("f0", &["data:read"], 1).await.unwrap();
    let mut feed = mesh
        .admin()
        .await
        .unwrap()
        .query_audit(pb::QueryAuditRequest {
            kind: "agent.registered".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    mesh.register("f1", &["data:read"], 1).await.unwrap();
    let page = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("a followed query sees a new entry")
        .unwrap()
        .unwrap();
    let r = Record::from_bytes(&page.entries[0].record).unwrap();
    assert_eq!(r.event.agent, "f1");
    let bad = mesh
        .admin()
        .await
        .unwrap()
        .query_audit(pb::QueryAuditRequest {
            limit: 10_001,
            ..Default::default()
        })
        .await;
    assert_refused(bad, Code::InvalidArgument, "INVALID_ARGUMENT");
}

fn tamper(db: &std::path::Path, mut op: Value) -> Value {
    op["db"] = json!(db);
    serde_json::from_str(&warden_tests::python_stdin(
        "tamper_audit.py",
        &op.to_string(),
    ))
    .unwrap()
}

#[tokio::test]
async fn verify_names_the_position_of_an_altered_missing_or_reordered_entry() {
    use warden_shared::audit::Finding;
    let mesh = Mesh::start().await.unwrap();
    for i in 0..12 {
        mesh.register(&format!("t{i}"), &["data:read"], 1)
            .await
            .unwrap();
    }
    let mut admin = mesh.admin().await.unwrap();
    admin
        .sign_tree_head(pb::SignTreeHeadRequest {})
        .await
        .unwrap();
    let keys = ctl_audit::keys(&mut admin).await.unwrap();
    let db = mesh.dir.path().join("cp/warden.db");
    let mut check = async || {
        ctl_audit::verify(&mut admin, &keys, None)
            .await
            .unwrap()
            .finding
    };
    assert_eq!(check().await, None);

    // Through SQL, the store refuses to change or remove audit rows.
    let errors = tamper(&db, json!({"op": "try"}));
    for e in errors.as_array().unwrap() {
        assert!(
            e.as_str().is_some_and(|e| e.contains("append-only")),
            "{errors}"
        );
    }
    // Past the triggers, in the file: each change is named by position.
    let old = tamper(&db, json!({"op": "alter", "position": 5}));
    assert_eq!(check().await, Some(Finding::Altered { position: 5 }));
    tamper(&db, json!({"op": "restore", "rows": old}));
    assert_eq!(check().await, None);

    let old = tamper(&db, json!({"op": "delete", "position": 7}));
    assert_eq!(
        check().await,
        Some(Finding::Missing {
            position: 7,
            next: 8
        })
    );
    tamper(&db, json!({"op": "restore", "rows": old}));
    assert_eq!(check().await, None);

    let old = tamper(&db, json!({"op": "swap", "a": 2, "b": 9}));
    assert_eq!(check().await, Some(Finding::Altered { position: 2 }));
    tamper(&db, json!({"op": "restore", "rows": old}));
    assert_eq!(check().await, None);
}

async fn sign(
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> u64 {
    admin
        .sign_tree_head(pb::SignTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap()
        .size
}

#[tokio::test]
async fn a_pruned_log_keeps_later_entries_provable_and_every_head_checkable() {
    use warden_shared::audit::Finding;
    let mesh = Mesh::start().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    let register = async |from: usize, to: usize| {
        for i in from..to {
            mesh.register(&format!("r{i}"), &["data:read"], 1)
                .await
                .unwrap();
        }
    };
    register(0, 5).await;
    let h0 = sign(&mut admin).await;
    register(5, 20).await;
    let h1 = sign(&mut admin).await;
    register(20, 30).await;
    let h2 = sign(&mut admin).await;
    assert!(h0 < 13 && 13 < h1 && h1 < h2, "{h0} {h1} {h2}");
    let keys = ctl_audit::keys(&mut admin).await.unwrap();

    // Archive the prefix, then prune it.
    let mut archive = Vec::new();
    let mut feed = admin
        .export_audit(pb::ExportAuditRequest { from: 0, to: 13 })
        .await
        .unwrap()
        .into_inner();
    while let Some(page) = feed.next().await {
        for e in page.unwrap().entries {
            archive.extend_from_slice(&e.record);
            archive.push(b'\n');
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let archive_file = dir.path().join("archive.jsonl");
    std::fs::write(&archive_file, &archive).unwrap();
    for below in [0, h2 + 1] {
        assert_refused(
            admin.prune_audit(pb::PruneAuditRequest { below }).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    let r = admin
        .prune_audit(pb::PruneAuditRequest { below: 13 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 13);
    assert_refused(
        admin.prune_audit(pb::PruneAuditRequest { below: 13 }).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(query(&mesh, kind("audit.pruned")).await.len(), 1);

    // Without the archive: verified from the kept hashes, the head below
    // the point skipped; with it, every head.
    let v = ctl_audit::verify(&mut admin, &keys, None).await.unwrap();
    assert_eq!(v.finding, None, "{v:?}");
    assert_eq!((v.pruned_below, v.heads_skipped), (13, 1));
    let v = ctl_audit::verify(&mut admin, &keys, Some(&archive_file))
        .await
        .unwrap();
    assert_eq!(v.finding, None, "{v:?}");
    assert_eq!(v.heads_skipped, 0);
    assert!(v.heads >= 3);
    // An altered archive does not verify.
    let text = String::from_utf8(archive.clone()).unwrap();
    let altered = text.replacen("\"r7\"", "\"r9\"", 1);
    assert_ne!(altered, text);
    std::fs::write(&archive_file, altered).unwrap();
    let v = ctl_audit::verify(&mut admin, &keys, Some(&archive_file))
        .await
        .unwrap();
    assert!(
        matches!(v.finding, Some(Finding::HeadMismatch { .. })),
        "{v:?}"
    );

    // Later entries stay provable; pruned ones are refused.
    let proof = ctl_audit::prove(&mut admin, 20, 0).await.unwrap();
    assert!(ctl_audit::check(&proof, &keys).is_ok());
    let c = ctl_audit::consistency(&mut admin, h1, h2).await.unwrap();
    assert!(ctl_audit::check(&c, &keys).is_ok());
    assert_refused(
        admin
            .prove_inclusion(pb::ProveInclusionRequest {
                position: 3,
                tree_size: 0,
            })
            .await,
        Code::NotFound,
        "AUDIT_NOT_FOUND",
    );
    assert_refused(
        admin
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: h0,
                new_size: h2,
            })
            .await,
        Code::NotFound,
        "AUDIT_NOT_FOUND",
    );

    // Everything signed pruned, then a restart: the log keeps its length
    // and goes on.
    let h3 = sign(&mut admin).await;
    admin
        .prune_audit(pb::PruneAuditRequest { below: h3 })
        .await
        .unwrap();
    let mesh = mesh.restart().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    mesh.register("after", &["data:read"], 1).await.unwrap();
    let h4 = sign(&mut admin).await;
    assert!(h4 > h3);
    let v = ctl_audit::verify(&mut admin, &keys, None).await.unwrap();
    assert_eq!(v.finding, None, "{v:?}");
    assert_eq!(v.pruned_below, h3);
}

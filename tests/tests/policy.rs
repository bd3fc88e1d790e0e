//! Policy versions through the admin API: validated server-side, stored
//! with who and when, and every invalid document refused with its exact
//! reason while the stored policy stays as it was.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_tests::*;

const EXAMPLE: &str = include_str!("../../deploy/policies/example.yaml");

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = serde_json::to_value(
        warden_shared::policy::Policy::parse(EXAMPLE)
            .unwrap()
            .document,
    )
    .unwrap();
    f(&mut v);
    // JSON is YAML: the server parses it like any YAML document.
    serde_json::to_string_pretty(&v).unwrap()
}

fn apply(doc: &str) -> pb::ApplyPolicyRequest {
    pb::ApplyPolicyRequest {
        document: doc.into(),
        expected_version: 0,
        dry_run: false,
    }
}

#[tokio::test]
async fn versions_are_stored_with_who_and_when() {
    let mesh = Mesh::start().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    let none = admin.get_policy(pb::GetPolicyRequest { version: 0 }).await;
    assert_refused(none, Code::NotFound, "POLICY_VERSION_UNKNOWN");

    let r = admin
        .apply_policy(apply(EXAMPLE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.changed, r.tools), (1, true, 5));
    // The same content again (even reformatted) stores nothing.
    let again = admin
        .apply_policy(apply(&edit(|_| {})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.version, again.changed, again.digest.as_str()),
        (1, false, r.digest.as_str())
    );
    let v2 = edit(|v| v["tools"][0]["risk"] = "high".into());
    let r2 = admin.apply_policy(apply(&v2)).await.unwrap().into_inner();
    assert_eq!((r2.version, r2.changed), (2, true));

    let got = admin
        .get_policy(pb::GetPolicyRequest { version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.document, EXAMPLE);
    let meta = got.policy.unwrap();
    assert_eq!(meta.applied_by, "root");
    assert!(meta.applied_at.unwrap().seconds > 0);
    let latest = admin
        .get_policy(pb::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.policy.unwrap().version, 2);
    let hist = admin
        .list_policy_versions(pb::ListPolicyVersionsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hist.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );

    // Optimistic concurrency: an apply based on version 1 is refused.
    let stale = pb::ApplyPolicyRequest {
        document: EXAMPLE.into(),
        expected_version: 1,
        dry_run: false,
    };
    assert_refused(
        admin.apply_policy(stale).await,
        Code::FailedPrecondition,
        "POLICY_VERSION_CONFLICT",
    );
    // A dry run validates and stores nothing.
    let dry = pb::ApplyPolicyRequest {
        document: EXAMPLE.into(),
        expected_version: 0,
        dry_run: true,
    };
    assert!(!admin.apply_policy(dry).await.unwrap().into_inner().changed);
    let hist = admin
        .list_policy_versions(pb::ListPolicyVersionsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hist.versions.len(), 2);
}

#[tokio::test]
async fn invalid_documents_change_nothing() {
    let mesh = Mesh::start().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin.apply_policy(apply(EXAMPLE)).await.unwrap();
    let cases: Vec<(String, &str)> = vec![
        ("version: 1\ntools: [\n".into(), "POLICY_YAML"),
        (
            edit(|v| v["colour"] = "blue".into()),
            "POLICY_UNKNOWN_FIELD",
        ),
        (
            edit(|v| {
                v["tools"][1]["input_schema"]["properties"]["customer_id"]["pattern"] = "([".into()
            }),
            "POLICY_SCHEMA",
        ),
        (
            edit(|v| v["cedar"] = "permit (principal, action, resource) when {".into()),
            "POLICY_CEDAR_PARSE",
        ),
        (
            edit(|v| {
                v["cedar"] = r#"forbid (principal, action == Warden::Action::"send_email", resource) when { context.arguments.bcc == "x" };"#.into()
            }),
            "POLICY_CEDAR_VALIDATION",
        ),
        (
            edit(|v| v["tools"][0]["secrets"] = serde_json::json!(["smtp_password"])),
            "POLICY_UNDEFINED_SECRET",
        ),
        (
            edit(|v| {
                let t = v["tools"][0].clone();
                v["tools"].as_array_mut().unwrap().push(t);
            }),
            "POLICY_DUPLICATE_TOOL",
        ),
    ];
    for (doc, reason) in cases {
        let r = admin.apply_policy(apply(&doc)).await;
        assert_refused(r, Code::InvalidArgument, reason);
    }
    let hist = admin
        .list_policy_versions(pb::ListPolicyVersionsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hist.versions.len(),
        1,
        "a refused document stored a version"
    );
    let latest = admin
        .get_policy(pb::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.document, EXAMPLE);
}

#[tokio::test]
async fn only_admins_apply_policy() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let id = sc.identity.snapshot().current.clone().unwrap();
    let ch = mesh.mtls_channel(&id.cert_pem, id.key_pem()).await.unwrap();
    let mut as_agent = warden_shared::proto::v1::admin_service_client::AdminServiceClient::new(ch);
    assert_refused(
        as_agent.apply_policy(apply(EXAMPLE)).await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
}

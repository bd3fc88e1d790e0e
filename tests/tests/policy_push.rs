//! Policy over the mesh stream: every sidecar holds the latest version with
//! the tools that concern its agent, refuses (Nacks) a push it cannot apply
//! while keeping what it held, and catches up after a control-plane restart.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use warden_shared::policy::Risk;
use warden_shared::proto::v1 as pb;
use warden_tests::*;

fn held(sc: &warden_sidecar::app::Running) -> u64 {
    sc.auth
        .state()
        .held()
        .policy
        .as_ref()
        .map_or(0, |p| p.version)
}

async fn holds(sc: &warden_sidecar::app::Running, version: u64) -> bool {
    eventually(Duration::from_secs(15), || async { held(sc) == version }).await
}

async fn support_bot(mesh: &Mesh, id: &str) -> warden_sidecar::app::Running {
    mesh.admin()
        .await
        .unwrap()
        .register_agent(pb::RegisterAgentRequest {
            id: id.into(),
            agent_type: "support-bot".into(),
            owner: "support".into(),
            allowed_scopes: vec!["mail:send".into(), "crm:read".into()],
            denied_tools: vec!["clock".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let token = mesh.join_token(id).await.unwrap();
    let sc = warden_sidecar::app::start(mesh.sidecar_config(id, Some(token)))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sc.auth.state().held_version() > 0
        })
        .await
    );
    sc
}

#[tokio::test]
async fn each_sidecar_holds_the_tools_that_concern_its_agent() {
    let mesh = Mesh::start().await.unwrap();
    let eu = support_bot(&mesh, "support-bot-eu-1").await;
    let us = support_bot(&mesh, "support-bot-us-1").await;
    assert_eq!(held(&eu), 0, "no policy applied yet");
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(EXAMPLE_POLICY))
        .await
        .unwrap();
    assert!(holds(&eu, 1).await && holds(&us, 1).await);

    let tools = |sc: &warden_sidecar::app::Running| {
        sc.auth
            .state()
            .held()
            .policy
            .as_ref()
            .unwrap()
            .tools
            .clone()
    };
    // Type override: no delete_repository; identity deny list: no clock.
    let eu_tools = tools(&eu);
    assert_eq!(
        eu_tools.keys().collect::<Vec<_>>(),
        ["lookup_customer", "refund_payment", "send_email"]
    );
    // Agent override: refunds are critical for the EU bot only.
    assert_eq!(eu_tools["refund_payment"], Risk::Critical);
    assert_eq!(tools(&us)["refund_payment"], Risk::High);
}

#[tokio::test]
async fn a_burst_of_applies_ends_with_every_sidecar_on_the_last_version() {
    let mesh = Mesh::start().await.unwrap();
    let a = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let b = mesh.agent("b1", &["data:read"], 4).await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    let mut last = 0;
    for i in 0..100 {
        let doc = EXAMPLE_POLICY.replace(
            "calls_per_minute: 30",
            &format!("calls_per_minute: {}", 30 + i),
        );
        last = admin
            .apply_policy(apply_policy(&doc))
            .await
            .unwrap()
            .into_inner()
            .version;
    }
    assert_eq!(last, 100);
    assert!(
        holds(&a, 100).await && holds(&b, 100).await,
        "a={} b={}",
        held(&a),
        held(&b)
    );
    let standing = a.auth.state().held();
    let limits = &standing.policy.as_ref().unwrap().policy.document.tools[0].limits;
    assert_eq!(limits.calls_per_minute, Some(129));
}

#[tokio::test]
async fn a_push_the_sidecar_cannot_apply_is_nacked_and_changes_nothing() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin
        .apply_policy(apply_policy(EXAMPLE_POLICY))
        .await
        .unwrap();
    assert!(holds(&sc, 1).await);

    // A stored version the sidecar refuses (written past the admin API's
    // validation, as an older or newer control plane might have).
    let bad = EXAMPLE_POLICY.replace("context.time.hour < 6", "context.time.minute < 6");
    let new = warden_control_plane::store::NewPolicy {
        document: bad,
        digest: "bad".into(),
        tools: 5,
        applied_by: "test".into(),
        applied_at: warden_control_plane::now_unix(),
    };
    mesh.cp.state.store.apply_policy(&new, None).await.unwrap();
    mesh.cp.state.reload_policy().await.unwrap();

    let nacked = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_sidecars(pb::ListSidecarsRequest {})
                .await
                .unwrap()
                .into_inner();
            r.sidecars
                .iter()
                .any(|s| s.nack_reason.contains("POLICY_CEDAR_VALIDATION"))
        }
    })
    .await;
    assert!(
        nacked,
        "the control plane should show the sidecar's refusal"
    );
    assert_eq!(
        held(&sc),
        1,
        "a refused push must not change what the sidecar holds"
    );
    let r = admin
        .list_sidecars(pb::ListSidecarsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.sidecars[0].nack_reason.starts_with("policy v2:"),
        "{}",
        r.sidecars[0].nack_reason
    );

    // The refused policy does not hold back the kill switch.
    let s = session(&sc).await;
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: s.session_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            who(&sc, &s.token)
                .await
                .is_err_and(|e| reason(&e) == "SESSION_REVOKED")
        })
        .await,
        "a session revoked after a refused policy must still be refused"
    );
    assert_eq!(held(&sc), 1);

    // A valid version supersedes it.
    let fixed = EXAMPLE_POLICY.replace("calls_per_minute: 30", "calls_per_minute: 31");
    admin.apply_policy(apply_policy(&fixed)).await.unwrap();
    assert!(holds(&sc, 3).await);
}

#[tokio::test]
async fn after_a_control_plane_restart_sidecars_resync() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(EXAMPLE_POLICY))
        .await
        .unwrap();
    assert!(holds(&sc, 1).await);
    let mesh = mesh.restart().await.unwrap();
    let changed = EXAMPLE_POLICY.replace("calls_per_minute: 30", "calls_per_minute: 31");
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(&changed))
        .await
        .unwrap();
    assert!(
        holds(&sc, 2).await,
        "the sidecar did not reconnect and catch up (holds v{})",
        held(&sc)
    );
}

//! End to end: enrollment, sessions, local token checks, and every refusal
//! named in the foundation issue, each with its exact code and reason.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::os::unix::fs::PermissionsExt;

use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_tests::*;

#[tokio::test]
async fn enroll_start_session_and_who_am_i_over_tcp_and_unix_socket() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh
        .agent("coder-1", &["data:*", "mail:send"], 4)
        .await
        .unwrap();

    let id = sc.identity.snapshot().current.clone().unwrap();
    assert_eq!(
        id.spiffe_id.to_string(),
        format!("spiffe://{TD}/agent/coder-1")
    );
    let key_mode = std::fs::metadata(sc.data_dir.join("identity/identity.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = agent
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into(), "mail:send".into(), "admin:all".into()],
            user_id: "usr_42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.scopes,
        ["data:read", "mail:send"],
        "admin:all is not allowed and must not be granted"
    );
    let claims = jwt_payload(&s.token);
    assert_eq!(claims["sub"], "usr_42");
    assert_eq!(claims["client_id"], format!("spiffe://{TD}/agent/coder-1"));
    assert_eq!(claims["aud"], format!("spiffe://{TD}/agent/coder-1"));
    assert_eq!(claims["iss"], format!("spiffe://{TD}/control-plane"));
    assert_eq!(claims["cnf"]["x5t#S256"], id.thumbprint.as_str());
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 15 * 60);

    for mut client in [
        agent_tcp(
            &sc,
            AgentAuth {
                token: Some(s.token.clone()),
                no_header: false,
            },
        )
        .await
        .unwrap(),
        agent_unix(
            &sc.socket_path,
            AgentAuth {
                token: Some(s.token.clone()),
                no_header: false,
            },
        )
        .await
        .unwrap(),
    ] {
        let me = client
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.agent_id, "coder-1");
        assert_eq!(me.session_id, s.session_id);
        assert_eq!(me.user_id, "usr_42");
        assert_eq!(me.scopes, ["data:read", "mail:send"]);
        assert_eq!(me.certificate_serial, id.serial);
    }

    // Health reports the certificate.
    let (code, body) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["certificate"]["expires_in_secs"].as_i64().unwrap() > 3000);
}

#[tokio::test]
async fn agent_api_requires_the_security_header() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let mut c = agent_tcp(
        &sc,
        AgentAuth {
            token: None,
            no_header: true,
        },
    )
    .await
    .unwrap();
    let r = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::InvalidArgument, "AGENT_HEADER_MISSING");
    // Ping needs no token, but the header all the same.
    assert_refused(
        c.ping(pb::PingRequest {}).await,
        Code::InvalidArgument,
        "AGENT_HEADER_MISSING",
    );
    // Nothing was opened: the agent still has its full session budget.
    let mut ok = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    ok.ping(pb::PingRequest {})
        .await
        .expect("ping answers without a token");
    for _ in 0..2 {
        ok.start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn scopes_beyond_the_allowed_set_are_refused() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let r = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:write".into()],
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "SCOPE_NOT_ALLOWED");
    let r = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["bad scope".into()],
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::InvalidArgument, "INVALID_ARGUMENT");
    // The refusals opened no session.
    let open = mesh
        .cp
        .state
        .store
        .open_sessions(&"a1".parse_agent(), warden_control_plane::now_unix())
        .await
        .unwrap();
    assert_eq!(open, 0);
}

#[tokio::test]
async fn one_session_over_the_cap_is_refused_until_one_ends() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let req = || pb::StartSessionRequest {
        scopes: vec!["data:read".into()],
        ..Default::default()
    };
    let first = c.start_session(req()).await.unwrap().into_inner();
    c.start_session(req()).await.unwrap();
    assert_refused(
        c.start_session(req()).await,
        Code::ResourceExhausted,
        "SESSION_LIMIT",
    );

    let mut with_token = agent_tcp(
        &sc,
        AgentAuth {
            token: Some(first.token.clone()),
            no_header: false,
        },
    )
    .await
    .unwrap();
    with_token
        .end_session(pb::EndSessionRequest {})
        .await
        .unwrap();
    // The end was committed with its audit event: the log holds it, once.
    let ended: Vec<_> = mesh
        .audit_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.kind == "session.ended")
        .map(|r| (r.event.session, r.event.agent, r.event.outcome))
        .collect();
    assert_eq!(
        ended,
        [(first.session_id.clone(), "a1".to_owned(), "ok".to_owned())]
    );
    // The ended session's token is refused at once; its slot is free again.
    assert_refused(
        with_token.who_am_i(pb::WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "SESSION_UNKNOWN",
    );
    c.start_session(req()).await.unwrap();
}

trait ParseAgent {
    fn parse_agent(&self) -> warden_shared::agent::AgentId;
}
impl ParseAgent for str {
    fn parse_agent(&self) -> warden_shared::agent::AgentId {
        warden_shared::agent::AgentId::new(self).unwrap()
    }
}

#[tokio::test]
async fn an_ended_session_stays_ended_across_a_sidecar_restart() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let config = mesh.sidecar_config("a1", Some(token));
    let sc = warden_sidecar::app::start(config.clone()).await.unwrap();
    // Sessions end at the sidecar only once it holds the control plane's
    // first push (before, it refuses every token).
    let pushed = eventually(std::time::Duration::from_secs(10), || async {
        sc.auth.state().held_version() > 0
    })
    .await;
    assert!(pushed, "no push from the control plane");
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut t = agent_tcp(
        &sc,
        AgentAuth {
            token: Some(s.token.clone()),
            no_header: false,
        },
    )
    .await
    .unwrap();
    t.end_session(pb::EndSessionRequest {}).await.unwrap();
    let serial = sc.identity.snapshot().current.unwrap().serial.clone();
    sc.shutdown().await.unwrap();

    // Restarted from its data directory: same certificate, no join token needed.
    let mut again = config;
    again.join_token = None;
    let sc = warden_sidecar::app::start(again).await.unwrap();
    assert_eq!(sc.identity.snapshot().current.unwrap().serial, serial);
    let mut t = agent_tcp(
        &sc,
        AgentAuth {
            token: Some(s.token),
            no_header: false,
        },
    )
    .await
    .unwrap();
    assert_refused(
        t.who_am_i(pb::WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "SESSION_UNKNOWN",
    );
}

#[tokio::test]
async fn with_tcp_turned_off_the_agent_api_is_only_on_the_socket() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let mut config = mesh.sidecar_config("a1", Some(token));
    config.tcp = false;
    let sc = warden_sidecar::app::start(config).await.unwrap();
    assert!(sc.agent_addr.is_none());
    assert!(agent_tcp(&sc, AgentAuth::default()).await.is_err());
    let mode = std::fs::metadata(&sc.socket_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = agent_unix(&sc.socket_path, AgentAuth::default())
        .await
        .unwrap();
    c.start_session(pb::StartSessionRequest {
        scopes: vec!["data:read".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

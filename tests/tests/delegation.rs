//! Delegation (issue 17), against an OpenID Connect provider built with
//! Authlib (`tests/python/oidc_provider.py`): user tokens verified at
//! `StartSession` (each attack refused with its own reason), consent given
//! on the control plane's pages (walked with `requests`), sessions issued
//! per RFC 8693 (`sub` the user, `act.sub` the agent, scopes cut to the
//! consent), the verified user in Cedar's context and the audit, grants
//! listed and revoked (ending live sessions through the kill-switch path),
//! and the JWK Set fetched again for an unknown key id.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_tests::gateway::authorize;
use warden_tests::idp::Idp;
use warden_tests::*;

const POLICY: &str = r#"
version: 1
tools:
  - name: read_record
    description: Reads a record.
    input_schema: { type: object, properties: { id: { type: string } } }
    scopes: ["data:read"]
    risk: low
    upstream: { kind: builtin, address: echo }
  - name: pay
    description: Pays, only for a verified user.
    input_schema: { type: object, properties: { cents: { type: integer } } }
    scopes: ["data:read"]
    risk: low
    verified_user: true
    upstream: { kind: builtin, address: echo }
  - name: deploy
    description: Deploys, only for engineers.
    input_schema: { type: object }
    scopes: ["data:read"]
    risk: low
    upstream: { kind: builtin, address: echo }
cedar: |
  permit (principal, action, resource);
  forbid (principal, action == Warden::Action::"deploy", resource)
  unless { context.user_verified && context has groups && context.groups.contains("engineering") };
"#;

/// A mesh trusting a fresh provider, the policy above, and agent `a1`
/// (type `test`) allowed `data:*` and `mail:send`, with its sidecar.
async fn setup() -> (Idp, Mesh, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::start(dir.path()).await.unwrap();
    let provider = idp.provider();
    let mesh = Mesh::start_with(move |c| {
        c.durable_sync = false;
        c.identity_providers = vec![provider];
    })
    .await
    .unwrap();
    // The secret file lives as long as the mesh's directory.
    std::mem::forget(dir);
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(POLICY))
        .await
        .unwrap();
    let sc = mesh.agent("a1", &["data:*", "mail:send"], 8).await.unwrap();
    let held = eventually(Duration::from_secs(10), || async {
        sc.auth.state().held().policy.is_some()
    })
    .await;
    assert!(held, "the sidecar received no policy");
    (idp, mesh, sc)
}

async fn start(
    sc: &Sidecar,
    scopes: &[&str],
    user_id: &str,
    user_token: &str,
) -> Result<pb::StartSessionResponse, tonic::Status> {
    let mut c = agent_tcp(sc, AgentAuth::default()).await.unwrap();
    c.start_session(pb::StartSessionRequest {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        user_id: user_id.into(),
        user_token: user_token.into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Runs `tests/python/consent_flow.py` with `input` (off the runtime: the
/// servers it talks to run on it).
async fn consent_flow(input: Value) -> Value {
    let out =
        tokio::task::spawn_blocking(move || python_stdin("consent_flow.py", &input.to_string()))
            .await
            .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// `Authorize`'s verdict on `tool`: `Ok` when allowed, else the reason.
async fn verdict(c: &mut AgentClient, tool: &str, args: &str) -> Result<(), String> {
    let r = c
        .authorize(authorize(tool, args))
        .await
        .unwrap()
        .into_inner();
    match (r.allowed, r.denial) {
        (true, _) => Ok(()),
        (false, Some(d)) => Err(d.reason),
        (false, None) => Err("denied without a reason".into()),
    }
}

/// The consent URL a `CONSENT_REQUIRED` refusal names.
fn consent_url(s: &tonic::Status) -> String {
    warden_shared::refusal::metadata_of(s)
        .get("consent_url")
        .cloned()
        .expect("a consent_url in the refusal")
}

#[tokio::test]
async fn a_delegated_session_needs_consent_and_carries_the_user_and_the_agent() {
    let (idp, mesh, sc) = setup().await;
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let user = format!("{}#alice", idp.issuer);

    // No consent yet: refused, with where to give it.
    let s = assert_refused(
        start(&sc, &["data:read", "mail:send"], "", &alice).await,
        Code::PermissionDenied,
        "CONSENT_REQUIRED",
    );
    let url = consent_url(&s);
    assert!(
        url.starts_with(&format!(
            "http://{}/consent?agent=a1&scope=",
            mesh.cp.jwks_addr
        )),
        "{url}"
    );
    assert!(s.message().contains(&url), "{}", s.message());

    // Alice signs in at the provider and approves data:read only.
    let consent = consent_flow(json!({
        "action": "approve", "url": url, "user": "alice", "keep": ["data:read"],
    }))
    .await;
    assert_eq!(consent["status"], 200, "{consent}");
    assert_eq!(consent["offered"], json!(["data:read", "mail:send"]));
    assert_eq!(consent["agent_type"], "test");
    assert_eq!(consent["scopes"], json!(["data:read"]));
    let grant = consent["grant"].as_str().unwrap().to_owned();

    // Scopes beyond the consent are not granted.
    let s = start(&sc, &["data:read", "mail:send"], "", &alice)
        .await
        .unwrap();
    assert_eq!(s.scopes, ["data:read"]);
    let claims = jwt_payload(&s.token);
    let spiffe = format!("spiffe://{TD}/agent/a1");
    assert_eq!(claims["sub"], user);
    assert_eq!(claims["act"], json!({"sub": spiffe}));
    assert_eq!(claims["client_id"], spiffe);
    assert_eq!(claims["usr"]["grant"], grant);
    assert_eq!(claims["usr"]["tier"], "gold");
    assert_eq!(claims["usr"]["groups"], json!(["engineering", "oncall"]));
    assert_eq!(claims["usr"]["email"], "alice@example.com");
    // PyJWT verifies the issued token against the control plane's JWK Set
    // and reads its act claim.
    let jwks = http_get(mesh.cp.jwks_addr, "/.well-known/jwks.json")
        .await
        .unwrap()
        .1;
    let checked = tokio::task::spawn_blocking({
        let input = json!({"token": s.token, "jwks": jwks, "audience": spiffe}).to_string();
        move || python_stdin("verify_act.py", &input)
    })
    .await
    .unwrap();
    let checked: Value = serde_json::from_str(&checked).unwrap();
    assert_eq!(checked["act"], json!({"sub": spiffe}), "{checked}");
    assert_eq!(checked["sub"], user);

    // Only consented scopes: mail:send alone is refused with the URL.
    let s2 = assert_refused(
        start(&sc, &["mail:send"], "", &alice).await,
        Code::PermissionDenied,
        "CONSENT_REQUIRED",
    );
    assert!(consent_url(&s2).contains("scope=mail%3Asend"));

    // The session knows its user is verified; the policy sees it.
    let me = who(&sc, s.token.clone()).await.unwrap();
    assert_eq!(
        (me.user_id.as_str(), me.user_verified),
        (user.as_str(), true)
    );
    let mut c = with_token(&sc, &s.token).await.unwrap();
    assert_eq!(verdict(&mut c, "pay", r#"{"cents": 5}"#).await, Ok(()));
    assert_eq!(verdict(&mut c, "deploy", "{}").await, Ok(()));

    // The same user stated by the agent without the user's token: refused
    // outright, never an unverified session for a verified-looking user.
    assert_refused(
        start(&sc, &["data:read"], &user, "").await,
        Code::PermissionDenied,
        "USER_MISMATCH",
    );
    // A stated (unverified) user reaches neither pay nor deploy.
    let plain = start(&sc, &["data:read"], "carol", "").await.unwrap();
    let me = who(&sc, plain.token.clone()).await.unwrap();
    assert_eq!((me.user_id.as_str(), me.user_verified), ("carol", false));
    let mut p = with_token(&sc, &plain.token).await.unwrap();
    assert_eq!(
        verdict(&mut p, "pay", r#"{"cents": 5}"#).await,
        Err("USER_NOT_VERIFIED".into())
    );
    assert_eq!(
        verdict(&mut p, "deploy", "{}").await,
        Err("POLICY_DENIED".into())
    );
    assert_eq!(verdict(&mut p, "read_record", "{}").await, Ok(()));

    // Bob is verified but not an engineer.
    let bob = idp.mint(json!({"sub": "bob"})).await.unwrap();
    let bob_url = consent_url(&assert_refused(
        start(&sc, &["data:read"], "", &bob).await,
        Code::PermissionDenied,
        "CONSENT_REQUIRED",
    ));
    let consent = consent_flow(json!({"action": "approve", "url": bob_url, "user": "bob"})).await;
    assert_eq!(consent["scopes"], json!(["data:read"]), "{consent}");
    let sb = start(&sc, &["data:read"], "", &bob).await.unwrap();
    let mut b = with_token(&sc, &sb.token).await.unwrap();
    assert_eq!(verdict(&mut b, "pay", r#"{"cents": 5}"#).await, Ok(()));
    assert_eq!(
        verdict(&mut b, "deploy", "{}").await,
        Err("POLICY_DENIED".into())
    );

    // The audit records the user, the agent, and that the user was verified.
    let started = audit_events(&mesh, "session.started").await;
    let alice_event = started
        .iter()
        .find(|e| e["user"] == user.as_str())
        .expect("alice's session in the audit");
    assert_eq!(alice_event["agent"], "a1");
    assert_eq!(alice_event["detail"]["user_verified"], "true");
    assert_eq!(alice_event["detail"]["act"], spiffe);
    assert_eq!(alice_event["detail"]["grant"], grant);
    let carol_event = started.iter().find(|e| e["user"] == "carol").unwrap();
    assert_eq!(carol_event["detail"]["user_verified"], "false");
}

/// The audit log's events of `kind`, as JSON.
async fn audit_events(mesh: &Mesh, kind: &str) -> Vec<Value> {
    let entries = mesh
        .cp
        .state
        .store
        .audit_entries(0, i64::MAX as u64, 10_000, false)
        .await
        .unwrap();
    entries
        .iter()
        .filter_map(|e| serde_json::from_slice::<Value>(&e.record).ok())
        .map(|r| r["event"].clone())
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn forged_and_misdirected_user_tokens_are_refused_with_their_reasons() {
    let (idp, mesh, sc) = setup().await;
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let url = consent_url(&start(&sc, &["data:read"], "", &alice).await.unwrap_err());
    let consent = consent_flow(json!({"action": "approve", "url": url, "user": "alice"})).await;
    assert_eq!(consent["status"], 200, "{consent}");
    start(&sc, &["data:read"], "", &alice).await.unwrap();

    let cases = [
        (
            json!({"sub": "alice", "forge": true}),
            Code::Unauthenticated,
            "USER_TOKEN_BAD_SIGNATURE",
        ),
        (
            json!({"sub": "alice", "exp_in": -3600, "iat_in": -7200}),
            Code::Unauthenticated,
            "USER_TOKEN_EXPIRED",
        ),
        (
            json!({"sub": "alice", "nbf_in": 3600}),
            Code::Unauthenticated,
            "USER_TOKEN_NOT_YET_VALID",
        ),
        (
            json!({"sub": "alice", "aud": "another-app"}),
            Code::Unauthenticated,
            "USER_TOKEN_WRONG_AUDIENCE",
        ),
        (
            json!({"sub": "alice", "iss": "https://evil.example"}),
            Code::Unauthenticated,
            "USER_TOKEN_WRONG_ISSUER",
        ),
        (
            json!({"sub": "alice", "attack": "alg_none"}),
            Code::Unauthenticated,
            "USER_TOKEN_ALGORITHM",
        ),
        (
            json!({"sub": "alice", "attack": "hs256_public_key"}),
            Code::Unauthenticated,
            "USER_TOKEN_ALGORITHM",
        ),
        (
            json!({"sub": "alice", "kid": "no-such-key"}),
            Code::Unauthenticated,
            "USER_TOKEN_UNKNOWN_KEY",
        ),
        (
            json!({"sub": ""}),
            Code::Unauthenticated,
            "USER_TOKEN_NO_SUBJECT",
        ),
    ];
    for (spec, code, reason) in cases {
        let token = idp.mint(spec.clone()).await.unwrap();
        let s = assert_refused(start(&sc, &["data:read"], "", &token).await, code, reason);
        // The refusal never echoes the token.
        assert!(!s.message().contains(&token), "{spec}: {}", s.message());
    }
    assert_refused(
        start(&sc, &["data:read"], "", "not.a-jwt").await,
        Code::Unauthenticated,
        "USER_TOKEN_MALFORMED",
    );
    // Alice's token cannot start a session for Bob.
    let bob = format!("{}#bob", idp.issuer);
    assert_refused(
        start(&sc, &["data:read"], &bob, &alice).await,
        Code::PermissionDenied,
        "USER_MISMATCH",
    );
    // Nothing was opened by the refusals: one session (the good one).
    let agent = warden_shared::agent::AgentId::new("a1").unwrap();
    let open = mesh
        .cp
        .state
        .store
        .open_sessions(&agent, warden_control_plane::now_unix())
        .await
        .unwrap();
    assert_eq!(open, 1);
}

#[tokio::test]
async fn a_new_provider_key_is_fetched_once_and_made_up_key_ids_do_not_hammer_it() {
    let (idp, _mesh, sc) = setup().await;
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let url = consent_url(&start(&sc, &["data:read"], "", &alice).await.unwrap_err());
    consent_flow(json!({"action": "approve", "url": url, "user": "alice"})).await;
    start(&sc, &["data:read"], "", &alice).await.unwrap();
    let reads = idp.jwks_reads().await.unwrap();
    // Cached: another token costs no fetch.
    start(&sc, &["data:read"], "", &alice).await.unwrap();
    assert_eq!(idp.jwks_reads().await.unwrap(), reads);
    // The provider rotates: its new kid is fetched once, on first sight.
    idp.rotate().await.unwrap();
    let rotated = idp.mint(json!({"sub": "alice"})).await.unwrap();
    start(&sc, &["data:read"], "", &rotated).await.unwrap();
    assert_eq!(idp.jwks_reads().await.unwrap(), reads + 1);
    // Made-up kids: refused; within the refetch interval, no more fetches.
    for i in 0..5 {
        let t = idp
            .mint(json!({"sub": "alice", "kid": format!("made-up-{i}")}))
            .await
            .unwrap();
        assert_refused(
            start(&sc, &["data:read"], "", &t).await,
            Code::Unauthenticated,
            "USER_TOKEN_UNKNOWN_KEY",
        );
    }
    assert_eq!(idp.jwks_reads().await.unwrap(), reads + 1);
}

#[tokio::test]
async fn a_revoked_grant_ends_its_live_sessions_at_the_sidecar() {
    let (idp, mesh, sc) = setup().await;
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let url = consent_url(&start(&sc, &["data:read"], "", &alice).await.unwrap_err());
    let consent =
        consent_flow(json!({"action": "approve", "url": url.clone(), "user": "alice"})).await;
    let grant = consent["grant"].as_str().unwrap().to_owned();
    let s1 = start(&sc, &["data:read"], "", &alice).await.unwrap();
    let s2 = start(&sc, &["data:read"], "", &alice).await.unwrap();
    let plain = start(&sc, &["data:read"], "carol", "").await.unwrap();
    who(&sc, s1.token.clone()).await.unwrap();

    // Admins see it.
    let mut admin = mesh.admin().await.unwrap();
    let listed = admin
        .list_grants(pb::ListGrantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, grant);
    assert_eq!(listed[0].user_id, format!("{}#alice", idp.issuer));
    assert_eq!(listed[0].agent_id, "a1");
    assert_eq!(listed[0].scopes, ["data:read"]);

    // Alice revokes it on her grants page.
    let out = consent_flow(json!({
        "action": "revoke", "base": format!("http://{}", mesh.cp.jwks_addr),
        "user": "alice", "grant": grant,
    }))
    .await;
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        out["page"]
            .as_str()
            .unwrap()
            .contains("2 live session(s) ended"),
        "{out}"
    );
    let t0 = std::time::Instant::now();
    for s in [&s1, &s2] {
        let gone = eventually(Duration::from_secs(5), || async {
            who(&sc, s.token.clone())
                .await
                .is_err_and(|e| reason(&e) == "SESSION_REVOKED")
        })
        .await;
        assert!(gone, "a session of the revoked grant still works");
    }
    println!(
        "grant revoked -> sessions refused at the sidecar in {:?}",
        t0.elapsed()
    );
    // Other sessions are untouched; a new delegated one needs consent again.
    who(&sc, plain.token.clone()).await.unwrap();
    assert_refused(
        start(&sc, &["data:read"], "", &alice).await,
        Code::PermissionDenied,
        "CONSENT_REQUIRED",
    );
    // Gone from the live list, kept with --all; revoking again is NotFound.
    let live = admin
        .list_grants(pb::ListGrantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(live.is_empty());
    let all = admin
        .list_grants(pb::ListGrantsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(all[0].revoked_by, format!("user:{}#alice", idp.issuer));
    assert_refused(
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: grant.clone(),
                reason: String::new(),
            })
            .await,
        Code::NotFound,
        "GRANT_NOT_FOUND",
    );
    // Malformed admin requests: refused, nothing revoked.
    assert_refused(
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: String::new(),
                reason: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_refused(
        admin
            .list_grants(pb::ListGrantsRequest {
                user_id: "u".repeat(513),
                all: true,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // An admin revokes a fresh grant: the same path.
    let consent = consent_flow(json!({"action": "approve", "url": url, "user": "alice"})).await;
    let again = consent["grant"].as_str().unwrap().to_owned();
    let s3 = start(&sc, &["data:read"], "", &alice).await.unwrap();
    let r = admin
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: again,
            reason: "left the company".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.session_ids, std::slice::from_ref(&s3.session_id));
    let gone = eventually(Duration::from_secs(5), || async {
        who(&sc, s3.token.clone())
            .await
            .is_err_and(|e| reason(&e) == "SESSION_REVOKED")
    })
    .await;
    assert!(gone);
}

#[tokio::test]
async fn the_consent_pages_refuse_bad_requests_and_foreign_forms() {
    let (idp, mesh, sc) = setup().await;
    let base = format!("http://{}", mesh.cp.jwks_addr);
    let addr = mesh.cp.jwks_addr;
    let get = |path: String| async move {
        warden_tests::http1::exchange(addr, "GET", &path, &[], b"")
            .await
            .unwrap()
    };
    // An unknown agent, bad scopes: a clear page, no sign-in.
    let (status, _, body) = get("/consent?agent=nobody&scope=data%3Aread".into()).await;
    assert_eq!(status, 400);
    assert!(body.contains("not registered"), "{body}");
    let (status, _, body) = get("/consent?agent=a1&scope=%3A%3A".into()).await;
    assert_eq!(status, 400, "{body}");
    // An agent whose registration has lapsed cannot be consented to. (Two
    // seconds ahead: one second could pass before the control plane checks
    // that the expiry is in the future.)
    mesh.register_expiring("brief", warden_control_plane::now_unix() + 2)
        .await
        .unwrap();
    let lapsed = warden_tests::eventually(Duration::from_secs(10), || async move {
        let (status, _, body) = get("/consent?agent=brief&scope=data%3Aread".into()).await;
        status == 400 && body.contains("not active")
    })
    .await;
    assert!(lapsed, "a lapsed agent's consent page still signs users in");
    // A good one sends the browser to the provider with PKCE S256.
    let (status, headers, _) = get("/consent?agent=a1&scope=data%3Aread".into()).await;
    assert_eq!(status, 303);
    let to = warden_tests::http1::header(&headers, "location").unwrap();
    assert!(
        to.starts_with(&format!("{}/authorize?", idp.issuer)),
        "{to}"
    );
    for p in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "response_type=code",
    ] {
        assert!(to.contains(p), "{p} missing from {to}");
    }
    // A callback with an unknown state is refused.
    let (status, _, _) = get("/consent/callback?code=x&state=forged".into()).await;
    assert_eq!(status, 400);
    // Forms without the browser's cookie, or with another's csrf value.
    let (status, _, _) = warden_tests::http1::exchange(
        addr,
        "POST",
        "/consent/approve",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"agent=a1&scope=data%3Aread&duration=3600&csrf=x",
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    let (status, headers, _) = warden_tests::http1::exchange(
        addr,
        "POST",
        "/grants/revoke",
        &[("cookie", "warden_consent=made-up")],
        b"grant=gr_x&csrf=x",
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        warden_tests::http1::header(&headers, "x-frame-options"),
        Some("DENY")
    );
    // Nothing was granted by any of it.
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    assert_refused(
        start(&sc, &["data:read"], "", &alice).await,
        Code::PermissionDenied,
        "CONSENT_REQUIRED",
    );
    // Denying grants nothing either.
    let url = format!("{base}/consent?agent=a1&scope=data%3Aread");
    let out =
        consent_flow(json!({"action": "approve", "url": url, "user": "alice", "deny": true})).await;
    assert!(
        out["page"].as_str().unwrap().contains("You denied"),
        "{out}"
    );
    assert_refused(
        start(&sc, &["data:read"], "", &alice).await,
        Code::PermissionDenied,
        "CONSENT_REQUIRED",
    );
    // A grant for the agent's type covers the agent.
    let out =
        consent_flow(json!({"action": "approve", "url": url, "user": "alice", "grantee": "type"}))
            .await;
    assert!(
        out["page"]
            .as_str()
            .unwrap()
            .contains("agents of type test"),
        "{out}"
    );
    start(&sc, &["data:read"], "", &alice).await.unwrap();
}

#[tokio::test]
async fn a_third_party_oauth_client_exchanges_a_user_token_for_a_session_token() {
    let (idp, mesh, sc) = setup().await;
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let forged = idp
        .mint(json!({"sub": "alice", "forge": true}))
        .await
        .unwrap();
    let bob = idp.mint(json!({"sub": "bob"})).await.unwrap();
    let url = consent_url(&start(&sc, &["data:read"], "", &alice).await.unwrap_err());
    consent_flow(json!({"action": "approve", "url": url, "user": "alice"})).await;
    let id_type = "urn:ietf:params:oauth:token-type:id_token";
    let case = |name: &str, params: Value| json!({"name": name, "params": params});
    let input = json!({
        "url": format!("https://localhost:{}/oauth/token", mesh.cp.oauth_addr.port()),
        "identity": sc.data_dir.join("identity/identity.pem"),
        "ca": mesh.ca_path(),
        "client_id": "a1",
        "cases": [
            case("good", json!({"subject_token": alice, "subject_token_type": id_type, "scope": "data:read mail:send"})),
            case("default_scope", json!({"subject_token": alice, "subject_token_type": id_type})),
            case("forged", json!({"subject_token": forged, "subject_token_type": id_type})),
            case("no_consent", json!({"subject_token": bob, "subject_token_type": id_type})),
            case("bad_type", json!({"subject_token": alice, "subject_token_type": "urn:x"})),
            case("other_audience", json!({"subject_token": alice, "subject_token_type": id_type, "audience": "spiffe://test.warden/agent/b1"})),
            case("actor", json!({"subject_token": alice, "subject_token_type": id_type, "actor_token": "x", "actor_token_type": id_type})),
            case("password", json!({"grant_type": "password", "username": "a", "password": "b"})),
            {"name": "no_certificate", "mtls": false, "params": {"subject_token": alice, "subject_token_type": id_type}},
        ],
    });
    let out =
        tokio::task::spawn_blocking(move || python_stdin("token_exchange.py", &input.to_string()))
            .await
            .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    let good = &out["good"]["token"];
    assert_eq!(
        good["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token",
        "{out}"
    );
    assert_eq!(good["token_type"], "Bearer");
    assert_eq!(good["scope"], "data:read");
    assert!(good["expires_in"].as_i64().unwrap() > 800);
    // The token is the session token StartSession would give: it works at
    // the agent's sidecar, for alice, verified, acted by a1.
    let token = good["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_payload(&token);
    assert_eq!(claims["sub"], format!("{}#alice", idp.issuer));
    assert_eq!(claims["act"]["sub"], format!("spiffe://{TD}/agent/a1"));
    let me = who(&sc, token).await.unwrap();
    assert!(me.user_verified);
    assert_eq!(out["default_scope"]["token"]["scope"], "data:read", "{out}");
    for (name, error) in [
        ("forged", "invalid_grant"),
        ("no_consent", "invalid_grant"),
        ("bad_type", "invalid_request"),
        ("other_audience", "invalid_target"),
        ("actor", "invalid_request"),
        ("password", "unsupported_grant_type"),
        ("no_certificate", "invalid_client"),
    ] {
        assert_eq!(out[name]["error"], error, "{name}: {out}");
    }
    let d = |n: &str| {
        out[n]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(d("forged").starts_with("USER_TOKEN_BAD_SIGNATURE"), "{out}");
    assert!(d("no_consent").starts_with("CONSENT_REQUIRED"), "{out}");
    assert!(
        d("no_certificate").starts_with("NO_CLIENT_CERTIFICATE"),
        "{out}"
    );

    // curl, as the README shows it: the sidecar's identity file as the
    // client certificate and key.
    let args = vec![
        "-sS".to_owned(),
        "--cert".into(),
        sc.data_dir
            .join("identity/identity.pem")
            .display()
            .to_string(),
        "--cacert".into(),
        mesh.ca_path().display().to_string(),
        format!(
            "https://localhost:{}/oauth/token",
            mesh.cp.oauth_addr.port()
        ),
        "-d".into(),
        "grant_type=urn:ietf:params:oauth:grant-type:token-exchange".into(),
        "-d".into(),
        format!("subject_token_type={id_type}"),
        "--data-urlencode".into(),
        format!("subject_token={alice}"),
        "-d".into(),
        "scope=data:read".into(),
    ];
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let answer: Value = serde_json::from_slice(&curl.stdout)
        .unwrap_or_else(|_| panic!("curl: {}", String::from_utf8_lossy(&curl.stderr)));
    assert_eq!(answer["scope"], "data:read", "{answer}");
    assert!(
        answer["access_token"]
            .as_str()
            .is_some_and(|t| t.len() > 100)
    );
    // Only the three good exchanges opened sessions; every refusal opened none.
    let open = mesh
        .cp
        .state
        .store
        .open_sessions(
            &warden_shared::agent::AgentId::new("a1").unwrap(),
            warden_control_plane::now_unix(),
        )
        .await
        .unwrap();
    assert_eq!(open, 3);
}

/// Runs `tests/python/consent_browser.py` (Selenium, headless chromium).
async fn browser(input: Value) -> Value {
    let out =
        tokio::task::spawn_blocking(move || python_stdin("consent_browser.py", &input.to_string()))
            .await
            .unwrap();
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn a_user_signs_in_approves_and_revokes_in_a_real_browser() {
    let (idp, mesh, sc) = setup().await;
    let alice = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let url = consent_url(
        &start(&sc, &["data:read", "mail:send"], "", &alice)
            .await
            .unwrap_err(),
    );
    let page = browser(json!({
        "action": "approve", "url": url, "user": "alice", "untick": ["mail:send"],
    }))
    .await;
    assert_eq!(page["agent"], "a1", "{page}");
    assert_eq!(page["agent_type"], "test");
    assert_eq!(page["owner"], "team-test");
    assert_eq!(page["offered"], json!(["data:read", "mail:send"]));
    assert_eq!(page["scopes"], json!(["data:read"]));
    let grant = page["grant"].as_str().unwrap().to_owned();

    let s = start(&sc, &["data:read", "mail:send"], "", &alice)
        .await
        .unwrap();
    assert_eq!(s.scopes, ["data:read"]);
    who(&sc, s.token.clone()).await.unwrap();

    let page = browser(json!({
        "action": "revoke", "base": format!("http://{}", mesh.cp.jwks_addr),
        "user": "alice", "grant": grant,
    }))
    .await;
    assert!(
        page["text"]
            .as_str()
            .unwrap()
            .contains("1 live session(s) ended"),
        "{page}"
    );
    let gone = eventually(Duration::from_secs(5), || async {
        who(&sc, s.token.clone())
            .await
            .is_err_and(|e| reason(&e) == "SESSION_REVOKED")
    })
    .await;
    assert!(gone, "the revoked grant's session still works");
}

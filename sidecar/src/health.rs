//! Health: `GET /healthz` (liveness) and `GET /readyz` (a valid certificate
//! is held, and a policy from the control plane that is not too old) over
//! HTTP, with certificate age and expiry, policy version, link state and
//! policy age; and the gRPC health service kept in step.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use warden_shared::proto::v1::agent_service_server::AgentServiceServer;

use crate::api::AgentApi;
use crate::gateway::authenticate::Authenticator;
use crate::identity::rotation::Manager;
use crate::now_unix;

/// What health reads.
#[derive(Debug, Clone)]
pub struct Health {
    /// The certificate.
    pub identity: Arc<Manager>,
    /// The pushed policy state.
    pub auth: Arc<Authenticator>,
    /// Mesh stream endings.
    pub stats: Arc<crate::mesh::MeshStats>,
    /// The tool gateway (call counts, circuit breakers).
    pub gateway: Arc<crate::gateway::pipeline::Gateway>,
}

/// The readiness report.
pub fn report(h: &Health, now: i64) -> (bool, Value) {
    let snap = h.identity.snapshot();
    let (cert_ok, cert, cert_reason) = match &snap.current {
        Some(id) => {
            let ok = id.valid_at(now);
            let cert = json!({
                "spiffe_id": id.spiffe_id.to_string(),
                "serial": id.serial,
                "not_before": id.not_before,
                "not_after": id.not_after,
                "age_secs": now - id.not_before,
                "expires_in_secs": id.not_after - now,
            });
            (ok, cert, "certificate has lapsed; provide a new join token")
        }
        None => (false, Value::Null, "not enrolled; provide a join token"),
    };
    let version = h.auth.state().held_version();
    let link = h.auth.state().link();
    let age = h.auth.state().policy_age(now);
    // verify() is the authority on refusing; ask it the same question.
    let policy_err = match (version, h.auth.state().check_policy(now)) {
        (0, _) => Some("no policy from the control plane yet".to_owned()),
        (_, Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let held = h.auth.state().held();
    let policy = json!({
        "version": version,
        "policy_version": held.policy.as_ref().map_or(0, |p| p.version),
        "blocked_agents": held.blocked_agents.agents.len(),
        "connected": link.connected,
        "last_contact_change": link.since,
        "age_secs": age,
        "stream_endings": h.stats.endings(),
    });
    let upstreams: serde_json::Map<String, Value> = h
        .gateway
        .executor
        .breakers
        .states()
        .into_iter()
        .map(|(tool, st)| (tool, Value::from(st.name())))
        .collect();
    let ready = cert_ok && policy_err.is_none();
    let reason = if !cert_ok {
        cert_reason.to_owned()
    } else if let Some(e) = policy_err {
        e
    } else if link.connected {
        "ready".to_owned()
    } else {
        "ready; enforcing the last policy while the control plane is unreachable".to_owned()
    };
    (
        ready,
        json!({"ready": ready, "reason": reason, "certificate": cert, "policy": policy,
               "upstreams": upstreams}),
    )
}

async fn readyz(State(h): State<Health>) -> (StatusCode, Json<Value>) {
    let (ready, body) = report(&h, now_unix());
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

/// Prometheus text exposition of the gateway's counters and breakers.
pub fn metrics(h: &Health) -> String {
    use std::fmt::Write;
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from(
        "# HELP warden_tool_calls_total Tool calls by tool, outcome and refusal reason.\n\
         # TYPE warden_tool_calls_total counter\n",
    );
    for ((tool, outcome, reason), n) in h.gateway.recorder.counts() {
        let _ = writeln!(
            out,
            "warden_tool_calls_total{{tool=\"{}\",outcome=\"{}\",reason=\"{}\"}} {n}",
            esc(&tool),
            outcome.as_str(),
            reason
        );
    }
    if let Some((used, max)) = h.gateway.recorder.spool_usage() {
        let _ = write!(
            out,
            "# HELP warden_audit_spool_bytes Audit events waiting to be shipped, bytes (and the bound).\n\
             # TYPE warden_audit_spool_bytes gauge\n\
             warden_audit_spool_bytes {used}\n\
             warden_audit_spool_max_bytes {max}\n\
             # HELP warden_audit_lost_events Audit events lost with on_full = continue, not yet recorded as a gap.\n\
             # TYPE warden_audit_lost_events gauge\n\
             warden_audit_lost_events {}\n",
            h.gateway.recorder.lost()
        );
    }
    out.push_str(
        "# HELP warden_upstream_circuit Circuit breaker state by tool (1 for the current state).\n\
         # TYPE warden_upstream_circuit gauge\n",
    );
    for (tool, st) in h.gateway.executor.breakers.states() {
        for name in ["closed", "open", "half_open"] {
            let v = u8::from(st.name() == name);
            let _ = writeln!(
                out,
                "warden_upstream_circuit{{tool=\"{}\",state=\"{name}\"}} {v}",
                esc(&tool)
            );
        }
    }
    out.push_str(
        "# HELP warden_limit_decisions_total Limit decisions by limit: allowed, refused, \
         near_limit (allowed at >= 80%), shadow_refused, fallback (decided locally while \
         Redis was away).\n# TYPE warden_limit_decisions_total counter\n",
    );
    for (name, c) in h.gateway.limiter.metrics.snapshot() {
        for (decision, n) in [
            ("allowed", c.allowed),
            ("refused", c.refused),
            ("near_limit", c.near_limit),
            ("shadow_refused", c.shadow_refused),
            ("fallback", c.fallback),
        ] {
            let _ = writeln!(
                out,
                "warden_limit_decisions_total{{limit=\"{}\",decision=\"{decision}\"}} {n}",
                esc(&name)
            );
        }
    }
    if let Some(r) = h.gateway.limiter.shared() {
        let _ = writeln!(
            out,
            "# TYPE warden_limit_redis_errors_total counter\nwarden_limit_redis_errors_total {}",
            r.errors.load(std::sync::atomic::Ordering::Relaxed)
        );
        out.push_str("# TYPE warden_limit_redis_breaker gauge\n");
        let st = r.breaker_state();
        for name in ["closed", "open", "half_open"] {
            let _ = writeln!(
                out,
                "warden_limit_redis_breaker{{state=\"{name}\"}} {}",
                u8::from(st == name)
            );
        }
    }
    let held = h.auth.state().held();
    let _ = writeln!(
        out,
        "# TYPE warden_policy_version gauge\nwarden_policy_version {}",
        held.policy.as_ref().map_or(0, |p| p.version)
    );
    out
}

/// Serves the HTTP health endpoints until `stop`.
pub async fn serve_http(
    listener: TcpListener,
    h: Health,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move { metrics(&h) }),
        )
        .with_state(h);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

/// Keeps the gRPC health status of the agent service in step with
/// readiness.
pub async fn track(reporter: HealthReporter, h: Health, mut stop: watch::Receiver<bool>) {
    let mut changes = h.identity.subscribe();
    loop {
        let (ready, _) = report(&h, now_unix());
        if ready {
            reporter.set_serving::<AgentServiceServer<AgentApi>>().await;
        } else {
            reporter
                .set_not_serving::<AgentServiceServer<AgentApi>>()
                .await;
        }
        // Lapses and policy age change without any event: re-check each second.
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

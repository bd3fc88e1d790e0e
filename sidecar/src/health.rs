//! Health: `GET /healthz` (liveness) and `GET /readyz` (a valid certificate
//! is held) over HTTP with certificate age and expiry, and the gRPC health
//! service kept in step.

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
use crate::identity::rotation::Manager;
use crate::now_unix;

/// The readiness report.
pub fn report(identity: &Manager, now: i64) -> (bool, Value) {
    let snap = identity.snapshot();
    match &snap.current {
        Some(id) => {
            let ready = id.valid_at(now);
            let cert = json!({
                "spiffe_id": id.spiffe_id.to_string(),
                "serial": id.serial,
                "not_before": id.not_before,
                "not_after": id.not_after,
                "age_secs": now - id.not_before,
                "expires_in_secs": id.not_after - now,
            });
            let reason = if ready {
                "certificate valid"
            } else {
                "certificate has lapsed; provide a new join token"
            };
            (
                ready,
                json!({"ready": ready, "reason": reason, "certificate": cert}),
            )
        }
        None => (
            false,
            json!({"ready": false, "reason": "not enrolled; provide a join token", "certificate": null}),
        ),
    }
}

async fn readyz(State(identity): State<Arc<Manager>>) -> (StatusCode, Json<Value>) {
    let (ready, body) = report(&identity, now_unix());
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

/// Serves the HTTP health endpoints until `stop`.
pub async fn serve_http(
    listener: TcpListener,
    identity: Arc<Manager>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(identity);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

/// Keeps the gRPC health status of the agent service in step with the
/// certificate: serving only while one is valid.
pub async fn track(
    reporter: HealthReporter,
    identity: Arc<Manager>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = identity.subscribe();
    loop {
        let (ready, _) = report(&identity, now_unix());
        if ready {
            reporter.set_serving::<AgentServiceServer<AgentApi>>().await;
        } else {
            reporter
                .set_not_serving::<AgentServiceServer<AgentApi>>()
                .await;
        }
        // A certificate lapses without any event: re-check every second.
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

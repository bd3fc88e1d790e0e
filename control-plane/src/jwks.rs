//! The control plane's HTTP listener: the JWK Set (`GET
//! /.well-known/jwks.json`), so any verifier (an upstream tool, PyJWT) can
//! check session tokens offline, and the consent pages ([`crate::consent`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::State;

/// Path the JWKS is served at.
pub const PATH: &str = "/.well-known/jwks.json";

async fn jwks(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let ring = state.keys.current();
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        ring.jwks_json.clone(),
    )
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(PATH, get(jwks))
        .merge(crate::consent::routes())
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

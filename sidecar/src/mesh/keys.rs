//! The token-signing keys fetched outside the stream (`GetJwks`): when a
//! call presents a token naming a key id that is not held, and every few
//! minutes (which also drops keys the control plane no longer publishes).
//! With the stream, this is the only writer of what the sidecar holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use warden_shared::proto::v1 as pb;
use warden_shared::token::{self, JwkSet};

use crate::cp::ControlPlane;
use crate::identity::rotation::Manager;
use crate::state::State;

/// Calls waiting for a fetch, at most (more are not queued: a fetch is
/// under way and they go on with what is held).
pub const QUEUE: usize = 64;

/// Why a fetch failed (what is held stays).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The control plane could not be asked or refused.
    #[error("GetJwks failed: {0}")]
    Call(#[from] tonic::Status),
    /// It answered with something that is not a usable JWK Set.
    #[error("the control plane sent an invalid JWKS: {0}")]
    Invalid(String),
    /// Installing the set panicked.
    #[error("installing the JWKS panicked")]
    Panicked,
}

/// Fetches the JWKS from the control plane and installs it in `state`.
pub async fn fetch(cp: &ControlPlane, state: &Arc<State>) -> Result<(), FetchError> {
    let mut client = cp.identity_client()?;
    let r = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    let set: JwkSet =
        serde_json::from_str(&r.jwks_json).map_err(|e| FetchError::Invalid(e.to_string()))?;
    // Installing takes the snapshot writer's lock, which a policy compile
    // may hold for a while: off the runtime.
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || state.set_jwks(&set))
        .await
        .map_err(|_| FetchError::Panicked)?
        .map_err(|e: token::Error| FetchError::Invalid(e.to_string()))
}

/// Serves fetch requests (each answered once its fetch is installed or has
/// failed) and fetches every `every`, until `shutdown`. Nothing is fetched
/// while the sidecar holds no valid certificate.
pub async fn run(
    identity: Arc<Manager>,
    cp: Arc<ControlPlane>,
    state: Arc<State>,
    mut requests: mpsc::Receiver<oneshot::Sender<()>>,
    mut shutdown: watch::Receiver<bool>,
    every: Duration,
) {
    loop {
        let mut waiting = Vec::new();
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            r = requests.recv() => match r {
                Some(w) => waiting.push(w),
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // Every call that asked meanwhile is answered by this one fetch.
        while let Ok(w) = requests.try_recv() {
            waiting.push(w);
        }
        if identity.snapshot().valid(crate::now_unix()).is_some()
            && let Err(e) = fetch(&cp, &state).await
        {
            tracing::warn!(error = %e, "JWKS fetch failed; keeping the current keys");
        }
        for w in waiting {
            let _ = w.send(());
        }
    }
}

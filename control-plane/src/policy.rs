//! The policy store as the services see it: a document validated before it
//! is stored (off the request threads), and the version in force, parsed
//! once for every stream ([`InForce`]). The versions themselves are kept by
//! the [`Store`].

use std::sync::{Arc, RwLock};

use tonic::Status;
use warden_shared::policy::Policy;
use warden_shared::refusal::{self, Reason, status};

use crate::store::{self, NewPolicy, PolicyApply, PolicyMeta, Store};

/// The policy version in force.
#[derive(Debug)]
pub struct CurrentPolicy {
    /// Version number.
    pub version: u64,
    /// The document as applied.
    pub text: String,
    /// Its parsed form (validated when it was applied).
    pub document: warden_shared::policy::Document,
    /// When it was applied (unix seconds).
    pub applied_at: i64,
    /// Its messaging section, compiled.
    pub messaging: warden_shared::policy::messaging::Settings,
}

/// The version in force, swapped whole.
#[derive(Debug, Default)]
pub struct InForce(RwLock<Option<Arc<CurrentPolicy>>>);

impl InForce {
    /// The policy in force, if one has been applied.
    pub fn get(&self) -> Option<Arc<CurrentPolicy>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the latest stored version and puts it in force. Returns
    /// whether one was put in force: a stored document that no longer
    /// parses is logged and skipped (the previous one stays).
    pub async fn reload(&self, store: &dyn Store) -> Result<bool, store::Error> {
        let Some((meta, text)) = store.get_policy(None).await? else {
            return Ok(false);
        };
        match serde_norway::from_str::<warden_shared::policy::Document>(&text) {
            Ok(document) => {
                let version = u64::try_from(meta.version).unwrap_or(0);
                // Validated when applied; a section that no longer compiles
                // allows no messaging at all.
                let messaging = document.messaging().unwrap_or_else(|e| {
                    tracing::error!(error = %e, version, "stored policy's messaging section does not compile; no messaging allowed");
                    warden_shared::policy::messaging::Settings::default()
                });
                *self.0.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(Arc::new(CurrentPolicy {
                        version,
                        text,
                        document,
                        applied_at: meta.applied_at,
                        messaging,
                    }));
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, version = meta.version, "stored policy does not parse; keeping the previous one");
                Ok(false)
            }
        }
    }
}

/// Validates `document` as the control plane will serve it (schemas
/// compiled, Cedar type-checked), on a blocking thread; a refusal names
/// the validation's kind as its reason.
pub async fn validate(document: &str) -> Result<Policy, Status> {
    let doc = document.to_owned();
    tokio::task::spawn_blocking(move || Policy::parse(&doc))
        .await
        .map_err(|_| status(Reason::Internal, "policy validation failed"))?
        .map_err(|e| refusal::invalid_with(e.kind(), e.to_string()))
}

/// What storing a version did.
#[derive(Debug)]
pub enum Stored {
    /// A new version (`true`) or the latest one unchanged (`false`).
    Version(PolicyMeta, bool),
    /// The latest version is not the one the caller expected.
    Conflict {
        /// The latest version (0: none).
        latest: i64,
    },
}

/// Stores `new` unless the latest version differs from `expected`.
pub async fn store(
    store: &dyn Store,
    new: &NewPolicy,
    expected: Option<i64>,
) -> Result<Stored, store::Error> {
    Ok(match store.apply_policy(new, expected).await? {
        PolicyApply::Stored(m) => Stored::Version(m, true),
        PolicyApply::Unchanged(m) => Stored::Version(m, false),
        PolicyApply::Conflict { latest } => Stored::Conflict { latest },
    })
}

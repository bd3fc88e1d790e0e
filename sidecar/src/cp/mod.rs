//! The sidecar's mTLS client to the control plane, rebuilt whenever the
//! certificate rotates, and the audit shipper ([`ship`]).

pub mod ship;

use std::sync::{Arc, Mutex};

use tonic::transport::Channel;
use warden_shared::proto::v1::approval_service_client::ApprovalServiceClient;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
use warden_shared::refusal::{Reason, status};

use crate::identity::enroll;
use crate::identity::rotation::Manager;
use crate::now_unix;

/// Control-plane client bound to the current identity.
#[derive(Debug)]
pub struct ControlPlane {
    url: String,
    identity: Arc<Manager>,
    cached: Mutex<Option<(String, Channel)>>,
}

impl ControlPlane {
    /// A client for `url` using the manager's identity.
    pub fn new(url: String, identity: Arc<Manager>) -> Self {
        Self {
            url,
            identity,
            cached: Mutex::new(None),
        }
    }

    /// An identity client over mTLS with the current certificate.
    pub fn identity_client(&self) -> Result<IdentityServiceClient<Channel>, tonic::Status> {
        self.channel().map(IdentityServiceClient::new)
    }

    /// An approval-desk client over mTLS with the current certificate.
    pub fn approval_client(&self) -> Result<ApprovalServiceClient<Channel>, tonic::Status> {
        self.channel().map(ApprovalServiceClient::new)
    }

    /// The mTLS channel for the current certificate.
    pub fn channel(&self) -> Result<Channel, tonic::Status> {
        let snap = self.identity.snapshot();
        let id = snap.valid(now_unix()).ok_or_else(|| {
            status(
                Reason::NoIdentity,
                "the sidecar holds no valid certificate (not enrolled, or lapsed); give it a join token",
            )
        })?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((thumb, ch)) = cached.as_ref()
            && *thumb == id.thumbprint
        {
            return Ok(ch.clone());
        }
        let ch = enroll::channel(&self.url, &id.bundle_pem, Some(id))
            .map_err(|e| status(Reason::ControlPlaneUnavailable, e.to_string()))?;
        *cached = Some((id.thumbprint.clone(), ch.clone()));
        Ok(ch)
    }
}

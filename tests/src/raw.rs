//! A mesh stream driven by the test itself: the test reads each push and
//! decides to Ack or Nack it, to check the protocol from the sidecar's side.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::mesh_service_client::MeshServiceClient;
use warden_shared::spiffe::TrustDomain;

use crate::{Mesh, TD};

/// One open mesh stream.
#[derive(Debug)]
pub struct RawStream {
    tx: mpsc::Sender<pb::StreamRequest>,
    rx: Streaming<pb::StreamResponse>,
}

impl RawStream {
    /// Opens a stream on `ch` and says `hello`.
    pub async fn open(ch: Channel, hello: pb::Hello) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(pb::StreamRequest {
            kind: Some(pb::stream_request::Kind::Hello(hello)),
        })
        .await
        .map_err(|_| tonic::Status::internal("send"))?;
        let rx = MeshServiceClient::new(ch)
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    /// The next push (an error if none comes within 10 s).
    pub async fn next(&mut self) -> anyhow::Result<pb::StreamResponse> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .context("no push within 10 s")??
            .context("the stream ended")
    }

    /// Whether a push arrives within `wait` (for asserting that none does).
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.rx.message()).await.is_err()
    }

    /// Acknowledges `p`.
    pub async fn ack(&self, p: &pb::StreamResponse) -> anyhow::Result<()> {
        self.send(pb::stream_request::Kind::Ack(pb::Ack {
            version: p.version,
            nonce: p.nonce.clone(),
        }))
        .await
    }

    /// Refuses `p`, blaming `part`, saying it holds `held`.
    pub async fn nack(
        &self,
        p: &pb::StreamResponse,
        part: pb::MeshPart,
        held: pb::HeldParts,
    ) -> anyhow::Result<()> {
        self.send(pb::stream_request::Kind::Nack(pb::Nack {
            version: p.version,
            nonce: p.nonce.clone(),
            reason: "refused by the test".into(),
            part: part.into(),
            held: Some(held),
        }))
        .await
    }

    async fn send(&self, kind: pb::stream_request::Kind) -> anyhow::Result<()> {
        self.tx
            .send(pb::StreamRequest { kind: Some(kind) })
            .await
            .map_err(|_| anyhow::anyhow!("the stream is closed"))
    }
}

/// The digests a sidecar would report after applying `pushes` in order.
pub fn held_after(pushes: &[&pb::StreamResponse]) -> pb::HeldParts {
    let mut h = pb::HeldParts::default();
    for p in pushes {
        if let Some(x) = &p.standing {
            h.standing = x.digest;
        }
        if let Some(x) = &p.revoked_sessions {
            h.revoked_sessions = x.digest;
        }
        if let Some(x) = &p.keys {
            h.keys = x.digest;
        }
        if let Some(x) = &p.policy {
            h.policy = x.digest;
        }
        if let Some(x) = &p.blocked_agents {
            h.blocked_agents_seq = x.seq;
            h.blocked_agents_epoch = x.epoch;
        }
        if let Some(x) = &p.pair_keys {
            h.pair_keys = x.digest;
        }
        if let Some(x) = &p.approvals {
            h.approvals_seq = x.seq;
        }
    }
    h
}

impl Mesh {
    /// Registers and enrolls `id` without a sidecar; returns an mTLS
    /// channel presenting its certificate.
    pub async fn enrolled_channel(&self, id: &str) -> anyhow::Result<Channel> {
        self.register(id, &["data:read"], 4).await?;
        self.enroll_channel(id).await
    }

    /// Enrolls the registered agent `id`; returns an mTLS channel as it.
    pub async fn enroll_channel(&self, id: &str) -> anyhow::Result<Channel> {
        let token = self.join_token(id).await?;
        let spiffe = TrustDomain::new(TD)?.agent(&AgentId::new(id)?);
        let (key, csr) = warden_sidecar::identity::enroll::key_and_csr(&spiffe)?;
        let cert = self
            .anonymous_identity()
            .await?
            .enroll(pb::EnrollRequest {
                agent_id: id.into(),
                join_token: token,
                csr_der: csr,
            })
            .await?
            .into_inner()
            .certificate
            .context("no certificate")?;
        let pem = warden_shared::svid::pem("CERTIFICATE", &cert.certificate_der);
        Ok(self.mtls_channel(&pem, &key).await?)
    }
}

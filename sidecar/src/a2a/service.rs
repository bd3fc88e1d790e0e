//! `warden.v1.MessagingService` (the agent's side) and
//! `warden.v1.MessagingPeerService` (other sidecars' side). Every decision
//! is an audit event (target `warden::audit`) naming sender, recipient,
//! message id and outcome; never the payload.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use warden_shared::a2a::Envelope;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::messaging_peer_service_client::MessagingPeerServiceClient;
use warden_shared::proto::v1::messaging_peer_service_server::MessagingPeerService;
use warden_shared::proto::v1::messaging_service_server::MessagingService;
use warden_shared::refusal::{Reason, reason_of, status};
use warden_shared::token::Claims;

use super::inbox::Inbox;
use super::peer::{PeerClient, PeerIdentity};
use super::{Messenger, Refusal, Verified};
use crate::gateway::authenticate::{Authenticator, Credentials};
use crate::identity::rotation::Manager;
use crate::now_ms;
use crate::state::held::Held;

/// Hex of at most 32 bytes (a nonce is 16; this also names what came from
/// the network, bounded).
fn hex(b: &[u8]) -> String {
    b.iter().take(32).map(|b| format!("{b:02x}")).collect()
}

/// Records a message decision: the audit event, then the log line. An
/// allowed decision whose event cannot be recorded becomes a refusal
/// (`Messenger::record`), and the line says so.
async fn audit(
    m: &Messenger,
    action: &str,
    sender: &str,
    recipient: &str,
    id: &str,
    outcome: Result<(), &Refusal>,
) -> Result<(), Refusal> {
    let reason = outcome.err().map_or("", |r| r.reason.as_str());
    // Unverified fields come from the network: bounded in the log.
    let short = |s: &str| -> String { s.chars().take(256).collect() };
    let (sender, recipient, id) = (short(sender), short(recipient), short(id));
    let me = m.agent_id().to_string();
    let recorded = m
        .record(
            &warden_shared::audit::Event {
                time_ms: now_ms(),
                kind: format!("message.{action}"),
                actor: warden_shared::audit::Actor {
                    kind: warden_shared::audit::ActorKind::Agent,
                    id: me.clone(),
                },
                agent: me,
                outcome: if outcome.is_ok() { "allowed" } else { "denied" }.into(),
                reason: reason.to_owned(),
                detail: [
                    ("sender", &sender),
                    ("recipient", &recipient),
                    ("message_id", &id),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
                ..Default::default()
            },
            outcome.is_ok(),
        )
        .await;
    let reason = recorded
        .as_ref()
        .err()
        .map_or(reason, |r| r.reason.as_str());
    let (sender, recipient, id) = (sender.as_str(), recipient.as_str(), id.as_str());
    tracing::info!(
        target: "warden::audit",
        kind = "message",
        action,
        sender,
        recipient,
        message_id = id,
        allowed = outcome.is_ok() && recorded.is_ok(),
        reason,
        "message {action}"
    );
    recorded
}

/// The agent-facing messaging API.
#[derive(Debug, Clone)]
pub struct MessagingApi {
    auth: Arc<Authenticator>,
    identity: Arc<Manager>,
    messenger: Arc<Messenger>,
    inbox: Arc<Inbox>,
    peers: Arc<PeerClient>,
    stopping: watch::Receiver<bool>,
}

impl MessagingApi {
    /// Wires the service.
    pub fn new(
        auth: Arc<Authenticator>,
        identity: Arc<Manager>,
        messenger: Arc<Messenger>,
        inbox: Arc<Inbox>,
        peers: Arc<PeerClient>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            auth,
            identity,
            messenger,
            inbox,
            peers,
            stopping,
        }
    }

    /// Stage 1 of the gateway: the session token, bound to this sidecar's
    /// certificate.
    /// The claims, and the one snapshot of what is held that the rest of
    /// the call reads.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<(Arc<Claims>, Arc<Held>), Status> {
        let creds = Credentials::of(req, self.identity.snapshot());
        self.auth.authenticate(&creds).await.map_err(Status::from)
    }

    async fn sign(
        &self,
        held: &Held,
        recipient: &str,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Envelope, Status> {
        let m = &self.messenger;
        let me = m.spiffe_id().to_string();
        match m
            .ready()
            .and_then(|()| m.sign_with(held, recipient, payload, content_type, now_ms()))
        {
            Ok(e) => {
                let (to, id) = (e.recipient.to_string(), hex(&e.nonce));
                audit(m, "signed", &me, &to, &id, Ok(()))
                    .await
                    .map_err(|r| r.to_status())?;
                Ok(e)
            }
            Err(r) => {
                let _ = audit(m, "signed", &me, recipient, "", Err(&r)).await;
                Err(r.to_status())
            }
        }
    }
}

type MessageStream =
    Pin<Box<dyn Stream<Item = Result<pb::ReceiveMessagesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MessagingService for MessagingApi {
    type ReceiveMessagesStream = MessageStream;

    async fn sign_message(
        &self,
        req: Request<pb::SignMessageRequest>,
    ) -> Result<Response<pb::SignMessageResponse>, Status> {
        let (_, held) = self.authenticate(&req).await?;
        let r = req.into_inner();
        let env = self
            .sign(&held, &r.recipient_agent, r.payload, r.content_type)
            .await?;
        Ok(Response::new(pb::SignMessageResponse {
            envelope: Some(pb::Envelope::from(&env)),
        }))
    }

    async fn verify_message(
        &self,
        req: Request<pb::VerifyMessageRequest>,
    ) -> Result<Response<pb::VerifyMessageResponse>, Status> {
        let (_, held) = self.authenticate(&req).await?;
        let wire = req.into_inner().envelope.unwrap_or_default();
        let v = verify(&self.messenger, Some(&held), &wire, "verified").await?;
        Ok(Response::new(pb::VerifyMessageResponse {
            message: Some(pb::VerifiedMessage::from(&v)),
        }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let (_, held) = self.authenticate(&req).await?;
        let r = req.into_inner();
        if !self.peers.knows(&r.recipient_agent) {
            return Err(status(
                Reason::MessagePeerUnreachable,
                format!(
                    "no address for {:?}'s sidecar: add it under [messaging.peers] in this sidecar's config",
                    r.recipient_agent
                ),
            ));
        }
        let env = self
            .sign(&held, &r.recipient_agent, r.payload, r.content_type)
            .await?;
        let wire = pb::Envelope::from(&env);
        let unreachable = |e: String| {
            tracing::warn!(recipient = %env.recipient, error = %e, "message delivery failed");
            status(
                Reason::MessagePeerUnavailable,
                format!("cannot reach {}'s sidecar; retry later", r.recipient_agent),
            )
        };
        let ch = self
            .peers
            .channel(&r.recipient_agent, &env.recipient)
            .map_err(|e| unreachable(e.to_string()))?;
        match MessagingPeerServiceClient::new(ch)
            .deliver(pb::DeliverRequest {
                envelope: Some(wire.clone()),
            })
            .await
        {
            Ok(_) => Ok(Response::new(pb::SendMessageResponse {
                envelope: Some(wire),
            })),
            // The recipient's sidecar refused it, with a reason written for
            // the sender: pass it on.
            Err(s) if reason_of(&s).is_some() => Err(s),
            Err(s) => Err(unreachable(s.message().to_owned())),
        }
    }

    async fn receive_messages(
        &self,
        req: Request<pb::ReceiveMessagesRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        let (claims, _) = self.authenticate(&req).await?;
        let token = crate::gateway::authenticate::bearer(&req)
            .map_err(|d| d.to_status())?
            .to_owned();
        // One message in transit at a time: a message is taken from the
        // inbox only when the stream can take it.
        let (tx, rx) = mpsc::channel(1);
        let (inbox, auth, identity) = (
            Arc::clone(&self.inbox),
            Arc::clone(&self.auth),
            Arc::clone(&self.identity),
        );
        let mut stopping = self.stopping.clone();
        let expires = tokio::time::Instant::now()
            + std::time::Duration::from_secs(
                u64::try_from(claims.exp - crate::now_unix()).unwrap_or(0),
            );
        let expired = || {
            status(
                Reason::TokenExpired,
                "the session token expired; start a new session and receive again",
            )
        };
        tokio::spawn(async move {
            // Another receiver may hold the inbox: wait for it, but not
            // past this stream's own end.
            let mut r = tokio::select! {
                biased;
                () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                () = tx.closed() => return,
                () = tokio::time::sleep_until(expires) => {
                    let _ = tx.send(Err(expired())).await;
                    return;
                }
                r = inbox.receiver() => r,
            };
            loop {
                let permit = tokio::select! {
                    biased;
                    // (The guard `wait_for` returns must not live across awaits.)
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                    () = tokio::time::sleep_until(expires) => {
                        let _ = tx.send(Err(expired())).await;
                        return;
                    }
                    p = tx.reserve() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let m = tokio::select! {
                    biased;
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                    () = tokio::time::sleep_until(expires) => {
                        permit.send(Err(expired()));
                        return;
                    }
                    () = tx.closed() => return,
                    m = r.next() => match m {
                        Some(m) => m,
                        None => return,
                    },
                };
                // The session or the agent may have been revoked or ended
                // since the stream opened.
                if let Err(e) = auth.verify(&token, &identity.snapshot(), crate::now_unix()) {
                    r.give_back(m);
                    permit.send(Err(crate::gateway::authenticate::auth_status(&e)));
                    return;
                }
                permit.send(Ok(pb::ReceiveMessagesResponse { message: Some(m) }));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Verifies `wire` against `held` (the caller's snapshot; `None`: what is
/// held now) and records the outcome.
async fn verify(
    m: &Messenger,
    held: Option<&Held>,
    wire: &pb::Envelope,
    action: &str,
) -> Result<Verified, Status> {
    let me = m.spiffe_id().to_string();
    let id = hex(&wire.nonce);
    // Checked before the nonce is spent: a message refused for want of
    // room in the audit spool can be delivered again later.
    let result = match m.ready() {
        Err(r) => Err(r),
        Ok(()) => match held {
            Some(h) => m.verify_with(h, wire, now_ms()).await,
            None => m.verify(wire, now_ms()).await,
        },
    };
    match result {
        Ok(v) => {
            audit(m, action, &wire.sender, &me, &id, Ok(()))
                .await
                .map_err(|r| r.to_status())?;
            Ok(v)
        }
        Err(r) => {
            let _ = audit(m, action, &wire.sender, &me, &id, Err(&r)).await;
            Err(r.to_status())
        }
    }
}

/// The peer-facing delivery API.
#[derive(Debug, Clone)]
pub struct PeerApi {
    messenger: Arc<Messenger>,
    inbox: Arc<Inbox>,
}

impl PeerApi {
    /// Wires the service.
    pub fn new(messenger: Arc<Messenger>, inbox: Arc<Inbox>) -> Self {
        Self { messenger, inbox }
    }
}

#[tonic::async_trait]
impl MessagingPeerService for PeerApi {
    async fn deliver(
        &self,
        req: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let peer = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.0.to_string())
            .ok_or_else(|| {
                status(
                    Reason::NoClientCertificate,
                    "deliveries need a client certificate (mTLS)",
                )
            })?;
        let wire = req.into_inner().envelope.unwrap_or_default();
        // Only the sender's own sidecar may hand over its messages.
        if wire.sender != peer {
            let r = Refusal::new(
                Reason::WrongPrincipal,
                format!(
                    "{peer} may not deliver messages signed as {:?}",
                    wire.sender
                ),
            );
            let _ = audit(
                &self.messenger,
                "delivered",
                &wire.sender,
                &self.messenger.spiffe_id().to_string(),
                &hex(&wire.nonce),
                Err(&r),
            )
            .await;
            return Err(r.to_status());
        }
        if wire.payload.len() > self.inbox.max_bytes() {
            return Err(status(
                Reason::MessageTooLarge,
                format!(
                    "the payload is larger than the recipient's inbox ({} bytes)",
                    self.inbox.max_bytes()
                ),
            ));
        }
        let permit = self.inbox.reserve(wire.payload.len()).ok_or_else(|| {
            status(
                Reason::MessageInboxFull,
                "the recipient's inbox is full; retry later",
            )
        })?;
        let v = verify(&self.messenger, None, &wire, "delivered").await?;
        permit.send(pb::VerifiedMessage::from(&v));
        Ok(Response::new(pb::DeliverResponse {}))
    }
}

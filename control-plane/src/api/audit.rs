//! The audit log over gRPC: `warden.v1.AuditService` (sidecars ship their
//! spools, agent certificates only) and the audit calls of the admin API
//! (query, export, heads, proofs, keys), which `admin` delegates here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use warden_shared::audit::{self as model, ActorKind, Event};
use warden_shared::merkle::{self, Frontier};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::audit_service_server::AuditService;
use warden_shared::refusal::{Reason, status};

use super::admin::invalid;
use crate::agents::store_error;
use crate::audit::{Incoming, over_stored};
use crate::auth;
use crate::state::State;
use crate::store::{AuditEntry, AuditQuery, StoredHead};

/// Most events in one ship request.
const MAX_SHIP_EVENTS: usize = 1000;
/// Most entries in one query or export response message.
const PAGE: u32 = 500;

fn log_error(e: crate::audit::Error) -> Status {
    match e {
        crate::audit::Error::Store(e) => store_error(e),
        other => {
            tracing::error!(error = %other, "audit log failure");
            status(
                Reason::StoreUnavailable,
                "the audit log could not do this now; retry later",
            )
        }
    }
}

/// A spool id: 16 to 64 of `[A-Za-z0-9_-]`.
fn spool_id(id: &str) -> Result<&str, Status> {
    let ok = (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(invalid("spool_id must be 16 to 64 of A-Z a-z 0-9 - _"))
    }
}

/// What a shipped event becomes: itself when it is well-formed and about
/// the shipping agent; otherwise a record of the refusal in its place (the
/// spool must drain, and the log must show what was refused).
fn admit(agent: &str, bytes: &[u8]) -> Event {
    let refused = |why: String| {
        let mut e = crate::audit::event("audit.rejected", ActorKind::Agent, agent);
        e.agent = agent.to_owned();
        e.outcome = "rejected".into();
        e.detail.insert("error".into(), why);
        e.detail.insert("bytes".into(), bytes.len().to_string());
        e
    };
    match Event::from_json(bytes) {
        Ok(mut e) => {
            if e.agent.is_empty() {
                e.agent = agent.to_owned();
            }
            if e.agent == agent {
                e
            } else {
                refused(format!(
                    "the event names agent {:?}, not the shipping agent",
                    e.agent.chars().take(64).collect::<String>()
                ))
            }
        }
        Err(e) => {
            let mut why = e.to_string();
            why.truncate(256);
            refused(why)
        }
    }
}

/// The sidecars' side of the audit log.
#[derive(Debug, Clone)]
pub struct AuditApi {
    state: Arc<State>,
}

impl AuditApi {
    /// Serves over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// The stream `Ship` answers with.
pub type Acks = Pin<Box<dyn Stream<Item = Result<pb::ShipResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ShipStream = Acks;

    async fn ship(
        &self,
        req: Request<Streaming<pb::ShipRequest>>,
    ) -> Result<Response<Acks>, Status> {
        let (_, agent) = auth::agent(&req, &self.state.td)?;
        let agent = agent.to_string();
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| invalid("the stream ended before naming its spool"))?;
        let spool = spool_id(&first.spool_id)?.to_owned();
        let source = format!("{agent}/{spool}");
        let log = self.state.audit.clone();
        let held = log.source_seq(source.clone()).await.map_err(log_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let _ = tx.send(Ok(pb::ShipResponse { acked: held })).await;
        let mut stopping = self.state.stopping.subscribe();
        tokio::spawn(async move {
            // The first request's events, if it carries any, come next.
            let mut pending = (!first.events.is_empty()).then_some(first);
            let mut last = held;
            loop {
                let msg = match pending.take() {
                    Some(m) => m,
                    None => tokio::select! {
                        m = inbound.message() => match m {
                            Ok(Some(m)) => m,
                            _ => return,
                        },
                        _ = stopping.wait_for(|s| *s) => return,
                    },
                };
                let answer = ship_one(&log, &agent, &source, &spool, msg, last).await;
                if let Ok(a) = &answer {
                    last = a.acked;
                }
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn ship_one(
    log: &crate::audit::AuditLog,
    agent: &str,
    source: &str,
    spool: &str,
    msg: pb::ShipRequest,
    last: u64,
) -> Result<pb::ShipResponse, Status> {
    if msg.spool_id != spool {
        return Err(invalid("every request of a stream names the same spool"));
    }
    if msg.events.len() > MAX_SHIP_EVENTS {
        return Err(invalid(format!(
            "at most {MAX_SHIP_EVENTS} events per request"
        )));
    }
    let mut prev = 0;
    for e in &msg.events {
        if e.seq == 0 || e.seq <= prev {
            return Err(invalid(
                "events must have increasing sequence numbers from 1",
            ));
        }
        prev = e.seq;
    }
    let events: Vec<Incoming> = msg
        .events
        .iter()
        .filter(|e| e.seq > last)
        .map(|e| Incoming {
            seq: Some(e.seq),
            event: admit(agent, &e.event),
        })
        .collect();
    if events.is_empty() {
        return Ok(pb::ShipResponse { acked: last });
    }
    let acked = log
        .append(source.to_owned(), events)
        .await
        .map_err(log_error)?;
    Ok(pb::ShipResponse { acked })
}

/// A signed head on the wire.
pub fn head_pb(h: &StoredHead) -> pb::TreeHead {
    pb::TreeHead {
        size: h.head.size,
        root_hash: h.head.root.to_vec(),
        timestamp_ms: h.head.time_ms,
        key_id: h.kid.clone(),
        signature: h.signature.clone(),
    }
}

fn entry_pb(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        position: e.position,
        record: e.record,
        leaf_hash: e.leaf.map(|h| h.to_vec()).unwrap_or_default(),
    }
}

fn text_filter(name: &str, v: String) -> Result<Option<String>, Status> {
    if v.len() > model::MAX_FIELD_BYTES {
        return Err(invalid(format!("{name} is too long")));
    }
    Ok((!v.is_empty()).then_some(v))
}

/// A stream of audit entries.
pub type EntryFeed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `QueryAudit`: matching entries in pages, at most `limit`; with
/// `follow`, every matching entry after `after_position` (default: the end
/// of the log) as the log grows, until the caller goes or the control plane
/// stops.
pub async fn query(
    state: Arc<State>,
    r: pb::QueryAuditRequest,
) -> Result<EntryFeed<pb::QueryAuditResponse>, Status> {
    let limit = match r.limit {
        0 => 100,
        n @ 1..=10_000 => n,
        _ => return Err(invalid("limit must be 1 to 10000")),
    };
    if r.since_ms < 0 || r.until_ms < 0 {
        return Err(invalid("since_ms and until_ms are unix milliseconds"));
    }
    let mut q = AuditQuery {
        agent: text_filter("agent", r.agent)?,
        session: text_filter("session", r.session)?,
        tool: text_filter("tool", r.tool)?,
        outcome: text_filter("outcome", r.outcome)?,
        kind: text_filter("kind", r.kind)?,
        since_ms: (r.since_ms > 0).then_some(r.since_ms),
        until_ms: (r.until_ms > 0).then_some(r.until_ms),
        after: r.after_position,
        limit: 0,
    };
    let follow = r.follow;
    let mut grown = state.audit.size.clone();
    if follow && q.after.is_none() {
        // Following starts at the end of the log, as `tail -f` does.
        q.after = grown.borrow().checked_sub(1);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stopping = state.stopping.subscribe();
    tokio::spawn(async move {
        let mut left = limit;
        loop {
            // Marked seen before the read: an append after it wakes the wait.
            grown.borrow_and_update();
            q.limit = if follow { PAGE } else { left.min(PAGE) };
            let page = match state.store.audit_query(&q).await.map_err(store_error) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let n = u32::try_from(page.len()).unwrap_or(u32::MAX);
            if let Some(last) = page.last() {
                q.after = Some(last.position);
            }
            if n > 0 {
                let msg = pb::QueryAuditResponse {
                    entries: page.into_iter().map(entry_pb).collect(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            if !follow {
                left -= n.min(left);
                if left == 0 || n < q.limit {
                    return;
                }
                continue;
            }
            if n == q.limit {
                continue;
            }
            // Caught up: wait for the log to grow.
            tokio::select! {
                r = grown.changed() => if r.is_err() { return },
                _ = stopping.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// `ExportAudit`: entries with their recorded leaf hashes, in order.
pub async fn export(
    state: Arc<State>,
    r: pb::ExportAuditRequest,
) -> Result<EntryFeed<pb::ExportAuditResponse>, Status> {
    let to = if r.to == 0 { u64::MAX >> 1 } else { r.to };
    if r.from > to {
        return Err(invalid("from must not be after to"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut from = r.from;
        while from < to {
            let page = match state.store.audit_entries(from, to, PAGE, true).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(store_error(e))).await;
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            from = last.position + 1;
            let msg = pb::ExportAuditResponse {
                entries: page.into_iter().map(entry_pb).collect(),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// `ListTreeHeads`.
pub async fn list_heads(
    state: &State,
    r: pb::ListTreeHeadsRequest,
) -> Result<pb::ListTreeHeadsResponse, Status> {
    let limit = match r.limit {
        0 => 1000,
        n @ 1..=10_000 => n,
        _ => return Err(invalid("limit must be 1 to 10000")),
    };
    let heads = state
        .store
        .audit_heads(r.from_size, limit)
        .await
        .map_err(store_error)?;
    let pruned_below = state.store.audit_pruned().await.map_err(store_error)?;
    let peaks_at = Frontier::peaks_of(pruned_below);
    let peaks = crate::audit::read_nodes(state.store.as_ref(), &peaks_at)
        .await
        .map_err(log_error)?;
    Ok(pb::ListTreeHeadsResponse {
        heads: heads.iter().map(head_pb).collect(),
        log_size: *state.audit.size.borrow(),
        pruned_below,
        pruned_peaks: peaks_at.iter().map(|n| peaks[n].to_vec()).collect(),
    })
}

/// `PruneAudit`: retention, by `admin`.
pub async fn prune(
    state: &State,
    admin: &str,
    r: pb::PruneAuditRequest,
) -> Result<pb::PruneAuditResponse, Status> {
    let pruned = state.store.audit_pruned().await.map_err(store_error)?;
    let signed = state
        .store
        .audit_head(None)
        .await
        .map_err(store_error)?
        .map_or(0, |h| h.head.size);
    if r.below <= pruned || r.below > signed {
        return Err(invalid(format!(
            "below must be above the current prune point ({pruned}) and at most the latest signed head's size ({signed}); sign a head first (SignTreeHead)"
        )));
    }
    let deleted = state
        .store
        .audit_prune(r.below, admin, crate::now_unix_ms())
        .await
        .map_err(store_error)?;
    tracing::warn!(admin, below = r.below, deleted, "audit log pruned");
    let mut e = crate::audit::event(
        "audit.pruned",
        warden_shared::audit::ActorKind::Human,
        admin,
    );
    e.outcome = "ok".into();
    e.detail.insert("below".into(), r.below.to_string());
    e.detail.insert("deleted".into(), deleted.to_string());
    state.audit.note(e).await;
    Ok(pb::PruneAuditResponse {
        below: r.below,
        deleted,
    })
}

/// Refuses what needs entries or subtrees a prune removed.
async fn not_pruned(state: &State, first: u64, what: &str) -> Result<(), Status> {
    let pruned = state.store.audit_pruned().await.map_err(store_error)?;
    if first < pruned {
        return Err(not_found(format!(
            "{what} needs entries below {pruned}, which were pruned: check it against the archive"
        )));
    }
    Ok(())
}

/// `SignTreeHead`.
pub async fn sign(state: &State) -> Result<pb::SignTreeHeadResponse, Status> {
    let h = state.audit.sign().await.map_err(log_error)?;
    Ok(pb::SignTreeHeadResponse {
        head: Some(head_pb(&h)),
    })
}

fn not_found(msg: impl Into<String>) -> Status {
    status(Reason::AuditNotFound, msg)
}

/// `ProveInclusion`.
pub async fn prove_inclusion(
    state: &State,
    r: pb::ProveInclusionRequest,
) -> Result<pb::ProveInclusionResponse, Status> {
    let head = if r.tree_size == 0 {
        let latest = state.store.audit_head(None).await.map_err(store_error)?;
        match latest {
            Some(h) if h.head.size > r.position => h,
            _ => state.audit.sign().await.map_err(log_error)?,
        }
    } else {
        state
            .store
            .audit_head(Some(r.tree_size))
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found(format!("no signed head of size {}", r.tree_size)))?
    };
    not_pruned(state, r.position, "this proof").await?;
    if r.position >= head.head.size {
        return Err(not_found(format!(
            "position {} is not in the log's head of size {}",
            r.position, head.head.size
        )));
    }
    let entry = state
        .store
        .audit_entries(r.position, r.position + 1, 1, true)
        .await
        .map_err(store_error)?
        .pop()
        .ok_or_else(|| not_found(format!("no entry at position {}", r.position)))?;
    let (size, position) = (head.head.size, r.position);
    let path = over_stored(state.store.as_ref(), |n| {
        merkle::stored_inclusion_proof(size, position, n).unwrap_or_default()
    })
    .await
    .map_err(log_error)?;
    Ok(pb::ProveInclusionResponse {
        entry: Some(entry_pb(entry)),
        head: Some(head_pb(&head)),
        path: path.iter().map(|h| h.to_vec()).collect(),
        log_id: state.audit.log_id.clone(),
    })
}

/// `ProveConsistency`.
pub async fn prove_consistency(
    state: &State,
    r: pb::ProveConsistencyRequest,
) -> Result<pb::ProveConsistencyResponse, Status> {
    if r.old_size == 0 || r.old_size > r.new_size {
        return Err(invalid("sizes must satisfy 0 < old_size <= new_size"));
    }
    let head = |size: u64| async move {
        state
            .store
            .audit_head(Some(size))
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found(format!("no signed head of size {size}")))
    };
    let (old, new) = (head(r.old_size).await?, head(r.new_size).await?);
    not_pruned(state, r.old_size, "a consistency proof from this head").await?;
    let (o, n) = (r.old_size, r.new_size);
    let path = over_stored(state.store.as_ref(), |f| {
        merkle::stored_consistency_proof(o, n, f).unwrap_or_default()
    })
    .await
    .map_err(log_error)?;
    Ok(pb::ProveConsistencyResponse {
        old: Some(head_pb(&old)),
        new: Some(head_pb(&new)),
        path: path.iter().map(|h| h.to_vec()).collect(),
        log_id: state.audit.log_id.clone(),
    })
}

/// `GetAuditKeys`.
pub async fn keys(state: &State) -> Result<pb::GetAuditKeysResponse, Status> {
    let keys = state.store.audit_keys().await.map_err(store_error)?;
    Ok(pb::GetAuditKeysResponse {
        log_id: state.audit.log_id.clone(),
        keys: keys
            .into_iter()
            .map(|k| pb::AuditKey {
                key_id: k.kid,
                algorithm: "ed25519".into(),
                public_key: k.public_key,
                created_ms: k.created_ms,
            })
            .collect(),
    })
}

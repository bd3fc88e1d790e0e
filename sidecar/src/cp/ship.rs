//! Ships the audit spool to the control plane's log over
//! `AuditService/Ship`: the control plane first says the last sequence
//! number it holds from this spool, the shipper sends what follows (synced
//! events only, up to four requests ahead of the acknowledgements), and
//! each acknowledgement lets the spool remove the segments it covers. Any
//! failure ends the stream; it is opened again with backoff and resumes
//! where the acknowledgements stopped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::audit_service_client::AuditServiceClient;

use super::ControlPlane;
use crate::infra::spool::{Cursor, Spool};

/// Events per request, at most (the control plane's bound).
const PER_REQUEST: usize = 1000;
/// Bytes of events per request, about.
const REQUEST_BYTES: usize = 1 << 20;
/// Requests sent ahead of their acknowledgements.
const WINDOW: usize = 4;
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Ships `spool` until `stop` turns true.
pub async fn run(spool: Arc<Spool>, cp: Arc<ControlPlane>, mut stop: watch::Receiver<bool>) {
    let mut backoff = RETRY_MIN;
    loop {
        match once(&spool, &cp, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(code = ?e.code(), error = %e.message(), retry_in = ?backoff, "audit shipping interrupted; events wait in the spool");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

fn spool_error(e: crate::infra::spool::SpoolError) -> Status {
    Status::internal(e.to_string())
}

// The spool's reads and its removal of shipped segments are file I/O that
// can block (an unlink on a filesystem mounted with `discard` waits for the
// device: seen in the scheduler's stacks of a runtime worker): they run on
// the blocking pool, never on a thread that serves calls.

fn joined(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("the audit spool's I/O task failed: {e}"))
}

/// The next batch of synced events from `cursor` (advanced).
async fn read(spool: &Arc<Spool>, cursor: &mut Cursor) -> Result<Vec<(u64, Vec<u8>)>, Status> {
    let (s, mut c) = (Arc::clone(spool), cursor.clone());
    let (batch, c) = tokio::task::spawn_blocking(move || {
        let batch = s.read(&mut c, PER_REQUEST, REQUEST_BYTES);
        (batch, c)
    })
    .await
    .map_err(joined)?;
    *cursor = c;
    batch.map_err(spool_error)
}

/// Lets the spool remove the segments the control plane holds.
async fn remove_shipped(spool: &Arc<Spool>, seq: u64) -> Result<(), Status> {
    let s = Arc::clone(spool);
    tokio::task::spawn_blocking(move || s.acked(seq))
        .await
        .map_err(joined)
}

/// One stream: until it fails (`Err`) or `stop` (`Ok`).
async fn once(
    spool: &Arc<Spool>,
    cp: &ControlPlane,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Status> {
    let mut client = AuditServiceClient::new(cp.channel()?);
    let (tx, rx) = mpsc::channel(WINDOW + 1);
    let hello = pb::ShipRequest {
        spool_id: spool.id().to_owned(),
        events: vec![],
    };
    tx.send(hello)
        .await
        .map_err(|_| Status::internal("ship stream closed"))?;
    let mut acks = client
        .ship(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let held = acks
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("the control plane ended the stream"))?
        .acked;
    remove_shipped(spool, held).await?;
    let mut cursor = Cursor::at(held + 1);
    let mut synced = spool.synced();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    loop {
        if in_flight.len() < WINDOW {
            synced.borrow_and_update();
            let batch = read(spool, &mut cursor).await?;
            if let Some((last, _)) = batch.last() {
                in_flight.push_back(*last);
                let events = batch
                    .into_iter()
                    .map(|(seq, event)| pb::SpooledEvent { seq, event })
                    .collect();
                tx.send(pb::ShipRequest {
                    spool_id: spool.id().to_owned(),
                    events,
                })
                .await
                .map_err(|_| Status::unavailable("the ship stream closed"))?;
                continue;
            }
        }
        tokio::select! {
            a = acks.message() => {
                let acked = a?
                    .ok_or_else(|| Status::unavailable("the control plane ended the stream"))?
                    .acked;
                remove_shipped(spool, acked).await?;
                while in_flight.front().is_some_and(|s| *s <= acked) {
                    in_flight.pop_front();
                }
            }
            r = synced.changed(), if in_flight.len() < WINDOW => {
                if r.is_err() {
                    return Ok(());
                }
            }
            () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
        }
    }
}

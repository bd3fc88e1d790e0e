//! The single writer with group commit.
//!
//! SQLite allows one writer at a time; letting pooled connections race for
//! the write lock makes them sleep in SQLite's busy handler (milliseconds
//! each). Instead one task owns the write connection: it takes every write
//! queued at that moment, runs each inside its own savepoint within one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync for the batch),
//! and only then answers the callers. A caller is therefore never told
//! "done" before its write is durable, and a failed write rolls back alone.

use std::future::Future;
use std::pin::Pin;

use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Error, Result};

/// Most writes committed together.
const MAX_BATCH: usize = 256;
/// Writes waiting for the writer before callers are back-pressured.
pub(super) const QUEUE: usize = 4096;

pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Called after the batch commit (Ok) or rollback (Err) to answer a caller.
type Finish = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// Runs a write's statements; returns whether they succeeded, and its finisher.
type Run =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, (bool, Finish)> + Send>;

/// One queued write.
pub(super) struct Job {
    run: Run,
    /// Several statements: wrap in a savepoint so a failure undoes them all.
    /// A single statement is atomic on its own in SQLite.
    multi: bool,
}

/// Wraps a write function as a [`Job`] and returns the receiver of its
/// result; `multi` if it runs more than one statement.
pub(super) fn job<T, F>(f: F, multi: bool) -> (Job, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let run: Run = Box::new(move |conn| {
        Box::pin(async move {
            let r = f(conn).await;
            let ok = r.is_ok();
            let finish: Finish = Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Ok(()) => r,
                    Err(e) => Err(Error::Commit(e)),
                });
            });
            (ok, finish)
        })
    });
    (Job { run, multi }, rx)
}

/// Runs a fixed statement. Boxed so the writer future's `Send` bound does
/// not have to be proven through sqlx's higher-ranked executor lifetimes.
fn exec<'c>(
    conn: &'c mut SqliteConnection,
    sql: &'static str,
) -> BoxFuture<'c, std::result::Result<(), sqlx::Error>> {
    Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
}

/// Runs until every sender is dropped.
pub(super) async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let began = exec(&mut conn, "BEGIN IMMEDIATE").await;
        if let Err(e) = began {
            tracing::error!(error = %e, "store: cannot begin a write transaction");
            // Nothing ran; dropping the jobs answers every caller with an error.
            drop(batch);
            continue;
        }
        for j in batch {
            if !j.multi {
                let (_, finish) = (j.run)(&mut conn).await;
                finishers.push(finish);
                continue;
            }
            let save = exec(&mut conn, "SAVEPOINT w").await;
            let (ok, finish) = (j.run)(&mut conn).await;
            if !(ok && save.is_ok())
                && let Err(e) = exec(&mut conn, "ROLLBACK TO w").await
            {
                tracing::error!(error = %e, "store: savepoint rollback failed");
            }
            if let Err(e) = exec(&mut conn, "RELEASE w").await {
                tracing::error!(error = %e, "store: savepoint release failed");
            }
            finishers.push(finish);
        }
        let commit = match exec(&mut conn, "COMMIT").await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "store: commit failed; batch rolled back");
                let _ = exec(&mut conn, "ROLLBACK").await;
                Err(e.to_string())
            }
        };
        for f in finishers {
            f(commit.clone());
        }
    }
}

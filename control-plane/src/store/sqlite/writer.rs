//! The single writer with group commit.
//!
//! SQLite allows one writer at a time; letting pooled connections race for
//! the write lock makes them sleep in SQLite's busy handler (milliseconds
//! each). Instead one task owns the write connection: it takes every write
//! queued at that moment, runs each inside its own savepoint within one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync for the batch),
//! and only then answers the callers. A caller is therefore never told
//! "done" before its write is durable, and a failed write rolls back alone.
//!
//! Each statement is a round trip to sqlx's SQLite thread (about 200 µs on
//! a loaded two-core machine). A write that can frame itself (see
//! [`job_framed`]) and is alone in its batch is told so ([`Alone`]): it
//! puts `BEGIN IMMEDIATE` and `COMMIT` into its own query, so that the
//! whole transaction is one round trip instead of three or more.

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
/// Runs a write's statements; returns how they went, and its finisher.
type Run = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection, Alone) -> BoxFuture<'c, (Outcome, Finish)> + Send,
>;

/// Whether a framed write runs alone, owning its transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Alone {
    /// Inside the batch's transaction, which the writer begins and commits.
    No,
    /// Alone: the write begins (`BEGIN IMMEDIATE`) and commits its own
    /// transaction, and returns `Ok` only once it has committed. On an
    /// error the writer rolls back whatever it left open.
    Owns,
}

/// How one write went, as far as the batch is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Succeeded.
    Ok,
    /// Refused by a constraint (or failed after its statement): SQLite undid
    /// only that statement; the transaction goes on.
    Refused,
    /// Any other database error (disk full, I/O, busy…): SQLite may have
    /// rolled back the whole transaction, so the batch must not go on.
    Fatal,
}

/// Whether a constraint refused the write: SQLite undid only the statement
/// that failed, and the transaction may go on.
pub(super) fn refused(e: &Error) -> bool {
    use sqlx::error::ErrorKind;
    matches!(
        e,
        Error::Database(sqlx::Error::Database(d)) if matches!(
            d.kind(),
            ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation
        )
    )
}

fn outcome<T>(r: &Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(e) if refused(e) => Outcome::Refused,
        Err(Error::Database(_) | Error::Migrate(_)) => Outcome::Fatal,
        Err(_) => Outcome::Refused,
    }
}

/// One queued write.
pub(super) struct Job {
    run: Run,
    /// Several statements: wrap in a savepoint so a failure undoes them all.
    /// A single statement is atomic on its own in SQLite.
    multi: bool,
    /// Can own its transaction when alone ([`Alone::Owns`]).
    framed: bool,
}

/// Wraps a write function as a [`Job`] and returns the receiver of its
/// result; `multi` if it runs more than one statement.
pub(super) fn job<T, F>(f: F, multi: bool) -> (Job, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    let (mut job, rx) = job_framed(move |c, _| f(c));
    job.multi = multi;
    job.framed = false;
    (job, rx)
}

/// Wraps a write of several statements that, told [`Alone::Owns`], begins
/// and commits its own transaction (in the same query as its statements).
pub(super) fn job_framed<T, F>(f: F) -> (Job, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection, Alone) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let run: Run = Box::new(move |conn, alone| {
        Box::pin(async move {
            let r = f(conn, alone).await;
            let ok = outcome(&r);
            let finish: Finish = Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Ok(()) => r,
                    Err(e) => Err(Error::Commit(e)),
                });
            });
            (ok, finish)
        })
    });
    (
        Job {
            run,
            multi: true,
            framed: true,
        },
        rx,
    )
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
        if batch.len() == 1 && batch[0].framed {
            let Some(j) = batch.pop() else { continue };
            let (how, finish) = (j.run)(&mut conn, Alone::Owns).await;
            if how != Outcome::Ok {
                // Whatever the write left open (it may have failed before
                // its BEGIN, so "no transaction is active" is expected).
                if let Err(e) = exec(&mut conn, "ROLLBACK").await {
                    tracing::debug!(error = %e, "store: rollback after a framed write");
                }
            }
            // Its result is its own: committed if Ok, its error if not.
            finish(Ok(()));
            continue;
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let began = exec(&mut conn, "BEGIN IMMEDIATE").await;
        if let Err(e) = began {
            tracing::error!(error = %e, "store: cannot begin a write transaction");
            // Nothing ran; dropping the jobs answers every caller with an error.
            drop(batch);
            continue;
        }
        // A job alone in its batch needs no savepoint (each is a round
        // trip to SQLite's thread): undoing it is rolling back the batch.
        let alone = batch.len() == 1;
        let mut undo = false;
        let mut fatal = None;
        let mut jobs = batch.into_iter();
        for j in jobs.by_ref() {
            let savepoint = j.multi && !alone;
            if savepoint && let Err(e) = exec(&mut conn, "SAVEPOINT w").await {
                // Dropping the job answers its caller with an error.
                fatal = Some(format!("savepoint: {e}"));
                break;
            }
            let (how, finish) = (j.run)(&mut conn, Alone::No).await;
            finishers.push(finish);
            if how == Outcome::Fatal {
                fatal = Some("a write failed; the batch was rolled back".to_owned());
                break;
            }
            undo = j.multi && alone && how != Outcome::Ok;
            if savepoint {
                if how != Outcome::Ok
                    && let Err(e) = exec(&mut conn, "ROLLBACK TO w").await
                {
                    fatal = Some(format!("savepoint rollback: {e}"));
                    break;
                }
                if let Err(e) = exec(&mut conn, "RELEASE w").await {
                    fatal = Some(format!("savepoint release: {e}"));
                    break;
                }
            }
        }
        // Jobs after a fatal error never ran; dropping them answers their callers.
        drop(jobs);
        let commit = match fatal {
            Some(why) => {
                tracing::error!(reason = %why, "store: write batch rolled back");
                if let Err(e) = exec(&mut conn, "ROLLBACK").await {
                    tracing::error!(error = %e, "store: rollback failed");
                }
                Err(why)
            }
            // The job refused stays refused, with its own error.
            None if undo => {
                if let Err(e) = exec(&mut conn, "ROLLBACK").await {
                    tracing::error!(error = %e, "store: rollback failed");
                }
                Ok(())
            }
            None => match exec(&mut conn, "COMMIT").await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "store: commit failed; batch rolled back");
                    let _ = exec(&mut conn, "ROLLBACK").await;
                    Err(e.to_string())
                }
            },
        };
        for f in finishers {
            f(commit.clone());
        }
    }
}

//! SQLite backend: the embedded default. WAL journal, foreign keys on, and
//! every multi-step change in one statement or one transaction.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::mpsc;
use warden_shared::agent::{AgentId, AgentStatus};

use super::{
    Agent, Approval, ApprovalDecision, ApprovalState, Attempt, Decided, Delivery, Error, Grant,
    IssuedCert, JoinTokenUse, NewApproval, NewDelivery, NewPolicy, NewSession, Outcome,
    PolicyApply, PolicyMeta, Result, Store, StoredKey,
};

mod cache;
mod writer;

/// SQLite-backed [`Store`]: reads on a pool, writes through one writer task
/// with group commit (see [`writer`]).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writes: mpsc::Sender<writer::Job>,
    agents: std::sync::Arc<cache::Agents>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and applies migrations.
    /// `durable` selects `synchronous=FULL` (every commit reaches the disk)
    /// over `NORMAL` (safe against a process crash, not a power cut).
    pub async fn open(path: &Path, durable: bool) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if durable {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        sqlx::query(audit::GUARD_TABLE).execute(&mut conn).await?;
        let (writes, rx) = mpsc::channel(writer::QUEUE);
        tokio::spawn(writer::run(conn, rx));
        Ok(Self {
            pool,
            writes,
            agents: std::sync::Arc::default(),
        })
    }

    /// Queues a single-statement write and waits until it is committed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> writer::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        self.submit(f, false).await
    }

    /// Queues a multi-statement write (all or nothing) and waits.
    async fn write_all<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> writer::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        self.submit(f, true).await
    }

    async fn submit<T, F>(&self, f: F, multi: bool) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> writer::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        let (job, rx) = writer::job(f, multi);
        self.queue(job, rx).await
    }

    /// Queues a multi-statement write that owns its transaction when it is
    /// alone in its batch (see [`writer::Alone`]), and waits.
    async fn write_framed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut SqliteConnection,
                writer::Alone,
            ) -> writer::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        let (job, rx) = writer::job_framed(f);
        self.queue(job, rx).await
    }

    async fn queue<T>(
        &self,
        job: writer::Job,
        rx: tokio::sync::oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        self.writes.send(job).await.map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }
}

/// A session to open: the session, its agent's most open sessions, now.
pub(super) type Opening<'a> = (&'a NewSession, u32, i64);

/// The statement that opens sessions, each only if its agent has fewer than
/// its `max` open and its grant (if any) is live, as if inserted one after
/// another. Its first parameter is the sessions as a JSON array (see
/// [`sessions_json`]), its second the largest cap among them (counting
/// stops there: O(max), not O(open)). Within the array, a session counts
/// its agent's open sessions before the statement plus its agent's earlier
/// sessions in the array that pass the grant check. The text never changes
/// with the number of sessions, so SQLite parses it once per connection.
macro_rules! open_sessions_sql {
    () => {
        "WITH batch AS (
           SELECT key AS ord, value->>0 AS id, value->>1 AS agent_id, value->>2 AS user_id,
                  value->>3 AS scopes, value->>4 AS context, value->>5 AS jti,
                  value->>6 AS thumbprint, value->>7 AS max_tool_calls, value->>8 AS created_at,
                  value->>9 AS expires_at, value->>10 AS grant_id, value->>11 AS cap,
                  value->>12 AS now
           FROM json_each(?)
         ), live AS (
           SELECT * FROM batch b WHERE b.grant_id IS NULL OR EXISTS (SELECT 1 FROM grants g
             WHERE g.id = b.grant_id AND g.revoked_at IS NULL AND g.expires_at > b.now)
         ), ranked AS (
           SELECT *, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY ord) AS rn FROM live
         )
         INSERT INTO sessions (id, agent_id, user_id, scopes, context, jti, thumbprint, max_tool_calls, created_at, expires_at, grant_id)
         SELECT id, agent_id, user_id, scopes, context, jti, thumbprint, max_tool_calls, created_at, expires_at, grant_id
         FROM ranked r
         WHERE (SELECT COUNT(*) FROM (SELECT 1 FROM sessions s
                WHERE s.agent_id = r.agent_id AND s.ended_at IS NULL AND s.expires_at > r.now
                LIMIT ?)) + r.rn <= r.cap ORDER BY r.ord"
    };
}
pub(super) use open_sessions_sql;

/// Rows as one JSON parameter. Serialising strings and numbers cannot fail;
/// if it ever did, the write fails (nothing is written as if it were empty).
pub(super) fn to_json<T: serde::Serialize + ?Sized>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Database(sqlx::Error::Encode(Box::new(e))))
}

/// The sessions to open as [`open_sessions_sql`] reads them (one JSON array
/// per session), and the largest of their caps.
pub(super) fn sessions_json(open: &[Opening<'_>]) -> Result<(String, i64)> {
    let cap = open.iter().map(|(_, max, _)| *max).max().unwrap_or(0);
    let rows: Vec<_> = open
        .iter()
        .map(|(s, max, now)| {
            (
                &s.id,
                s.agent_id.as_str(),
                &s.user_id,
                &s.scopes,
                &s.context,
                &s.jti,
                &s.thumbprint,
                s.max_tool_calls,
                s.created_at,
                s.expires_at,
                &s.grant_id,
                max,
                now,
            )
        })
        .collect();
    Ok((to_json(&rows)?, i64::from(cap)))
}

/// Ends the open, unexpired session `id` of `agent`: whether it did.
async fn end_session(
    c: &mut SqliteConnection,
    agent: &AgentId,
    id: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE sessions SET ended_at = ? WHERE id = ? AND agent_id = ? AND ended_at IS NULL AND expires_at > ?",
    )
    .bind(now)
    .bind(id)
    .bind(agent.as_str())
    .bind(now)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Opens sessions (see [`open_sessions_sql`]): whether each was opened.
/// One statement for them all, not one per session (each statement is a
/// round trip to SQLite's thread). The single writer runs it, so
/// concurrent opens cannot overshoot a cap nor outlive a revocation.
async fn insert_sessions(c: &mut SqliteConnection, open: &[Opening<'_>]) -> Result<Vec<bool>> {
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let (json, cap) = sessions_json(open)?;
    let ids: Vec<String> = sqlx::query_scalar(concat!(open_sessions_sql!(), " RETURNING id"))
        .bind(json)
        .bind(cap)
        .fetch_all(&mut *c)
        .await?;
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    Ok(open
        .iter()
        .map(|(s, ..)| ids.contains(s.id.as_str()))
        .collect())
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn corrupt(table: &'static str, detail: impl ToString) -> Error {
    Error::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent> {
    let list = |col: &str| -> Result<Vec<String>> {
        let s: String = row.try_get(col)?;
        serde_json::from_str(&s).map_err(|e| corrupt("agents", format!("{col}: {e}")))
    };
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(Agent {
        id: AgentId::new(&id).map_err(|e| corrupt("agents", e))?,
        agent_type: row.try_get("agent_type")?,
        version: row.try_get("version")?,
        owner: row.try_get("owner")?,
        environment: row.try_get("environment")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        max_sessions: u32::try_from(row.try_get::<i64, _>("max_sessions")?)
            .map_err(|e| corrupt("agents", e))?,
        allowed_scopes: list("allowed_scopes")?,
        allowed_tools: list("allowed_tools")?,
        denied_tools: list("denied_tools")?,
        status: AgentStatus::parse(&status).ok_or_else(|| corrupt("agents", "status"))?,
        status_reason: row.try_get("status_reason")?,
    })
}

fn policy_meta(row: &SqliteRow) -> Result<PolicyMeta> {
    Ok(PolicyMeta {
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        tools: u32::try_from(row.try_get::<i64, _>("tools")?)
            .map_err(|e| corrupt("policy_versions", e))?,
        applied_by: row.try_get("applied_by")?,
        applied_at: row.try_get("applied_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_agent(&self, a: &Agent) -> Result<()> {
        let id = a.id.clone();
        let a = a.clone();
        let r = self.write(move |c| {
            Box::pin(async move {
                let r = sqlx::query(
                    "INSERT INTO agents (id, agent_type, version, owner, environment, created_at, updated_at,
                        expires_at, max_sessions, allowed_scopes, allowed_tools, denied_tools, status, status_reason)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(a.id.as_str())
                .bind(&a.agent_type)
                .bind(&a.version)
                .bind(&a.owner)
                .bind(&a.environment)
                .bind(a.created_at)
                .bind(a.updated_at)
                .bind(a.expires_at)
                .bind(i64::from(a.max_sessions))
                .bind(json_list(&a.allowed_scopes))
                .bind(json_list(&a.allowed_tools))
                .bind(json_list(&a.denied_tools))
                .bind(a.status.as_str())
                .bind(&a.status_reason)
                .execute(&mut *c)
                .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => Err(Error::Conflict),
                    Err(e) => Err(e.into()),
                }
            })
        })
        .await;
        self.agents.forget(&id);
        r
    }

    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>> {
        if let Some(a) = self.agents.get(id) {
            return Ok(Some(a));
        }
        let generation = self.agents.generation();
        let row = sqlx::query("SELECT * FROM agents WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let agent = row.as_ref().map(agent_from_row).transpose()?;
        if let Some(a) = &agent {
            self.agents.keep(generation, a);
        }
        Ok(agent)
    }

    async fn list_agents(&self) -> Result<Vec<Agent>> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn blocked_agents(&self, now: i64, since: i64) -> Result<Vec<Agent>> {
        let rows = sqlx::query(
            "SELECT * FROM agents
             WHERE status = 'suspended'
                OR (status = 'revoked' AND updated_at > ?)
                OR (status = 'active' AND expires_at IS NOT NULL AND expires_at <= ? AND expires_at > ?)
             ORDER BY id",
        )
        .bind(since)
        .bind(now)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn set_agent_status(
        &self,
        id: &AgentId,
        status: AgentStatus,
        reason: &str,
        now: i64,
    ) -> Result<Option<Agent>> {
        let (id, reason) = (id.clone(), reason.to_owned());
        let forget = id.clone();
        let r = self
            .write(move |c| {
                Box::pin(async move {
                    // Revocation is final, enforced in the write itself so that a
                    // resume racing a revoke cannot bring the agent back.
                    let row = sqlx::query(
                        "UPDATE agents SET status = ?, status_reason = ?, updated_at = ?
                     WHERE id = ? AND (status <> 'revoked' OR ? = 'revoked') RETURNING *",
                    )
                    .bind(status.as_str())
                    .bind(&reason)
                    .bind(now)
                    .bind(id.as_str())
                    .bind(status.as_str())
                    .fetch_optional(&mut *c)
                    .await?;
                    row.as_ref().map(agent_from_row).transpose()
                })
            })
            .await;
        self.agents.forget(&forget);
        r
    }

    async fn insert_join_token(
        &self,
        hash: &[u8],
        agent: &AgentId,
        created_by: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let (hash, agent, by) = (hash.to_vec(), agent.clone(), created_by.to_owned());
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO join_tokens (token_hash, agent_id, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&hash)
                .bind(agent.as_str())
                .bind(&by)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn consume_join_token(
        &self,
        hash: &[u8],
        agent: &AgentId,
        now: i64,
    ) -> Result<JoinTokenUse> {
        // One conditional UPDATE spends the token, so two concurrent
        // enrollments with the same token cannot both succeed.
        let (h, a) = (hash.to_vec(), agent.clone());
        let spent = self
            .write(move |c| {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE join_tokens SET used_at = ?
                         WHERE token_hash = ? AND agent_id = ? AND used_at IS NULL AND expires_at > ?",
                    )
                    .bind(now)
                    .bind(&h)
                    .bind(a.as_str())
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                    Ok(r.rows_affected() == 1)
                })
            })
            .await?;
        if spent {
            return Ok(JoinTokenUse::Consumed);
        }
        Ok(match self.peek_join_token(hash, agent, now).await? {
            // Valid a moment ago and not spent by us: a concurrent use won.
            JoinTokenUse::Consumed => JoinTokenUse::Used,
            other => other,
        })
    }

    async fn peek_join_token(
        &self,
        hash: &[u8],
        agent: &AgentId,
        now: i64,
    ) -> Result<JoinTokenUse> {
        let row = sqlx::query(
            "SELECT agent_id, expires_at, used_at FROM join_tokens WHERE token_hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(JoinTokenUse::Unknown);
        };
        let owner: String = row.try_get("agent_id")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let used_at: Option<i64> = row.try_get("used_at")?;
        Ok(if owner != agent.as_str() {
            JoinTokenUse::WrongAgent
        } else if used_at.is_some() {
            JoinTokenUse::Used
        } else if expires_at <= now {
            JoinTokenUse::Expired
        } else {
            JoinTokenUse::Consumed
        })
    }

    async fn record_certificate(&self, cert: &IssuedCert) -> Result<()> {
        let cert = cert.clone();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO certificates (serial, agent_id, thumbprint, not_after, issued_at, reason) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&cert.serial)
                .bind(cert.agent_id.as_str())
                .bind(&cert.thumbprint)
                .bind(cert.not_after)
                .bind(cert.issued_at)
                .bind(cert.reason)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn open_session(&self, session: &NewSession, max: u32, now: i64) -> Result<bool> {
        let s = session.clone();
        let opened = self
            .write(move |c| Box::pin(async move { insert_sessions(c, &[(&s, max, now)]).await }))
            .await?;
        Ok(opened.first().copied().unwrap_or(false))
    }

    async fn end_session(&self, agent: &AgentId, id: &str, now: i64) -> Result<bool> {
        let (agent, id) = (agent.clone(), id.to_owned());
        self.write(move |c| Box::pin(async move { end_session(c, &agent, &id, now).await }))
            .await
    }

    async fn revoke_session(&self, id: &str, now: i64) -> Result<Option<(AgentId, i64)>> {
        let id = id.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                let row = sqlx::query(
                    "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?1), ended_at = COALESCE(ended_at, ?1)
                     WHERE id = ?2 AND expires_at > ?1 RETURNING agent_id, expires_at",
                )
                .bind(now)
                .bind(&id)
                .fetch_optional(&mut *c)
                .await?;
                row.map(|r| {
                    let agent: String = r.try_get("agent_id")?;
                    let agent = AgentId::new(&agent).map_err(|e| corrupt("sessions", e))?;
                    Ok((agent, r.try_get("expires_at")?))
                })
                .transpose()
            })
        })
        .await
    }

    async fn revoked_sessions(&self, agent: &AgentId, now: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, expires_at FROM sessions WHERE agent_id = ? AND revoked_at IS NOT NULL AND expires_at > ?
             ORDER BY id",
        )
        .bind(agent.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("expires_at")?)))
            .collect()
    }

    async fn insert_grant(&self, grant: &Grant) -> Result<()> {
        let g = grant.clone();
        self.write(move |c| Box::pin(async move { grants::insert(c, &g).await }))
            .await
    }

    async fn live_grant(
        &self,
        user: &str,
        agent: &AgentId,
        agent_type: &str,
        now: i64,
    ) -> Result<Option<Grant>> {
        let mut c = self.pool.acquire().await?;
        grants::live(&mut c, user, agent, agent_type, now).await
    }

    async fn get_grant(&self, id: &str) -> Result<Option<Grant>> {
        let mut c = self.pool.acquire().await?;
        grants::get(&mut c, id).await
    }

    async fn list_grants(
        &self,
        user: Option<&str>,
        all: bool,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Grant>> {
        let mut c = self.pool.acquire().await?;
        grants::list(&mut c, user, all, now, limit).await
    }

    async fn revoke_grant(
        &self,
        id: &str,
        user: Option<&str>,
        by: &str,
        now: i64,
    ) -> Result<Option<(Grant, Vec<(String, AgentId)>)>> {
        let (id, user, by) = (id.to_owned(), user.map(str::to_owned), by.to_owned());
        self.write_all(move |c| {
            Box::pin(async move { grants::revoke(c, &id, user.as_deref(), &by, now).await })
        })
        .await
    }

    async fn open_sessions(&self, agent: &AgentId, now: i64) -> Result<u32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE agent_id = ? AND ended_at IS NULL AND expires_at > ?",
        )
        .bind(agent.as_str())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        u32::try_from(n).map_err(|e| corrupt("sessions", e))
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        self.write_all(move |c| {
            Box::pin(async move {
                let mut n = 0;
                for sql in [
                    "DELETE FROM join_tokens WHERE expires_at < ?1 OR used_at < ?1",
                    "DELETE FROM sessions WHERE expires_at < ?1 OR ended_at < ?1",
                    "DELETE FROM certificates WHERE not_after < ?1",
                    "DELETE FROM grants WHERE expires_at < ?1 OR revoked_at < ?1",
                    // Webhook deliveries done (delivered or abandoned).
                    "DELETE FROM webhook_outbox WHERE next_at IS NULL AND created_at < ?1",
                ] {
                    n += sqlx::query(sql)
                        .bind(before)
                        .execute(&mut *c)
                        .await?
                        .rows_affected();
                }
                Ok(n)
            })
        })
        .await
    }

    async fn apply_policy(&self, policy: &NewPolicy, expected: Option<i64>) -> Result<PolicyApply> {
        let p = policy.clone();
        self.write_all(move |c| {
            Box::pin(async move {
                let latest =
                    sqlx::query("SELECT * FROM policy_versions ORDER BY version DESC LIMIT 1")
                        .fetch_optional(&mut *c)
                        .await?;
                let latest = latest.as_ref().map(policy_meta).transpose()?;
                let latest_version = latest.as_ref().map_or(0, |m| m.version);
                if expected.is_some_and(|e| e != latest_version) {
                    return Ok(PolicyApply::Conflict {
                        latest: latest_version,
                    });
                }
                if let Some(m) = latest.filter(|m| m.digest == p.digest) {
                    return Ok(PolicyApply::Unchanged(m));
                }
                let row = sqlx::query(
                    "INSERT INTO policy_versions (document, digest, tools, applied_by, applied_at)
                     VALUES (?, ?, ?, ?, ?) RETURNING *",
                )
                .bind(&p.document)
                .bind(&p.digest)
                .bind(i64::from(p.tools))
                .bind(&p.applied_by)
                .bind(p.applied_at)
                .fetch_one(&mut *c)
                .await?;
                Ok(PolicyApply::Stored(policy_meta(&row)?))
            })
        })
        .await
    }

    async fn get_policy(&self, version: Option<i64>) -> Result<Option<(PolicyMeta, String)>> {
        let row = match version {
            Some(v) => {
                sqlx::query("SELECT * FROM policy_versions WHERE version = ?")
                    .bind(v)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM policy_versions ORDER BY version DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.map(|r| Ok((policy_meta(&r)?, r.try_get("document")?)))
            .transpose()
    }

    async fn list_policies(&self, limit: u32) -> Result<Vec<PolicyMeta>> {
        let limit = if limit == 0 { -1 } else { i64::from(limit) };
        let rows = sqlx::query(
            "SELECT version, digest, tools, applied_by, applied_at FROM policy_versions ORDER BY version DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_meta).collect()
    }

    async fn rotate_signing_key(&self, kid: &str, pkcs8: &[u8], now: i64) -> Result<()> {
        let (kid, pkcs8) = (kid.to_owned(), pkcs8.to_vec());
        // Both statements run in this write's savepoint: all or nothing.
        self.write_all(move |c| {
            Box::pin(async move {
                sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL")
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES (?, ?, ?)")
                    .bind(&kid)
                    .bind(&pkcs8)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn request_approval(&self, new: &NewApproval, now: i64) -> Result<Approval> {
        let new = new.clone();
        self.write(move |c| Box::pin(async move { approvals::file(c, &new, now).await }))
            .await
    }

    async fn get_approval(&self, id: &str, now: i64) -> Result<Option<Approval>> {
        let mut c = self.pool.acquire().await?;
        approvals::load(&mut c, id, now).await
    }

    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: u32,
        now: i64,
    ) -> Result<Vec<Approval>> {
        let mut c = self.pool.acquire().await?;
        // The stored states a request in `state` may have: a pending or
        // approved one reads as expired once its time is up.
        let stored: &[&str] = match state {
            None => &[],
            Some(ApprovalState::Expired) => &["expired", "pending", "approved"],
            Some(s) => &[s.as_str()],
        };
        let filter = if stored.is_empty() {
            String::new()
        } else {
            format!("WHERE state IN ({})", vec!["?"; stored.len()].join(", "))
        };
        let sql = format!("SELECT id FROM approvals {filter} ORDER BY created_at DESC, id DESC");
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for s in stored {
            q = q.bind(*s);
        }
        let ids = q.fetch_all(&mut *c).await?;
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit as usize {
                break;
            }
            if let Some(a) = approvals::load(&mut c, &id, now).await?
                && state.is_none_or(|s| s == a.state)
            {
                out.push(a);
            }
        }
        Ok(out)
    }

    async fn decide_approval(
        &self,
        id: &str,
        decision: &ApprovalDecision,
        now: i64,
    ) -> Result<Decided> {
        let (id, d) = (id.to_owned(), decision.clone());
        self.write(move |c| Box::pin(async move { approvals::decide(c, &id, &d, now).await }))
            .await
    }

    async fn use_approval(
        &self,
        agent: &AgentId,
        binding: &str,
        now: i64,
    ) -> Result<Option<Approval>> {
        let (agent, binding) = (agent.clone(), binding.to_owned());
        self.write(move |c| {
            Box::pin(async move { approvals::spend(c, &agent, &binding, now).await })
        })
        .await
    }

    async fn enqueue_webhooks(&self, deliveries: &[NewDelivery]) -> Result<()> {
        let deliveries = deliveries.to_vec();
        self.write(move |c| {
            Box::pin(async move {
                for d in &deliveries {
                    sqlx::query(
                        "INSERT INTO webhook_outbox (id, url, body, created_at, attempts, next_at) VALUES (?, ?, ?, ?, 0, ?)",
                    )
                    .bind(&d.id)
                    .bind(&d.url)
                    .bind(&d.body)
                    .bind(d.created_at)
                    .bind(d.created_at)
                    .execute(&mut *c)
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn due_webhooks(&self, now: i64, limit: u32) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT id, url, body, attempts FROM webhook_outbox WHERE next_at IS NOT NULL AND next_at <= ? ORDER BY next_at, created_at, id LIMIT ?",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let attempts: i64 = r.try_get("attempts")?;
                Ok(Delivery {
                    id: r.try_get("id")?,
                    url: r.try_get("url")?,
                    body: r.try_get("body")?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn webhook_attempted(&self, id: &str, attempt: &Attempt, now: i64) -> Result<()> {
        let (id, attempt) = (id.to_owned(), attempt.clone());
        self.write(move |c| {
            Box::pin(async move {
                let (next_at, delivered_at, error) = match &attempt {
                    Attempt::Delivered => (None, Some(now), ""),
                    Attempt::Retry { at, error } => (Some(*at), None, error.as_str()),
                    Attempt::Abandoned { error } => (None, None, error.as_str()),
                };
                sqlx::query(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_at = ?, delivered_at = ?, last_error = ? WHERE id = ?",
                )
                .bind(next_at)
                .bind(delivered_at)
                .bind(error)
                .bind(&id)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn next_webhook_at(&self) -> Result<Option<i64>> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_at) FROM webhook_outbox WHERE next_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(at)
    }

    async fn pending_approvals(&self, agent: &AgentId, now: i64) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM approvals WHERE agent_id = ? AND state = 'pending' AND deadline > ?",
        )
        .bind(agent.as_str())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn cancel_approval(&self, agent: &AgentId, id: &str, now: i64) -> Result<bool> {
        let (agent, id) = (agent.clone(), id.to_owned());
        self.write(move |c| Box::pin(async move { approvals::cancel(c, &agent, &id, now).await }))
            .await
    }

    async fn approval_outcomes(
        &self,
        agent: &AgentId,
        after: u64,
        since: i64,
        limit: u32,
    ) -> Result<Vec<Outcome>> {
        let mut c = self.pool.acquire().await?;
        approvals::outcomes(&mut c, agent, after, since, limit).await
    }

    async fn last_decision_seq(&self) -> Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(decided_seq) FROM approvals")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(
            "SELECT kid, pkcs8, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, rowid DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.try_get("kid")?,
                    pkcs8: r.try_get("pkcs8")?,
                    created_at: r.try_get("created_at")?,
                    retired_at: r.try_get("retired_at")?,
                })
            })
            .collect()
    }
}

mod approvals;
mod audit;
mod grants;

#[cfg(test)]
mod tests;

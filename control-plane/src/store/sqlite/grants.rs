//! Consent grants in SQLite: stored once, found for an agent at session
//! start, revoked with the sessions issued under them in one transaction.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use warden_shared::agent::AgentId;

use super::super::{Error, Grant, Grantee, Result};

const COLUMNS: &str =
    "id, user_id, agent_id, agent_type, scopes, created_at, expires_at, revoked_at, revoked_by";

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corrupt {
        table: "grants",
        detail: detail.into(),
    }
}

fn grant(row: &SqliteRow) -> Result<Grant> {
    let agent: String = row.try_get("agent_id")?;
    let agent_type: String = row.try_get("agent_type")?;
    let grantee = match (agent.is_empty(), agent_type.is_empty()) {
        (false, true) => Grantee::Agent(AgentId::new(&agent).map_err(|e| corrupt(e.to_string()))?),
        (true, false) => Grantee::AgentType(agent_type),
        _ => return Err(corrupt("a grant names one agent or one agent type")),
    };
    let scopes: String = row.try_get("scopes")?;
    Ok(Grant {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        grantee,
        scopes: scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_by: row.try_get("revoked_by")?,
    })
}

pub(super) async fn insert(c: &mut SqliteConnection, g: &Grant) -> Result<()> {
    let (agent, agent_type) = match &g.grantee {
        Grantee::Agent(a) => (a.as_str(), ""),
        Grantee::AgentType(t) => ("", t.as_str()),
    };
    let r = sqlx::query(
        "INSERT INTO grants (id, user_id, agent_id, agent_type, scopes, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&g.id)
    .bind(&g.user_id)
    .bind(agent)
    .bind(agent_type)
    .bind(g.scopes.join(" "))
    .bind(g.created_at)
    .bind(g.expires_at)
    .execute(&mut *c)
    .await?;
    if r.rows_affected() == 0 {
        return Err(Error::Conflict);
    }
    Ok(())
}

pub(super) async fn live(
    c: &mut SqliteConnection,
    user: &str,
    agent: &AgentId,
    agent_type: &str,
    now: i64,
) -> Result<Option<Grant>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM grants
         WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2
           AND (agent_id = ?3 OR (agent_type = ?4 AND ?4 <> ''))
         ORDER BY agent_id = ?3 DESC, created_at DESC, id DESC LIMIT 1"
    ))
    .bind(user)
    .bind(now)
    .bind(agent.as_str())
    .bind(agent_type)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(grant).transpose()
}

pub(super) async fn get(c: &mut SqliteConnection, id: &str) -> Result<Option<Grant>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM grants WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *c)
        .await?;
    row.as_ref().map(grant).transpose()
}

pub(super) async fn list(
    c: &mut SqliteConnection,
    user: Option<&str>,
    all: bool,
    now: i64,
    limit: u32,
) -> Result<Vec<Grant>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM grants
         WHERE (?1 IS NULL OR user_id = ?1)
           AND (?2 OR (revoked_at IS NULL AND expires_at > ?3))
         ORDER BY created_at DESC, id DESC LIMIT ?4"
    ))
    .bind(user)
    .bind(all)
    .bind(now)
    .bind(if limit == 0 { -1 } else { i64::from(limit) })
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(grant).collect()
}

pub(super) async fn revoke(
    c: &mut SqliteConnection,
    id: &str,
    user: Option<&str>,
    by: &str,
    now: i64,
) -> Result<Option<(Grant, Vec<(String, AgentId)>)>> {
    let row = sqlx::query(&format!(
        "UPDATE grants SET revoked_at = ?1, revoked_by = ?2
         WHERE id = ?3 AND (?4 IS NULL OR user_id = ?4)
           AND revoked_at IS NULL AND expires_at > ?1
         RETURNING {COLUMNS}"
    ))
    .bind(now)
    .bind(by)
    .bind(id)
    .bind(user)
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let g = grant(&row)?;
    // The kill-switch path: the sessions issued under it are revoked like
    // an admin's RevokeSession, so the sidecars refuse their tokens.
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?1), ended_at = COALESCE(ended_at, ?1)
         WHERE grant_id = ?2 AND expires_at > ?1 AND revoked_at IS NULL
         RETURNING id, agent_id",
    )
    .bind(now)
    .bind(id)
    .fetch_all(&mut *c)
    .await?;
    let mut ended = Vec::with_capacity(rows.len());
    for r in rows {
        let agent: String = r.try_get("agent_id")?;
        ended.push((
            r.try_get("id")?,
            AgentId::new(&agent).map_err(|e| Error::Corrupt {
                table: "sessions",
                detail: e.to_string(),
            })?,
        ));
    }
    ended.sort();
    Ok(Some((g, ended)))
}

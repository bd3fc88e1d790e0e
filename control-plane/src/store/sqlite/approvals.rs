//! Approval requests in SQLite: filed once per call, decided by distinct
//! people, used once.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use warden_shared::agent::AgentId;

use super::super::{
    Approval, ApprovalDecision, ApprovalState, Decided, Error, NewApproval, Outcome, Result,
};

/// How long an approved request stays usable after its approval when that
/// ends later than its deadline.
pub(super) const USE_WINDOW: i64 = 300;

const COLUMNS: &str = "id, binding, agent_id, session_id, user_id, tool, arguments, reason, trace_id, because, quorum, created_at, deadline, state, decided_at, used_at, by_user";

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corrupt {
        table: "approvals",
        detail: detail.into(),
    }
}

/// The request in `row` (without decisions), its state as of `now`.
pub(super) fn request(
    row: &SqliteRow,
    now: i64,
) -> Result<(NewApproval, ApprovalState, Option<i64>)> {
    let agent: String = row.try_get("agent_id")?;
    let quorum: i64 = row.try_get("quorum")?;
    let state: String = row.try_get("state")?;
    let mut state =
        ApprovalState::parse(&state).ok_or_else(|| corrupt(format!("state {state:?}")))?;
    let deadline: i64 = row.try_get("deadline")?;
    let decided_at: Option<i64> = row.try_get("decided_at")?;
    if state == ApprovalState::Pending && deadline <= now {
        state = ApprovalState::Expired;
    }
    if state == ApprovalState::Approved && !usable(deadline, decided_at, now) {
        state = ApprovalState::Expired;
    }
    Ok((
        NewApproval {
            id: row.try_get("id")?,
            binding: row.try_get("binding")?,
            agent_id: AgentId::new(&agent).map_err(|e| corrupt(e.to_string()))?,
            session_id: row.try_get("session_id")?,
            user_id: row.try_get("user_id")?,
            tool: row.try_get("tool")?,
            arguments: row.try_get("arguments")?,
            reason: row.try_get("reason")?,
            trace_id: row.try_get("trace_id")?,
            because: row.try_get("because")?,
            quorum: u32::try_from(quorum).map_err(|_| corrupt("quorum"))?,
            created_at: row.try_get("created_at")?,
            deadline,
            by_user: row.try_get::<i64, _>("by_user")? != 0,
        },
        state,
        decided_at,
    ))
}

/// Whether an approved request may still be used: until its deadline, or
/// [`USE_WINDOW`] after its approval, whichever is later.
pub(super) fn usable(deadline: i64, decided_at: Option<i64>, now: i64) -> bool {
    now < deadline.max(decided_at.unwrap_or(0).saturating_add(USE_WINDOW))
}

pub(super) fn decision(row: &SqliteRow) -> Result<ApprovalDecision> {
    let approve: i64 = row.try_get("approve")?;
    Ok(ApprovalDecision {
        approver: row.try_get("approver")?,
        approve: approve != 0,
        comment: row.try_get("comment")?,
        decided_at: row.try_get("decided_at")?,
    })
}

/// Request `id` with its decisions, on `c`.
pub(super) async fn load(c: &mut SqliteConnection, id: &str, now: i64) -> Result<Option<Approval>> {
    let Some(row) = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    else {
        return Ok(None);
    };
    let (request, state, _) = request(&row, now)?;
    let decisions = sqlx::query(
        "SELECT approver, approve, comment, decided_at FROM approval_decisions WHERE approval_id = ? ORDER BY decided_at, approver",
    )
    .bind(id)
    .fetch_all(&mut *c)
    .await?
    .iter()
    .map(decision)
    .collect::<Result<Vec<_>>>()?;
    Ok(Some(Approval {
        request,
        state,
        decisions,
    }))
}

/// Files `new`, or returns the request standing for the same call of the
/// same agent: pending, approved and unused, or denied and within its
/// deadline.
pub(super) async fn file(
    c: &mut SqliteConnection,
    new: &NewApproval,
    now: i64,
) -> Result<Approval> {
    let standing = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE binding = ? AND agent_id = ? AND state IN ('pending', 'approved', 'denied') ORDER BY created_at DESC"
    ))
    .bind(&new.binding)
    .bind(new.agent_id.as_str())
    .fetch_all(&mut *c)
    .await?;
    for row in &standing {
        let (r, state, _) = request(row, now)?;
        // A denial stands until the request's deadline: asking again at
        // once gets the same answer.
        let stands = match state {
            ApprovalState::Pending | ApprovalState::Approved => true,
            ApprovalState::Denied => r.deadline > now,
            _ => false,
        };
        if stands {
            return load(c, &r.id, now)
                .await?
                .ok_or_else(|| corrupt("vanished"));
        }
    }
    sqlx::query(
        "INSERT INTO approvals (id, binding, agent_id, session_id, user_id, tool, arguments, reason, trace_id, because, quorum, created_at, deadline, state, by_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
    )
    .bind(&new.id)
    .bind(&new.binding)
    .bind(new.agent_id.as_str())
    .bind(&new.session_id)
    .bind(&new.user_id)
    .bind(&new.tool)
    .bind(&new.arguments)
    .bind(&new.reason)
    .bind(&new.trace_id)
    .bind(&new.because)
    .bind(i64::from(new.quorum))
    .bind(new.created_at)
    .bind(new.deadline)
    .bind(i64::from(new.by_user))
    .execute(&mut *c)
    .await?;
    Ok(Approval {
        request: new.clone(),
        state: ApprovalState::Pending,
        decisions: Vec::new(),
    })
}

/// Records a decision on request `id`.
pub(super) async fn decide(
    c: &mut SqliteConnection,
    id: &str,
    d: &ApprovalDecision,
    now: i64,
) -> Result<Decided> {
    let Some(a) = load(c, id, now).await? else {
        return Ok(Decided::Unknown);
    };
    if a.state != ApprovalState::Pending {
        if a.state == ApprovalState::Expired {
            sqlx::query(
                "UPDATE approvals SET state = 'expired' WHERE id = ? AND state = 'pending'",
            )
            .bind(id)
            .execute(&mut *c)
            .await?;
        }
        return Ok(Decided::NotPending(a.state));
    }
    if a.decisions.iter().any(|x| x.approver == d.approver) {
        return Ok(Decided::AlreadyDecided);
    }
    sqlx::query(
        "INSERT INTO approval_decisions (approval_id, approver, approve, comment, decided_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(&d.approver)
    .bind(i64::from(d.approve))
    .bind(&d.comment)
    .bind(d.decided_at)
    .execute(&mut *c)
    .await?;
    let approvals = a.decisions.iter().filter(|x| x.approve).count() + usize::from(d.approve);
    let state = if !d.approve {
        ApprovalState::Denied
    } else if approvals >= a.request.quorum as usize {
        ApprovalState::Approved
    } else {
        return Ok(Decided::Recorded(ApprovalState::Pending));
    };
    // Writes are serialised (one writer), so the next number is unique.
    sqlx::query(
        "UPDATE approvals SET state = ?, decided_at = ?, decided_seq = (SELECT COALESCE(MAX(decided_seq), 0) + 1 FROM approvals) WHERE id = ? AND state = 'pending'",
    )
    .bind(state.as_str())
    .bind(now)
    .bind(id)
    .execute(&mut *c)
    .await?;
    Ok(Decided::Recorded(state))
}

/// Spends `agent`'s approved, usable request for `binding`.
pub(super) async fn spend(
    c: &mut SqliteConnection,
    agent: &AgentId,
    binding: &str,
    now: i64,
) -> Result<Option<Approval>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE binding = ? AND agent_id = ? AND state = 'approved' ORDER BY created_at"
    ))
    .bind(binding)
    .bind(agent.as_str())
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let (r, state, _) = request(row, now)?;
        if state != ApprovalState::Approved {
            continue;
        }
        let done = sqlx::query(
            "UPDATE approvals SET state = 'used', used_at = ? WHERE id = ? AND state = 'approved'",
        )
        .bind(now)
        .bind(&r.id)
        .execute(&mut *c)
        .await?;
        if done.rows_affected() == 1 {
            return load(c, &r.id, now).await;
        }
    }
    Ok(None)
}

/// Cancels `agent`'s request `id` if it is pending.
pub(super) async fn cancel(
    c: &mut SqliteConnection,
    agent: &AgentId,
    id: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE approvals SET state = 'cancelled', decided_at = ? WHERE id = ? AND agent_id = ? AND state = 'pending' AND deadline > ?",
    )
    .bind(now)
    .bind(id)
    .bind(agent.as_str())
    .bind(now)
    .execute(&mut *c)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The decisions on `agent`'s requests after `after`, made since `since`.
pub(super) async fn outcomes(
    c: &mut SqliteConnection,
    agent: &AgentId,
    after: u64,
    since: i64,
    limit: u32,
) -> Result<Vec<Outcome>> {
    let rows = sqlx::query(
        "SELECT a.id, a.state, a.decided_seq, d.approver, d.comment FROM approvals a \
         LEFT JOIN approval_decisions d ON d.approval_id = a.id AND d.approve = 0 \
         WHERE a.agent_id = ? AND a.decided_seq > ? AND a.decided_at >= ? \
         AND a.state IN ('approved', 'denied', 'used') \
         ORDER BY a.decided_seq LIMIT ?",
    )
    .bind(agent.as_str())
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(since)
    .bind(i64::from(limit))
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| {
            let state: String = r.try_get("state")?;
            let seq: i64 = r.try_get("decided_seq")?;
            Ok(Outcome {
                id: r.try_get("id")?,
                state: ApprovalState::parse(&state)
                    .ok_or_else(|| corrupt(format!("state {state:?}")))?,
                seq: u64::try_from(seq).map_err(|_| corrupt("decided_seq"))?,
                denied_by: r
                    .try_get::<Option<String>, _>("approver")?
                    .unwrap_or_default(),
                comment: r
                    .try_get::<Option<String>, _>("comment")?
                    .unwrap_or_default(),
            })
        })
        .collect()
}

//! The audit log in SQLite. An append writes its entries, subtree heads
//! and sources' numbers in one round trip: a small one (the control plane's
//! own events, a session start's) with three statements of fixed text, each
//! reading its rows from one JSON parameter, which SQLite prepares once per
//! connection; a large one (a sidecar's shipment) with multi-row `VALUES`
//! statements.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use warden_shared::audit::TreeHead;
use warden_shared::merkle::{self, Hash, Node};

use super::super::audit::{
    AuditAppend, AuditEntry, AuditGuard, AuditKey, AuditQuery, AuditStore, BuildAppend, StoredHead,
};
use super::super::{Error, Result};
use super::SqliteStore;
use super::writer::Alone;

/// Appends of at most this many entries are written with statements of
/// fixed text ([`append_sql`]); larger ones with multi-row `VALUES`
/// statements ([`push_append`]), parsed anew each time but cheaper per row
/// than reading JSON (a shipment of 1,000 events: about 140,000 rows/s
/// against 100,000).
const FIXED_MAX: usize = 64;
/// Rows per INSERT (8 columns: well under SQLite's 32,766 parameters).
const LOG_CHUNK: usize = 500;
/// Rows per INSERT into the tree, or per query when subtrees are read (3
/// values each).
const TREE_CHUNK: usize = 1000;

fn corrupt(table: &'static str, detail: impl ToString) -> Error {
    Error::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn hash(table: &'static str, v: &[u8]) -> Result<Hash> {
    v.try_into()
        .map_err(|_| corrupt(table, "a hash is not 32 bytes"))
}

/// An append's statements: its entries, its subtrees and the sources'
/// numbers, each read from a JSON array (see [`append_json`]). The text
/// never changes with the size of the append, so SQLite parses it once per
/// connection, not once per batch.
macro_rules! append_sql {
    () => {
        "INSERT INTO audit_log (position, record, time_ms, kind, agent, session, tool, outcome)
           SELECT value->>0, unhex(value->>1), value->>2, value->>3, value->>4, value->>5,
                  value->>6, value->>7
           FROM json_each(?);
         INSERT INTO audit_tree (level, idx, hash)
           SELECT value->>0, value->>1, unhex(value->>2) FROM json_each(?);
         INSERT INTO audit_sources (source, last_seq)
           SELECT value->>0, value->>1 FROM json_each(?) WHERE true
           ON CONFLICT (source) DO UPDATE SET last_seq = excluded.last_seq
           WHERE excluded.last_seq > audit_sources.last_seq; "
    };
}

/// An append as [`append_sql`] reads it: its entries, its subtrees and the
/// sources' numbers, each a JSON array of arrays (blobs in hex).
fn append_json(batch: &AuditAppend) -> Result<[String; 3]> {
    use super::to_json;
    let rows: Vec<_> = batch
        .rows
        .iter()
        .map(|r| {
            (
                int(r.position),
                merkle::hex(&r.record),
                r.time_ms,
                &r.kind,
                &r.agent,
                &r.session,
                &r.tool,
                &r.outcome,
            )
        })
        .collect();
    let nodes: Vec<_> = batch
        .nodes
        .iter()
        .map(|(n, h)| (n.level, int(n.index), merkle::hex(h)))
        .collect();
    let sources: Vec<_> = batch.sources.iter().map(|(s, n)| (s, int(*n))).collect();
    Ok([to_json(&rows)?, to_json(&nodes)?, to_json(&sources)?])
}

/// Pushes an append's statements (its entries, subtrees and sources'
/// numbers), each ended by `; `; nothing if it is empty.
fn push_append<'a>(q: &mut QueryBuilder<'a, Sqlite>, batch: &'a AuditAppend) {
    for chunk in batch.rows.chunks(LOG_CHUNK) {
        q.push(
            "INSERT INTO audit_log (position, record, time_ms, kind, agent, session, tool, outcome) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(int(r.position))
                .push_bind(r.record.as_slice())
                .push_bind(r.time_ms)
                .push_bind(r.kind.as_str())
                .push_bind(r.agent.as_str())
                .push_bind(r.session.as_str())
                .push_bind(r.tool.as_str())
                .push_bind(r.outcome.as_str());
        });
        q.push("; ");
    }
    for chunk in batch.nodes.chunks(TREE_CHUNK) {
        q.push("INSERT INTO audit_tree (level, idx, hash) ");
        q.push_values(chunk, |mut b, (n, h)| {
            b.push_bind(i64::from(n.level))
                .push_bind(int(n.index))
                .push_bind(h.as_slice());
        });
        q.push("; ");
    }
    for (source, seq) in &batch.sources {
        q.push("INSERT INTO audit_sources (source, last_seq) VALUES (");
        q.push_bind(source.as_str());
        q.push(", ");
        q.push_bind(int(*seq));
        q.push(
            ") ON CONFLICT (source) DO UPDATE SET last_seq = excluded.last_seq
             WHERE excluded.last_seq > audit_sources.last_seq; ",
        );
    }
}

/// Writes an append in one round trip to SQLite's thread (one query of
/// several statements); owning its transaction, the query also begins and
/// commits it.
async fn append(c: &mut SqliteConnection, batch: &AuditAppend, alone: Alone) -> Result<()> {
    if batch.rows.is_empty() && batch.nodes.is_empty() && batch.sources.is_empty() {
        return Ok(());
    }
    if batch.rows.len() > FIXED_MAX {
        let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(match alone {
            Alone::Owns => "BEGIN IMMEDIATE; ",
            Alone::No => "",
        });
        push_append(&mut q, batch);
        if alone == Alone::Owns {
            q.push("COMMIT");
        }
        q.build().persistent(false).execute(&mut *c).await?;
        return Ok(());
    }
    let sql = match alone {
        Alone::Owns => concat!("BEGIN IMMEDIATE; ", append_sql!(), "COMMIT"),
        Alone::No => append_sql!(),
    };
    let [rows, nodes, sources] = append_json(batch)?;
    sqlx::query(sql)
        .bind(rows)
        .bind(nodes)
        .bind(sources)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// A table no row can enter: inserting into it is how a query of several
/// statements stops itself (a `CHECK` failure) when a guard did not take.
/// Made once on the writer's connection.
pub(super) const GUARD_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS guard_failed (x CHECK (0))";

/// A guarded append owning its transaction, tried in one query: the
/// sessions' insert, a statement that fails unless every one of them was
/// inserted, and the append built as if every guard took.
const GUARDED_ALL: &str = concat!(
    "BEGIN IMMEDIATE; ",
    super::open_sessions_sql!(),
    "; INSERT INTO temp.guard_failed SELECT 1 WHERE changes() <> ?; ",
    append_sql!(),
    "COMMIT"
);

/// Runs an append's guards and its entries. Owning its transaction, with
/// at most [`FIXED_MAX`] entries, and only sessions to open, it first tries
/// everything in one round trip ([`GUARDED_ALL`]); if a guard did not take
/// (or a constraint refused anything), that transaction is rolled back.
/// Otherwise, or then, the guards run (the sessions to open in one round
/// trip, each session to end in one), before the append built from what
/// they did.
async fn append_guarded(
    c: &mut SqliteConnection,
    guards: &[AuditGuard],
    build: BuildAppend,
    alone: Alone,
) -> Result<Vec<bool>> {
    let open: Vec<(usize, super::Opening<'_>)> = guards
        .iter()
        .enumerate()
        .filter_map(|(i, g)| match g {
            AuditGuard::OpenSession { session, max, now } => Some((i, (session, *max, *now))),
            AuditGuard::EndSession { .. } => None,
        })
        .collect();
    let openings: Vec<super::Opening<'_>> = open.iter().map(|(_, o)| *o).collect();
    let all = vec![true; guards.len()];
    let first = (alone == Alone::Owns && !guards.is_empty() && open.len() == guards.len())
        .then(|| build(&all))
        .filter(|b| b.rows.len() <= FIXED_MAX);
    if let Some(batch) = first {
        let (sessions, cap) = super::sessions_json(&openings)?;
        let [rows, nodes, sources] = append_json(&batch)?;
        let tried = sqlx::query(GUARDED_ALL)
            .bind(sessions)
            .bind(cap)
            .bind(i64::try_from(openings.len()).unwrap_or(i64::MAX))
            .bind(rows)
            .bind(nodes)
            .bind(sources)
            .execute(&mut *c)
            .await;
        match tried {
            Ok(_) => return Ok(all),
            Err(e) => {
                let e = Error::from(e);
                if super::writer::refused(&e) {
                    // Rolls back the attempt; the guards run one by one below.
                    sqlx::query("ROLLBACK").execute(&mut *c).await?;
                } else {
                    return Err(e);
                }
            }
        }
    }
    if alone == Alone::Owns {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *c).await?;
    }
    let mut took = vec![false; guards.len()];
    if !openings.is_empty() {
        let opened = super::insert_sessions(&mut *c, &openings).await?;
        for ((i, _), t) in open.iter().zip(opened) {
            took[*i] = t;
        }
    }
    for (i, g) in guards.iter().enumerate() {
        if let AuditGuard::EndSession { agent, id, now } = g {
            took[i] = super::end_session(&mut *c, agent, id, *now).await?;
        }
    }
    append(c, &build(&took), Alone::No).await?;
    if alone == Alone::Owns {
        sqlx::query("COMMIT").execute(&mut *c).await?;
    }
    Ok(took)
}

fn head_from_row(r: &SqliteRow) -> Result<StoredHead> {
    let size: i64 = r.try_get("size")?;
    let root: Vec<u8> = r.try_get("root")?;
    Ok(StoredHead {
        head: TreeHead {
            size: u64::try_from(size).map_err(|e| corrupt("audit_heads", e))?,
            root: hash("audit_heads", &root)?,
            time_ms: r.try_get("time_ms")?,
        },
        kid: r.try_get("kid")?,
        signature: r.try_get("signature")?,
    })
}

fn entry_from_row(r: &SqliteRow, leaves: bool) -> Result<AuditEntry> {
    let position: i64 = r.try_get("position")?;
    let leaf = if leaves {
        let h: Option<Vec<u8>> = r.try_get("hash")?;
        h.map(|h| hash("audit_tree", &h)).transpose()?
    } else {
        None
    };
    Ok(AuditEntry {
        position: u64::try_from(position).map_err(|e| corrupt("audit_log", e))?,
        record: r.try_get("record")?,
        leaf,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_append(&self, batch: AuditAppend) -> Result<()> {
        self.write_framed(move |c, alone| Box::pin(async move { append(c, &batch, alone).await }))
            .await
    }

    async fn audit_append_guarded(
        &self,
        guards: Vec<AuditGuard>,
        build: BuildAppend,
    ) -> Result<Vec<bool>> {
        self.write_framed(move |c, alone| {
            Box::pin(async move { append_guarded(c, &guards, build, alone).await })
        })
        .await
    }

    async fn audit_size(&self) -> Result<u64> {
        // After a prune of everything, the log still has its length.
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(position) + 1 FROM audit_log), 0),
                        COALESCE((SELECT MAX(below) FROM audit_pruned), 0))",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    async fn audit_prune(&self, below: u64, by: &str, now_ms: i64) -> Result<u64> {
        let by = by.to_owned();
        self.write_all(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_pruned (below, pruned_ms, by_admin) VALUES (?, ?, ?)",
                )
                .bind(int(below))
                .bind(now_ms)
                .bind(&by)
                .execute(&mut *c)
                .await?;
                let deleted = sqlx::query("DELETE FROM audit_log WHERE position < ?")
                    .bind(int(below))
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                // At each level, the subtrees wholly below the point, but
                // the largest complete one there (a head the prefix keeps).
                for level in 0..64u32 {
                    let whole = below >> level;
                    if whole == 0 {
                        break;
                    }
                    let keep = whole & 1;
                    sqlx::query("DELETE FROM audit_tree WHERE level = ? AND idx < ?")
                        .bind(i64::from(level))
                        .bind(int(whole - keep))
                        .execute(&mut *c)
                        .await?;
                }
                Ok(deleted)
            })
        })
        .await
    }

    async fn audit_export_position(&self, name: &str) -> Result<u64> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT position FROM audit_exports WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    async fn set_audit_export_position(&self, name: &str, position: u64) -> Result<()> {
        let name = name.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_exports (name, position) VALUES (?, ?)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                )
                .bind(&name)
                .bind(int(position))
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn audit_pruned(&self) -> Result<u64> {
        let n: Option<i64> = sqlx::query_scalar("SELECT MAX(below) FROM audit_pruned")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    async fn audit_nodes(&self, nodes: &[Node]) -> Result<Vec<Option<Hash>>> {
        // One query per few hundred subtrees (a proof needs a few dozen).
        let mut found = std::collections::HashMap::with_capacity(nodes.len());
        for chunk in nodes.chunks(TREE_CHUNK) {
            let mut q: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
                "SELECT level, idx, hash FROM audit_tree WHERE (level, idx) IN (VALUES ",
            );
            let mut values = q.separated(", ");
            for n in chunk {
                values
                    .push("(")
                    .push_bind_unseparated(i64::from(n.level))
                    .push_unseparated(", ")
                    .push_bind_unseparated(int(n.index))
                    .push_unseparated(")");
            }
            q.push(")");
            for r in q.build().fetch_all(&self.pool).await? {
                let level: i64 = r.try_get("level")?;
                let idx: i64 = r.try_get("idx")?;
                let h: Vec<u8> = r.try_get("hash")?;
                found.insert((level, idx), hash("audit_tree", &h)?);
            }
        }
        Ok(nodes
            .iter()
            .map(|n| found.get(&(i64::from(n.level), int(n.index))).copied())
            .collect())
    }

    async fn audit_source_seq(&self, source: &str) -> Result<u64> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM audit_sources WHERE source = ?")
                .bind(source)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    async fn audit_entries(
        &self,
        from: u64,
        to: u64,
        limit: u32,
        leaves: bool,
    ) -> Result<Vec<AuditEntry>> {
        let sql = if leaves {
            "SELECT l.position, l.record, t.hash FROM audit_log l
             LEFT JOIN audit_tree t ON t.level = 0 AND t.idx = l.position
             WHERE l.position >= ? AND l.position < ? ORDER BY l.position LIMIT ?"
        } else {
            "SELECT position, record FROM audit_log
             WHERE position >= ? AND position < ? ORDER BY position LIMIT ?"
        };
        let rows = sqlx::query(sql)
            .bind(int(from))
            .bind(int(to))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| entry_from_row(r, leaves)).collect()
    }

    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut b: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("SELECT position, record FROM audit_log WHERE 1 = 1");
        for (col, v) in [
            ("agent", &q.agent),
            ("session", &q.session),
            ("tool", &q.tool),
            ("outcome", &q.outcome),
            ("kind", &q.kind),
        ] {
            if let Some(v) = v {
                b.push(format_args!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        if let Some(t) = q.since_ms {
            b.push(" AND time_ms >= ").push_bind(t);
        }
        if let Some(t) = q.until_ms {
            b.push(" AND time_ms < ").push_bind(t);
        }
        if let Some(p) = q.after {
            b.push(" AND position > ").push_bind(int(p));
        }
        b.push(" ORDER BY position LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| entry_from_row(r, false)).collect()
    }

    async fn audit_add_head(&self, head: &StoredHead) -> Result<()> {
        let h = head.clone();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_heads (size, root, time_ms, kid, signature) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(int(h.head.size))
                .bind(h.head.root.as_slice())
                .bind(h.head.time_ms)
                .bind(&h.kid)
                .bind(&h.signature)
                .execute(&mut *c)
                .await
                .map_err(|e| {
                    if super::is_unique_violation(&e) {
                        Error::Conflict
                    } else {
                        e.into()
                    }
                })?;
                Ok(())
            })
        })
        .await
    }

    async fn audit_heads(&self, from_size: u64, limit: u32) -> Result<Vec<StoredHead>> {
        let rows = sqlx::query(
            "SELECT size, root, time_ms, kid, signature FROM audit_heads WHERE size >= ? ORDER BY size LIMIT ?",
        )
        .bind(int(from_size))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(head_from_row).collect()
    }

    async fn audit_head(&self, size: Option<u64>) -> Result<Option<StoredHead>> {
        let row = match size {
            Some(s) => {
                sqlx::query(
                    "SELECT size, root, time_ms, kid, signature FROM audit_heads WHERE size = ?",
                )
                .bind(int(s))
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT size, root, time_ms, kid, signature FROM audit_heads ORDER BY size DESC LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(head_from_row).transpose()
    }

    async fn audit_add_key(&self, key: &AuditKey) -> Result<()> {
        let k = key.clone();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_keys (kid, pkcs8, public_key, created_ms) VALUES (?, ?, ?, ?)",
                )
                .bind(&k.kid)
                .bind(&k.pkcs8)
                .bind(&k.public_key)
                .bind(k.created_ms)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn audit_keys(&self) -> Result<Vec<AuditKey>> {
        let rows = sqlx::query(
            "SELECT kid, pkcs8, public_key, created_ms FROM audit_keys ORDER BY created_ms, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditKey {
                    kid: r.try_get("kid")?,
                    pkcs8: r.try_get("pkcs8")?,
                    public_key: r.try_get("public_key")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }
}

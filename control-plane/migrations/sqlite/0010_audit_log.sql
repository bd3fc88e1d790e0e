-- The audit log (issue 15): an append-only Merkle-tree log in the style of
-- Certificate Transparency (RFC 9162). `record` is the exact leaf entry
-- (RFC 8785 JSON); the other columns are copies for queries.
CREATE TABLE audit_log (
    position INTEGER PRIMARY KEY,
    record   BLOB NOT NULL,
    time_ms  INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    agent    TEXT NOT NULL,
    session  TEXT NOT NULL,
    tool     TEXT NOT NULL,
    outcome  TEXT NOT NULL
);
CREATE INDEX audit_log_agent ON audit_log(agent, position);
CREATE INDEX audit_log_session ON audit_log(session, position) WHERE session <> '';
CREATE INDEX audit_log_time ON audit_log(time_ms);

-- The head of every complete perfect subtree: 2^level leaves from
-- idx * 2^level (level 0: the leaf hashes). A proof reads a few dozen.
CREATE TABLE audit_tree (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed tree heads.
CREATE TABLE audit_heads (
    size      INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    time_ms   INTEGER NOT NULL,
    kid       TEXT NOT NULL,
    signature BLOB NOT NULL
);

-- The keys that sign heads (Ed25519, PKCS#8).
CREATE TABLE audit_keys (
    kid        TEXT PRIMARY KEY,
    pkcs8      BLOB NOT NULL,
    public_key BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);

-- The last sequence number stored from each source (a sidecar's spool):
-- an event shipped twice is stored once.
CREATE TABLE audit_sources (
    source   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);

-- Audit rows are never changed or removed through the database.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_tree_no_update BEFORE UPDATE ON audit_tree
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_heads_no_update BEFORE UPDATE ON audit_heads
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_keys_no_update BEFORE UPDATE ON audit_keys
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_keys_no_delete BEFORE DELETE ON audit_keys
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

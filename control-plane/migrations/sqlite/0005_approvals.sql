-- Human approvals: one row per request, bound to one call by `binding`
-- (SHA-256 of tool, canonical arguments and session); decisions per
-- approver (one person counts once towards a quorum).
CREATE TABLE approvals (
    id          TEXT PRIMARY KEY,
    binding     TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL DEFAULT '',
    tool        TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    trace_id    TEXT NOT NULL DEFAULT '',
    because     TEXT NOT NULL DEFAULT '',
    quorum      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    deadline    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    decided_at  INTEGER,
    used_at     INTEGER
);
CREATE INDEX approvals_binding ON approvals(binding, state);
CREATE INDEX approvals_state ON approvals(state, created_at);

CREATE TABLE approval_decisions (
    approval_id TEXT NOT NULL REFERENCES approvals(id),
    approver    TEXT NOT NULL,
    approve     INTEGER NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    decided_at  INTEGER NOT NULL,
    PRIMARY KEY (approval_id, approver)
);

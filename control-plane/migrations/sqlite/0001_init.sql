-- Agent identities (non-human identity records).
CREATE TABLE agents (
    id              TEXT PRIMARY KEY NOT NULL,
    agent_type      TEXT NOT NULL,
    version         TEXT NOT NULL,
    owner           TEXT NOT NULL,
    environment     TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    max_sessions    INTEGER NOT NULL,
    allowed_scopes  TEXT NOT NULL,  -- JSON array
    allowed_tools   TEXT NOT NULL,  -- JSON array
    denied_tools    TEXT NOT NULL,  -- JSON array
    status          TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    status_reason   TEXT NOT NULL DEFAULT ''
);

-- Join tokens are stored only as SHA-256 hashes.
CREATE TABLE join_tokens (
    token_hash  BLOB PRIMARY KEY NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents(id),
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

-- Every certificate the CA signed.
CREATE TABLE certificates (
    serial      TEXT PRIMARY KEY NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents(id),
    thumbprint  TEXT NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    reason      TEXT NOT NULL CHECK (reason IN ('enroll', 'renew'))
);
CREATE INDEX certificates_agent ON certificates(agent_id);

-- Sessions: one per issued token.
CREATE TABLE sessions (
    id              TEXT PRIMARY KEY NOT NULL,
    agent_id        TEXT NOT NULL REFERENCES agents(id),
    user_id         TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    context         TEXT NOT NULL,  -- JSON object
    jti             TEXT NOT NULL,
    thumbprint      TEXT NOT NULL,
    max_tool_calls  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    ended_at        INTEGER
);
CREATE INDEX sessions_open ON sessions(agent_id, ended_at, expires_at);

-- Token signing keys (PKCS#8). retired_at is set when a newer key takes over;
-- retired keys stay published until every token they signed has expired.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    pkcs8       BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

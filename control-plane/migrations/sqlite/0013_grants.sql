-- Users' consent grants: a user (`<issuer>#<subject>`) lets one agent, or
-- any agent of a type, act for them within scopes, until expires_at.
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    agent_id TEXT NOT NULL DEFAULT '',
    agent_type TEXT NOT NULL DEFAULT '',
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_by TEXT NOT NULL DEFAULT '',
    CHECK ((agent_id = '') <> (agent_type = ''))
);
CREATE INDEX grants_user ON grants(user_id, expires_at);

-- The grant a delegated session was issued under.
ALTER TABLE sessions ADD COLUMN grant_id TEXT;
CREATE INDEX sessions_grant ON sessions(grant_id) WHERE grant_id IS NOT NULL;

-- Sessions revoked by an admin: their tokens are refused until they expire.
ALTER TABLE sessions ADD COLUMN revoked_at INTEGER;
CREATE INDEX sessions_revoked ON sessions(agent_id, revoked_at, expires_at);

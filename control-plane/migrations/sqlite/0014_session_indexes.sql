-- Fewer index pages written per session opened (each page is a WAL frame
-- written, checksummed and checkpointed): the revoked-session index holds
-- only revoked sessions, which an insert never is, and the open-session index
-- only open ones (what the per-agent cap counts; ended sessions leave it).
DROP INDEX sessions_revoked;
CREATE INDEX sessions_revoked ON sessions(agent_id, expires_at) WHERE revoked_at IS NOT NULL;
DROP INDEX sessions_open;
CREATE INDEX sessions_open ON sessions(agent_id, expires_at) WHERE ended_at IS NULL;

-- Decisions pushed to sidecars as they are made: each approval or denial
-- takes the next sequence number, and a sidecar's stream sends those after
-- the one it holds.
ALTER TABLE approvals ADD COLUMN decided_seq INTEGER;
DROP INDEX approvals_agent_decided;
CREATE INDEX approvals_agent_seq ON approvals(agent_id, decided_seq);

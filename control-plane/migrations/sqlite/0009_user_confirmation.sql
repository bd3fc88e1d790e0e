-- Requests the agent's end user decides (through the agent API), not admins.
ALTER TABLE approvals ADD COLUMN by_user INTEGER NOT NULL DEFAULT 0;

-- The decisions pushed to an agent's sidecar: its requests decided lately.
CREATE INDEX approvals_agent_decided ON approvals(agent_id, state, decided_at);

-- The mesh-wide list of blocked agents is read on every status change.
CREATE INDEX agents_status ON agents(status, updated_at);

-- Approval notifications waiting for their webhook endpoints: written
-- before the request's filer or decider is answered, so a receiver that is
-- down or a restart loses none. `next_at` NULL: delivered or abandoned.
CREATE TABLE webhook_outbox (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER,
    delivered_at INTEGER,
    last_error   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_at) WHERE next_at IS NOT NULL;

-- Where each exporter of the audit log (OTLP) has got to: the next
-- position to send. Not an audit record: it moves forward as exports are
-- acknowledged.
CREATE TABLE audit_exports (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);

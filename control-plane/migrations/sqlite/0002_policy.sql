-- Every applied policy version, kept forever: who applied what, and when.
CREATE TABLE policy_versions (
    version     INTEGER PRIMARY KEY AUTOINCREMENT,
    document    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    tools       INTEGER NOT NULL,
    applied_by  TEXT NOT NULL,
    applied_at  INTEGER NOT NULL
);

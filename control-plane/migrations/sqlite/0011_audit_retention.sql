-- Retention for the audit log (issue 15): an admin may prune the entries
-- below a point already covered by a signed head, once archived. The point
-- only rises; below it, entries and the subtrees wholly inside the pruned
-- prefix may be deleted (the heads of its largest complete subtrees are
-- kept by the pruning code, so that later entries stay provable and every
-- signed head stays checkable). Above it, nothing can be deleted.
CREATE TABLE audit_pruned (
    below     INTEGER PRIMARY KEY,
    pruned_ms INTEGER NOT NULL,
    by_admin  TEXT NOT NULL
);
CREATE TRIGGER audit_pruned_rises BEFORE INSERT ON audit_pruned
WHEN new.below <= COALESCE((SELECT MAX(below) FROM audit_pruned), 0)
BEGIN SELECT RAISE(ABORT, 'the audit prune point only rises'); END;
CREATE TRIGGER audit_pruned_no_update BEFORE UPDATE ON audit_pruned
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_pruned_no_delete BEFORE DELETE ON audit_pruned
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN old.position >= COALESCE((SELECT MAX(below) FROM audit_pruned), 0)
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

DROP TRIGGER audit_tree_no_delete;
CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree
WHEN ((old.idx + 1) << old.level) > COALESCE((SELECT MAX(below) FROM audit_pruned), 0)
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;

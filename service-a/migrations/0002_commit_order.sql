-- `seq` is taken at insert, not at commit: handlers insert concurrently, so
-- entry 100 can commit after entry 101, and a reader that went on "after
-- 101" would never see it. The writing transaction orders the log by commit
-- (event_store::commit_order): a page ends at a place nothing can commit
-- before later. Rows recorded before this migration all get its
-- transaction: they keep their order by `seq`, before every later one.
ALTER TABLE audit_entries ADD COLUMN transaction_id XID8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX audit_entries_in_commit_order ON audit_entries (transaction_id, seq);

-- Entries are pruned by age (RETENTION_DAYS), oldest first.
CREATE INDEX audit_entries_by_recorded_at ON audit_entries (recorded_at);

-- Which transaction last changed each row, so that "what changed since a model's snapshot" is decided exactly: a
-- snapshot records pg_current_snapshot(), and a row changed after it is one whose transaction that snapshot does
-- not see (no clock, no margin). Existing rows get this migration's transaction, which every later snapshot sees.
ALTER TABLE interactions ADD COLUMN changed_xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE books ADD COLUMN changed_xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint;
CREATE INDEX interactions_changed_xid_idx ON interactions (changed_xid);
CREATE INDEX books_changed_xid_idx ON books (changed_xid);

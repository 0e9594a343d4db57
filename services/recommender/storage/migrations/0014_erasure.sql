-- Readers and books erased on request (GDPR article 17): their rows are gone from every other table; the bare id
-- stays here (nothing else) so that a served model trained before the erasure, on any replica and after any
-- restart, answers the reader as a stranger and never shows the book. changed_xid: which models' snapshots
-- predate the erasure (as for interactions).
CREATE TABLE erased_users (
    user_id     integer PRIMARY KEY,
    erased_at   timestamptz NOT NULL DEFAULT now(),
    changed_xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint
);

CREATE TABLE erased_books (
    book_id     integer PRIMARY KEY,
    erased_at   timestamptz NOT NULL DEFAULT now(),
    changed_xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint
);

CREATE INDEX feedback_user_idx ON feedback (user_id);
CREATE INDEX feedback_book_idx ON feedback (book_id);
